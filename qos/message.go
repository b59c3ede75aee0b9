package qos

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"
)

// ErrBadRecord is returned by the decoders for bytes that are not a record
// they understand: truncated, too long, or of an unknown kind or version.
var ErrBadRecord = errors.New("qos: bad record")

// Kind is the first byte of every record the broker writes to the log.
type Kind byte

// Record kinds. Values are on disk: never renumber, only add.
const (
	// KindMessage is an accepted PUBLISH (Message).
	KindMessage Kind = 1
)

// Property is an MQTT 5 user property.
type Property struct {
	Key, Value string
}

// Message is one accepted PUBLISH as the log keeps it: enough to deliver it
// again to any subscriber, on any protocol version, after a restart.
type Message struct {
	// Topic is the full topic name (aliases resolved).
	Topic string
	// Payload is the application message.
	Payload []byte
	// QoS is the publish QoS as accepted (after the server's maximum).
	QoS byte
	// Retain is the publish retain flag.
	Retain bool
	// Will marks a will message the broker published for Origin: it is
	// delivered at its own QoS, 0 included, like any publish.
	Will bool
	// Origin is the publishing client's id; OriginPacketID its packet id,
	// which identifies a QoS 2 publish until its PUBREL [MQTT-4.3.3].
	Origin         string
	OriginPacketID uint16
	// Created is when the broker accepted it, in Unix nanoseconds; for a
	// will, when its CONNECT was until the engine publishes it, which
	// moves Created and Expiry on to the publication (publishAsync).
	Created int64
	// Expiry is the Unix second it was published in (truncated) plus its
	// Message Expiry Interval; it has expired once that second is over
	// (connection.expired). 0: never.
	Expiry int64
	// MQTT 5 properties that travel with the message [MQTT-3.3.2.3].
	PayloadFormat     byte
	PayloadFormatFlag bool
	ContentType       string
	ResponseTopic     string
	CorrelationData   []byte
	User              []Property
}

const messageVersion = 1

// maxField bounds one length-prefixed field; it is above MQTT's 256 MiB
// packet limit, so it only rejects garbage.
const maxField = 1 << 28

// flag bits of the message header byte.
const (
	flagRetain = 1 << iota
	flagPayloadFormat
	flagWill
	flagsKnown = flagRetain | flagPayloadFormat | flagWill
)

// AppendBinary appends the record encoding of m (kind, version, fields) to b.
func (m *Message) AppendBinary(b []byte) ([]byte, error) {
	if m.QoS > 2 {
		return b, fmt.Errorf("%w: qos %d", ErrBadRecord, m.QoS)
	}
	var flags byte
	if m.Retain {
		flags |= flagRetain
	}
	if m.PayloadFormatFlag {
		flags |= flagPayloadFormat
	}
	if m.Will {
		flags |= flagWill
	}
	b = append(b, byte(KindMessage), messageVersion, m.QoS, flags, m.PayloadFormat)
	b = binary.BigEndian.AppendUint16(b, m.OriginPacketID)
	b = binary.AppendVarint(b, m.Created)
	b = binary.AppendVarint(b, m.Expiry)
	b = appendString(b, m.Topic)
	b = appendString(b, m.Origin)
	b = appendString(b, m.ContentType)
	b = appendString(b, m.ResponseTopic)
	b = appendBytes(b, m.CorrelationData)
	b = binary.AppendUvarint(b, uint64(len(m.User)))
	for _, p := range m.User {
		b = appendString(b, p.Key)
		b = appendString(b, p.Value)
	}
	b = appendBytes(b, m.Payload)
	return b, nil
}

// MarshalBinary returns the record encoding of m.
func (m *Message) MarshalBinary() ([]byte, error) {
	return m.AppendBinary(make([]byte, 0, 32+len(m.Topic)+len(m.Origin)+len(m.Payload)))
}

// UnmarshalBinary decodes a record written by MarshalBinary. The result does
// not alias b. Any malformed input returns an error wrapping ErrBadRecord.
func (m *Message) UnmarshalBinary(b []byte) error { return m.unmarshal(b, false) }

