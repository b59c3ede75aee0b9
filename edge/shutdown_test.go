package edge_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/edge"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestHTTP: /healthz, /readyz and /metrics with the edgemq_ families.
func TestHTTP(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	base := "http://" + tb.HTTPAddr().String()
	if code, _ := httpGet(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	if code, body := httpGet(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d %s", code, body)
	}
	connectV5(t, dialNet(t, "tcp", tb.Addr("tcp").String(), nil), v5Opts{id: "m"})
	code, body := httpGet(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, name := range []string{
		"edgemq_mqtt_connections 1",
		"edgemq_mqtt_messages_received_total",
		"edgemq_mqtt_messages_sent_total",
		"edgemq_mqtt_received_bytes_total",
		"edgemq_mqtt_sent_bytes_total",
		"edgemq_mqtt_inflight_messages",
		"edgemq_mqtt_dropped_messages_total",
		"edgemq_mqtt_slow_consumer_disconnects_total",
		"edgemq_auth_failures_total",
		"edgemq_acl_denials_total",
		"edgemq_listener_accepted_connections_total",
	} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
	if code, _ := httpGet(t, base+"/nothing"); code != http.StatusNotFound {
		t.Errorf("/nothing: %d", code)
	}
}

// TestShutdownBatches: clients are disconnected in batches over the grace
// period, v5 ones with DISCONNECT 0x8B; /readyz turns 503 while it runs;
// afterwards nothing listens.
func TestShutdownBatches(t *testing.T) {
	cfg := testConfig(t)
	cfg.Shutdown.BatchSize = 2
	cfg.Shutdown.Grace = 900 * time.Millisecond
	reg := prometheus.NewRegistry()
	b, err := edge.New(cfg, edge.Options{Logger: testLogger(t), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr := b.Addr("tcp").String()
	var clients []*v5Client
	for i := range 5 {
		c, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "sd" + string(rune('a'+i))})
		clients = append(clients, c)
	}
	v3 := dialRaw(t, addr, 4)
	v3.connect("sd-v3", true, 30)
	base := "http://" + b.HTTPAddr().String()

	var wg sync.WaitGroup
	var shutdownErr error
	start := time.Now()
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownErr = b.Shutdown(ctx)
	}()
	// 6 clients in batches of 2: three batches, 300 ms apart.
	eventually(t, "/readyz 503", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	var times []time.Duration
	for _, c := range clients {
		select {
		case d := <-c.disc:
			if d.ReasonCode != 0x8B {
				t.Errorf("DISCONNECT reason %#x, want 0x8B", d.ReasonCode)
			}
			times = append(times, time.Since(start))
		case <-time.After(5 * time.Second):
			t.Fatal("client got no DISCONNECT")
		}
	}
	if !v3.closed(5 * time.Second) {
		t.Error("v3 client still connected")
	}
	wg.Wait()
	if shutdownErr != nil {
		t.Fatalf("Shutdown: %v", shutdownErr)
	}
	t.Logf("disconnects at %v", times)
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("listener still accepts after Shutdown")
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := b.Start(context.Background()); !errors.Is(err, edge.ErrStopped) {
		t.Errorf("Start after Shutdown: %v", err)
	}
}

// TestShutdownDeadline: a context that ends cuts the batches short.
func TestShutdownDeadline(t *testing.T) {
	cfg := testConfig(t)
	cfg.Shutdown.BatchSize = 1
	cfg.Shutdown.Grace = time.Hour
	b, err := edge.New(cfg, edge.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		connectV5(t, dialNet(t, "tcp", b.Addr("tcp").String(), nil), v5Opts{id: "dl" + string(rune('a'+i))})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.Shutdown(ctx) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown ignored its context")
	}
}

// TestRun: Run serves until its context ends, then shuts down.
func TestRun(t *testing.T) {
	cfg := testConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- edge.Run(ctx, cfg, edge.Options{Logger: testLogger(t)}) }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}
