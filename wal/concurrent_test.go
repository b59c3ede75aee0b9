package wal_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tidwall "github.com/tidwall/wal"

	"github.com/edgemq/edgemq/wal"
)

// TestConcurrentReadersWriters runs appenders, random readers, iterating
// Readers and committing cursors at once over small segments with retention
// on. Run it with -race. Every record read is whole and sits at the offset
// its append returned.
func TestConcurrentReadersWriters(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.SegmentSize = 8 << 10
	cfg.RetentionCheck = 5 * time.Millisecond
	l := mustOpen(t, dir, cfg)
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var offsets sync.Map // offset -> id
	var nextID atomic.Uint64
	var writers, readers sync.WaitGroup
	const perWriter = 400
	for w := 0; w < 6; w++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := 0; i < perWriter; i++ {
				id := nextID.Add(1)
				var off uint64
				var err error
				if i%3 == 0 {
					off, err = l.AppendAsync(payload(id))
					if err == nil {
						err = l.WaitDurable(ctx, off)
					}
				} else {
					off, err = l.Append(ctx, payload(id))
				}
				if err != nil {
					t.Errorf("append: %v", err)
					return
				}
				offsets.Store(off, id)
			}
		}()
	}
	check := func(off uint64, got []byte) {
		if !wellFormed(got) {
			t.Errorf("offset %d: damaged record %q", off, got)
		}
		if id, ok := offsets.Load(off); ok && !bytes.Equal(got, payload(id.(uint64))) {
			t.Errorf("offset %d: record of another append", off)
		}
	}
	// Random readers.
	for r := 0; r < 4; r++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for ctx.Err() == nil {
				first, last := l.FirstOffset(), l.LastOffset()
				if last < first {
					continue
				}
				off := first + rand.Uint64N(last-first+1)
				got, err := l.Read(off)
				if errors.Is(err, wal.ErrTruncated) {
					continue
				}
				if err != nil {
					t.Errorf("read %d: %v", off, err)
					return
				}
				check(off, got)
			}
		}()
	}
	// Iterating readers, each with a cursor that holds retention back.
	for r := 0; r < 3; r++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			c, err := l.Cursor(string(rune('a' + r)))
			if err != nil {
				t.Error(err)
				return
			}
			rd := l.NewReader(c.Offset())
			prev := uint64(0)
			for {
				off, got, err := rd.Next(ctx)
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("reader: %v", err)
					}
					return
				}
				if prev != 0 && off != prev+1 {
					t.Errorf("reader skipped from %d to %d", prev, off)
				}
				prev = off
				check(off, got)
				if off%50 == 0 {
					if err := c.Commit(off + 1); err != nil {
						t.Errorf("commit: %v", err)
					}
				}
			}
		}()
	}
	writers.Wait()
	total := uint64(6 * perWriter)
	waitFor(t, func() bool {
		for _, cs := range l.Stats().Cursors {
			if cs.Offset < total-50 {
				return false
			}
		}
		return true
	})
	cancel()
	readers.Wait()
	if l.LastOffset() != total {
		t.Fatalf("last offset %d, want %d", l.LastOffset(), total)
	}
	if s := l.Stats(); s.RemovedSegments == 0 || s.Appends != total {
		t.Fatalf("stats: %+v", s)
	}
}

// TestReaderWaits: Next blocks until a record arrives, and returns when the
// context ends or the log closes.
func TestReaderWaits(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testConfig())
	r := l.NewReader(0)
	got := make(chan string, 1)
	go func() {
		_, rec, err := r.Next(context.Background())
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(rec)
	}()
	time.Sleep(10 * time.Millisecond)
	l.Append(context.Background(), []byte("hello"))
	if g := <-got; g != "hello" {
		t.Fatalf("got %q", g)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, _, err := r.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("next with a deadline: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := r.Next(context.Background())
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	l.Close()
	if err := <-done; !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("next across close: %v", err)
	}
}

