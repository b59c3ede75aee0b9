package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The generator speaks MQTT with its own lean encoder instead of the paho
// clients: it needs exact control of packet ids, windows and acks, and on a
// 2-core machine it must spend as little CPU as possible beside the broker.
// Only what the scenarios use is implemented: CONNECT/CONNACK, PUBLISH and
// its QoS 1/2 acks, SUBSCRIBE/SUBACK, DISCONNECT. Clause numbers refer to
// MQTT 3.1.1 (OASIS 2014) and MQTT 5.0 (OASIS 2019).

// MQTT control packet types [MQTT-2.2.1].
const (
	pktConnect    = 1
	pktConnack    = 2
	pktPublish    = 3
	pktPuback     = 4
	pktPubrec     = 5
	pktPubrel     = 6
	pktPubcomp    = 7
	pktSubscribe  = 8
	pktSuback     = 9
	pktPingresp   = 13
	pktDisconnect = 14
)

// Protocol levels in CONNECT [MQTT-3.1.2-2].
const (
	proto311 = 4
	proto5   = 5
)

var (
	errMalformed = errors.New("edgemq-bench: malformed packet")
	errRefused   = errors.New("edgemq-bench: connection refused by broker")
)

// appendVarint appends an MQTT Variable Byte Integer [MQTT-1.5.5-1],
// which is the varint encoding/binary writes.
func appendVarint(b []byte, n int) []byte { return binary.AppendUvarint(b, uint64(n)) }

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// connectOptions is what a CONNECT carries.
type connectOptions struct {
	clientID  string
	version   byte
	clean     bool
	keepalive uint16
	// sessionExpiry is the v5 Session Expiry Interval in seconds; v3.1.1
	// sessions with clean=false last until the broker drops them.
	sessionExpiry uint32
	// receiveMax is the v5 Receive Maximum; 0 sends 65535: let the broker
	// send as much as it likes.
	receiveMax uint16
	// willTopic, if set, gives the connection a will [MQTT-3.1.2-9].
	willTopic  string
	willQoS    byte
	willRetain bool
	willBody   []byte
}

func appendConnect(b []byte, o connectOptions) []byte {
	var vh []byte
	vh = appendString(vh, "MQTT")
	vh = append(vh, o.version)
	flags := byte(0)
	if o.clean {
		flags |= 0x02 // Clean Session / Clean Start [MQTT-3.1.2-4]
	}
	if o.willTopic != "" {
		flags |= 0x04 | o.willQoS<<3 // [MQTT-3.1.2-9] [MQTT-3.1.2-14]
		if o.willRetain {
			flags |= 0x20
		}
	}
	vh = append(vh, flags)
	vh = binary.BigEndian.AppendUint16(vh, o.keepalive)
	if o.version == proto5 {
		var props []byte
		if o.sessionExpiry > 0 {
			props = append(props, 0x11)
			props = binary.BigEndian.AppendUint32(props, o.sessionExpiry)
		}
		rm := o.receiveMax
		if rm == 0 {
			rm = 0xffff
		}
		props = append(props, 0x21) // Receive Maximum
		props = binary.BigEndian.AppendUint16(props, rm)
		vh = appendVarint(vh, len(props))
		vh = append(vh, props...)
	}
	vh = appendString(vh, o.clientID)
	if o.willTopic != "" {
		if o.version == proto5 {
			vh = append(vh, 0) // no will properties
		}
		vh = appendString(vh, o.willTopic)
		vh = binary.BigEndian.AppendUint16(vh, uint16(len(o.willBody)))
		vh = append(vh, o.willBody...)
	}
	b = append(b, pktConnect<<4)
	b = appendVarint(b, len(vh))
	return append(b, vh...)
}

// appendPublish encodes a PUBLISH. pid is ignored at QoS 0.
func appendPublish(b []byte, version byte, topic string, qos byte, pid uint16, payload []byte) []byte {
	n := 2 + len(topic) + len(payload)
	if qos > 0 {
		n += 2
	}
	if version == proto5 {
		n++ // empty property length
	}
	b = append(b, pktPublish<<4|qos<<1)
	b = appendVarint(b, n)
	b = appendString(b, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, pid)
	}
	if version == proto5 {
		b = append(b, 0)
	}
	return append(b, payload...)
}

// appendAck encodes PUBACK, PUBREC, PUBREL or PUBCOMP with success. In v5 a
// remaining length of 2 means reason code 0 and no properties [MQTT-3.4.2.1].
func appendAck(b []byte, typ byte, pid uint16) []byte {
	h := typ << 4
	if typ == pktPubrel {
		h |= 0x02 // [MQTT-3.6.1-1]
	}
	b = append(b, h, 2)
	return binary.BigEndian.AppendUint16(b, pid)
}

func appendSubscribe(b []byte, version byte, pid uint16, filter string, qos byte) []byte {
	n := 2 + 2 + len(filter) + 1
	if version == proto5 {
		n++
	}
	b = append(b, pktSubscribe<<4|0x02) // [MQTT-3.8.1-1]
	b = appendVarint(b, n)
	b = binary.BigEndian.AppendUint16(b, pid)
	if version == proto5 {
		b = append(b, 0)
	}
	b = appendString(b, filter)
	return append(b, qos)
}

func appendDisconnect(b []byte) []byte { return append(b, pktDisconnect<<4, 0) }

