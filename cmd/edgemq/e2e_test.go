package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
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

// These tests build the edgemq binary and drive it from outside, as an
// operator and the Mosquitto command-line clients would: real process, real
// signals, real exit codes. The Mosquitto clients come from Debian's
// mosquitto-clients package, which .ci/run installs.

// buildBinary builds cmd/edgemq into a temporary directory, with a version
// set the way the Makefile sets it.
// The binary is built once for every test, into binDir (made by TestMain).
func buildBinary(t *testing.T) string {
	t.Helper()
	build.Do(func() {
		bin := filepath.Join(binDir, "edgemq")
		cmd := exec.Command("go", "build", "-ldflags", "-X main.version=e2e-test", "-o", bin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		build.bin = bin
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.bin
}

var (
	binDir string
	build  struct {
		sync.Once
		bin string
		err error
	}
)

// needMosquittoClients skips the test when the Mosquitto clients are missing.
func needMosquittoClients(t *testing.T) {
	t.Helper()
	for _, c := range []string{"mosquitto_pub", "mosquitto_sub", "stdbuf"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s not installed (Debian: apt-get install mosquitto-clients; .ci/run installs it): skipping the end-to-end test", c)
		}
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// daemon is a running edgemq process.
type daemon struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{} // closed when the process has exited
}

func startDaemon(t *testing.T, bin string, args ...string) *daemon {
	t.Helper()
	d := &daemon{cmd: exec.Command(bin, args...), stderr: &syncBuffer{}, done: make(chan struct{})}
	d.cmd.Stdout = io.Discard
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			t.Logf("edgemq log:\n%s", d.stderr.String())
		}
	})
	return d
}

// stop sends SIGTERM and waits for the process to exit, returning its exit code.
func (d *daemon) stop(t *testing.T) int {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
		t.Fatal("edgemq did not exit after SIGTERM")
	}
	return d.cmd.ProcessState.ExitCode()
}

// subscriber is a running mosquitto_sub.
type subscriber struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed when mosquitto_sub has exited; then err is set
	err  error
}

// subscribe starts mosquitto_sub with args and waits until the broker has
// acknowledged the subscription.
func subscribe(t *testing.T, args ...string) *subscriber {
	t.Helper()
	s := startSub(t, args...)
	waitFor(t, s.out, s.done, "received SUBACK")
	return s
}

// startSub starts mosquitto_sub with args.
func startSub(t *testing.T, args ...string) *subscriber {
	t.Helper()
	// stdbuf: mosquitto_sub's debug lines go through stdio, which holds them
	// in its buffer when stdout is a pipe.
	s := &subscriber{cmd: exec.Command("stdbuf", append([]string{"-oL", "mosquitto_sub", "-d"}, args...)...), out: &syncBuffer{}, done: make(chan struct{})}
	s.cmd.Stdout = s.out
	s.cmd.Stderr = s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.done
	})
	return s
}

// wait waits for mosquitto_sub to exit by itself (-C or -W) and returns the
// messages it printed (with -v: "topic payload" lines).
func (s *subscriber) wait(t *testing.T) []string {
	t.Helper()
	select {
	case <-s.done:
		if s.err != nil {
			t.Fatalf("mosquitto_sub: %v\n%s", s.err, s.out.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("mosquitto_sub did not finish:\n%s", s.out.String())
	}
	return messages(s.out.String())
}

// messages picks the messages (with -v: "topic payload" lines) out of
// mosquitto_sub -d output.
func messages(out string) []string {
	var msgs []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if line := sc.Text(); !strings.HasPrefix(line, "Client ") && !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "Subscribed (") {
			msgs = append(msgs, line)
		}
	}
	return msgs
}

func publish(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "mosquitto_pub", args...).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub %v: %v\n%s", args, err, out)
	}
}

// authBroker is a running edgemq with a password file, on free loopback ports.
type authBroker struct {
	// run is the command that runs the binary: the binary itself, or an
	// emulator and its arguments before it (TestEmulatedARM).
	run      []string
	bin, cfg string
	httpPort int
	port     string   // the MQTT TCP port
	auth     []string // mosquitto_pub/sub arguments to reach it as user "device"
	d        *daemon
}

// startAuthBroker writes a config with a password file made by `edgemq passwd`,
// as an operator would, checks it with `edgemq check`, and runs edgemq on it.
func startAuthBroker(t *testing.T) *authBroker {
	t.Helper()
	needMosquittoClients(t)
	bin := buildBinary(t)
	return startAuthBrokerWith(t, []string{bin})
}

