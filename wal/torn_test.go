package wal_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
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

// TestFlippedBit flips every bit of one record, one at a time: of a record
// in an older segment, of one in the middle of the last segment and of the
// last record of the log (which the durable mark Close writes vouches for).
// Every time, nothing wrong is returned as data: reads of that record fail
// with a *CorruptError naming segment and offset; Check reports it as
// damage, never as a torn tail, even when the bit is in the length prefix
// (the scan resynchronises on the next valid record); Open refuses a
// damaged last segment rather than cut acknowledged records; Repair turns
// that one record into a hole and keeps every other record at its offset.
// It runs on the simulated file system, so every bit costs no fsync.
func TestFlippedBit(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "log")
	sim := newSimFS(root)
	cfg := testConfig()
	cfg.SegmentSize = 4 << 10
	cfg.FS = sim.fs()
	const n = 600
	writeLog(t, dir, cfg, n)
	var segs []string
	sim.mu.Lock()
	for name := range sim.dirs[dir].vol {
		if len(name) == 20 {
			segs = append(segs, name)
		}
	}
	sim.mu.Unlock()
	sort.Strings(segs)
	if len(segs) < 3 {
		t.Fatalf("want at least 3 segments, got %d", len(segs))
	}
	base := func(name string) uint64 {
		b, _ := strconv.ParseUint(name, 10, 64)
		return b
	}
	last := segs[len(segs)-1]
	short := func(from uint64) uint64 { // a short record (rec's size grows with i%37)
		for from%37 != 1 {
			from++
		}
		return from
	}
	for _, tc := range []struct {
		name   string
		seg    string
		off    uint64
		noMark bool // without the cursor table: the resync alone must tell
	}{
		{"older segment", segs[1], short(base(segs[1]) + 5), false},
		{"last segment", last, short((base(last) + n) / 2), false},
		{"last segment without durable mark", last, short((base(last) + n) / 2), true},
		{"last record", last, n, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Where the record's entry lies in its segment file.
			data := sim.dirs[dir].vol[tc.seg].file.vol
			pos := 0
			for off := base(tc.seg); off < tc.off; off++ {
				size, k := binary.Uvarint(data[pos:])
				pos += k + int(size)
			}
			size, k := binary.Uvarint(data[pos:])
			entry := k + int(size)
			for bit := 0; bit < 8*entry; bit++ {
				st := sim.clone()
				f := st.dirs[dir].vol[tc.seg].file
				f.vol[pos+bit/8] ^= 1 << (bit % 8)
				f.dur = slices.Clone(f.vol)
				if tc.noMark {
					delete(st.dirs[dir].vol, "cursors.0")
					delete(st.dirs[dir].vol, "cursors.1")
				}
				if err := flippedBit(dir, st, cfg, tc.seg == last, tc.off, n); err != nil {
					t.Fatalf("bit %d of the entry of offset %d (byte %d of %s): %v", bit, tc.off, pos+bit/8, tc.seg, err)
				}
			}
		})
	}
}

func flippedBit(dir string, st *simFS, cfg wal.Config, inLast bool, bad uint64, n uint64) error {
	cfg.FS = st.fs()
	rep, err := wal.CheckFS(dir, st.fs())
	var ce *wal.CorruptError
	if !errors.As(err, &ce) || ce.Offset != bad || len(rep.Damage) != 1 || rep.TornTail != nil {
		return fmt.Errorf("check: %v, report %+v", err, rep)
	}
	if inLast {
		if l, err := wal.Open(dir, cfg); !errors.As(err, &ce) || ce.Offset != bad {
			if err == nil {
				l.Close()
			}
			return fmt.Errorf("open: %v, want a CorruptError at offset %d", err, bad)
		}
	} else {
		l, err := wal.Open(dir, cfg)
		if err != nil {
			return fmt.Errorf("open: %v", err)
		}
		got, err := l.Read(bad)
		if !errors.As(err, &ce) || ce.Offset != bad || got != nil || !errors.Is(err, wal.ErrCorrupt) {
			l.Close()
			return fmt.Errorf("read %d: %q, %v", bad, got, err)
		}
		r := l.NewReader(bad - 1)
		if _, _, err := r.Next(context.Background()); err != nil {
			l.Close()
			return err
		}
		if _, _, err := r.Next(context.Background()); !errors.Is(err, wal.ErrCorrupt) {
			l.Close()
			return fmt.Errorf("reader at the damage: %v", err)
		}
		l.Close()
	}
	rep, err = wal.RepairFS(dir, st.fs(), quietLogger())
	if err != nil || rep.LostRecords != 1 || len(rep.Repaired) != 1 {
		return fmt.Errorf("repair: %+v %v", rep, err)
	}
	l, err := wal.Open(dir, cfg)
	if err != nil {
		return fmt.Errorf("open after repair: %v", err)
	}
	defer l.Close()
	if l.LastOffset() != n {
		return fmt.Errorf("last offset after repair %d, want %d", l.LastOffset(), n)
	}
	for i := uint64(1); i <= n; i++ {
		got, err := l.Read(i)
		if i == bad {
			if !errors.Is(err, wal.ErrNotFound) {
				return fmt.Errorf("repaired record: %v, want ErrNotFound", err)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, rec(i)) {
			return fmt.Errorf("read %d after repair: %v", i, err)
		}
	}
	return nil
}
