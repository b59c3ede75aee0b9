package edge

import "encoding/binary"

// MQTT 5 allows most properties once per packet: "It is a Protocol Error to
// include the <property> more than once" (MQTT 5 §3.1.2.11, §3.1.3.2,
// §3.3.2.3, §3.4.2.2, §3.8.2.1, §3.14.2.2, §3.15.2.2 and the like). mochi
// decodes repeated ones, keeping the last, so they are found here, on the
// packet's bytes (packetFramer), before mochi reads them. User Property may
// repeat; Subscription Identifier may repeat only in a PUBLISH from the
// server, which clients do not send.
//
// Some may not be 0 either: "It is a Protocol Error to include the Receive
// Maximum value more than once or for it to have the value 0" (§3.1.2.11.3,
// §3.2.2.3.3), the same for Maximum Packet Size (§3.1.2.11.4, §3.2.2.3.6);
// mochi takes 0 for "absent" and goes on with its defaults.
var nonZero = map[byte]bool{0x21: true, 0x27: true}

// zeroOrOne are the properties that may be only 0 or 1: "It is a Protocol
// Error to include the Request Response Information more than once, or to
// have a value other than 0 or 1" (§3.1.2.11.6), the same for Request
// Problem Information (§3.1.2.11.7); mochi took any other value for 1.
var zeroOrOne = map[byte]bool{0x17: true, 0x19: true}

// propertySize is how each property's value is laid out: a fixed size in
// bytes, or one of the variable layouts below. A property not listed is
// unknown: the scan stops there and mochi refuses the packet.
var propertySize = map[byte]int{
	0x01: 1, 0x17: 1, 0x19: 1, 0x24: 1, 0x25: 1, 0x28: 1, 0x29: 1, 0x2a: 1,
	0x13: 2, 0x21: 2, 0x22: 2, 0x23: 2,
	0x02: 4, 0x11: 4, 0x18: 4, 0x27: 4,
	0x0b: sizeVarint,
	0x03: sizeString, 0x08: sizeString, 0x12: sizeString, 0x15: sizeString, 0x1a: sizeString, 0x1c: sizeString, 0x1f: sizeString,
	0x09: sizeString, 0x16: sizeString, // binary data: the same two-byte length
	0x26: sizePair,
}

const (
	sizeVarint = -1
	sizeString = -2 // a two-byte length and that many bytes
	sizePair   = -3 // two strings
)

const propUserProperty = 0x26

// badProperty looks at the body of one MQTT 5 packet (the bytes after
// its fixed header; it may be only the start of it) of the given type and
// fixed-header flags, and returns a property it holds twice where the
// specification allows it once, or with a value it may not have (nonZero,
// zeroOrOne). It reports false when it finds none in the bytes it
// has, or cannot follow them.
func badProperty(typ, flags byte, body []byte) (byte, bool) {
	r := propReader{b: body}
	switch typ {
	case 1: // CONNECT: name, level, flags, keepalive, properties, client id, will properties
		r.skipString()
		r.skip(1)
		connectFlags := r.byte()
		r.skip(2)
		if id, ok := r.properties(); ok || r.bad {
			return id, ok
		}
		if connectFlags&0x04 == 0 { // no will
			return 0, false
		}
		r.skipString()
		return r.properties()
	case 3: // PUBLISH: topic, packet id if QoS > 0, properties
		r.skipString()
		if (flags>>1)&3 > 0 {
			r.skip(2)
		}
	case 4, 5, 6, 7: // PUBACK, PUBREC, PUBREL, PUBCOMP: packet id, reason, properties
		r.skip(2)
		if len(r.b) < 2 {
			return 0, false
		}
		r.skip(1)
	case 8, 10: // SUBSCRIBE, UNSUBSCRIBE: packet id, properties
		r.skip(2)
	case 14, 15: // DISCONNECT, AUTH: reason, properties
		if len(r.b) < 2 {
			return 0, false
		}
		r.skip(1)
	default:
		return 0, false
	}
	return r.properties()
}

// propReader reads a packet body; a read past the end sets bad.
type propReader struct {
	b   []byte
	bad bool
}

func (r *propReader) skip(n int) {
	if n < 0 || n > len(r.b) {
		r.bad, r.b = true, nil
		return
	}
	r.b = r.b[n:]
}

func (r *propReader) byte() byte {
	if len(r.b) == 0 {
		r.bad = true
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *propReader) skipString() {
	if len(r.b) < 2 {
		r.bad, r.b = true, nil
		return
	}
	r.skip(2 + int(binary.BigEndian.Uint16(r.b)))
}

func (r *propReader) varint() int {
	n, shift := 0, 0
	for i := 0; i < 4; i++ {
		c := r.byte()
		if r.bad {
			return 0
		}
		n |= int(c&0x7f) << shift
		if c&0x80 == 0 {
			return n
		}
		shift += 7
	}
	r.bad = true
	return 0
}

// properties reads a property list and returns the first property seen
// twice that may appear only once, 0 that may not be (nonZero), or a
// value other than 0 or 1 that may be only those (zeroOrOne).
func (r *propReader) properties() (byte, bool) {
	n := r.varint()
	if r.bad {
		return 0, false
	}
	list := propReader{b: r.b[:min(n, len(r.b))]}
	r.skip(n)
	var seen [256]bool
	for len(list.b) > 0 && !list.bad {
		id := list.byte()
		size, known := propertySize[id]
		if !known {
			return 0, false
		}
		if id != propUserProperty {
			if seen[id] {
				return id, true
			}
			seen[id] = true
		}
		switch size {
		case sizeVarint:
			list.varint()
		case sizeString:
			list.skipString()
		case sizePair:
			list.skipString()
			list.skipString()
		default:
			if nonZero[id] && len(list.b) >= size && allZero(list.b[:size]) {
				return id, true
			}
			if zeroOrOne[id] && len(list.b) >= size && list.b[0] > 1 {
				return id, true
			}
			list.skip(size)
		}
	}
	return 0, false
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
