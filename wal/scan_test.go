package wal_test

import (
	"bytes"
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
