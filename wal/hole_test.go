package wal_test

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/edgemq/edgemq/wal"
)

// TestHoles: offsets of a failed append are never reused. WaitDurable
// reports the failure (and Resolved says it would not wait), Read returns ErrHole (an ErrNotFound) for them before and after a
// reopen, and Readers skip them.
func TestHoles(t *testing.T) {
	dir := t.TempDir()
	f := newFaults(syscall.EIO)
	l := mustOpen(t, dir, faultConfig(f))
	ctx := context.Background()
	if _, err := l.Append(ctx, []byte("one")); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.failAt["sync"] = f.calls["sync"] + 1
	f.mu.Unlock()
	off, err := l.AppendAsync([]byte("lost-a"), []byte("lost-b"))
	if err != nil || off != 2 {
		t.Fatalf("async append: %d %v", off, err)
	}
	if err := l.WaitDurable(ctx, off+1); !errors.Is(err, syscall.EIO) {
		t.Fatalf("wait durable: %v, want EIO", err)
	}
	for _, o := range []uint64{1, 2, 3} { // durable, or failed: no wait
		if !l.Resolved(o) {
			t.Errorf("Resolved(%d) = false after the failure", o)
		}
	}
	next, err := l.Append(ctx, []byte("four"))
	if err != nil || next != 4 {
		t.Fatalf("append after the failure: %d %v", next, err)
	}
	check := func(l *wal.Log) {
		t.Helper()
		for _, o := range []uint64{2, 3} {
			if _, err := l.Read(o); !errors.Is(err, wal.ErrHole) || !errors.Is(err, wal.ErrNotFound) {
				t.Fatalf("read hole %d: %v", o, err)
			}
		}
		r := l.NewReader(1)
		var got []string
		for i := 0; i < 2; i++ {
			_, rec, err := r.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, string(rec))
		}
		if got[0] != "one" || got[1] != "four" || r.Offset() != 5 {
			t.Fatalf("reader: %q, next %d", got, r.Offset())
		}
	}
	check(l)
	l.Close()
	l = mustOpen(t, dir, faultConfig(nil))
	defer l.Close()
	check(l)
	rep, err := wal.Check(dir)
	if err != nil || rep.Holes != 2 || rep.Records != 4 {
		t.Fatalf("check: %+v %v", rep, err)
	}
}

// TestStatsCounts checks that the figures for metrics move.
func TestStatsCounts(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testConfig())
	defer l.Close()
	c, _ := l.Cursor("c")
	appendN(t, l, 1, 20)
	c.Commit(11)
	s := l.Stats()
	if s.Appends != 20 || s.Fsyncs == 0 || s.FsyncSeconds.Count == 0 || s.GroupSize.Count == 0 ||
		s.AppendSeconds.Count != 20 || s.Segments != 1 || s.DiskBytes == 0 || s.FirstOffset != 1 ||
		s.LastOffset != 20 || len(s.Cursors) != 1 || s.Cursors[0].Lag != 10 {
		t.Fatalf("stats: %+v", s)
	}
	if q := s.AppendSeconds.Quantile(0.99); q <= 0 {
		t.Fatalf("p99 %v", q)
	}
	if b := s.FsyncSeconds.Buckets(); len(b) != len(s.FsyncSeconds.Bounds) {
		t.Fatalf("buckets %v", b)
	}
}
