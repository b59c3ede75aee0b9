package bridge_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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

// edgemqBinary builds cmd/edgemq once per test binary.
func edgemqBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "edgemq-bridge-test")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "edgemq")
		cmd := exec.Command("go", "build", "-o", builtBin, "../cmd/edgemq")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// daemon is the built edgemq running as a subprocess on a config file.
type daemon struct {
	t      testing.TB
	bin    string
	config string
	base   string // the config without the extra part
	addr   string
	cmd    *exec.Cmd
	done   chan struct{}
	log    *os.File
}

// newDaemon writes a config with a TCP listener on a free port, the storage
// in dir, and extra (YAML sections, such as bridges:).
func newDaemon(t testing.TB, dir, extra string) *daemon {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	base := fmt.Sprintf("listeners:\n  - {name: tcp, type: tcp, address: %q}\nhttp: {address: \"\"}\nstorage: {dir: %q, sync: always}\nlog: {level: info}\nshutdown: {grace: 1s}\n",
		addr, filepath.Join(dir, "data"))
	path := filepath.Join(dir, "edgemq.yaml")
	logf, err := os.Create(filepath.Join(dir, "edgemq.log"))
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, bin: edgemqBinary(t), config: path, base: base, addr: addr, log: logf}
	d.write(extra)
	t.Cleanup(func() {
		if d.cmd != nil {
			d.kill()
		}
		logf.Close()
		if t.Failed() || os.Getenv("BRIDGE_TEST_LOG") != "" {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("edgemq log:\n%s", b)
		}
	})
	return d
}

// write replaces the config file's extra part (bridges, usually).
func (d *daemon) write(extra string) {
	d.t.Helper()
	if err := os.WriteFile(d.config, []byte(d.base+extra), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

func (d *daemon) start() {
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
	waitListening(d.t, d.addr, d.done)
}

// kill sends SIGKILL and waits until the process is gone.
func (d *daemon) kill() {
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	d.cmd = nil
}

// signal sends sig to the daemon.
func (d *daemon) signal(sig syscall.Signal) { _ = d.cmd.Process.Signal(sig) }

func waitListening(t testing.TB, addr string, done <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			t.Fatalf("process exited at start")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening after 30 s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mosquitto is Debian's /usr/sbin/mosquitto on a free loopback port.
type mosquitto struct {
	addr string
	conf string
	logf *os.File
	cmd  *exec.Cmd
	done chan struct{}
}

// startMosquitto starts mosquitto with conf appended to a listener line;
// the test is skipped when mosquitto is not installed (.ci/run installs it).
func startMosquitto(t testing.TB, conf string) *mosquitto {
	t.Helper()
	bin := "/usr/sbin/mosquitto"
	if _, err := os.Stat(bin); err != nil {
		t.Skip("mosquitto not installed (apt-get install mosquitto)")
	}
	port := freePort(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "mosquitto.conf")
	// user root: run as root (CI), mosquitto would drop to user mosquitto,
	// which cannot read the test's files.
	body := fmt.Sprintf("user root\nlistener %d 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n%s", port, conf)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "mosquitto.log"))
	if err != nil {
		t.Fatal(err)
	}
	m := &mosquitto{addr: fmt.Sprintf("127.0.0.1:%d", port), conf: path, logf: logf}
	t.Cleanup(func() {
		if m.cmd != nil {
			_ = m.cmd.Process.Signal(syscall.SIGTERM)
			<-m.done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("mosquitto log:\n%s", b)
		}
	})
	m.start(t)
	return m
}

func (m *mosquitto) start(t testing.TB) {
	t.Helper()
	m.cmd, m.done = exec.Command("/usr/sbin/mosquitto", "-c", m.conf), make(chan struct{})
	m.cmd.Stdout, m.cmd.Stderr = m.logf, m.logf
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(m.cmd, m.done)
	waitListening(t, m.addr, m.done)
}
