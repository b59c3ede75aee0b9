package qos

import (
	"encoding/binary"
	"fmt"
)

// Record kinds after KindMessage. Values are on disk: never renumber, only add.
const (
	// KindSession opens or refreshes a persistent session (Session).
	KindSession Kind = 2
	// KindDisconnect marks a session offline from a time on (Disconnect).
	KindDisconnect Kind = 3
	// KindSessionEnd removes a session and everything it holds (ClientRef).
	KindSessionEnd Kind = 4
	// KindSubscribe grants one subscription (Subscribe).
	KindSubscribe Kind = 5
	// KindUnsubscribe removes one subscription (Unsubscribe).
	KindUnsubscribe Kind = 6
	// KindDeliver assigns a logged message to a session's packet id (Deliver).
	KindDeliver Kind = 7
	// KindRelease records an outbound QoS 2 message reaching the PUBREL
	// stage: its PUBLISH must never be sent again [MQTT-4.3.3-6] (PacketRef).
	KindRelease Kind = 8
	// KindComplete frees an outbound packet id: PUBACK or PUBCOMP (PacketRef).
	KindComplete Kind = 9
	// KindInboundRelease ends an inbound QoS 2 exchange: the publisher's
	// PUBREL arrived, so its packet id may carry a new message (PacketRef).
	KindInboundRelease Kind = 10
	// KindCheckpoint marks that a snapshot of the state before an offset
	// is being written; replay ignores it (EncodeCheckpoint).
	KindCheckpoint Kind = 11
	// KindGroupHandout says how far a shared group's QoS 0 hand-outs may
	// reach (GroupHandout).
	KindGroupHandout Kind = 12
	// KindGroupReturn gives a message a shared group's clean member took
	// at QoS 2 back to the group, its PUBLISH never written (GroupReturn).
	KindGroupReturn Kind = 13
)

// Record versions. A record about a session names it by its client id
// (version 1) or, from version 2, by the session's Ref, a short number its
// Session record maps to the client id: a delivery to a session with a
// 65,535-byte client id costs a few bytes, not two client ids. A record
// with no Ref is still written as version 1 (a bridge's origin, a session
// that never had a Session record), so both are read and written.
const (
	recordByClient = 1
	recordByRef    = 2
)

// versionFor is the version of a record about the session ref (0: none).
func versionFor(ref uint64) byte {
	if ref != 0 {
		return recordByRef
	}
	return recordByClient
}

// appendWho appends the session a record is about: by ref if it has one,
// else by client id (see versionFor).
func appendWho(b []byte, client string, ref uint64) []byte {
	if ref != 0 {
		return binary.AppendUvarint(b, ref)
	}
	return appendString(b, client)
}

// who reads what appendWho wrote for a record of version v.
func (d *decoder) who(v byte) (string, uint64) {
	if v == recordByClient {
		return d.string(), 0
	}
	ref := d.uvarint()
	if ref == 0 && d.err == nil {
		d.fail("session ref 0")
	}
	return "", ref
}

// KindOf returns the kind of an encoded record, or 0 for an empty one.
func KindOf(rec []byte) Kind {
	if len(rec) == 0 {
		return 0
	}
	return Kind(rec[0])
}

// Session is what a persistent session needs to outlive its connection.
type Session struct {
	Client string
	// Ref is the session's short id, given when the session was created:
	// the records about it after this one name it by Ref (and so do
	// snapshots' subscriptions). 0: none (records before version 2 name
	// the session by Client).
	Ref uint64
	// ProtocolVersion is 3, 4 or 5, as in CONNECT.
	ProtocolVersion byte
	// ExpiryInterval is how long, in seconds, the session outlives its
	// connection [MQTT-3.1.2-23]; math.MaxUint32 never expires.
	ExpiryInterval uint32
	// Will is the will message, if any, and WillDelay its delay in seconds.
	Will      *Message
	WillDelay uint32
	// Username is the session's owner: the user that created it. Records
	// written before owners were recorded have "".
	Username string
}

// Disconnect marks Client offline since At (Unix seconds). ExpiryInterval
// is the expiry in force at the disconnect: a v5 DISCONNECT may change it.
// WillPending is true when the connection ended without a normal
// DISCONNECT and the will waits for its delay; false discards the will.
type Disconnect struct {
	Client         string
	Ref            uint64 // the session's, if it has one: then Client is not written
	At             int64
	ExpiryInterval uint32
	WillPending    bool
}

// ClientRef names a session by its client id or, if it has one, its Ref:
// the body of KindSessionEnd.
type ClientRef struct {
	Client string
	Ref    uint64
}

