package bridge_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

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
