package wal_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/edgemq/edgemq/wal"
)

func appendN(t *testing.T, l *wal.Log, from, n uint64) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if _, err := l.Append(context.Background(), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCursorsDurable(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	l := mustOpen(t, dir, cfg)
	appendN(t, l, 1, 10)
	a, err := l.Cursor("session/a")
	if err != nil || a.Offset() != 1 || a.Name() != "session/a" {
		t.Fatalf("cursor: %v %v", a, err)
	}
	b, err := l.CursorFrom("bridge/up", 5)
	if err != nil || b.Offset() != 5 {
		t.Fatalf("cursor from: %v", err)
	}
	if err := a.Commit(8); err != nil {
		t.Fatal(err)
	}
	if err := a.Commit(12); !errors.Is(err, wal.ErrCursor) {
		t.Fatalf("commit beyond the log: %v", err)
	}
	if again, _ := l.Cursor("session/a"); again != a {
		t.Fatal("Cursor did not return the existing cursor")
	}
	if _, err := l.Cursor(""); !errors.Is(err, wal.ErrCursor) {
		t.Fatalf("empty name: %v", err)
	}
	c, _ := l.Cursor("gone")
	_ = c
	if err := l.DeleteCursor("gone"); err != nil {
		t.Fatal(err)
	}
	s := l.Stats()
	want := []wal.CursorStats{{Name: "bridge/up", Offset: 5, Lag: 6}, {Name: "session/a", Offset: 8, Lag: 3}}
	if !slices.Equal(s.Cursors, want) {
		t.Fatalf("cursor stats %+v, want %+v", s.Cursors, want)
	}
	l.Close()

	l = mustOpen(t, dir, cfg)
	defer l.Close()
	if got := l.Cursors(); !slices.Equal(got, []string{"bridge/up", "session/a"}) {
		t.Fatalf("cursors after reopen: %v", got)
	}
	a, _ = l.Cursor("session/a")
	b, _ = l.Cursor("bridge/up")
	if a.Offset() != 8 || b.Offset() != 5 {
		t.Fatalf("offsets after reopen: %d %d", a.Offset(), b.Offset())
	}
}

// twoCopies makes a closed log of 10 records whose cursor table holds
// cursor "c" at 4 in its older copy and at 6 in its newest.
func twoCopies(t *testing.T) (string, wal.Config) {
	dir := t.TempDir()
	cfg := testConfig()
	l := mustOpen(t, dir, cfg)
	appendN(t, l, 1, 10)
	c, _ := l.Cursor("c")
	c.Commit(4) // older copy
	c.Commit(6) // newest copy
	l.Close()
	return dir, cfg
}

// TestCursorTableTornWrite damages the newest copy of the cursor table: the
// older copy is used.
func TestCursorTableTornWrite(t *testing.T) {
	dir, cfg := twoCopies(t)
	// Find the newest copy (the larger sequence number) and damage it.
	var newest string
	var best uint64
	for i := 0; i < 2; i++ {
		p := filepath.Join(dir, "cursors."+string(rune('0'+i)))
		b, _ := os.ReadFile(p)
		if len(b) > 12 {
			seq := uint64(b[4]) | uint64(b[5])<<8 | uint64(b[6])<<16
			if seq > best {
				best, newest = seq, p
			}
		}
	}
	b, _ := os.ReadFile(newest)
	os.WriteFile(newest, b[:len(b)-3], 0o640)
	l := mustOpen(t, dir, cfg)
	defer l.Close()
	c, _ := l.Cursor("c")
	if c.Offset() != 4 {
		t.Fatalf("offset %d, want the older copy's 4", c.Offset())
	}
}

func segCount(l *wal.Log) int64 { return l.Stats().Segments }

// TestRetentionByCursor: whole segments go once every cursor is past them,
// never a record a cursor still needs; no cursors keeps everything.
func TestRetentionByCursor(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.SegmentSize = 4 << 10
	cfg.RetentionCheck = 10 * time.Millisecond
	l := mustOpen(t, dir, cfg)
	defer l.Close()
	appendN(t, l, 1, 500)
	n := segCount(l)
	if n < 4 {
		t.Fatalf("segments %d", n)
	}
	time.Sleep(50 * time.Millisecond)
	if segCount(l) != n || l.FirstOffset() != 1 {
		t.Fatal("retention removed segments with no cursor and no limit")
	}
	a, _ := l.Cursor("a")
	b, _ := l.Cursor("b")
	a.Commit(400)
	b.Commit(200)
	waitFor(t, func() bool { return l.FirstOffset() > 1 })
	if f := l.FirstOffset(); f > 200 {
		t.Fatalf("first offset %d passed cursor b at 200", f)
	}
	for i := l.FirstOffset(); i <= 500; i++ {
		if _, err := l.Read(i); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	if _, err := l.Read(1); !errors.Is(err, wal.ErrTruncated) {
		t.Fatalf("read removed: %v", err)
	}
	b.Commit(500)
	waitFor(t, func() bool { return l.FirstOffset() > 300 })
	if f := l.FirstOffset(); f > 400 {
		t.Fatalf("first offset %d passed cursor a at 400", f)
	}
	if s := l.Stats(); s.DroppedRecords != 0 || s.RemovedSegments == 0 {
		t.Fatalf("stats: %+v", s)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met in 10s")
}

// TestRetentionMaxAge removes old segments even though a cursor needs them,
// and counts the loss.
func TestRetentionMaxAge(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.SegmentSize = 4 << 10
	cfg.RetentionCheck = 10 * time.Millisecond
	cfg.MaxAge = 50 * time.Millisecond
	l := mustOpen(t, dir, cfg)
	defer l.Close()
	c, _ := l.Cursor("slow")
	appendN(t, l, 1, 300)
	waitFor(t, func() bool { return segCount(l) == 1 })
	s := l.Stats()
	if s.DroppedRecords == 0 || c.Offset() != l.FirstOffset() || s.Cursors[0].Dropped == 0 {
		t.Fatalf("stats %+v, cursor at %d, first %d", s, c.Offset(), l.FirstOffset())
	}
	// Everything still in the log reads back.
	r := l.NewReader(c.Offset())
	for off := c.Offset(); off <= l.LastOffset(); off++ {
		_, got, err := r.Next(context.Background())
		if err != nil || len(got) == 0 {
			t.Fatalf("reader at %d: %v", off, err)
		}
	}
}

// TestBudget: with MaxBytes reached and a cursor holding the data, appends
// fail with ErrFull and nothing is lost; once the cursor moves, retention
// makes room and appends work again. With FullDropOldest they never fail.
func TestBudget(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.SegmentSize = 4 << 10
	cfg.MaxBytes = 16 << 10
	l := mustOpen(t, dir, cfg)
	c, _ := l.Cursor("holder")
	var i uint64
	var err error
	for i = 1; i < 10000; i++ {
		if _, err = l.Append(context.Background(), rec(i)); err != nil {
			break
		}
	}
	if !errors.Is(err, wal.ErrFull) {
		t.Fatalf("append over budget: %v", err)
	}
	if _, err := l.AppendAsync(rec(i)); !errors.Is(err, wal.ErrFull) {
		t.Fatalf("async append over budget: %v", err)
	}
	last := l.LastOffset()
	if last != i-1 {
		t.Fatalf("last offset %d, want %d: a refused append took an offset", last, i-1)
	}
	for j := uint64(1); j <= last; j++ {
		if _, err := l.Read(j); err != nil {
			t.Fatalf("read %d: %v", j, err)
		}
	}
	if s := l.Stats(); s.FullRefusals == 0 || s.DiskBytes > cfg.MaxBytes {
		t.Fatalf("stats %+v", s)
	}
	c.Commit(last + 1)
	if _, err := l.Append(context.Background(), rec(i)); err != nil {
		t.Fatalf("append after the cursor moved: %v", err)
	}
	l.Close()

	cfg.OnFull = wal.FullDropOldest
	l = mustOpen(t, dir, cfg)
	defer l.Close()
	c, _ = l.Cursor("holder")
	for j := 0; j < 2000; j++ {
		if _, err := l.Append(context.Background(), rec(uint64(j))); err != nil {
			t.Fatalf("append with drop-oldest: %v", err)
		}
	}
	if s := l.Stats(); s.DroppedRecords == 0 || s.DiskBytes > cfg.MaxBytes || c.Offset() != l.FirstOffset() {
		t.Fatalf("stats %+v, cursor %d, first %d", s, c.Offset(), l.FirstOffset())
	}
}

// TestCursorTableBothDamaged: both copies of the cursor table damaged (not a
// torn write, which always leaves one whole) do not keep the log from
// opening: it starts without cursors (consumers replay from the first
// offset) with an Error log; Check reports the damage and Repair removes the
// copies.
func TestCursorTableBothDamaged(t *testing.T) {
	dir, cfg := twoCopies(t)
	damage := func(bit byte) {
		for i := 0; i < 2; i++ {
			p := filepath.Join(dir, "cursors."+string(rune('0'+i)))
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= bit
			os.WriteFile(p, b, 0o640)
		}
	}
	damage(0x40)
	rep, err := wal.Check(dir)
	if !errors.Is(err, wal.ErrCorrupt) || len(rep.Damage) != 1 || rep.Damage[0].Segment != "cursors" {
		t.Fatalf("check: %v %+v", err, rep)
	}
	l := mustOpen(t, dir, cfg)
	if names := l.Cursors(); len(names) != 0 {
		t.Fatalf("cursors %v, want none", names)
	}
	if got, err := l.Read(1); err != nil || !bytes.Equal(got, rec(1)) {
		t.Fatalf("read 1: %v", err)
	}
	l.Close()
	damage(0x04) // Close wrote a new copy: damage both again
	if rep, err := wal.Repair(dir, quietLogger()); err != nil || len(rep.Repaired) != 1 {
		t.Fatalf("repair: %v %+v", err, rep)
	}
	if rep, err := wal.Check(dir); err != nil {
		t.Fatalf("check after repair: %v %+v", err, rep)
	}
}

// TestCommitBelowFirstOffset: a commit below the log's first offset (a
// consumer's position from before retention removed what it pointed at,
// as the engine's floor can be after MaxAge) puts the cursor at the first
// offset: nothing below it exists, so it needs nothing there. Kept below,
// the cursor came back so after a reopen, and the next segment removed
// counted as dropped the records gone before the commit too.
func TestCommitBelowFirstOffset(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.SegmentSize = 4 << 10
	cfg.RetentionCheck = 10 * time.Millisecond
	l := mustOpen(t, dir, cfg)
	c, _ := l.Cursor("c")
	appendN(t, l, 1, 500)
	if err := c.Commit(300); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return l.FirstOffset() > 1 })
	first := l.FirstOffset()
	if err := c.Commit(2); err != nil {
		t.Fatalf("commit below the first offset %d: %v", first, err)
	}
	if got := c.Offset(); got != first {
		t.Fatalf("cursor at %d after a commit below the first offset %d, want %d", got, first, first)
	}
	if _, err := l.CursorFrom("d", 1); err != nil {
		t.Fatal(err)
	}
	if d, _ := l.Cursor("d"); d.Offset() != first {
		t.Fatalf("cursor created below the first offset %d at %d", first, d.Offset())
	}
	l.Close()

	cfg.MaxAge = time.Nanosecond // every segment but the tail goes, needed or not
	l = mustOpen(t, dir, cfg)
	defer l.Close()
	c, _ = l.Cursor("c")
	waitFor(t, func() bool { return segCount(l) == 1 })
	s := l.Stats()
	if want := l.FirstOffset() - first; s.DroppedRecords != want || s.Cursors[0].Dropped != want || c.Offset() != l.FirstOffset() {
		t.Fatalf("dropped %d (cursor %d), want %d (from %d to %d); cursor at %d", s.DroppedRecords, s.Cursors[0].Dropped, want, first, l.FirstOffset(), c.Offset())
	}
}
