package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/edgemq/edgemq/edge"
	"github.com/edgemq/edgemq/wal"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edgemq-e2e-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader in two goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// result is what one run of the command line gave.
type result struct {
	code           int
	stdout, stderr string
}

// runCmd runs a command line as main would and returns its exit code and output.
func runCmd(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), args, strings.NewReader(stdin), &stdout, &stderr)
	code := exitCode(err, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

func (r result) want(t *testing.T, code int, stdout, stderr []string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
	for _, s := range stdout {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout %q does not contain %q", r.stdout, s)
		}
	}
	for _, s := range stderr {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr %q does not contain %q", r.stderr, s)
		}
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVersion(t *testing.T) {
	runCmd(t, "", "version").want(t, 0, []string{"edgemq dev\n", "go     go1.", "mochi  v2."}, nil)
	runCmd(t, "", "version", "x").want(t, 2, nil, []string{"version takes no arguments"})
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		runCmd(t, "", args...).want(t, 0, []string{"edgemq check", "edgemq passwd"}, nil)
	}
	runCmd(t, "", "serve").want(t, 2, nil, []string{`unknown command "serve"`, "edgemq help"})
	runCmd(t, "", "run", "-x").want(t, 2, nil, []string{"flag provided but not defined: -x"})
	runCmd(t, "", "run", "edgemq.yaml").want(t, 2, nil, []string{"run takes no arguments"})
	runCmd(t, "", "run", "-h").want(t, 0, nil, []string{"-c FILE"})
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", "storage:\n  dir: "+filepath.Join(dir, "data")+"\n  sync: interval\n")
	runCmd(t, "", "check", "-c", good).want(t, 0, []string{good + ": OK"}, nil)
	runCmd(t, "", "check", good).want(t, 0, []string{good + ": OK"}, nil)
	runCmd(t, "", "check", "-c", "../../deploy/edgemq.example.yaml").want(t, 0, []string{"OK"}, nil)

	// Unknown keys and bad values, in one pass.
	bad := writeFile(t, dir, "bad.yaml", "storage:\n  sync: sometimes\nlog:\n  colour: red\nlisteners:\n  - type: tcp\n    address: foo\n")
	r := runCmd(t, "", "check", "-c", bad)
	r.want(t, 1, nil, []string{
		bad + ":4: log.colour: unknown field; valid: format, level\n",
		bad + `:2: storage.sync: must be always, interval or never (got "sometimes")` + "\n",
		bad + `:7: listeners[0].address: must be host:port (got "foo")` + "\n",
		bad + ": 3 problems\n",
	})
	if strings.Contains(r.stderr, "edgemq: ") {
		t.Errorf("check printed a summary error line on top of its list: %q", r.stderr)
	}

	// check goes further than the YAML: the files the config names must load.
	noPasswd := writeFile(t, dir, "nopasswd.yaml", "auth:\n  password_file: "+filepath.Join(dir, "missing")+"\n")
	runCmd(t, "", "check", noPasswd).want(t, 1, nil, []string{noPasswd + ":2: auth.password_file: ", "no such file"})
	noCert := writeFile(t, dir, "nocert.yaml", "listeners:\n  - type: tcp\n    address: 127.0.0.1:0\n    tls: {cert_file: "+filepath.Join(dir, "c.pem")+", key_file: "+filepath.Join(dir, "k.pem")+"}\n")
	runCmd(t, "", "check", noCert).want(t, 1, nil, []string{noCert + ":4: listeners[0].tls.cert_file: load certificate and key: ", "no such file"})

	// A bridge that does not check its upstream's certificate: valid, loudly.
	insecure := writeFile(t, dir, "insecure.yaml", "storage: {dir: "+filepath.Join(dir, "data")+"}\nbridges:\n  - name: central\n    upstreams: [\"mqtts://127.0.0.1:8883\"]\n    client_id: edge-1\n    tls: {insecure_skip_verify: true}\n    forward: [{filter: \"#\"}]\n")
	runCmd(t, "", "check", insecure).want(t, 0, []string{insecure + ": OK"},
		[]string{insecure + ":6: bridges[0].tls.insecure_skip_verify: warning: the upstream's certificate is not checked"})

	runCmd(t, "", "check", filepath.Join(dir, "missing.yaml")).want(t, 1, nil, []string{"missing.yaml: cannot read: ", "no such file"})
	runCmd(t, "", "check", "a", "b").want(t, 2, nil, []string{"check takes at most one config file"})
}

