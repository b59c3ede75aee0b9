package wal

import (
	"bytes"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to the record decoder and the tail scanner,
// whole and split in two (as nats-server's parser fuzz does): they must never
// panic, never accept bytes whose checksum does not match, and a record that
// decodes must re-encode to the same bytes. Corpus: testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	f.Add(uint64(1), appendEntry(nil, 1, kindRecord, []byte("hello")), 3)
	f.Add(uint64(7), appendEntry(appendEntry(nil, 7, kindRecord, nil), 8, kindHole, nil), 1)
	f.Add(uint64(1), make([]byte, 64), 10)
	f.Add(uint64(1), []byte{0x80}, 0)
	f.Add(uint64(1), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 5)
	f.Add(uint64(300), appendEntry(nil, 300, kindRecord, bytes.Repeat([]byte{0xab}, 300)), 150)
	f.Fuzz(func(t *testing.T, offset uint64, data []byte, split int) {
		kind, payload, n, err := decodeEntry(offset, data)
		if err == nil {
			if n > len(data) || (kind != kindRecord && kind != kindHole) {
				t.Fatalf("decoded n=%d kind=%d from %d bytes", n, kind, len(data))
			}
			if again := appendEntry(nil, offset, kind, payload); !bytes.Equal(again, data[:n]) {
				t.Fatalf("re-encoding differs: %x vs %x", again, data[:n])
			}
		}
		// A prefix of a valid entry is never valid by itself.
		if split > 0 && split < len(data) {
			if _, _, m, err := decodeEntry(offset, data[:split]); err == nil && m > split {
				t.Fatalf("decoded %d bytes from a %d-byte prefix", m, split)
			}
		}
		s := &segment{base: max(offset, 1), name: segmentName(max(offset, 1))}
		x, _ := scanTail(data, s, 0)
		if x.end > int64(len(data)) {
			t.Fatalf("scan ends at %d beyond %d bytes", x.end, len(data))
		}
		// What the scan accepted is a run of valid records.
		pos, off := 0, s.base
		for i := uint64(0); i < x.n; i++ {
			_, _, m, err := decodeEntry(off, data[pos:])
			if err != nil {
				t.Fatalf("scan accepted a bad record at %d: %v", pos, err)
			}
			pos += m
			off++
		}
		out, _ := repairSegment(data, s.base, -1, 0)
		if len(out) > len(data)+int(x.n)*8 {
			t.Fatalf("repair grew the segment from %d to %d", len(data), len(out))
		}
	})
}
