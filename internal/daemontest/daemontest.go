// Package daemontest runs the built edgemq binary as a subprocess for the
// tests that kill it (SIGKILL), stop it or signal it: edge's crash tests and
// bridge's outage tests share it, since test helpers do not cross packages.
//
// It is test support: only _test.go files import it. It guarantees that the
// process it started is gone when the test ends (SIGKILL at cleanup) and
// that the daemon's log is printed when the test failed or
// EDGEMQ_DAEMON_LOG is set; it does not check what the daemon does.
package daemontest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// Binary builds cmd/edgemq once per test binary and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		dir, err := os.MkdirTemp("", "edgemq-daemontest-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "edgemq")
		cmd := exec.Command("go", "build", "-o", builtBin, "./cmd/edgemq")
		cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, bytes.TrimSpace(b))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// Daemon is the built edgemq running on a config file of its own.
type Daemon struct {
	t      testing.TB
	bin    string
	config string
	base   string // the config without the extra part
	addr   string
	cmd    *exec.Cmd
	done   chan struct{}
	log    *os.File
}

// New writes a config in dir with a TCP listener on a free loopback port,
// no HTTP side, the storage in dir/data (sync: always), the log at level,
// a 1 s shutdown grace, and extra (more YAML sections, such as bridges:).
// It does not start the daemon.
func New(t testing.TB, dir, level, extra string) *Daemon {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	base := fmt.Sprintf("listeners:\n  - {name: tcp, type: tcp, address: %q}\nhttp: {address: \"\"}\nstorage: {dir: %q, sync: always}\nlog: {level: %s}\nshutdown: {grace: 1s}\n",
		addr, filepath.Join(dir, "data"), level)
	logf, err := os.Create(filepath.Join(dir, "edgemq.log"))
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{t: t, bin: Binary(t), config: filepath.Join(dir, "edgemq.yaml"), base: base, addr: addr, log: logf}
	d.Write(extra)
	t.Cleanup(func() {
		if d.cmd != nil {
			d.Kill()
		}
		logf.Close()
		if t.Failed() || os.Getenv("EDGEMQ_DAEMON_LOG") != "" {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("edgemq log:\n%s", b)
		}
	})
	return d
}

// ConfigPath is the daemon's config file (for `edgemq check -c`).
func (d *Daemon) ConfigPath() string { return d.config }

// Addr is host:port of the daemon's TCP listener.
func (d *Daemon) Addr() string { return d.addr }

// Write replaces the extra part of the config file (bridges, usually); a
// running daemon reads it on SIGHUP.
func (d *Daemon) Write(extra string) {
	d.t.Helper()
	if err := os.WriteFile(d.config, []byte(d.base+extra), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

// Start runs the daemon and waits until its listener accepts connections.
func (d *Daemon) Start() {
	d.t.Helper()
	d.cmd = exec.Command(d.bin, "run", "-c", d.config)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(d.cmd, d.done)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", d.addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-d.done:
			d.t.Fatalf("edgemq exited at start")
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("edgemq not listening on %s after 30 s: %v", d.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill sends SIGKILL and waits until the process is gone.
func (d *Daemon) Kill() {
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	d.cmd = nil
}

// Stop sends SIGTERM and waits for the exit (an error of the test if it
// takes over 20 s; then SIGKILL).
func (d *Daemon) Stop() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		d.t.Errorf("edgemq did not stop within 20 s of SIGTERM")
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	d.cmd = nil
}

// Signal sends sig to the running daemon.
func (d *Daemon) Signal(sig syscall.Signal) { _ = d.cmd.Process.Signal(sig) }

// LogPath is the file the daemon's output goes to.
func (d *Daemon) LogPath() string { return d.log.Name() }
