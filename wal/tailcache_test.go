package wal_test

import (
	"bytes"
	"context"
	"os"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/edgemq/edgemq/wal"
)

// TestReaderAtTailReadsNoFile: a reader that keeps up with the appends
// (the engine's dispatcher) takes each new record from the copy of the
// newest bytes the log keeps, without reading the file; a record older than
// that copy is read from the file; after a failed batch was undone, what
// is read is what the file holds.
func TestReaderAtTailReadsNoFile(t *testing.T) {
	var reads atomic.Int64
	cfg := testConfig()
	cfg.SegmentSize = 1 << 20
	f := newFaults(syscall.EIO)
	f.failAt["sync"] = 30
	cfg.FS = wal.FS{OpenFile: func(name string, flag int, perm os.FileMode) (wal.File, error) {
		file, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		return &countedFaultyFile{faultyFile: faultyFile{File: file, f: f}, n: &reads}, nil
	}}
	l := mustOpen(t, t.TempDir(), cfg)
	defer l.Close()
	ctx := context.Background()
	r := l.NewReader(0)
	want := map[uint64][]byte{}
	for i := uint64(1); i <= 100; i++ {
		off, err := l.Append(ctx, rec(i))
		if err != nil {
			continue // the failed fsync: a hole
		}
		want[off] = rec(i)
		got, gotRec, err := r.Next(ctx)
		if err != nil || got != off || !bytes.Equal(gotRec, rec(i)) {
			t.Fatalf("record %d: offset %d %q %v, want offset %d", i, got, gotRec, err, off)
		}
	}
	if len(want) != 99 {
		t.Fatalf("%d appends worked, want 99 (one fsync fails)", len(want))
	}
	if n := reads.Load(); n != 0 {
		t.Errorf("the reader at the tail read the file %d times, want 0", n)
	}
	if n := l.Stats().CachedReads; n < 99 {
		t.Errorf("CachedReads %d, want at least 99", n)
	}
	// Past what the copy holds, the file is read.
	big := bytes.Repeat([]byte("x"), 40<<10)
	for range 5 {
		if _, err := l.Append(ctx, big); err != nil {
			t.Fatal(err)
		}
	}
	for off, w := range want {
		got, err := l.Read(off)
		if err != nil || !bytes.Equal(got, w) {
			t.Fatalf("offset %d: %q %v, want %q", off, got, err, w)
		}
	}
	if reads.Load() == 0 {
		t.Error("old records were not read from the file")
	}
}

// countedFaultyFile counts the reads of a segment file.
type countedFaultyFile struct {
	faultyFile
	n *atomic.Int64
}

func (c *countedFaultyFile) ReadAt(p []byte, off int64) (int, error) {
	c.n.Add(1)
	return c.faultyFile.ReadAt(p, off)
}
