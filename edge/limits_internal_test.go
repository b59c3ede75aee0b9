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