// TestCheckDefaults: without a file, check checks the embedded defaults and
// the log in ./data.
func TestCheckDefaults(t *testing.T) {
	t.Chdir(t.TempDir())
	runCmd(t, "", "check").want(t, 0, []string{"data/log: no log yet\n", edge.EmbeddedDefaults + ": OK\n"}, nil)
}

// TestCheckEveryStage: a file with problems of every stage at once, the
// YAML's keys and types, the values, the files it names and the log it
// points at, gets every one reported, each as file:line: field.path: reason,
// and a warning for what the broker would change at start.
func TestCheckEveryStage(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "data", "log")
	damageLog(t, logDir)
	missing := filepath.Join(dir, "missing")
	f := writeFile(t, dir, "every.yaml", `listeners:
  - type: tcp
    address: 0.0.0.0:1883
  - type: tcp
    address: nowhere
    tls:
      cert_file: `+missing+`.crt
      key_file: `+missing+`.key
limits:
  max_clients: lots
  max_inflight: 0
log:
  colour: red
storage:
  dir: `+filepath.Join(dir, "data")+`
  sync: sometimes
`)
	r := runCmd(t, "", "check", "-c", f)
	r.want(t, 1, nil, []string{
		f + `:10: limits.max_clients: want an integer (got "lots")` + "\n",
		f + ":13: log.colour: unknown field; valid: format, level\n",
		f + `:5: listeners[1].address: must be host:port (got "nowhere")` + "\n",
		f + ":11: limits.max_inflight: must be between 1 and 65535 (got 0)\n",
		f + `:16: storage.sync: must be always, interval or never (got "sometimes")` + "\n",
		f + ":7: listeners[1].tls.cert_file: load certificate and key: open " + missing + ".crt: no such file or directory\n",
		f + ":15: storage.dir: log " + filepath.Join(dir, "data") + ": ",
		f + ":3: listeners[0].address: warning: moved to 127.0.0.1:1883 at start: no authentication configured",
		f + ": 7 problems\n",
	})
	r.want(t, 1, []string{logDir + ": ", "damaged at byte"}, nil)
	if n := strings.Count(r.stderr, "\n"); n != 9 {
		t.Errorf("stderr has %d lines, want 9 (7 problems, 1 warning, the count):\n%s", n, r.stderr)
	}
}