// TestCloseWithAsyncAppends: Close writes what is queued, so every
// AppendAsync before it is durable after it.
func TestCloseWithAsyncAppends(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.Sync = wal.SyncNever
	l := mustOpen(t, dir, cfg)
	var last uint64
	for i := uint64(1); i <= 1000; i++ {
		off, err := l.AppendAsync(rec(i))
		if err != nil || off != i {
			t.Fatal(off, err)
		}
		last = off
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
	l = mustOpen(t, dir, cfg)
	defer l.Close()
	if l.NextOffset() != last+1 {
		t.Fatalf("next offset %d, want %d", l.NextOffset(), last+1)
	}
	if l.LastOffset() != last {
		t.Fatalf("last offset %d, want %d", l.LastOffset(), last)
	}
	if err := l.WaitDurable(context.Background(), last+5); !errors.Is(err, wal.ErrNotFound) {
		t.Fatalf("wait for an offset never handed out: %v", err)
	}
}

// TestCloseDuringLeadingAppends: appenders that may write their batches
// themselves (AppendAsyncLead), at a low rate and under load, while Close
// runs: every offset handed out is durable after Close, in a reopened log,
// and an append after Close gets ErrClosed.
func TestCloseDuringLeadingAppends(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.Sync = wal.SyncAlways
	l := mustOpen(t, dir, cfg)
	var mu sync.Mutex
	got := map[uint64]uint64{} // offset -> id
	var wg sync.WaitGroup
	for w := uint64(0); w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(1); ; i++ {
				id := w<<32 | i
				off, err := l.AppendAsyncLead(rec(id))
				if errors.Is(err, wal.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("append: %v", err)
					return
				}
				mu.Lock()
				got[off] = id
				mu.Unlock()
				if w < 2 {
					time.Sleep(500 * time.Microsecond) // a low rate: these may lead
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	l = mustOpen(t, dir, cfg)
	defer l.Close()
	for off, id := range got {
		r, err := l.Read(off)
		if err != nil || !bytes.Equal(r, rec(id)) {
			t.Fatalf("offset %d (id %x): %q, %v", off, id, r, err)
		}
	}
	if uint64(len(got)) != l.LastOffset() {
		t.Fatalf("%d offsets handed out, last offset %d", len(got), l.LastOffset())
	}
}

// TestTidwallCompatible: the segment files are tidwall/wal's binary format;
// tidwall.Open reads them, and each entry is our frame around the record.
func TestTidwallCompatible(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.SegmentSize = 4 << 10
	writeLog(t, dir, cfg, 300)
	tl, err := tidwall.Open(dir, &tidwall.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	first, _ := tl.FirstIndex()
	last, _ := tl.LastIndex()
	if first != 1 || last != 300 {
		t.Fatalf("tidwall sees %d..%d", first, last)
	}
	for i := uint64(1); i <= 300; i++ {
		e, err := tl.Read(i)
		if err != nil || !bytes.Equal(e[5:], rec(i)) {
			t.Fatalf("tidwall read %d: %q %v", i, e, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		mut  func(*wal.Config)
		want string
	}{
		{func(c *wal.Config) { c.Sync = "sometimes" }, `sync: must be always, interval or never (got "sometimes")`},
		{func(c *wal.Config) { c.SegmentSize = 100 }, "segment_size: must be between 4KiB and 1GiB (got 100)"},
		{func(c *wal.Config) { c.MaxBytes = -1 }, "max_bytes: must not be negative (got -1)"},
		{func(c *wal.Config) { c.OnFull = "panic" }, `on_full: must be refuse or drop-oldest (got "panic")`},
		{func(c *wal.Config) { c.MaxBytes = 1 << 20 }, "max_bytes: must be at least twice segment_size (got 1048576, segment_size 16777216)"},
	} {
		c := wal.DefaultConfig()
		tc.mut(&c)
		if err := c.Validate(); err == nil || err.Error() != tc.want {
			t.Errorf("got %v, want %s", err, tc.want)
		}
	}
	if err := wal.DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := wal.Open(t.TempDir(), wal.Config{Sync: "x"}); err == nil {
		t.Fatal("open with an invalid config")
	}
}