// Subscribe is one granted subscription. Filter is as the client sent it,
// including any "$share/<group>/" prefix.
type Subscribe struct {
	Client            string
	Ref               uint64 // the session's, if it has one: then Client is not written
	Filter            string
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte
	Identifier        int
}

// Unsubscribe removes the subscription Filter of Client.
type Unsubscribe struct {
	Client string
	Ref    uint64 // the session's, if it has one: then Client is not written
	Filter string
}

// Deliver assigns the message logged at Offset to Client under PacketID, at
// QoS (the smaller of the message's and the subscription's). Group names the
// shared subscription group it came through, if any. A QoS 0 delivery has no
// packet id: it only records that the session (or group) got past Offset.
// Retain is the RETAIN flag it was sent with (a retained message sent at
// SUBSCRIBE, or Retain As Published): a resend after a restart carries it
// again [MQTT-4.4.0-1]. AtSubscribe marks a retained message sent at a
// SUBSCRIBE [MQTT-3.3.1-9], not taken from the session's backlog: it does
// not move the session's position in the log, whose backlog below Offset
// may not be sent yet.
type Deliver struct {
	Client      string
	Ref         uint64 // the session's, if it has one: then Client is not written
	PacketID    uint16
	Offset      uint64
	QoS         byte
	Retain      bool
	AtSubscribe bool
	Group       string
}

// deliverRetain and deliverAtSubscribe are the bits of a Deliver record's
// QoS byte that hold Retain and AtSubscribe. Records written before them
// have the bits clear, so no version change was needed: they read as they
// were taken (records before deliverAtSubscribe moved the position for a
// retained message at SUBSCRIBE too).
const (
	deliverRetain      = 4
	deliverAtSubscribe = 8
)

// Checkpoint is the body of KindCheckpoint.
type Checkpoint struct {
	Offset uint64
}

// PacketRef names one packet id of one client (by its session's Ref, if
// it has one): the body of KindRelease, KindComplete and
// KindInboundRelease.
type PacketRef struct {
	Client   string
	Ref      uint64
	PacketID uint16
}

// Encode returns the record for one of the record bodies above (Message,
// Session, Disconnect, Subscribe, Unsubscribe, Deliver) or, for the
// reference bodies, EncodeRef and EncodeEnd. It fails for a body that has
// no encoding (a QoS or Retain Handling above 2, a type it does not
// know), and the caller must refuse what the record was for; the bodies
// that always encode have encoders without an error (EncodeDisconnect,
// EncodeUnsubscribe, EncodeRef, EncodeEnd, EncodeCheckpoint,
// EncodeGroupHandout, EncodeGroupReturn).
func Encode(v any) ([]byte, error) {
	b := make([]byte, 0, 64)
	switch r := v.(type) {
	case *Message:
		return r.AppendBinary(b)
	case *Session:
		b = append(b, byte(KindSession), versionFor(r.Ref), r.ProtocolVersion)
		b = appendString(b, r.Client)
		if r.Ref != 0 {
			b = binary.AppendUvarint(b, r.Ref)
		}
		b = binary.AppendUvarint(b, uint64(r.ExpiryInterval))
		b = binary.AppendUvarint(b, uint64(r.WillDelay))
		// Flags: 1 a will follows (last, it takes the rest), 2 the owner's
		// username follows. Records from before owners hold 0 or 1.
		var flags byte
		if r.Will != nil {
			flags |= 1
		}
		if r.Username != "" {
			flags |= 2
		}
		b = append(b, flags)
		if r.Username != "" {
			b = appendString(b, r.Username)
		}
		if r.Will == nil {
			return b, nil
		}
		return r.Will.AppendBinary(b)
	case *Disconnect:
		return EncodeDisconnect(*r), nil
	case *Subscribe:
		if r.QoS > 2 || r.RetainHandling > 2 {
			return nil, fmt.Errorf("%w: subscribe qos %d retain handling %d", ErrBadRecord, r.QoS, r.RetainHandling)
		}
		var flags byte
		if r.NoLocal {
			flags |= 1
		}
		if r.RetainAsPublished {
			flags |= 2
		}
		b = append(b, byte(KindSubscribe), versionFor(r.Ref), r.QoS, flags, r.RetainHandling)
		b = appendWho(b, r.Client, r.Ref)
		b = appendString(b, r.Filter)
		return binary.AppendVarint(b, int64(r.Identifier)), nil
	case *Unsubscribe:
		return EncodeUnsubscribe(*r), nil
	case *Deliver:
		return appendDeliver(b, r)
	}
	return nil, fmt.Errorf("%w: cannot encode %T", ErrBadRecord, v)
}

