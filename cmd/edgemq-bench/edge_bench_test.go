package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/edgemq/edgemq/edge"
)

// startEdge runs an in-process edgemq broker on a loopback port 0 for the
// benchmark and shuts it down afterwards.
func startEdge(b *testing.B, sync string) string {
	b.Helper()
	cfg := edge.DefaultConfig()
	cfg.Listeners = []edge.ListenerConfig{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0"}}
	cfg.HTTP.Address = "127.0.0.1:0"
	cfg.Storage.Dir = b.TempDir()
	cfg.Storage.Sync = sync
	cfg.Auth.AllowAnonymous = true
	br, err := edge.New(cfg, edge.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	if err := br.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := br.Shutdown(ctx); err != nil {
			b.Error(err)
		}
	})
	return br.Addr("tcp").String()
}

// benchFlow runs a flow scenario through an in-process edgemq broker, one
// b.N unit per delivered message, and reports throughput and loss. The
// generator allocates nothing per message in steady state, so allocs/op is
// the broker's (plus amortized growth of the generator's latency buffer).
func benchFlow(b *testing.B, scenario string, qos byte, pubs, subs int) {
	addr := startEdge(b, "never")
	copies := 1
	if scenario == "fanout" {
		copies = subs
	}
	count := max(1, b.N/(pubs*copies))
	b.ReportAllocs()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := runScenario(ctx, params{
		scenario: scenario, qos: qos, pubs: pubs, subs: subs, count: count,
		target: target{addr: addr, transport: "tcp", version: proto311},
		measure: func(start bool) {
			if start {
				b.ResetTimer()
			} else {
				b.StopTimer()
			}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.MsgPerSec, "msg/s")
	if r.Lost > 0 || r.Duplicated > 0 {
		b.Errorf("lost %d duplicated %d of %d", r.Lost, r.Duplicated, r.Expected)
	}
}

// BenchmarkEdgeFanin is 10 publishers into one wildcard subscriber.
func BenchmarkEdgeFanin(b *testing.B) {
	for _, q := range []byte{0, 1, 2} {
		b.Run("qos"+string('0'+rune(q)), func(b *testing.B) { benchFlow(b, "fanin", q, 10, 1) })
	}
}

// BenchmarkEdgeFanout is one publisher to 50 subscribers of one topic: the
// topic match and fan-out path.
func BenchmarkEdgeFanout(b *testing.B) {
	for _, q := range []byte{0, 1} {
		b.Run("qos"+string('0'+rune(q)), func(b *testing.B) { benchFlow(b, "fanout", q, 1, 50) })
	}
}
