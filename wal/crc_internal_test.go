package wal

import (
	"encoding/binary"
	"hash/crc32"
	"testing"
)

// frameCRC is the Castagnoli CRC of the offset (8 bytes, little endian),
// the kind and the payload, without an allocation.
func TestFrameCRC(t *testing.T) {
	for _, off := range []uint64{0, 1, 255, 1 << 40, ^uint64(0)} {
		for _, payload := range [][]byte{nil, []byte("x"), make([]byte, 300)} {
			var pre [9]byte
			binary.LittleEndian.PutUint64(pre[:8], off)
			pre[8] = kindRecord
			want := crc32.Checksum(append(pre[:], payload...), castagnoli)
			if got := frameCRC(off, kindRecord, payload); got != want {
				t.Fatalf("offset %d, %d bytes: %#x, want %#x", off, len(payload), got, want)
			}
		}
	}
	payload := make([]byte, 256)
	if n := testing.AllocsPerRun(100, func() { frameCRC(42, kindRecord, payload) }); n != 0 {
		t.Fatalf("%v allocations per frameCRC", n)
	}
}
