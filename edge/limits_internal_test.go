package edge

import "testing"

// BenchmarkFramerPublish is what packetFramer costs per inbound packet: a
// v5 QoS 1 PUBLISH of 100 bytes with a Message Expiry property, fed one
// packet per Read as a busy publisher's stream arrives.
func BenchmarkFramerPublish(b *testing.B) {
	connect := []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 30, 0, 0, 0}
	body := append([]byte{0, 3, 'a', '/', 'b', 0, 1, 5, 0x02, 0, 0, 0, 60}, make([]byte, 87)...)
	pk := append([]byte{0x32, byte(len(body))}, body...)
	f := &packetFramer{max: 1 << 20}
	if _, r := f.scan(connect); r != 0 || !f.v5 {
		b.Fatalf("connect: reason %#x v5 %v", r, f.v5)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(pk)))
	for b.Loop() {
		if _, r := f.scan(pk); r != 0 {
			b.Fatalf("reason %#x", r)
		}
	}
}

// TestFramerSplitReads: the framer finds a repeated property whether the
// packet arrives in one read (looked at in place) or split across two (a
// copy), and refuses it where it starts; for MQTT 3.1.1 it looks at nothing
// after CONNECT, and a refusal there is not answered as if in CONNECT.
func TestFramerSplitReads(t *testing.T) {
	connect5 := []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 30, 0, 0, 0}
	good := []byte{0x32, 13, 0, 1, 'a', 0, 1, 5, 0x02, 0, 0, 0, 9, 'x', 'y'}
	// QoS 1 PUBLISH "a", packet id 2, Message Expiry Interval twice.
	bad := []byte{0x32, 17, 0, 1, 'a', 0, 2, 10, 0x02, 0, 0, 0, 9, 0x02, 0, 0, 0, 9, 'z'}
	stream := append(append(append([]byte{}, connect5...), good...), bad...)
	off := len(connect5) + len(good)
	// feed gives the stream to a new framer in the given pieces and returns
	// where it refused (the offset in the stream) and why.
	feed := func(pieces ...[]byte) (int, byte) {
		f := &packetFramer{max: 1 << 20}
		pos := 0
		for _, p := range pieces {
			if k, reason := f.scan(p); reason != 0 {
				if f.inConnect {
					t.Errorf("refused after CONNECT as if in CONNECT")
				}
				return pos + k, reason
			}
			pos += len(p)
		}
		return pos, 0
	}
	for s := 0; s <= len(stream); s++ {
		want := off
		if s > off && s < len(stream) {
			want = s // the bad packet began in the first read: those bytes went on
		}
		if k, reason := feed(stream[:s], stream[s:]); reason != 0x82 || k != want {
			t.Errorf("split at %d: refused at %d reason %#x, want %d 0x82", s, k, reason, want)
		}
	}
	var bytewise [][]byte
	for i := range stream {
		bytewise = append(bytewise, stream[i:i+1])
	}
	// The bad packet is refused at its last byte: the bytes before went on.
	if k, reason := feed(bytewise...); reason != 0x82 || k != len(stream)-1 {
		t.Errorf("byte by byte: refused at %d reason %#x, want %d 0x82", k, reason, len(stream)-1)
	}

	// MQTT 3.1.1: properties do not exist; only the size is checked.
	connect4 := []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 30, 0, 0}
	f := &packetFramer{max: 64}
	if k, reason := f.scan(append(append([]byte{}, connect4...), bad...)); reason != 0 || k != len(connect4)+len(bad) {
		t.Errorf("3.1.1: refused at %d reason %#x, want nothing refused", k, reason)
	}
	big := append([]byte{0x30, 70}, make([]byte, 70)...)
	if k, reason := f.scan(big); reason != 0x95 || k != 0 || f.inConnect {
		t.Errorf("3.1.1 oversized: refused at %d reason %#x inConnect %v, want 0 0x95 false", k, reason, f.inConnect)
	}
}
