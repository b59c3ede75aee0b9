package qos

import "unsafe"

// MessageHead is what a message record holds before its properties and
// payload: enough to tell which filters it matches and how old it is.
// Topic and Origin alias the record.
type MessageHead struct {
	Topic, Origin   []byte
	Created, Expiry int64
}

// PeekMessage reads the head of a message record without decoding the rest
// and without copying: a reader that only counts or matches records (a
// bridge's backlog) need not pay for their payloads. ok is false for a
// record of another kind or a malformed head; UnmarshalBinary tells why.
func PeekMessage(rec []byte) (h MessageHead, ok bool) {
	d := decoder{b: rec}
	if Kind(d.byte()) != KindMessage || d.byte() != messageVersion {
		return h, false
	}
	d.byte() // QoS
	d.byte() // flags
	d.byte() // payload format
	d.uint16()
	h.Created = d.varint()
	h.Expiry = d.varint()
	h.Topic = d.field()
	h.Origin = d.field()
	return h, d.err == nil
}

// strings returns Topic and Origin as strings that alias the record, as
// UnmarshalOwned's do: for a record its reader owns and nobody writes
// again (what Log.Read returns), and only while the record is.
func (h MessageHead) strings() (topic, origin string) {
	return unsafe.String(unsafe.SliceData(h.Topic), len(h.Topic)), unsafe.String(unsafe.SliceData(h.Origin), len(h.Origin))
}