// appendDeliver appends r's KindDeliver record to b (Encode).
func appendDeliver(b []byte, r *Deliver) ([]byte, error) {
	if r.QoS > 2 {
		return nil, fmt.Errorf("%w: deliver qos %d", ErrBadRecord, r.QoS)
	}
	flags := r.QoS
	if r.Retain {
		flags |= deliverRetain
	}
	if r.AtSubscribe {
		flags |= deliverAtSubscribe
	}
	b = append(b, byte(KindDeliver), versionFor(r.Ref), flags)
	b = binary.BigEndian.AppendUint16(b, r.PacketID)
	b = binary.AppendUvarint(b, r.Offset)
	b = appendWho(b, r.Client, r.Ref)
	return appendString(b, r.Group), nil
}

// EncodeDisconnect returns a KindDisconnect record. Unlike Encode it
// cannot fail: every Disconnect encodes.
func EncodeDisconnect(r Disconnect) []byte {
	b := make([]byte, 0, 24+len(r.Client))
	b = append(b, byte(KindDisconnect), versionFor(r.Ref))
	b = appendWho(b, r.Client, r.Ref)
	b = binary.AppendVarint(b, r.At)
	b = binary.AppendUvarint(b, uint64(r.ExpiryInterval))
	if r.WillPending {
		return append(b, 1)
	}
	return append(b, 0)
}

// EncodeUnsubscribe returns a KindUnsubscribe record. Unlike Encode it
// cannot fail: every Unsubscribe encodes.
func EncodeUnsubscribe(r Unsubscribe) []byte {
	b := make([]byte, 0, 16+len(r.Client)+len(r.Filter))
	b = append(b, byte(KindUnsubscribe), versionFor(r.Ref))
	b = appendWho(b, r.Client, r.Ref)
	return appendString(b, r.Filter)
}

// EncodeRef returns a KindRelease, KindComplete or KindInboundRelease record.
func EncodeRef(k Kind, r PacketRef) []byte {
	return appendRef(make([]byte, 0, 16+len(r.Client)), k, r)
}

// appendRef appends the reference record k of r to b (EncodeRef).
func appendRef(b []byte, k Kind, r PacketRef) []byte {
	b = append(b, byte(k), versionFor(r.Ref))
	b = binary.BigEndian.AppendUint16(b, r.PacketID)
	return appendWho(b, r.Client, r.Ref)
}

// EncodeCheckpoint returns a KindCheckpoint record for a snapshot of the
// state before offset.
func EncodeCheckpoint(offset uint64) []byte {
	return binary.AppendUvarint([]byte{byte(KindCheckpoint), recordByClient}, offset)
}

// GroupHandout is the body of KindGroupHandout: shared group Group may
// have handed out any of its messages below Below at QoS 0, none of which
// may be handed out at QoS 0 again, not after a crash either
// [MQTT-4.3.1]. A group appends one before its first QoS 0 hand-out at or
// above the last one's Below, reaching some way past the log's end, so
// that its QoS 0 deliveries cost one record per stretch of the log, not
// one each.
type GroupHandout struct {
	Group string
	Below uint64
}

// EncodeGroupHandout returns a KindGroupHandout record.
func EncodeGroupHandout(r GroupHandout) []byte {
	return encodeGroupOffset(KindGroupHandout, r.Group, r.Below)
}

// encodeGroupOffset returns a record of kind k that names a shared group
// and an offset: GroupHandout's and GroupReturn's encoding.
func encodeGroupOffset(k Kind, group string, off uint64) []byte {
	b := appendString([]byte{byte(k), recordByClient}, group)
	return binary.AppendUvarint(b, off)
}

// GroupReturn is the body of KindGroupReturn: the message at Offset,
// which a clean member of shared group Group took at QoS 2 (its Deliver
// record), goes back to the group, to be handed out again: the member
// went away before its PUBLISH was written, so no client has it and
// [MQTT-4.8.2-5] does not keep it the member's.
type GroupReturn struct {
	Group  string
	Offset uint64
}

// EncodeGroupReturn returns a KindGroupReturn record.
func EncodeGroupReturn(r GroupReturn) []byte {
	return encodeGroupOffset(KindGroupReturn, r.Group, r.Offset)
}

// EncodeEnd returns a KindSessionEnd record for a session.
func EncodeEnd(r ClientRef) []byte {
	return appendWho([]byte{byte(KindSessionEnd), versionFor(r.Ref)}, r.Client, r.Ref)
}

// Decode decodes any record into a pointer to its body type (*Message,
// *Session, *Disconnect, *ClientRef, *Subscribe, *Unsubscribe, *Deliver,
// *PacketRef, *Checkpoint, *GroupHandout or *GroupReturn) and returns its kind. Malformed input wraps ErrBadRecord.
func Decode(rec []byte) (Kind, any, error) {
	k := KindOf(rec)
	if k == KindMessage {
		m := new(Message)
		return k, m, m.UnmarshalBinary(rec)
	}
	return decodeRecord(k, rec)
}

