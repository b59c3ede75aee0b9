package qos_test

import (
	"testing"

	"github.com/edgemq/edgemq/qos"
)

// PeekMessage reads what UnmarshalBinary reads of a message's head, and
// refuses what is not a message or is cut short.
func TestPeekMessage(t *testing.T) {
	for _, m := range []*qos.Message{
		{Topic: "a/b", Origin: "dev-1", QoS: 1, Created: 1234567890123, Expiry: 99, Payload: []byte("x")},
		{Topic: "t", QoS: 2, Origin: "$bridge/central", OriginPacketID: 7, Retain: true, ContentType: "c",
			User: []qos.Property{{Key: "k", Value: "v"}}, Payload: make([]byte, 1000)},
		{Topic: "empty-origin"},
	} {
		rec, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		h, ok := qos.PeekMessage(rec)
		if !ok || string(h.Topic) != m.Topic || string(h.Origin) != m.Origin || h.Created != m.Created || h.Expiry != m.Expiry {
			t.Errorf("peek of %+v: %+v %v", m, h, ok)
		}
		if _, ok := qos.PeekMessage(rec[:8]); ok {
			t.Errorf("peek of %q cut short: ok", m.Topic)
		}
	}
	if _, ok := qos.PeekMessage(qos.EncodeRef(qos.KindInboundRelease, qos.PacketRef{Client: "c", PacketID: 1})); ok {
		t.Error("peek of a release record: ok")
	}
	if _, ok := qos.PeekMessage(nil); ok {
		t.Error("peek of nothing: ok")
	}
}

// BenchmarkMessageHead compares what the bridge's backlog count pays per
// record to match it against a rule: the head alone (PeekMessage), or the
// whole message (UnmarshalBinary).
func BenchmarkMessageHead(b *testing.B) {
	m := &qos.Message{Topic: "bench/12345", Origin: "device-17", QoS: 1, Payload: make([]byte, 64), Created: 123456789}
	rec, err := m.MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("peek", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			h, ok := qos.PeekMessage(rec)
			if !ok || string(h.Origin) == "$bridge/x" || !qos.Match("bench/#", string(h.Topic)) {
				b.Fatal("no match")
			}
		}
	})
	b.Run("unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var x qos.Message
			if x.UnmarshalBinary(rec) != nil || x.Origin == "$bridge/x" || !qos.Match("bench/#", x.Topic) {
				b.Fatal("no match")
			}
		}
	})
}
