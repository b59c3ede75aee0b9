package wal

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// On disk, a segment file is a sequence of tidwall/wal binary entries,
// uvarint(len(frame)) followed by the frame, and the k-th entry of the file
// named N (20 digits) holds offset N+k. This is exactly tidwall/wal's format,
// so the files stay readable by tidwall.Open. Inside each entry is our frame:
//
//	crc32c (4 bytes, little endian) | kind (1 byte) | payload
//
// The CRC-32C (Castagnoli) covers the record's offset (8 bytes, little endian,
// not stored), the kind and the payload. Covering the offset catches a record
// that is intact but in the wrong place (a misnamed segment, a stale block).
// Kind 0 does not exist, so zero-filled space never decodes as a record.
const (
	kindRecord byte = 1 // a record appended by the caller
	kindHole   byte = 2 // an offset whose append failed: no data, never reused

	frameHeader = 5 // crc + kind
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errShortEntry means the buffer ends inside an entry; errBadEntry means the
// entry is complete but invalid.
var (
	errShortEntry = errors.New("truncated entry")
	errBadEntry   = errors.New("checksum mismatch")
	errBadLength  = errors.New("invalid length")
)

// entrySize is the on-disk size of a record with n payload bytes.
func entrySize(n int) int {
	f := n + frameHeader
	return uvarintLen(uint64(f)) + f
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

func frameCRC(offset uint64, kind byte, payload []byte) uint32 {
	// The offset's 8 bytes (little endian) and the kind go through the
	// table here: a local array sliced for crc32.Update escapes to the
	// heap, an allocation per record written and per record read.
	c := ^uint32(0)
	for i := range 8 {
		c = castagnoli[byte(c)^byte(offset>>(8*i))] ^ c>>8
	}
	c = castagnoli[byte(c)^kind] ^ c>>8
	return crc32.Update(^c, castagnoli, payload)
}

// appendEntry appends the entry for (offset, kind, payload) to dst.
func appendEntry(dst []byte, offset uint64, kind byte, payload []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(payload)+frameHeader))
	dst = binary.LittleEndian.AppendUint32(dst, frameCRC(offset, kind, payload))
	dst = append(dst, kind)
	return append(dst, payload...)
}

// entryLen parses the length prefix at the start of b and returns the whole
// entry's size. It returns errShortEntry when b ends first and errBadLength
// for a length no frame can have.
func entryLen(b []byte, max int) (int, error) {
	size, n := binary.Uvarint(b)
	if n == 0 {
		return 0, errShortEntry
	}
	if n < 0 || size < frameHeader || size > uint64(max) {
		return 0, errBadLength
	}
	return n + int(size), nil
}

// decodeEntry decodes the entry at the start of b, which should hold offset.
// It returns the kind, the payload (aliasing b) and the entry's size.
func decodeEntry(offset uint64, b []byte) (kind byte, payload []byte, n int, err error) {
	n, err = entryLen(b, maxFrame)
	if err != nil {
		return 0, nil, 0, err
	}
	if n > len(b) {
		return 0, nil, 0, errShortEntry
	}
	size, ln := binary.Uvarint(b)
	frame := b[ln : ln+int(size)]
	crc := binary.LittleEndian.Uint32(frame)
	kind = frame[4]
	payload = frame[frameHeader:]
	if (kind != kindRecord && kind != kindHole) || crc != frameCRC(offset, kind, payload) {
		return 0, nil, 0, errBadEntry
	}
	if kind == kindHole && len(payload) != 0 {
		return 0, nil, 0, errBadEntry
	}
	return kind, payload, n, nil
}

// maxFrame bounds a frame's length when parsing: larger lengths are damage.
// Records are refused above Config.MaxRecordSize, which is at most this.
const maxFrame = 1 << 30

// resyncBudget bounds the bytes resync checksums: past it, resync gives up
// and the damage counts as reaching the end of the file.
const resyncBudget = 64 << 20

// resync looks for the first valid entry after the invalid one at pos (of
// offset off): the entry of some later offset off+k at some later position.
// The CRC covers the offset, so a match is the real entry, not a stale or
// shifted one (with the odds of a CRC-32C collision, 2^-32 per try). k is
// at most the number of entries that fit between, so a match never
// skips more offsets than bytes allow. It returns the position and offset
// found, or ok false.
func resync(data []byte, pos int, off uint64) (at int, atOff uint64, ok bool) {
	spent := 0
	for p := pos + 1; p < len(data); p++ {
		size, n := binary.Uvarint(data[p:])
		if n <= 0 || size < frameHeader || size > uint64(len(data)-p-n) {
			continue
		}
		kind := data[p+n+4]
		if kind != kindRecord && (kind != kindHole || size != frameHeader) {
			continue
		}
		skipped := uint64(p-pos)/uint64(entrySize(0)) + 1
		for k := uint64(1); k <= skipped; k++ {
			if spent += int(size); spent > resyncBudget {
				return 0, 0, false
			}
			if _, _, _, err := decodeEntry(off+k, data[p:]); err == nil {
				return p, off + k, true
			}
		}
	}
	return 0, 0, false
}

// zeroSector reports whether a 512-byte disk sector overlapping
// data[from:to] is all zeros from max(from, its start) to its end (or to
// the end of data): the mark of a sector a power cut did not let reach the
// disk (a lost sector past the old end of a file reads as zeros). The log
// never writes a zero length prefix, and a record of zeros spanning a whole
// sector from exactly there is rare enough to count as torn.
func zeroSector(data []byte, from, to int) bool {
	const sector = 512
	for s := from - from%sector; s < to; s += sector {
		lo, hi := max(s, from), min(s+sector, len(data))
		if lo >= hi {
			continue
		}
		zero := true
		for _, b := range data[lo:hi] {
			if b != 0 {
				zero = false
				break
			}
		}
		if zero {
			return true
		}
	}
	return false
}