// UnmarshalOwned decodes as UnmarshalBinary does, into a message whose
// strings and byte fields are b's own bytes, not copies of them: for a
// record the caller owns and that nobody writes again (what Log.Read and
// LogReader.Next return), where a copy of each field would cost an
// allocation per field and message (the dispatcher, the senders' backlog
// reads, a bridge's forward reader).
func (m *Message) UnmarshalOwned(b []byte) error { return m.unmarshal(b, true) }

func (m *Message) unmarshal(b []byte, owned bool) error {
	if len(b) == 0 || Kind(b[0]) != KindMessage {
		return fmt.Errorf("%w: not a message", ErrBadRecord)
	}
	if len(b) > 1 && b[1] != messageVersion {
		return fmt.Errorf("%w: message version %d", ErrBadRecord, b[1])
	}
	// kind, version, QoS, flags, payload format, origin packet id
	const head = 7
	if len(b) < head {
		return fmt.Errorf("%w: truncated at the header", ErrBadRecord)
	}
	var out Message
	out.QoS = b[2]
	flags := b[3]
	out.PayloadFormat = b[4]
	out.OriginPacketID = binary.BigEndian.Uint16(b[5:head])
	d := decoder{b: b[head:], owned: owned}
	out.Created = d.varint()
	out.Expiry = d.varint()
	out.Topic = d.string()
	out.Origin = d.string()
	out.ContentType = d.string()
	out.ResponseTopic = d.string()
	out.CorrelationData = d.bytes()
	if n := d.uvarint(); n > 0 && d.err == nil {
		if n > uint64(len(d.b)) { // each property takes at least two bytes
			return fmt.Errorf("%w: %d user properties in %d bytes", ErrBadRecord, n, len(d.b))
		}
		out.User = make([]Property, n)
		for i := range out.User {
			out.User[i] = Property{Key: d.string(), Value: d.string()}
		}
	}
	out.Payload = d.bytes()
	if d.err != nil {
		return d.err
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrBadRecord, len(d.b))
	}
	if out.QoS > 2 || flags&^flagsKnown != 0 {
		return fmt.Errorf("%w: qos %d flags %#x", ErrBadRecord, out.QoS, flags)
	}
	out.Retain = flags&flagRetain != 0
	out.PayloadFormatFlag = flags&flagPayloadFormat != 0
	out.Will = flags&flagWill != 0
	*m = out
	return nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b, p []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

// decoder reads fields in order and keeps the first error, so a record is
// decoded straight through and checked once. owned: strings and bytes are
// b's own (Message.UnmarshalOwned), not copies.
type decoder struct {
	b     []byte
	err   error
	owned bool
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated at %s", ErrBadRecord, what)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail("byte")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uint16() uint16 {
	if len(d.b) < 2 {
		d.fail("uint16")
		return 0
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// uvarint reads an unsigned varint; a one-byte one (a field's length
// below 128, the usual case) without a call.
func (d *decoder) uvarint() uint64 {
	if b := d.b; len(b) > 0 && b[0] < 0x80 {
		d.b = b[1:]
		return uint64(b[0])
	}
	return d.uvarintLong()
}

func (d *decoder) uvarintLong() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) field() []byte {
	var n uint64
	if b := d.b; len(b) > 0 && b[0] < 0x80 { // uvarint's fast path, without its call
		n, d.b = uint64(b[0]), b[1:]
	} else if n = d.uvarintLong(); d.err != nil {
		return nil
	}
	if n > maxField || n > uint64(len(d.b)) {
		d.fail("field")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string {
	f := d.field()
	if d.owned && len(f) > 0 {
		return unsafe.String(&f[0], len(f)) // b is never written again
	}
	return string(f)
}

func (d *decoder) bytes() []byte {
	f := d.field()
	if len(f) == 0 {
		return nil
	}
	if d.owned {
		return f
	}
	return append([]byte(nil), f...)
}
