package wal

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
)

// segment is one segment file: the records from base to base+count-1.
//
// Lock order: Log.smu, then segment.mu.
type segment struct {
	base uint64
	name string // 20 digits, tidwall/wal's naming
	path string

	// size is the bytes written to the file (the writer's view; it may run
	// ahead of what the index covers until the write is durable).
	size atomic.Int64
	// mtime is when the newest record was written (unix nanoseconds).
	mtime atomic.Int64
	// count is the number of records (entries, holes included) that are
	// durable: for the tail it grows as batches become durable; for an older
	// segment it is the next segment's base minus base.
	count atomic.Uint64

	mu     sync.Mutex
	f      File  // opened lazily for older segments; the tail's is read-write
	ix     index // loaded lazily for older segments
	loaded bool
	ixErr  error // set when loading the index met damage (a *CorruptError)
	// unsynced: written data not yet fsynced (the writer's; under mu).
	unsynced bool
	removed  bool // retention removed it; f is closed
}

// pointEvery is the spacing of index points, in bytes. A read fetches the
// records between two points, about this much, and walks to its record, so
// the index costs 8 bytes per 4 KiB of log whatever the record size (0.2%):
// every segment's index stays in memory, and a random read is one pread.
const pointEvery = 4096

// point says that record base+rel starts at byte pos.
type point struct{ rel, pos uint32 }

// index is a sparse record index of one segment.
type index struct {
	points []point
	end    int64  // end of the last indexed record
	n      uint64 // records indexed
}

// add indexes the next record, of size bytes.
func (x *index) add(size int) {
	if len(x.points) == 0 || x.end-int64(x.points[len(x.points)-1].pos) >= pointEvery {
		x.points = append(x.points, point{rel: uint32(x.n), pos: uint32(x.end)})
	}
	x.n++
	x.end += int64(size)
}

// window returns the byte range [start, end) to read for record rel, and the
// record that starts at start. rel must be < x.n.
func (x *index) window(rel uint64) (startRel uint64, start, end int64) {
	i := sort.Search(len(x.points), func(i int) bool { return uint64(x.points[i].rel) > rel }) - 1
	start, end = int64(x.points[i].pos), x.end
	if i+1 < len(x.points) {
		end = int64(x.points[i+1].pos)
	}
	return uint64(x.points[i].rel), start, end
}

func segmentName(base uint64) string { return fmt.Sprintf("%020d", base) }

// parseSegmentName returns the base of a segment file name, or false.
func parseSegmentName(name string) (uint64, bool) {
	if len(name) != 20 {
		return 0, false
	}
	for i := 0; i < len(name); i++ {
		if name[i] < '0' || name[i] > '9' {
			return 0, false
		}
	}
	base, err := strconv.ParseUint(name, 10, 64)
	if err != nil || base == 0 {
		return 0, false
	}
	return base, true
}

func newSegment(dir string, base uint64) *segment {
	name := segmentName(base)
	return &segment{base: base, name: name, path: filepath.Join(dir, name)}
}

// scanChunk is how much of a segment file an index load reads at a time.
const scanChunk = 1 << 20

// buildIndex reads the entry lengths of an older segment file (no CRC checks:
// every read checks its record's CRC). It stops at the first damage and
// returns the index so far with a *CorruptError.
func buildIndex(f File, s *segment, size int64) (index, error) {
	want := s.count.Load()
	var x index
	var buf []byte
	var filled int64 // file position of buf's end
	for x.n < want {
		n, err := entryLen(buf, maxFrame)
		if err == nil && n <= len(buf) {
			buf = buf[n:]
			x.add(n)
			continue
		}
		if err == errBadLength || filled >= size {
			return x, &CorruptError{Segment: s.name, Pos: x.end, Offset: s.base + x.n,
				Reason: fmt.Sprintf("index: %v", errOr(err, errShortEntry))}
		}
		need := int64(scanChunk)
		if err == nil && int64(n) > need {
			need = int64(n)
		}
		need = min(need, size-filled) // a small segment needs no 1 MiB buffer
		nb := make([]byte, len(buf), int64(len(buf))+need)
		copy(nb, buf)
		m, rerr := f.ReadAt(nb[len(nb):cap(nb)], filled)
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return x, fmt.Errorf("read segment %s: %w", s.name, rerr)
		}
		buf = nb[:len(nb)+m]
		filled += int64(m)
		if m == 0 {
			filled = size
		}
	}
	return x, nil
}

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// scanTail checks every record of a whole tail segment file and returns the
// index of the valid ones; x.end is where they end. corrupt is non-nil when
// the invalid data after them is damage rather than a torn tail (see
// tornAt), or when the segment ends at or below mark, the offset the log
// knew durable.
func scanTail(data []byte, s *segment, mark uint64) (x index, corrupt *CorruptError) {
	off := s.base
	pos := 0
	for pos < len(data) {
		_, _, n, err := decodeEntry(off, data[pos:])
		if err != nil {
			if why, torn := tornAt(data, pos, off, mark); !torn {
				return x, &CorruptError{Segment: s.name, Pos: int64(pos), Offset: off, Reason: err.Error() + ": " + why}
			}
			break
		}
		x.add(n)
		pos += n
		off++
	}
	if off <= mark {
		return x, &CorruptError{Segment: s.name, Pos: int64(pos), Offset: off,
			Reason: fmt.Sprintf("the log ends at offset %d, below offset %d, which it knew durable", off-1, mark)}
	}
	return x, nil
}

// tornAt tells a torn tail from damage, for the invalid entry at pos (of
// offset off) in the last segment: torn means what a power cut or a crash
// in the middle of a write leaves, which Open may cut; damage is never cut.
// It is damage when the entry is at or below mark (the log knew it durable:
// a torn write cannot have taken it) or when valid entries follow it (found
// by resync) with no sign of a lost sector between (zeroSector): a write cut
// short leaves nothing valid after it, and sectors lost out of order leave
// zeros. why says which.
func tornAt(data []byte, pos int, off, mark uint64) (why string, torn bool) {
	if off <= mark {
		return fmt.Sprintf("offset %d was durable", mark), false
	}
	at, atOff, ok := resync(data, pos, off)
	if !ok {
		return "", true
	}
	if zeroSector(data, pos, at) {
		return "", true
	}
	return fmt.Sprintf("valid record of offset %d follows at byte %d", atOff, at), false
}
