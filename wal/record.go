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
	var pre [9]byte
	binary.LittleEndian.PutUint64(pre[:8], offset)
	pre[8] = kind
	c := crc32.Update(0, castagnoli, pre[:])
	return crc32.Update(c, castagnoli, payload)
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
