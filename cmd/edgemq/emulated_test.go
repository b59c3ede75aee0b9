package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestEmulatedARM proves the ARM binaries of `make dist`, not only compiles
// them: each runs under qemu-user (Debian's qemu-user-static) on the CPU of
// a gateway it is meant for, and native Mosquitto clients talk to it over
// loopback. It makes a password file and checks its config with the
// emulated binary, publishes and receives QoS 1 and QoS 2 over MQTT 3.1.1
// and 5, reads /healthz (also through `edgemq health`) and /metrics, lives
// through a SIGHUP, keeps a persistent session across a SIGTERM and a
// restart (restartKeepsSessionNoResubscribe), and exits 0 on SIGTERM.
// .ci/run runs it after make dist:
//
//	EDGEMQ_DIST=dist go test ./cmd/edgemq -run TestEmulatedARM -v
func TestEmulatedARM(t *testing.T) {
	dist := os.Getenv("EDGEMQ_DIST")
	if dist == "" {
		t.Skip("EDGEMQ_DIST (the make dist directory) not set")
	}
	needMosquittoClients(t)
	for _, a := range []struct{ arch, qemu, cpu string }{
		{"arm64", "qemu-aarch64-static", "cortex-a53"}, // Raspberry Pi 3, 64-bit OS
		{"armv7", "qemu-arm-static", "cortex-a7"},      // Raspberry Pi 2, 32-bit
		{"armv6", "qemu-arm-static", "arm1176"},        // Raspberry Pi Zero and 1
	} {
		t.Run(a.arch, func(t *testing.T) {
			bins, err := filepath.Glob(filepath.Join(dist, "edgemq-*-linux-"+a.arch))
			if err != nil || len(bins) != 1 {
				t.Fatalf("want one edgemq-*-linux-%s in %s, found %v", a.arch, dist, bins)
			}
			qemu, err := exec.LookPath(a.qemu)
			if err != nil {
				t.Fatalf("%s: %v (Debian: apt-get install qemu-user-static; .ci/run installs it)", a.qemu, err)
			}
			start := time.Now()
			b := startAuthBrokerWith(t, []string{qemu, "-cpu", a.cpu, bins[0]})
			t.Logf("%s: password file, config check and start under %s -cpu %s in %.1f s", a.arch, a.qemu, a.cpu, time.Since(start).Seconds())

			out, err := b.command("version").Output()
			if err != nil || !strings.HasPrefix(string(out), "edgemq ") {
				t.Fatalf("edgemq version = %q, %v", out, err)
			}
			for _, c := range []struct{ version, qos string }{{"mqttv311", "1"}, {"mqttv311", "2"}, {"mqttv5", "1"}, {"mqttv5", "2"}} {
				b.roundTrip(t, c.version, c.qos)
			}
			base := fmt.Sprintf("http://127.0.0.1:%d", b.httpPort)
			if body := httpGet(t, base+"/healthz"); body != "ok\n" {
				t.Errorf("/healthz = %q", body)
			}
			if body := httpGet(t, base+"/metrics"); !strings.Contains(body, "\nedgemq_mqtt_connections ") || !strings.Contains(body, "\ngo_goroutines ") {
				t.Errorf("/metrics lacks edgemq_mqtt_connections or go_goroutines:\n%.2000s", body)
			}
			if out, err := b.command("health", "-url", base+"/healthz").CombinedOutput(); err != nil {
				t.Errorf("edgemq health: %v\n%s", err, out)
			}
			// systemctl reload sends SIGHUP: it must not end the broker.
			if err := b.d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
			if body := httpGet(t, base+"/healthz"); body != "ok\n" {
				t.Errorf("/healthz after SIGHUP = %q", body)
			}
			b.restartKeepsSessionNoResubscribe(t)
			t.Logf("%s: done in %.1f s", a.arch, time.Since(start).Seconds())
		})
	}
}

// httpGet returns the body of a 200 answer to GET url.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

// restartKeepsSessionNoResubscribe is restartKeepsSession for a device that
// reconnects its persistent session without subscribing again (paho, clean
// session off): a QoS 1 and a QoS 2 message published while it was away
// reach it after edgemq is stopped with SIGTERM (exit 0) and started again.
// It leaves the broker stopped.
//
// Not mosquitto_sub, which subscribes again at every connect: that SUBSCRIBE
// can race the resent messages and get SUBACK 0x91 (packet id in use; the
// delivery engine keeps its ids in mochi's inflight map, issue 10), which
// TestEndToEndPersistentSessions exercises natively.
func (b *authBroker) restartKeepsSessionNoResubscribe(t *testing.T) {
	t.Helper()
	got := make(chan string, 10)
	opts := paho.NewClientOptions().AddBroker("tcp://127.0.0.1:" + b.port).SetClientID("emu-restart").
		SetUsername("device").SetPassword("s3cret").SetCleanSession(false).SetAutoReconnect(false).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) })
	connect := func() paho.Client {
		t.Helper()
		c := paho.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		return c
	}
	c := connect()
	if tok := c.Subscribe("e2e/restart", 2, nil); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	c.Disconnect(250)
	publish(t, append(b.auth, "-q", "1", "-t", "e2e/restart", "-m", "r1")...)
	publish(t, append(b.auth, "-q", "2", "-t", "e2e/restart", "-m", "r2")...)
	b.stop(t)
	b.start(t)
	c = connect()
	defer c.Disconnect(250)
	for _, want := range []string{"r1", "r2"} {
		select {
		case m := <-got:
			if m != want {
				t.Fatalf("after a restart got %q, want %q", m, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("after a restart: no %q", want)
		}
	}
	c.Disconnect(250)
	b.stop(t)
}
