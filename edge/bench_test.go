package edge_test

import (
	"context"
	"io"
	"log/slog"
	"runtime/metrics"
	"slices"
	"testing"
	"time"

	"github.com/edgemq/edgemq/edge"
)

// benchBroker is a broker for benchmarks: quiet, on port 0, with the log in
// a temporary directory under the given sync policy.
func benchBroker(b *testing.B, sync string, tune func(*edge.Config)) *edge.Broker {
	b.Helper()
	cfg := edge.DefaultConfig()
	cfg.Listeners = []edge.ListenerConfig{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0"}, {Name: "ws", Type: "ws", Address: "127.0.0.1:0", Path: "/mqtt"}}
	cfg.HTTP.Address = ""
	cfg.Storage.Dir = b.TempDir()
	cfg.Storage.Sync = sync
	if tune != nil {
		tune(&cfg)
	}
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
		_ = br.Shutdown(ctx)
	})
	return br
}

// BenchmarkPublishQoS1 is one publisher's QoS 1 round trip (PUBLISH to
// PUBACK, 1 KiB) with one subscriber taking every message, over TCP or
// WebSocket. Reports p50/p99 PUBACK latency and the goroutines started
// per message (the process's, test clients included: a wake-up of the
// scheduler each, the cost of a message at low rate).
func BenchmarkPublishQoS1(b *testing.B) {
	for _, sync := range []string{"never", "always"} {
		for _, network := range []string{"tcp", "ws"} {
			b.Run(network+"/sync="+sync, func(b *testing.B) {
				br := benchBroker(b, sync, nil)
				addr := br.Addr(network).String()
				sub, _ := connectV5(b, dialNet(b, network, addr, nil), v5Opts{id: "bench-sub"})
				sub.subscribe(b, "bench/t", 1)
				pub, _ := connectV5(b, dialNet(b, network, addr, nil), v5Opts{id: "bench-pub"})
				body := make([]byte, 1024)
				done := make(chan struct{})
				go func() {
					defer close(done)
					for range b.N {
						<-sub.msgs
					}
				}()
				lat := make([]time.Duration, 0, b.N)
				b.SetBytes(int64(len(body)))
				created := goroutinesCreated()
				b.ResetTimer()
				for range b.N {
					start := time.Now()
					if _, err := pub.publish(b, "bench/t", 1, false, body); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(start))
				}
				<-done
				b.StopTimer()
				b.ReportMetric(float64(goroutinesCreated()-created)/float64(b.N), "goroutines/op")
				reportLatency(b, lat)
			})
		}
	}
}

// BenchmarkPublishQoS1StuckSubscriber is BenchmarkPublishQoS1 with a second
// subscriber that never reads: the publisher's PUBACK latency should not
// move beyond the write timeout (300 ms here).
func BenchmarkPublishQoS1StuckSubscriber(b *testing.B) {
	br := benchBroker(b, "never", func(c *edge.Config) {
		c.Limits.WriteTimeout = 300 * time.Millisecond
		c.Limits.MaxInflight = 65535
	})
	addr := br.Addr("tcp").String()
	stuckSubscriber(b, "tcp", addr, "bench-stuck", "slow/t")
	pub, _ := connectV5(b, dialNet(b, "tcp", addr, nil), v5Opts{id: "bench-pub"})
	body := make([]byte, 1024)
	lat := make([]time.Duration, 0, b.N)
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := pub.publish(b, "slow/t", 1, false, body); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	reportLatency(b, lat)
}

// goroutinesCreated is how many goroutines the process started so far.
func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
}
