package wal_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	tidwall "github.com/tidwall/wal"

	"github.com/edgemq/edgemq/wal"
)

// The benchmarks behind the README's figures:
//
//	for i in 1 2 3 4 5; do go test ./wal -run '^$' -bench . -benchtime 3s; done
//
// BenchmarkAppend reports appends/s and the latency of one Append (p50, p99,
// max, in ms) for 256-byte records: tidwall/wal's plain Write with its own
// fsync per call (the baseline, serialised by a mutex when concurrent,
// since tidwall needs the caller to assign indexes), and this package under
// each sync policy. The max latency includes every segment roll of the run
// (default 16 MiB segments: a roll every 60k records).

const benchRecord = 256

type latencies struct {
	mu  sync.Mutex
	all []time.Duration
}

func (l *latencies) add(d []time.Duration) {
	l.mu.Lock()
	l.all = append(l.all, d...)
	l.mu.Unlock()
}

func (l *latencies) report(b *testing.B, elapsed time.Duration) {
	slices.Sort(l.all)
	q := func(p float64) float64 {
		if len(l.all) == 0 {
			return 0
		}
		return float64(l.all[int(p*float64(len(l.all)-1))]) / 1e6
	}
	b.ReportMetric(float64(len(l.all))/elapsed.Seconds(), "appends/s")
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
}

// runAppenders splits b.N appends over n goroutines, timing each.
func runAppenders(b *testing.B, n int, appendOne func() error) {
	var lat latencies
	var wg sync.WaitGroup
	per := max(b.N/n, 1)
	b.ResetTimer()
	start := time.Now()
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := make([]time.Duration, 0, per)
			for i := 0; i < per; i++ {
				t0 := time.Now()
				if err := appendOne(); err != nil {
					b.Error(err)
					return
				}
				d = append(d, time.Since(t0))
			}
			lat.add(d)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	lat.report(b, elapsed)
}

func BenchmarkAppend(b *testing.B) {
	rec := make([]byte, benchRecord)
	edgemq := func(pol wal.SyncPolicy, n int) {
		b.Run(fmt.Sprintf("edgemq-%s/appenders=%d", pol, n), func(b *testing.B) {
			cfg := wal.DefaultConfig()
			cfg.Sync = pol
			cfg.Logger = quietLogger()
			l, err := wal.Open(b.TempDir(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			ctx := context.Background()
			runAppenders(b, n, func() error {
				_, err := l.Append(ctx, rec)
				return err
			})
			s := l.Stats()
			if s.Batches > 0 {
				b.ReportMetric(float64(s.Appends)/float64(s.Batches), "records/batch")
			}
			if s.RollSeconds.Count > 0 {
				b.ReportMetric(float64(s.RollMax)/1e6, "roll-max-ms")
			}
			if s.FsyncSeconds.Count > 0 {
				b.ReportMetric(s.FsyncSeconds.Quantile(0.99)*1e3, "fsync-p99-ms(bucket)")
			}
		})
	}
	// Baseline and edgemq side by side for each concurrency, so that both
	// see the same machine.
	for _, n := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("tidwall-write/appenders=%d", n), func(b *testing.B) {
			tl, err := tidwall.Open(b.TempDir(), &tidwall.Options{NoSync: false})
			if err != nil {
				b.Fatal(err)
			}
			defer tl.Close()
			var mu sync.Mutex
			var idx uint64
			runAppenders(b, n, func() error {
				mu.Lock()
				defer mu.Unlock()
				idx++
				return tl.Write(idx, rec)
			})
		})
		edgemq(wal.SyncAlways, n)
	}
	edgemq(wal.SyncInterval, 64)
	edgemq(wal.SyncNever, 64)
}