// damageLog writes a log of several segments in dir and flips a bit in the
// middle of an older one: damage that only a check finds.
func damageLog(t *testing.T, dir string) {
	t.Helper()
	cfg := wal.DefaultConfig()
	cfg.SegmentSize = 64 << 10
	cfg.Logger = slog.New(slog.DiscardHandler)
	l, err := wal.Open(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := bytes.Repeat([]byte("x"), 1000)
	for range 200 {
		if _, err := l.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "0*"))
	if len(segs) < 2 {
		t.Fatalf("want 2 segments or more, got %v", segs)
	}
	data, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x10
	if err := os.WriteFile(segs[0], data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestPasswd(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "passwd")
	runCmd(t, "", "passwd", "-b", file, "alice", "s3cret").want(t, 0, nil, nil)
	runCmd(t, "hunter2\n", "passwd", file, "bob").want(t, 0, nil, nil)
	runCmd(t, "no-newline", "passwd", file, "carol").want(t, 0, nil, nil)
	runCmd(t, "", "passwd", file, "dave").want(t, 1, nil, []string{"edgemq: passwd: empty password"})
	pw, err := edge.LoadPasswordFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !pw.Check("alice", []byte("s3cret")) || !pw.Check("bob", []byte("hunter2")) || !pw.Check("carol", []byte("no-newline")) {
		t.Fatalf("passwords not set as given: %v", pw)
	}
	if _, ok := pw["dave"]; ok {
		t.Fatal("dave was added with an empty password")
	}

	runCmd(t, "", "passwd", "-D", file, "bob").want(t, 0, nil, nil)
	runCmd(t, "", "passwd", "-D", file, "bob").want(t, 1, nil, []string{"passwd: no such user"})
	if pw, _ = edge.LoadPasswordFile(file); len(pw) != 2 {
		t.Fatalf("after -D bob: %d users, want 2", len(pw))
	}

	runCmd(t, "", "passwd", file).want(t, 2, nil, []string{"edgemq passwd [-D] FILE USER"})
	runCmd(t, "", "passwd", "-b", file, "x").want(t, 2, nil, []string{"edgemq passwd -b FILE USER PASSWORD"})
	runCmd(t, "", "passwd", "-b", "-D", file, "x", "y").want(t, 2, nil, []string{"-b and -D together"})
	runCmd(t, "", "passwd", "-b", file, "a:b", "x").want(t, 1, nil, []string{`username "a:b": holds ':'`})
	// A username the file could not give back as it is: refused, and the
	// file keeps its users.
	runCmd(t, "", "passwd", "-b", file, "#", "x").want(t, 1, nil, []string{`username "#": starts with '#'`})
	runCmd(t, "", "passwd", "-b", file, " bob", "x").want(t, 1, nil, []string{`username " bob": starts or ends with a blank`})
	if pw, err := edge.LoadPasswordFile(file); err != nil || len(pw) != 2 {
		t.Fatalf("after refused usernames: %d users, %v", len(pw), err)
	}
}

func TestRunBadConfig(t *testing.T) {
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad.yaml", "listeners:\n  - type: udp\n    address: 127.0.0.1:0\n")
	// The same format as edgemq check: one problem a line, no prefix.
	r := runCmd(t, "", "run", "-c", bad)
	r.want(t, 1, nil, []string{bad + `:2: listeners[0].type: must be tcp or ws (got "udp")` + "\n"})
	if strings.Contains(r.stderr, "edgemq: ") {
		t.Errorf("run put a prefix on the problem list: %q", r.stderr)
	}
	runCmd(t, "", "-c", bad).want(t, 1, nil, []string{"listeners[0].type"})
	runCmd(t, "", "run", "-c", filepath.Join(dir, "missing.yaml")).want(t, 1, nil, []string{"no such file"})
	// A broken YAML file gets its line.
	broken := writeFile(t, dir, "broken.yaml", "storage:\n  dir: [unclosed\n")
	runCmd(t, "", "run", "-config", broken).want(t, 1, nil, []string{broken + ":"})
}

// testConfig is a config on free loopback ports with its log in dir.
func testConfig(dir string) string {
	return `
listeners:
  - {type: tcp, address: "127.0.0.1:0"}
  - {type: ws, address: "127.0.0.1:0"}
http:
  address: 127.0.0.1:0
storage:
  dir: ` + filepath.Join(dir, "data") + `
shutdown:
  grace: 1s
log:
  format: json
`
}

func TestRunUntilCancelled(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "edgemq.yaml", testConfig(dir))
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	var stderr syncBuffer
	done := make(chan struct{})
	var err error
	go func() {
		err = run(ctx, []string{"run", "-c", cfg}, strings.NewReader(""), &bytes.Buffer{}, &stderr)
		close(done)
	}()

	waitFor(t, &stderr, done, `"msg":"listening"`)
	cancel(errors.New("received terminated"))
	select {
	case <-done:
		if err != nil {
			t.Fatalf("run after cancel = %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after its context was cancelled")
	}
	for _, s := range []string{`"msg":"edgemq starting"`, `"msg":"shutting down gracefully; a second signal exits at once","cause":"received terminated"`, `"msg":"edgemq exited cleanly"`} {
		if !strings.Contains(stderr.String(), s) {
			t.Errorf("log does not contain %s:\n%s", s, stderr.String())
		}
	}
}

// waitFor waits until out contains s, failing if done is closed first.
func waitFor(t *testing.T, out interface{ String() string }, done <-chan struct{}, s string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), s) {
		select {
		case <-done:
			if !strings.Contains(out.String(), s) {
				t.Fatalf("exited before writing %s:\n%s", s, out.String())
			}
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s in:\n%s", s, out.String())
		}
	}
}

func TestHandleSignals(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 2)
	exited := make(chan int, 1)
	var stderr syncBuffer
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		handleSignals(sigs, cancel, &stderr, func(code int) { exited <- code })
	}()

	sigs <- syscall.SIGTERM
	<-ctx.Done()
	if got := context.Cause(ctx).Error(); got != "received terminated" {
		t.Errorf("cause = %q", got)
	}
	select {
	case code := <-exited:
		t.Fatalf("exit(%d) after one signal", code)
	default:
	}
	sigs <- syscall.SIGINT
	if code := <-exited; code != 130 {
		t.Errorf("exit code after a second signal = %d, want 130", code)
	}
	<-finished
	if !strings.Contains(stderr.String(), "second signal (interrupt): exiting at once") {
		t.Errorf("stderr = %q", stderr.String())
	}
}

func TestExitCode(t *testing.T) {
	var b bytes.Buffer
	for _, c := range []struct {
		err  error
		code int
	}{
		{nil, 0}, {errReported, 1}, {errors.New("x"), 1},
	} {
		if got := exitCode(c.err, &b); got != c.code {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.code)
		}
	}
}