// startAuthBrokerWith is startAuthBroker for the edgemq that run runs.
func startAuthBrokerWith(t *testing.T, run []string) *authBroker {
	t.Helper()
	b := &authBroker{run: run, bin: run[len(run)-1]}
	dir := t.TempDir()
	passwd := filepath.Join(dir, "passwd")
	if out, err := b.command("passwd", "-b", passwd, "device", "s3cret").CombinedOutput(); err != nil {
		t.Fatalf("edgemq passwd: %v\n%s", err, out)
	}
	mqttPort, wsPort := freePort(t), freePort(t)
	b.httpPort = freePort(t)
	b.cfg = writeFile(t, dir, "edgemq.yaml", fmt.Sprintf(`
listeners:
  - {type: tcp, address: "127.0.0.1:%d"}
  - {type: ws, address: "127.0.0.1:%d"}
http:
  address: 127.0.0.1:%d
auth:
  password_file: %s
storage:
  dir: %s
shutdown:
  grace: 2s
`, mqttPort, wsPort, b.httpPort, passwd, filepath.Join(dir, "data")))
	if out, err := b.command("check", "-c", b.cfg).CombinedOutput(); err != nil {
		t.Fatalf("edgemq check: %v\n%s", err, out)
	}
	b.port = fmt.Sprint(mqttPort)
	b.auth = []string{"-h", "127.0.0.1", "-p", b.port, "-u", "device", "-P", "s3cret"}
	b.start(t)
	return b
}

// command is an edgemq command line, run the way b runs edgemq.
func (b *authBroker) command(args ...string) *exec.Cmd {
	return exec.Command(b.run[0], append(b.run[1:], args...)...)
}

// start runs edgemq on b's config and waits until it listens.
func (b *authBroker) start(t *testing.T) {
	t.Helper()
	b.d = startDaemon(t, b.run[0], append(b.run[1:], "run", "-c", b.cfg)...)
	waitFor(t, b.d.stderr, b.d.done, fmt.Sprintf("address=127.0.0.1:%d", b.httpPort))
}

// stop sends SIGTERM and checks edgemq exits 0.
func (b *authBroker) stop(t *testing.T) {
	t.Helper()
	if code := b.d.stop(t); code != 0 {
		t.Fatalf("edgemq exited %d after SIGTERM, want 0", code)
	}
}

// roundTrip publishes three messages at qos over MQTT version through b to
// a mosquitto_sub subscribed at qos, and checks they arrive in order.
func (b *authBroker) roundTrip(t *testing.T, version, qos string) {
	t.Helper()
	topic := "e2e/" + version + "/qos" + qos
	sub := subscribe(t, append(b.auth, "-V", version, "-q", qos, "-t", topic, "-v", "-C", "3", "-W", "30")...)
	for i := range 3 {
		publish(t, append(b.auth, "-V", version, "-q", qos, "-t", topic, "-m", fmt.Sprintf("m%d", i))...)
	}
	got := sub.wait(t)
	if granted := "Subscribed (mid: 1): " + qos + "\n"; !strings.Contains(sub.out.String(), granted) {
		t.Errorf("granted QoS: want %q in\n%s", granted, sub.out.String())
	}
	want := []string{topic + " m0", topic + " m1", topic + " m2"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("mosquitto_sub got %q, want %q", got, want)
	}
}

// restartKeepsSession: a QoS 1 and a QoS 2 message published to an offline
// persistent session reach it after edgemq is stopped with SIGTERM (exit 0)
// and started again. It leaves the broker stopped.
func (b *authBroker) restartKeepsSession(t *testing.T) {
	t.Helper()
	id := []string{"-V", "mqttv311", "-c", "-i", "e2e-restart", "-t", "e2e/restart", "-q", "2"}
	subscribe(t, append(append(b.auth, id...), "-E")...).wait(t)
	publish(t, append(b.auth, "-q", "1", "-t", "e2e/restart", "-m", "r1")...)
	publish(t, append(b.auth, "-q", "2", "-t", "e2e/restart", "-m", "r2")...)
	b.stop(t)
	b.start(t)
	sub := startSub(t, append(append(b.auth, id...), "-v", "-C", "2", "-W", "30")...)
	<-sub.done
	if got := strings.Join(messages(sub.out.String()), "\n"); got != "e2e/restart r1\ne2e/restart r2" {
		t.Fatalf("after a restart, mosquitto_sub:\n%s", sub.out.String())
	}
	b.stop(t)
}