// BenchmarkOpen1GiB measures Open (and Close) of a 1 GiB log of 256-byte
// records whose last segment is almost full (Open reads and checks the last
// segment whole, so that is its worst case), then the first read in an old
// segment (which builds its index), and reports the bytes of overhead per
// record.
func BenchmarkOpen1GiB(b *testing.B) {
	dir := b.TempDir()
	cfg := wal.DefaultConfig()
	cfg.Sync = wal.SyncNever
	cfg.Logger = quietLogger()
	last, s := fillLog(b, dir, cfg, 1<<30+15<<20)
	overhead := float64(s.DiskBytes)/float64(s.LastOffset) - benchRecord
	var firstRead time.Duration
	for b.Loop() {
		l, err := wal.Open(dir, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if l.LastOffset() != last {
			b.Fatalf("last offset %d, want %d", l.LastOffset(), last)
		}
		t0 := time.Now()
		if _, err := l.Read(last / 2); err != nil {
			b.Fatal(err)
		}
		firstRead = time.Since(t0)
		l.Close()
	}
	b.ReportMetric(float64(firstRead)/1e6, "first-old-read-ms")
	b.ReportMetric(overhead, "overhead-bytes/record")
	b.ReportMetric(float64(s.DiskBytes)/(1<<30), "GiB")
}

// BenchmarkOpenAfterCrash measures Open (and Close) of a log whose tail
// (15 MiB of 256-byte records) no durable mark covers, as after a crash
// before any cursor commit: Open writes all of it again and fsyncs it,
// since after a failed fsync the page cache may hold pages no fsync writes.
// Beside it, the same Open after a clean Close, where the mark covers all.
func BenchmarkOpenAfterCrash(b *testing.B) {
	dir := b.TempDir()
	cfg := wal.DefaultConfig()
	cfg.Sync = wal.SyncNever
	cfg.Logger = quietLogger()
	last, _ := fillLog(b, dir, cfg, 15<<20)
	// Side by side: after a clean Close (the mark covers the tail) and
	// without the mark.
	for _, crash := range []bool{false, true} {
		b.Run(fmt.Sprintf("crash=%v", crash), func(b *testing.B) {
			for b.Loop() {
				if crash {
					for _, name := range []string{"cursors.0", "cursors.1"} {
						os.Remove(filepath.Join(dir, name))
					}
				}
				l, err := wal.Open(dir, cfg)
				if err != nil {
					b.Fatal(err)
				}
				if l.LastOffset() != last {
					b.Fatalf("last offset %d, want %d", l.LastOffset(), last)
				}
				l.Close()
			}
		})
	}
}

// BenchmarkRead reports reads per second over a log of 256-byte records
// spread over many segments: a Reader going through it in order, and Read
// at random offsets from 4 goroutines.
func BenchmarkRead(b *testing.B) {
	dir := b.TempDir()
	cfg := wal.DefaultConfig()
	cfg.Sync = wal.SyncNever
	cfg.SegmentSize = 1 << 20
	cfg.Logger = quietLogger()
	l, err := wal.Open(dir, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	rec := make([]byte, benchRecord)
	const n = 200000
	for i := 0; i < n; i++ {
		if _, err := l.AppendAsync(rec); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.WaitDurable(context.Background(), n); err != nil {
		b.Fatal(err)
	}
	b.Run("reader", func(b *testing.B) {
		r := l.NewReader(1)
		ctx := context.Background()
		for b.Loop() {
			if r.Offset() > n {
				r.Seek(1)
			}
			if _, _, err := r.Next(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("random-4-goroutines", func(b *testing.B) {
		b.SetParallelism(2) // 2 x GOMAXPROCS(2)
		b.RunParallel(func(pb *testing.PB) {
			x := uint64(12345)
			for pb.Next() {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				if _, err := l.Read(1 + x%n); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
}

// fillLog writes benchRecord-byte records into a new log in dir until it
// holds size bytes, closes it, and returns the last offset and the stats
// before the close.
func fillLog(b *testing.B, dir string, cfg wal.Config, size int64) (uint64, wal.Stats) {
	b.Helper()
	l, err := wal.Open(dir, cfg)
	if err != nil {
		b.Fatal(err)
	}
	rec := make([]byte, benchRecord)
	batch := make([][]byte, 256)
	for i := range batch {
		batch[i] = rec
	}
	var last uint64
	for l.Stats().DiskBytes+l.Stats().QueuedBytes < size {
		first, err := l.AppendAsync(batch...)
		if err != nil {
			b.Fatal(err)
		}
		last = first + uint64(len(batch)) - 1
	}
	if err := l.WaitDurable(context.Background(), last); err != nil {
		b.Fatal(err)
	}
	s := l.Stats()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	return last, s
}
