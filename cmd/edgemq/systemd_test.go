package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHealthURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:8080":   "http://127.0.0.1:8080/healthz",
		"0.0.0.0:8080":     "http://127.0.0.1:8080/healthz",
		":8080":            "http://127.0.0.1:8080/healthz",
		"[::]:8080":        "http://[::1]:8080/healthz",
		"gw.example:9000":  "http://gw.example:9000/healthz",
		"[fe80::1%2]:8080": "http://[fe80::1%2]:8080/healthz",
	} {
		if got := healthURL(in); got != want {
			t.Errorf("healthURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// brokerConfig writes a config for an anonymous broker on free loopback
// ports and returns its path and HTTP address.
func brokerConfig(t *testing.T) (path, httpAddr string) {
	t.Helper()
	dir := t.TempDir()
	httpAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	path = writeFile(t, dir, "edgemq.yaml", fmt.Sprintf(`
listeners:
  - {type: tcp, address: "127.0.0.1:0"}
http:
  address: %s
auth:
  allow_anonymous: true
storage:
  dir: %s
shutdown:
  grace: 0s
`, httpAddr, filepath.Join(dir, "data")))
	return path, httpAddr
}

// TestSystemdNotify runs the broker as systemd would with Type=notify and
// WatchdogSec: READY=1 once it listens, WATCHDOG=1 pings while its /healthz
// answers, STOPPING=1 at SIGTERM (here: the context's end).
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", fmt.Sprint(os.Getpid()))
	cfg, _ := brokerConfig(t)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stderr syncBuffer
	go func() { done <- run(ctx, []string{"run", "-c", cfg}, nil, &bytes.Buffer{}, &stderr) }()
	read := func() string {
		t.Helper()
		buf := make([]byte, 256)
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v\n%s", err, stderr.String())
		}
		return string(buf[:n])
	}
	if got := read(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	for range 3 {
		if got := read(); got != "WATCHDOG=1" {
			t.Fatalf("notification %q, want WATCHDOG=1", got)
		}
	}
	cancel()
	for {
		if got := read(); got == "STOPPING=1" {
			break
		} else if got != "WATCHDOG=1" {
			t.Fatalf("notification %q, want STOPPING=1", got)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestHealthCommand: `edgemq health -c FILE` asks the http.address of FILE
// and succeeds while the broker runs; it fails once the broker has stopped,
// and for a config without an HTTP side.
func TestHealthCommand(t *testing.T) {
	cfg, httpAddr := brokerConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "-c", cfg}, nil, &bytes.Buffer{}, &bytes.Buffer{}) }()
	var out bytes.Buffer
	deadline := time.Now().Add(10 * time.Second)
	for {
		out.Reset()
		err := run(context.Background(), []string{"health", "-c", cfg}, nil, &out, &out)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("edgemq health never succeeded: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if want := "ok http://" + httpAddr + "/healthz\n"; out.String() != want {
		t.Errorf("edgemq health printed %q, want %q", out.String(), want)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"health", "-c", cfg, "-timeout", "1s"}, nil, &out, &out); err == nil {
		t.Error("edgemq health succeeded with the broker stopped")
	}
	noHTTP := writeFile(t, t.TempDir(), "nohttp.yaml", "http:\n  address: \"\"\n")
	if err := run(context.Background(), []string{"health", "-c", noHTTP}, nil, &out, &out); err == nil || !strings.Contains(err.Error(), "disables the HTTP side") {
		t.Errorf("edgemq health on a config without HTTP: %v", err)
	}
}
