package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
)

// segment is one segment file: the records from base to base+count-1.
//
// Lock order: Log.smu, then Log.lruMu, then segment.mu.
type segment struct {
	base uint64
	name string // 20 digits, tidwall/wal's naming
	path string

	// size is the bytes written to the file (the writer's view; it may run
	// ahead of what index covers until the write is durable).
	size atomic.Int64
	// mtime is when the newest record was written (unix nanoseconds).
	mtime atomic.Int64
	// count is the number of records (entries, holes included) that are
	// durable: for the tail it grows as batches become durable; for an older
	// segment it is the next segment's base minus base.
	count atomic.Uint64

	mu  sync.Mutex
	f   File // opened lazily for older segments; the tail's is read-write
	idx []uint32
	// idx[i] is the byte position of record base+i, and idx[count] the end
	// of the last record; nil while not loaded (older segments only).
	idxErr error // set when loading the index met damage (a *CorruptError)
	// unsynced: written data not yet fsynced (writer; read by retention).
	unsynced bool
	removed  bool // retention removed it; f is closed
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
// every Read checks its record's CRC). It stops at the first damage and
// returns the positions found so far with a *CorruptError.
func buildIndex(f File, s *segment, size int64) ([]uint32, error) {
	want := s.count.Load()
	idx := make([]uint32, 0, want+1)
	buf := make([]byte, 0, scanChunk)
	var pos int64    // file position of buf[0]
	var filled int64 // file position of buf's end
	for uint64(len(idx)) < want {
		entryPos := pos
		idx = append(idx, uint32(entryPos))
		for {
			n, err := entryLen(buf, maxFrame)
			if err == nil && int64(n) <= int64(len(buf)) {
				buf = buf[n:]
				pos += int64(n)
				break
			}
			if err == errBadLength || filled >= size {
				// idx ends with the damaged entry's position, which is the
				// end of the last good one.
				return idx, &CorruptError{Segment: s.name, Pos: entryPos, Offset: s.base + uint64(len(idx)-1),
					Reason: fmt.Sprintf("index: %v", errOr(err, errShortEntry))}
			}
			// refill: keep the unread tail, read more.
			need := int64(scanChunk)
			if err == nil && int64(n) > need {
				need = int64(n)
			}
			nb := make([]byte, len(buf), int64(len(buf))+need)
			copy(nb, buf)
			m, rerr := f.ReadAt(nb[len(nb):cap(nb)], filled)
			if rerr != nil && !errors.Is(rerr, io.EOF) {
				return idx[:len(idx)-1], fmt.Errorf("read segment %s: %w", s.name, rerr)
			}
			buf = nb[:len(nb)+m]
			filled += int64(m)
			if m == 0 {
				filled = size // EOF
			}
		}
	}
	idx = append(idx, uint32(pos))
	return idx, nil
}

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// scanTail reads a whole tail segment file, checks every record, and returns
// the record positions (with the end appended) and the byte position where
// the valid records end. damaged is true when invalid data follows that end;
// corrupt is non-nil when valid records follow the damage, which is not a
// torn tail but damage inside the log.
func scanTail(data []byte, s *segment) (idx []uint32, end int, corrupt *CorruptError) {
	off := s.base
	pos := 0
	for pos < len(data) {
		_, _, n, err := decodeEntry(off, data[pos:])
		if err != nil {
			if validAfter(data, pos, off) {
				return nil, pos, &CorruptError{Segment: s.name, Pos: int64(pos), Offset: off, Reason: err.Error()}
			}
			break
		}
		idx = append(idx, uint32(pos))
		pos += n
		off++
	}
	return append(idx, uint32(pos)), pos, nil
}

// validAfter reports whether a valid record follows the invalid entry at pos,
// walking the length prefixes as they are: if the damage left the lengths
// intact (a flipped payload bit), the next records still check out and the
// damage is in the middle of the log, not at a torn tail. Zero fill and a
// cut-off write never produce a valid record after them, because the CRC
// covers the expected offset.
func validAfter(data []byte, pos int, off uint64) bool {
	first := true
	for pos < len(data) {
		size, n := binary.Uvarint(data[pos:])
		if n <= 0 || uint64(len(data)-pos-n) < size {
			return false
		}
		if !first && size >= frameHeader {
			if _, _, _, err := decodeEntry(off, data[pos:]); err == nil {
				return true
			}
		}
		first = false
		pos += n + int(size)
		off++
	}
	return false
}