func TestEndToEndMosquittoClients(t *testing.T) {
	b := startAuthBroker(t)
	if out, err := exec.Command(b.bin, "version").Output(); err != nil || !strings.HasPrefix(string(out), "edgemq e2e-test\n") {
		t.Fatalf("edgemq version = %q, %v", out, err)
	}
	for _, version := range []string{"mqttv311", "mqttv5"} {
		for _, qos := range []string{"0", "1", "2"} {
			t.Run(version+"/qos"+qos, func(t *testing.T) { b.roundTrip(t, version, qos) })
		}
	}

	t.Run("wrong password is refused", func(t *testing.T) {
		out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", b.port, "-u", "device", "-P", "wrong", "-t", "x", "-m", "x").CombinedOutput()
		if err == nil {
			t.Fatalf("mosquitto_pub with a wrong password succeeded: %s", out)
		}
		if !strings.Contains(string(out), "Connection Refused") {
			t.Errorf("mosquitto_pub output = %q, want a refusal", out)
		}
	})

	// A client still connected at SIGTERM is disconnected as part of the
	// graceful shutdown, and the process exits 0.
	subscribe(t, append(b.auth, "-t", "e2e/idle", "-q", "1")...)
	b.stop(t)
	log := b.d.stderr.String()
	for _, s := range []string{"shutting down gracefully", "disconnecting clients", "edgemq exited cleanly"} {
		if !strings.Contains(log, s) {
			t.Errorf("edgemq log does not contain %q", s)
		}
	}
}

// TestEndToEndPersistentSessions: a 3.1.1 persistent session of
// mosquitto_sub gets what was published while it was away, after a
// reconnect (resubscribing while messages are queued for it) and after a
// broker restart.
func TestEndToEndPersistentSessions(t *testing.T) {
	b := startAuthBroker(t)

	t.Run("reconnect", func(t *testing.T) {
		id := []string{"-V", "mqttv311", "-c", "-i", "e2e-persist", "-q", "1", "-t", "e2e/persist"}
		subscribe(t, append(append(b.auth, id...), "-E")...).wait(t)
		for i := range 3 {
			publish(t, append(b.auth, "-q", "1", "-t", "e2e/persist", "-m", fmt.Sprintf("p%d", i))...)
		}
		// The session's queued messages may come before the SUBACK of the
		// repeated subscription, and -C 3 exits on them: do not wait for it.
		sub := startSub(t, append(append(b.auth, id...), "-v", "-C", "3", "-W", "30")...)
		<-sub.done
		if got := strings.Join(messages(sub.out.String()), "\n"); got != "e2e/persist p0\ne2e/persist p1\ne2e/persist p2" {
			t.Fatalf("after reconnecting, mosquitto_sub:\n%s", sub.out.String())
		}
	})

	t.Run("restart", b.restartKeepsSession)
}

func TestEndToEndBadConfigExitCodes(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad.yaml", "storage:\n  sync: sometimes\n")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"check", "-c", bad}, 1, bad + `:2: storage.sync: must be always, interval or never (got "sometimes")`},
		{[]string{"run", "-c", bad}, 1, bad + ":2: storage.sync"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"passwd", "-D", filepath.Join(dir, "nofile"), "u"}, 1, "no such file"},
	} {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.code || !strings.Contains(string(out), c.want) {
			t.Errorf("edgemq %v: exit %d, output %q; want exit %d and %q", c.args, code, out, c.code, c.want)
		}
	}
}

// TestEndToEndReloadOnSIGHUP: edgemq run reloads the password file on
// SIGHUP (a new user gets in, the broker keeps running); a broken password
// file on the next SIGHUP is refused with every problem logged, and the
// running configuration stays.
func TestEndToEndReloadOnSIGHUP(t *testing.T) {
	b := startAuthBroker(t)
	passwd := filepath.Join(filepath.Dir(b.cfg), "passwd")
	if out, err := b.command("passwd", "-b", passwd, "newcomer", "pw2").CombinedOutput(); err != nil {
		t.Fatalf("edgemq passwd: %v\n%s", err, out)
	}
	newcomer := []string{"-h", "127.0.0.1", "-p", b.port, "-u", "newcomer", "-P", "pw2", "-t", "e2e/reload", "-m", "x"}
	if out, err := exec.Command("mosquitto_pub", newcomer...).CombinedOutput(); err == nil {
		t.Fatalf("newcomer got in before the reload: %s", out)
	}
	if err := b.d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b.d.stderr, b.d.done, "configuration reloaded")
	publish(t, newcomer...)

	if err := os.WriteFile(passwd, []byte("device:not-a-hash\n#admin:x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b.d.stderr, b.d.done, "reload refused: the running configuration stays")
	publish(t, newcomer...) // still in force
	b.roundTrip(t, "mqttv311", "1")
	b.stop(t)
	if log := b.d.stderr.String(); !strings.Contains(log, "passwd:1:") {
		t.Errorf("the refused reload does not name the bad line:\n%s", log)
	}
}
