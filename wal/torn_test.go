package wal_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/edgemq/edgemq/wal"
)

// segmentFiles returns the segment file paths of dir, oldest first.
func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "[0-9]*"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range m {
		if len(filepath.Base(p)) == 20 {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func writeLog(t *testing.T, dir string, cfg wal.Config, n uint64) {
	t.Helper()
	l := mustOpen(t, dir, cfg)
	for i := uint64(1); i <= n; i++ {
		if _, err := l.AppendAsync(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.WaitDurable(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestTornTailEveryByte cuts the last segment at every byte of its last two
// records: Open keeps the good prefix, and an append after the repair
// survives the next reopen.
func TestTornTailEveryByte(t *testing.T) {
	src := t.TempDir()
	cfg := testConfig()
	cfg.SegmentSize = 8 << 10
	const n = 100
	writeLog(t, src, cfg, n)
	segs := segmentFiles(t, src)
	lastSeg := segs[len(segs)-1]
	data, err := os.ReadFile(lastSeg)
	if err != nil {
		t.Fatal(err)
	}
	// Size of the last two records on disk: find where they start by
	// reading the file back with the log.
	lastTwo := len(rec(n)) + len(rec(n-1)) + 2*(5+1)
	for cut := len(data) - lastTwo; cut < len(data); cut++ {
		dir := t.TempDir()
		for _, p := range segs {
			b, _ := os.ReadFile(p)
			if p == lastSeg {
				b = b[:cut]
			}
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o640); err != nil {
				t.Fatal(err)
			}
		}
		l := mustOpen(t, dir, cfg)
		last := l.LastOffset()
		if last != n-1 && last != n-2 {
			t.Fatalf("cut at %d: last offset %d, want %d or %d", cut, last, n-2, n-1)
		}
		for i := uint64(1); i <= last; i++ {
			if got, err := l.Read(i); err != nil || !bytes.Equal(got, rec(i)) {
				t.Fatalf("cut at %d: read %d: %v", cut, i, err)
			}
		}
		off, err := l.Append(context.Background(), []byte("after the repair"))
		if err != nil || off != last+1 {
			t.Fatalf("cut at %d: append: %d %v", cut, off, err)
		}
		l.Close()
		l = mustOpen(t, dir, cfg)
		got, err := l.Read(off)
		if err != nil || string(got) != "after the repair" {
			t.Fatalf("cut at %d: after reopen: %q %v", cut, got, err)
		}
		l.Close()
	}
}

// TestGarbageTail: zero fill (what a power cut can leave) and random bytes
// after the last record are cut at Open, with the count in Stats.
func TestGarbageTail(t *testing.T) {
	for name, tail := range map[string][]byte{
		"zeros":   make([]byte, 4096),
		"garbage": bytes.Repeat([]byte{0x93, 0x01, 0xff, 0x42}, 300),
		"one0x80": {0x80},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig()
			writeLog(t, dir, cfg, 50)
			segs := segmentFiles(t, dir)
			f, err := os.OpenFile(segs[len(segs)-1], os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write(tail)
			f.Close()
			rep, err := wal.Check(dir)
			if err != nil || rep.TornTail == nil || rep.TornTail.Bytes != int64(len(tail)) {
				t.Fatalf("check: %+v %v", rep, err)
			}
			l := mustOpen(t, dir, cfg)
			defer l.Close()
			if l.LastOffset() != 50 {
				t.Fatalf("last offset %d, want 50", l.LastOffset())
			}
			if s := l.Stats(); s.TornBytes != int64(len(tail)) {
				t.Fatalf("torn bytes %d, want %d", s.TornBytes, len(tail))
			}
		})
	}
}

// TestFlippedBit flips one bit in a record in the middle of the log: reads
// of that record fail with a *CorruptError naming segment and offset, never
// with wrong data; Check reports it; Repair turns it into a hole and keeps
// everything else.
func TestFlippedBit(t *testing.T) {
	for _, where := range []string{"older segment", "last segment"} {
		t.Run(where, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig()
			cfg.SegmentSize = 4 << 10
			const n = 600
			writeLog(t, dir, cfg, n)
			segs := segmentFiles(t, dir)
			if len(segs) < 3 {
				t.Fatalf("want at least 3 segments, got %d", len(segs))
			}
			seg := segs[1]
			if where == "last segment" {
				seg = segs[len(segs)-1]
			}
			data, _ := os.ReadFile(seg)
			pos := len(data) / 2
			data[pos] ^= 0x10
			os.WriteFile(seg, data, 0o640)

			rep, err := wal.Check(dir)
			var ce *wal.CorruptError
			if !errors.As(err, &ce) || ce.Segment != filepath.Base(seg) || len(rep.Damage) != 1 {
				t.Fatalf("check: %+v, %v", rep, err)
			}
			bad := ce.Offset
			if where == "last segment" {
				// Open refuses: this is not a torn tail.
				if _, err := wal.Open(dir, cfg); !errors.As(err, &ce) || ce.Offset != bad {
					t.Fatalf("open: %v, want a CorruptError at offset %d", err, bad)
				}
			} else {
				l := mustOpen(t, dir, cfg)
				got, err := l.Read(bad)
				if !errors.As(err, &ce) || ce.Offset != bad || got != nil || !errors.Is(err, wal.ErrCorrupt) {
					t.Fatalf("read %d: %q, %v", bad, got, err)
				}
				r := l.NewReader(bad - 1)
				if _, _, err := r.Next(context.Background()); err != nil {
					t.Fatal(err)
				}
				if _, _, err := r.Next(context.Background()); !errors.Is(err, wal.ErrCorrupt) {
					t.Fatalf("reader at the damage: %v", err)
				}
				if s := l.Stats(); s.CorruptReads == 0 {
					t.Fatal("corrupt read not counted")
				}
				l.Close()
			}
			rep, err = wal.Repair(dir, quietLogger())
			if err != nil || rep.LostRecords != 1 || len(rep.Repaired) != 1 {
				t.Fatalf("repair: %+v %v", rep, err)
			}
			l := mustOpen(t, dir, cfg)
			defer l.Close()
			for i := uint64(1); i <= n; i++ {
				got, err := l.Read(i)
				if i == bad {
					if !errors.Is(err, wal.ErrNotFound) {
						t.Fatalf("repaired record: %v, want ErrNotFound", err)
					}
					continue
				}
				if err != nil || !bytes.Equal(got, rec(i)) {
					t.Fatalf("read %d after repair: %v", i, err)
				}
			}
		})
	}
}