// packet is one decoded control packet; body aliases the reader's buffer and
// is valid until the next readPacket.
type packet struct {
	typ   byte
	flags byte
	body  []byte
}

// packetReader reads whole packets from a buffered stream with one reusable
// body buffer, so that reading does not allocate per message.
type packetReader struct {
	r   *bufio.Reader
	buf []byte
}

func newPacketReader(r io.Reader) *packetReader {
	return &packetReader{r: bufio.NewReaderSize(r, 64<<10), buf: make([]byte, 4096)}
}

func (pr *packetReader) read() (packet, error) {
	h, err := pr.r.ReadByte()
	if err != nil {
		return packet{}, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		d, err := pr.r.ReadByte()
		if err != nil {
			return packet{}, err
		}
		n += int(d&0x7f) * mul
		if d&0x80 == 0 {
			break
		}
		if i == 3 {
			return packet{}, errMalformed
		}
		mul *= 128
	}
	if cap(pr.buf) < n {
		pr.buf = make([]byte, n)
	}
	body := pr.buf[:n]
	if _, err := io.ReadFull(pr.r, body); err != nil {
		return packet{}, err
	}
	return packet{typ: h >> 4, flags: h & 0x0f, body: body}, nil
}

// publishView is a decoded incoming PUBLISH; payload aliases the packet body.
type publishView struct {
	qos     byte
	dup     bool
	pid     uint16
	topic   []byte
	payload []byte
}

func parsePublish(p packet, version byte) (publishView, error) {
	v := publishView{qos: (p.flags >> 1) & 3, dup: p.flags&0x08 != 0}
	b := p.body
	if len(b) < 2 {
		return v, errMalformed
	}
	tl := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+tl {
		return v, errMalformed
	}
	v.topic = b[2 : 2+tl]
	b = b[2+tl:]
	if v.qos > 0 {
		if len(b) < 2 {
			return v, errMalformed
		}
		v.pid = binary.BigEndian.Uint16(b)
		b = b[2:]
	}
	if version == proto5 {
		pl, n, err := readVarint(b)
		if err != nil || len(b) < n+pl {
			return v, errMalformed
		}
		b = b[n+pl:]
	}
	v.payload = b
	return v, nil
}

func readVarint(b []byte) (value, n int, err error) {
	mul := 1
	for i := 0; i < 4 && i < len(b); i++ {
		value += int(b[i]&0x7f) * mul
		if b[i]&0x80 == 0 {
			return value, i + 1, nil
		}
		mul *= 128
	}
	return 0, 0, errMalformed
}

// parseAck decodes a PUBACK, PUBREC, PUBREL or PUBCOMP: the packet id and, in v5,
// the reason code (0 when absent).
func parseAck(p packet) (pid uint16, reason byte, err error) {
	if len(p.body) < 2 {
		return 0, 0, errMalformed
	}
	pid = binary.BigEndian.Uint16(p.body)
	if len(p.body) > 2 {
		reason = p.body[2]
	}
	return pid, reason, nil
}

// connackInfo is what the generator needs from CONNACK.
type connackInfo struct {
	sessionPresent bool
	// receiveMax is the broker's v5 Receive Maximum; 0 when not sent.
	receiveMax uint16
}

func parseConnack(p packet, version byte) (connackInfo, error) {
	var ci connackInfo
	if p.typ != pktConnack || len(p.body) < 2 {
		return ci, fmt.Errorf("expected CONNACK, got packet type %d: %w", p.typ, errMalformed)
	}
	ci.sessionPresent = p.body[0]&1 != 0
	if code := p.body[1]; code != 0 {
		return ci, fmt.Errorf("%w: return code 0x%02x", errRefused, code)
	}
	if version != proto5 || len(p.body) < 3 {
		return ci, nil
	}
	pl, n, err := readVarint(p.body[2:])
	if err != nil {
		return ci, err
	}
	props := p.body[2+n:]
	if len(props) < pl {
		return ci, errMalformed
	}
	props = props[:pl]
	for len(props) > 0 {
		id := props[0]
		props = props[1:]
		size, ok := v5PropertySize(id, props)
		if !ok || len(props) < size {
			return ci, errMalformed
		}
		if id == 0x21 {
			ci.receiveMax = binary.BigEndian.Uint16(props)
		}
		props = props[size:]
	}
	return ci, nil
}

// v5PropertySize returns the encoded size of the value of property id at
// the start of b [MQTT-2.2.2.2].
func v5PropertySize(id byte, b []byte) (int, bool) {
	switch id {
	case 0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A: // byte
		return 1, true
	case 0x13, 0x21, 0x22, 0x23: // two-byte integer
		return 2, true
	case 0x02, 0x11, 0x18, 0x27: // four-byte integer
		return 4, true
	case 0x0B: // variable byte integer
		_, n, err := readVarint(b)
		return n, err == nil
	case 0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F: // string or binary
		if len(b) < 2 {
			return 0, false
		}
		return 2 + int(binary.BigEndian.Uint16(b)), true
	case 0x26: // user property: string pair
		if len(b) < 2 {
			return 0, false
		}
		k := 2 + int(binary.BigEndian.Uint16(b))
		if len(b) < k+2 {
			return 0, false
		}
		return k + 2 + int(binary.BigEndian.Uint16(b[k:])), true
	}
	return 0, false
}
