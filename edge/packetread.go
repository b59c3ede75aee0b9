package edge

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// readFixedHeader and readPacket read a client's packets from its
// connection and decode them with mochi's decoders, as mochi's
// Client.ReadFixedHeader and Client.ReadPacket do (the same packets, the
// same errors, the same counters in the server's Info: pinned by
// TestReadPacketAsMochi; apart from two MQTT 5 packets mochi decodes
// wrongly: a SUBSCRIBE's options, checkSubscribeOptions, and a DISCONNECT
// of one byte), without what those cost per packet for nothing
// here: mochi reads through a buffer of its own (bufio, which our conn's
// read-ahead makes redundant), decodes from a second copy of the bytes it
// read (an allocation and a copy of every payload), and runs the
// OnPacketRead hooks, copying the packet into and out of each (no hook of
// ours provides it: TestNoHookOnPublishEvents). Once attach reads with
// these, mochi's buffer is never read, so it holds no bytes of ours.

// readFixedHeader reads a fixed header from r into fh; hdr is the
// caller's scratch (at least 2 bytes: it escapes into r's Read, so a
// caller that reads often keeps one on the heap). It checks what mochi's
// ReadFixedHeader checks: the flags of the packet type [MQTT-2.2.2-2] and
// the remaining length against the server's maximum packet size; and one
// it does not: a remaining length of at most four bytes [MQTT-1.5.5].
func readFixedHeader(s *mqtt.Server, r io.Reader, hdr []byte, fh *packets.FixedHeader) error {
	if _, err := io.ReadFull(r, hdr[:2]); err != nil {
		return err
	}
	if err := fh.Decode(hdr[0]); err != nil {
		return err
	}
	// The remaining length, a variable byte integer of at most 4 bytes
	// [MQTT-1.5.5], read one byte at a time past the first: a byte more
	// would be the next packet's.
	var value uint32
	n := 1
	for b, shift := hdr[1], uint(0); ; shift += 7 {
		value |= uint32(b&127) << shift // four bytes hold at most 268,435,455
		if b&128 == 0 {
			break
		}
		if n == 4 {
			return packets.ErrMalformedVariableByteInteger // a fifth byte
		}
		if _, err := io.ReadFull(r, hdr[1:2]); err != nil {
			return err
		}
		b = hdr[1]
		n++
	}
	fh.Remaining = int(value)
	if max := s.Options.Capabilities.MaximumPacketSize; max > 0 && uint32(fh.Remaining+1) > max {
		return packets.ErrPacketTooLarge // [MQTT-3.2.2-15]
	}
	atomic.AddInt64(&s.Info.BytesReceived, int64(n+1))
	return nil
}

// readPacket reads the rest of the packet fh began from r and decodes it
// for cl (whose protocol version it inherits) into a buffer of its own,
// which the packet's byte fields (a payload, a password) then share.
func readPacket(s *mqtt.Server, cl *mqtt.Client, r io.Reader, fh *packets.FixedHeader) (pk packets.Packet, err error) {
	_, err = readPacketInto(s, cl, r, fh, &pk, nil)
	return pk, err
}

// readPacketInto is readPacket into pk (which it overwrites) with buf's
// memory for the packet's buffer, as far as it goes (readBody), and
// returns that buffer: pk's byte fields and strings share it, so it must
// not be reused while anything keeps them. A packet of 800 bytes is not
// copied out on return.
func readPacketInto(s *mqtt.Server, cl *mqtt.Client, r io.Reader, fh *packets.FixedHeader, pk *packets.Packet, buf []byte) (b []byte, err error) {
	atomic.AddInt64(&s.Info.PacketsReceived, 1)
	pk.ProtocolVersion = cl.Properties.ProtocolVersion
	pk.FixedHeader = *fh
	b, err = readBody(r, buf, fh.Remaining)
	if err != nil {
		return b, err
	}
	atomic.AddInt64(&s.Info.BytesReceived, int64(len(b)))
	switch fh.Type {
	case packets.Connect:
		err = pk.ConnectDecode(b)
	case packets.Disconnect:
		err = pk.DisconnectDecode(b)
		if pk.ProtocolVersion == 5 && len(b) == 1 {
			// A reason code and no properties: "If the Remaining Length is
			// less than 2, a value of 0 is used" for the Property Length
			// (MQTT 5 §3.14.2.2); mochi's decoder reads the reason code
			// from a Remaining Length of 2 only, and took e0 01 04 (how
			// Mosquitto's clients say Disconnect with Will Message) for a
			// normal disconnection, which discards the will.
			pk.ReasonCode = b[0]
		}
	case packets.Connack:
		err = pk.ConnackDecode(b)
	case packets.Publish:
		if err = pk.PublishDecode(b); err == nil {
			atomic.AddInt64(&s.Info.MessagesReceived, 1)
		}
	case packets.Puback:
		err = pk.PubackDecode(b)
	case packets.Pubrec:
		err = pk.PubrecDecode(b)
	case packets.Pubrel:
		err = pk.PubrelDecode(b)
	case packets.Pubcomp:
		err = pk.PubcompDecode(b)
	case packets.Subscribe:
		if err = checkSubscribeOptions(pk.ProtocolVersion, b); err == nil {
			err = pk.SubscribeDecode(b)
		}
	case packets.Suback:
		err = pk.SubackDecode(b)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(b)
	case packets.Unsuback:
		err = pk.UnsubackDecode(b)
	case packets.Pingreq, packets.Pingresp:
	case packets.Auth:
		err = pk.AuthDecode(b)
	default:
		err = fmt.Errorf("invalid packet type; %v", fh.Type)
	}
	return b, err
}

