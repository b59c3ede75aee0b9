package wal_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/edgemq/edgemq/wal"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testConfig() wal.Config {
	c := wal.DefaultConfig()
	c.Logger = quietLogger()
	return c
}

func mustOpen(t testing.TB, dir string, cfg wal.Config) *wal.Log {
	t.Helper()
	l, err := wal.Open(dir, cfg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return l
}

func rec(i uint64) []byte {
	return []byte(fmt.Sprintf("record-%06d-%s", i, bytes.Repeat([]byte{byte(i)}, int(i%37))))
}

func TestAppendReadReopen(t *testing.T) {
	for _, pol := range []wal.SyncPolicy{wal.SyncAlways, wal.SyncInterval, wal.SyncNever} {
		t.Run(string(pol), func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig()
			cfg.Sync = pol
			cfg.SegmentSize = 4 << 10
			l := mustOpen(t, dir, cfg)
			if f, la := l.FirstOffset(), l.LastOffset(); f != 1 || la != 0 {
				t.Fatalf("empty log: first %d last %d, want 1 0", f, la)
			}
			ctx := context.Background()
			for i := uint64(1); i <= 500; i++ {
				off, err := l.Append(ctx, rec(i))
				if err != nil || off != i {
					t.Fatalf("append %d: off %d err %v", i, off, err)
				}
			}
			first, err := l.Append(ctx, rec(501), rec(502), rec(503))
			if err != nil || first != 501 {
				t.Fatalf("append batch: %d %v", first, err)
			}
			check := func(l *wal.Log) {
				t.Helper()
				for i := uint64(1); i <= 503; i++ {
					got, err := l.Read(i)
					if err != nil || !bytes.Equal(got, rec(i)) {
						t.Fatalf("read %d: %q %v", i, got, err)
					}
				}
				if _, err := l.Read(504); !errors.Is(err, wal.ErrNotFound) {
					t.Fatalf("read past end: %v", err)
				}
				if _, err := l.Read(0); !errors.Is(err, wal.ErrNotFound) {
					t.Fatalf("read 0: %v", err)
				}
			}
			check(l)
			if s := l.Stats(); s.Segments < 2 {
				t.Fatalf("segments %d, want several", s.Segments)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := l.Read(1); !errors.Is(err, wal.ErrClosed) {
				t.Fatalf("read after close: %v", err)
			}
			if _, err := l.Append(ctx, []byte("x")); !errors.Is(err, wal.ErrClosed) {
				t.Fatalf("append after close: %v", err)
			}
			l = mustOpen(t, dir, cfg)
			defer l.Close()
			check(l)
			off, err := l.Append(ctx, []byte("after"))
			if err != nil || off != 504 {
				t.Fatalf("append after reopen: %d %v", off, err)
			}
			if rep, err := wal.Check(dir); err != nil || rep.LastOffset != 504 || rep.TornTail != nil {
				t.Fatalf("check: %+v %v", rep, err)
			}
		})
	}
}

// TestLocked: a second Open of the same directory, or a Repair, fails while
// the log is open, and works after Close.
func TestLocked(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testConfig())
	if _, err := wal.Open(dir, testConfig()); !errors.Is(err, wal.ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
	if _, err := wal.Repair(dir, quietLogger()); !errors.Is(err, wal.ErrLocked) {
		t.Fatalf("repair of an open log: %v", err)
	}
	if _, err := wal.Check(dir); err != nil {
		t.Fatalf("check of an open log: %v", err)
	}
	l.Close()
	l = mustOpen(t, dir, testConfig())
	l.Close()
}
