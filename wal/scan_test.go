package wal_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgemq/edgemq/wal"
)

// Scan reads the records of a log that is open (a running broker's),
// across segments, from any offset, and Cursors reads its cursor table.
func TestScanOpenLog(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.SegmentSize = 4 << 10
	l := mustOpen(t, dir, cfg)
	defer l.Close()
	appendN(t, l, 1, 300)
	c, err := l.Cursor("bridge/x/1")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Commit(120); err != nil {
		t.Fatal(err)
	}
	rep, err := wal.Check(dir)
	if err != nil {
		t.Fatal(err)
	}
	cursors, err := wal.Cursors(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Segments < 3 || cursors["bridge/x/1"] != 120 {
		t.Fatalf("%d segments, cursors %v; want several, bridge/x/1 at 120", rep.Segments, cursors)
	}
	next := uint64(120)
	err = wal.Scan(dir, 120, func(off uint64, r []byte) error {
		if off != next || !bytes.Equal(r, rec(off)) {
			t.Fatalf("record %d (%q), want %d", off, r, next)
		}
		next++
		return nil
	})
	if err != nil || next != 301 {
		t.Fatalf("scan ended at %d with %v, want 301 and nil", next, err)
	}
}

// Scan of a log whose last segment ends in a torn record (a write in
// flight in the broker, or cut by a crash) returns the records before it
// and no error; an older segment cut inside a record is a *CorruptError.
func TestScanTornTail(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.SegmentSize = 4 << 10
	l := mustOpen(t, dir, cfg)
	appendN(t, l, 1, 300)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(dir, strings.Repeat("[0-9]", 20)))
	if err != nil || len(segs) < 3 {
		t.Fatalf("segments %v %v, want several", segs, err)
	}
	scan := func() (uint64, error) {
		next := uint64(1)
		err := wal.Scan(dir, 1, func(off uint64, r []byte) error {
			if off != next || !bytes.Equal(r, rec(off)) {
				t.Fatalf("record %d (%q), want %d", off, r, next)
			}
			next++
			return nil
		})
		return next, err
	}
	tear := func(path string) {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// The first entry's first half, after the segment's last entry.
		if err := os.WriteFile(path, append(data, data[:len(rec(1))/2]...), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	tear(segs[len(segs)-1])
	if next, err := scan(); err != nil || next != 301 {
		t.Fatalf("torn tail: scan ended at %d with %v, want 301 and nil", next, err)
	}
	// An older segment cut inside its last record.
	if fi, err := os.Stat(segs[0]); err != nil || os.Truncate(segs[0], fi.Size()-3) != nil {
		t.Fatal(err)
	}
	var ce *wal.CorruptError
	if next, err := scan(); !errors.As(err, &ce) || ce.Segment != filepath.Base(segs[0]) {
		t.Fatalf("torn older segment: scan ended at %d with %v, want a *CorruptError in %s", next, err, filepath.Base(segs[0]))
	}
}

// Scan beside a writer that gives up a batch which had started a segment:
// Scan lists the directory while that segment exists; the writer then
// removes it, cuts the old tail back, and the next batch writes its holes
// and records there again (still in flight when Scan reads it). What Scan
// read is not damage: it returns every record, and no error.
func TestScanWhileAFailedBatchIsUndone(t *testing.T) {
	for _, tc := range []struct {
		name string
		gone func(tailBase uint64) uint64 // the removed segment's base
	}{
		// The batch wrote 301-309 into the old tail and started a segment
		// at 310: the next batch's hole at 301, in flight, looks like an
		// older segment's torn record.
		{"torn record before the removed segment", func(uint64) uint64 { return 310 }},
		// The old tail holds records past the removed segment's base.
		{"records past the removed segment's base", func(b uint64) uint64 { return b + 20 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig()
			cfg.SegmentSize = 4 << 10
			l := mustOpen(t, dir, cfg)
			appendN(t, l, 1, 300)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			segs, err := filepath.Glob(filepath.Join(dir, strings.Repeat("[0-9]", 20)))
			if err != nil || len(segs) < 3 {
				t.Fatalf("segments %v %v, want several", segs, err)
			}
			tail := segs[len(segs)-1]
			var base uint64
			if _, err := fmt.Sscanf(filepath.Base(tail), "%d", &base); err != nil {
				t.Fatal(err)
			}
			gone := tc.gone(base)
			created := filepath.Join(dir, fmt.Sprintf("%020d", gone))
			if err := os.WriteFile(created, nil, 0o640); err != nil {
				t.Fatal(err)
			}
			listed := false
			fs := wal.FS{ReadDir: func(name string) ([]os.DirEntry, error) {
				ents, err := os.ReadDir(name)
				if !listed {
					listed = true
					// The batch is undone, and the next one is being
					// written into the old tail.
					if err := os.Remove(created); err != nil {
						t.Fatal(err)
					}
					data, err := os.ReadFile(tail)
					if err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(tail, append(data, data[:len(rec(1))/2]...), 0o640); err != nil {
						t.Fatal(err)
					}
				}
				return ents, err
			}}
			next := uint64(1)
			err = wal.ScanFS(dir, fs, 1, func(off uint64, r []byte) error {
				if off != next || !bytes.Equal(r, rec(off)) {
					t.Fatalf("record %d (%q), want %d", off, r, next)
				}
				next++
				return nil
			})
			if err != nil || next != 301 {
				t.Fatalf("scan ended at %d with %v, want 301 and nil", next, err)
			}
		})
	}
}

// An older segment that ends at a record's end but short of the next
// segment's base (its last records lost) is damage for Scan as it is for
// Check: Scan does not go on at the next segment as if the records in
// between never were.
func TestScanOlderSegmentEndsEarly(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.SegmentSize = 4 << 10
	l := mustOpen(t, dir, cfg)
	appendN(t, l, 1, 300)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(dir, strings.Repeat("[0-9]", 20)))
	if err != nil || len(segs) < 3 {
		t.Fatalf("segments %v %v, want several", segs, err)
	}
	// The first segment as a log of only its first 5 records has it.
	short := t.TempDir()
	l = mustOpen(t, short, cfg)
	appendN(t, l, 1, 5)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(short, filepath.Base(segs[0])))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(segs[0], data, 0o640); err != nil {
		t.Fatal(err)
	}
	var ce *wal.CorruptError
	if _, err := wal.Check(dir); !errors.As(err, &ce) {
		t.Fatalf("check: %v, want a *CorruptError", err)
	}
	next := uint64(1)
	err = wal.Scan(dir, 1, func(off uint64, r []byte) error {
		if off != next || !bytes.Equal(r, rec(off)) {
			return fmt.Errorf("record %d, want %d", off, next)
		}
		next++
		return nil
	})
	if !errors.As(err, &ce) || ce.Segment != filepath.Base(segs[0]) || ce.Offset != 6 || next != 6 {
		t.Fatalf("scan ended at %d with %v, want 6 and a *CorruptError at offset 6 in %s", next, err, filepath.Base(segs[0]))
	}
}