// bodyStep is the most readBody allocates for a packet body before any of
// its bytes came.
const bodyStep = 4 << 10

// readBody reads the n bytes of a packet's body, as io.ReadFull does, into
// buf when it has the capacity, and otherwise into a buffer that grows as
// the bytes arrive: from bodyStep (or buf's capacity), doubling, to n
// exactly. A client that declares a large packet (up to
// limits.max_packet_size) and sends a few bytes of it, then nothing more
// until its read deadline (limits.connect_timeout before CONNECT, where
// no client limit counts it yet; 1.5 keepalives after), holds memory for
// what it sent, not for what it declared. Only packets larger than
// bodyStep and than buf pay for the growth: a copy of what came so far at
// each doubling.
func readBody(r io.Reader, buf []byte, n int) ([]byte, error) {
	if cap(buf) >= n {
		b := buf[:n]
		_, err := io.ReadFull(r, b)
		return b, err
	}
	b := buf[:0]
	if cap(b) < bodyStep {
		b = make([]byte, 0, min(n, bodyStep))
	}
	for len(b) < n {
		if len(b) == cap(b) {
			grown := make([]byte, len(b), min(2*cap(b), n))
			copy(grown, b)
			b = grown
		}
		k, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+k]
		if err != nil && len(b) < n {
			if err == io.EOF && len(b) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return b, err
		}
	}
	return b, nil
}

// bodies holds the buffers of the packets receive reads often and nothing
// keeps once it has handled them (bodyFor), so that they cost no
// allocation each: a QoS 1/2 PUBLISH is encoded into its log record
// (qos.Client.Publish keeps none of its bytes), an acknowledgement is
// reduced to its packet id and reason code.
var bodies = sync.Pool{New: func() any { return new(body) }}

// body is a pooled packet buffer.
type body struct{ b []byte }

// putBody gives bd back to bodies. Under the package's tests
// (poisonBodies) it overwrites the buffer first, so that whatever kept a
// packet's bytes past its handling reads garbage there, and the test that
// looks at them fails rather than pass by luck until a later packet
// happens to reuse the buffer.
func putBody(bd *body) {
	if poisonBodies {
		b := bd.b[:cap(bd.b)]
		for i := range b {
			b[i] = 0xA5
		}
	}
	bodies.Put(bd)
}

// poisonBodies is set by the package's tests (putBody).
var poisonBodies bool

// maxPooledBody bounds the buffer a pooled body keeps: one grown by a large
// packet is let go.
const maxPooledBody = 64 << 10

// bodyFor returns the buffer receive reads the packet fh began into, and
// the pooled body it belongs to; a buffer shorter than the packet grows as
// its bytes come (readBody), and receive keeps a pooled body's grown
// buffer in the body. No body: the buffer is the packet's own and may be
// kept (a nil one: readBody allocates it). A PUBLISH that is QoS 0 once
// capped to maxQoS gets its own: the engine keeps its payload for the
// connections it goes to (qos.Client.Publish), and any packet mochi
// handles may be kept by mochi. An acknowledgement of a few bytes is read
// into scratch (it holds the fixed header until then).
func bodyFor(fh *packets.FixedHeader, maxQoS byte, scratch []byte) ([]byte, *body) {
	switch fh.Type {
	case packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp:
		if fh.Remaining <= len(scratch) {
			return scratch[:fh.Remaining], nil
		}
	case packets.Publish:
		if min(fh.Qos, maxQoS) > 0 && fh.Remaining <= maxPooledBody {
			bd := bodies.Get().(*body)
			if want := min(fh.Remaining, bodyStep); cap(bd.b) < want {
				bd.b = make([]byte, max(want, 512))
			}
			return bd.b[:0], bd
		}
	}
	return nil, nil
}

// The SUBSCRIBE errors mochi's decoder does not find.
var (
	errNoSubscriptionOptions  = packets.Code{Code: 0x81, Reason: "malformed packet: topic filter without subscription options"}
	errReservedOptionBits     = packets.Code{Code: 0x81, Reason: "malformed packet: subscription options reserved bits not 0"}
	errRetainHandlingReserved = packets.Code{Code: 0x82, Reason: "protocol violation: retain handling 3"}
)

// checkSubscribeOptions looks at the Subscription Options byte after each
// topic filter of an MQTT 5 SUBSCRIBE body, which mochi's SubscribeDecode
// reads without a bounds check (a filter that ends the packet made it
// panic, taking the broker down) and decodes without looking at its
// reserved bits. A filter without the byte, or with bits 6 and 7 set
// [MQTT-3.8.3-5], is malformed; Retain Handling 3 is a protocol error
// (MQTT 5 §3.8.3.1). What it cannot follow (a bad packet id, property
// length or filter) it leaves to mochi's decoder, which reports it.
func checkSubscribeOptions(version byte, body []byte) error {
	if version != 5 {
		return nil // 3.1.1's requested QoS byte: mochi checks it and its bounds
	}
	r := propReader{b: body}
	r.skip(2)
	r.skip(r.varint())
	for !r.bad && len(r.b) > 0 {
		r.skipString()
		if r.bad {
			break
		}
		if len(r.b) == 0 {
			return errNoSubscriptionOptions
		}
		switch o := r.byte(); {
		case o&0xc0 != 0:
			return errReservedOptionBits
		case (o>>4)&3 == 3:
			return errRetainHandlingReserved
		}
	}
	return nil
}