// decodeOwned is Decode for a record the caller owns and nobody writes
// again (the dispatcher's, from LogReader.Next): a message's fields are
// rec's own bytes (Message.UnmarshalOwned).
func decodeOwned(rec []byte) (Kind, any, error) {
	k := KindOf(rec)
	if k == KindMessage {
		m := new(Message)
		return k, m, m.UnmarshalOwned(rec)
	}
	return decodeRecord(k, rec)
}

// decodeRecord decodes a record other than a message, of kind k.
func decodeRecord(k Kind, rec []byte) (Kind, any, error) {
	d := decoder{b: rec}
	d.byte()
	v := d.byte()
	if d.err == nil && v != recordByClient && (v != recordByRef || k == KindCheckpoint || k == KindGroupHandout || k == KindGroupReturn) {
		return k, nil, fmt.Errorf("%w: kind %d version %d", ErrBadRecord, k, v)
	}
	var out any
	switch k {
	case KindSession:
		s := &Session{ProtocolVersion: d.byte(), Client: d.string()}
		if v == recordByRef {
			if s.Ref = d.uvarint(); s.Ref == 0 && d.err == nil {
				d.fail("session ref 0")
			}
		}
		s.ExpiryInterval = d.uint32()
		s.WillDelay = d.uint32()
		flags := d.byte()
		if flags > 3 && d.err == nil {
			return k, nil, fmt.Errorf("%w: session flags %#x", ErrBadRecord, flags)
		}
		if flags&2 != 0 {
			s.Username = d.string()
		}
		if flags&1 != 0 && d.err == nil {
			s.Will = new(Message)
			if err := s.Will.UnmarshalBinary(d.b); err != nil {
				return k, nil, err
			}
			d.b = nil
		}
		out = s
	case KindDisconnect:
		r := &Disconnect{}
		r.Client, r.Ref = d.who(v)
		r.At, r.ExpiryInterval = d.varint(), d.uint32()
		switch d.byte() {
		case 0:
		case 1:
			r.WillPending = true
		default:
			d.fail("will flag")
		}
		out = r
	case KindSessionEnd:
		r := &ClientRef{}
		r.Client, r.Ref = d.who(v)
		out = r
	case KindSubscribe:
		s := &Subscribe{QoS: d.byte()}
		flags := d.byte()
		s.RetainHandling = d.byte()
		s.Client, s.Ref = d.who(v)
		s.Filter = d.string()
		s.Identifier = int(d.varint())
		if d.err == nil && (s.QoS > 2 || s.RetainHandling > 2 || flags > 3) {
			return k, nil, fmt.Errorf("%w: subscribe qos %d flags %#x", ErrBadRecord, s.QoS, flags)
		}
		s.NoLocal, s.RetainAsPublished = flags&1 != 0, flags&2 != 0
		out = s
	case KindUnsubscribe:
		r := &Unsubscribe{}
		r.Client, r.Ref = d.who(v)
		r.Filter = d.string()
		out = r
	case KindDeliver:
		flags := d.byte()
		r := &Deliver{QoS: flags &^ (deliverRetain | deliverAtSubscribe), Retain: flags&deliverRetain != 0,
			AtSubscribe: flags&deliverAtSubscribe != 0, PacketID: d.uint16(), Offset: d.uvarint()}
		r.Client, r.Ref = d.who(v)
		r.Group = d.string()
		if d.err == nil && r.QoS > 2 {
			return k, nil, fmt.Errorf("%w: deliver flags %#x", ErrBadRecord, flags)
		}
		out = r
	case KindRelease, KindComplete, KindInboundRelease:
		r := &PacketRef{PacketID: d.uint16()}
		r.Client, r.Ref = d.who(v)
		out = r
	case KindCheckpoint:
		out = &Checkpoint{Offset: d.uvarint()}
	case KindGroupHandout:
		out = &GroupHandout{Group: d.string(), Below: d.uvarint()}
	case KindGroupReturn:
		out = &GroupReturn{Group: d.string(), Offset: d.uvarint()}
	default:
		return k, nil, fmt.Errorf("%w: unknown kind %d", ErrBadRecord, k)
	}
	if d.err != nil {
		return k, nil, d.err
	}
	if len(d.b) != 0 {
		return k, nil, fmt.Errorf("%w: kind %d: %d trailing bytes", ErrBadRecord, k, len(d.b))
	}
	return k, out, nil
}

func (d *decoder) uint32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 {
		d.fail("uint32")
		return 0
	}
	return uint32(v)
}
