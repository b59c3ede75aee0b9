package edge_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/edge"
)

// The MQTT 5 normative statements an interoperability suite walks
// (Paho's client_test5.py, and conformance tools that check each
// [MQTT-x.y.z-n]), each tested over a real socket with raw packets: what
// the broker writes is what the test reads, byte for byte, without a
// client library that fixes things up.

// v5 connects a raw MQTT 5 client; tune changes the CONNECT.
func v5(t *testing.T, addr, id string, clean bool, tune func(*packets.Packet)) (*rawClient, packets.Packet) {
	t.Helper()
	rc := dialRaw(t, addr, 5)
	ack := rc.connectWith(id, clean, 30, tune)
	if ack.ReasonCode != 0 {
		t.Fatalf("connack %s: reason %#x", id, ack.ReasonCode)
	}
	return rc, ack
}

// expect reads packets until one of type typ arrives, within d; PUBLISHes
// of other exchanges on the way fail the test.
func (rc *rawClient) expect(typ byte, d time.Duration) packets.Packet {
	rc.t.Helper()
	pk, err := rc.read(d)
	if err != nil {
		rc.t.Fatalf("want packet type %d: %v", typ, err)
	}
	if pk.FixedHeader.Type != typ {
		rc.t.Fatalf("want packet type %d, got %d (id %d, reason %#x, topic %q)", typ, pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode, pk.TopicName)
	}
	return pk
}

// none asserts that nothing arrives within d.
func (rc *rawClient) none(d time.Duration) {
	rc.t.Helper()
	if pk, err := rc.read(d); err == nil {
		rc.t.Fatalf("unexpected packet type %d (id %d, reason %#x, topic %q)", pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode, pk.TopicName)
	}
}

// publishAcked sends a PUBLISH and, for QoS 1, waits for its PUBACK; QoS 2
// runs the whole exchange.
func (rc *rawClient) publishAcked(pk packets.Packet) {
	rc.t.Helper()
	pk.FixedHeader.Type = packets.Publish
	pk.Mods.AllowResponseInfo = true // mochi's encoder leaves Response Topic out without it
	rc.send(pk)
	switch pk.FixedHeader.Qos {
	case 1:
		if ack := rc.expect(packets.Puback, 5*time.Second); ack.ReasonCode >= 0x80 {
			rc.t.Fatalf("puback reason %#x", ack.ReasonCode)
		}
	case 2:
		rec := rc.expect(packets.Pubrec, 5*time.Second)
		if rec.ReasonCode >= 0x80 {
			rc.t.Fatalf("pubrec reason %#x", rec.ReasonCode)
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: pk.PacketID})
		rc.expect(packets.Pubcomp, 5*time.Second)
	}
}

// subscribeWith sends one SUBSCRIBE and waits for its SUBACK, returning
// its reason codes.
func (rc *rawClient) subscribeWith(pid uint16, id int, subs ...packets.Subscription) []byte {
	rc.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: pid, Filters: subs}
	if id > 0 {
		pk.Properties.SubscriptionIdentifier = []int{id}
	}
	rc.send(pk)
	ack := rc.expect(packets.Suback, 5*time.Second)
	if ack.PacketID != pid {
		rc.t.Fatalf("suback for %d, want %d", ack.PacketID, pid)
	}
	return ack.ReasonCodes
}

// ackPublish acknowledges a QoS 1 PUBLISH read (QoS 2: PUBREC, PUBREL
// read, PUBCOMP).
func (rc *rawClient) ackPublish(pk packets.Packet) {
	rc.t.Helper()
	switch pk.FixedHeader.Qos {
	case 1:
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	case 2:
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: pk.PacketID})
		rc.expect(packets.Pubrel, 5*time.Second)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: pk.PacketID})
	}
}

// TestConformance5Retained: retained messages at SUBSCRIBE.
func TestConformance5Retained(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	pub, _ := v5(t, addr, "ret-pub", true, nil)

	// [MQTT-3.3.2-6]: the Message Expiry Interval a retained message is
	// sent with is what is left of it; [MQTT-3.3.1-9] retained at
	// SUBSCRIBE carry RETAIN 1.
	t.Run("MQTT-3.3.2-6 expiry of a retained message counts down", func(t *testing.T) {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 1, TopicName: "ret/exp", Payload: []byte("x")}
		pk.Properties.MessageExpiryInterval = 20
		pub.publishAcked(pk)
		time.Sleep(2100 * time.Millisecond)
		sub, _ := v5(t, addr, "ret-exp-sub", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "ret/exp", Qos: 1})
		got := sub.expect(packets.Publish, 5*time.Second)
		if !got.FixedHeader.Retain {
			t.Errorf("[MQTT-3.3.1-9] retained at SUBSCRIBE without RETAIN")
		}
		if e := got.Properties.MessageExpiryInterval; e == 0 || e > 18 {
			t.Errorf("[MQTT-3.3.2-6] message expiry %d, want 1..18", e)
		}
	})

	// [MQTT-3.3.2-5]: once its expiry passed, a retained message is not
	// delivered to a new subscriber.
	t.Run("MQTT-3.3.2-5 expired retained not delivered", func(t *testing.T) {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 2, TopicName: "ret/gone", Payload: []byte("x")}
		pk.Properties.MessageExpiryInterval = 1
		pub.publishAcked(pk)
		time.Sleep(2100 * time.Millisecond)
		sub, _ := v5(t, addr, "ret-gone-sub", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "ret/gone", Qos: 1})
		sub.none(500 * time.Millisecond)
	})

	pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 3, TopicName: "ret/rh", Payload: []byte("rh")})

	// [MQTT-3.3.1-9] Retain Handling 0: sent at every SUBSCRIBE.
	t.Run("MQTT-3.3.1-9 retain handling 0 sends at every subscribe", func(t *testing.T) {
		sub, _ := v5(t, addr, "rh0", true, nil)
		for i := uint16(1); i <= 2; i++ {
			sub.subscribeWith(i, 0, packets.Subscription{Filter: "ret/rh", Qos: 1})
			got := sub.expect(packets.Publish, 5*time.Second)
			if !got.FixedHeader.Retain || string(got.Payload) != "rh" {
				t.Fatalf("subscribe %d: got %+v", i, got)
			}
			sub.ackPublish(got)
		}
	})
	// [MQTT-3.3.1-10] Retain Handling 1: only if the subscription did not exist.
	t.Run("MQTT-3.3.1-10 retain handling 1 only for a new subscription", func(t *testing.T) {
		sub, _ := v5(t, addr, "rh1", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "ret/rh", Qos: 1, RetainHandling: 1})
		got := sub.expect(packets.Publish, 5*time.Second)
		sub.ackPublish(got)
		sub.subscribeWith(2, 0, packets.Subscription{Filter: "ret/rh", Qos: 1, RetainHandling: 1})
		sub.none(500 * time.Millisecond)
	})
	// [MQTT-3.3.1-11] Retain Handling 2: never.
	t.Run("MQTT-3.3.1-11 retain handling 2 sends none", func(t *testing.T) {
		sub, _ := v5(t, addr, "rh2", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "ret/rh", Qos: 1, RetainHandling: 2})
		sub.none(500 * time.Millisecond)
	})
	// [MQTT-3.3.1-12] [MQTT-3.3.1-13] Retain As Published, on live messages.
	t.Run("MQTT-3.3.1-12 retain as published", func(t *testing.T) {
		rap, _ := v5(t, addr, "rap1", true, nil)
		rap.subscribeWith(1, 0, packets.Subscription{Filter: "ret/live", Qos: 1, RetainAsPublished: true})
		plain, _ := v5(t, addr, "rap0", true, nil)
		plain.subscribeWith(1, 0, packets.Subscription{Filter: "ret/live", Qos: 1})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 4, TopicName: "ret/live", Payload: []byte("l")})
		if got := rap.expect(packets.Publish, 5*time.Second); !got.FixedHeader.Retain {
			t.Errorf("[MQTT-3.3.1-13] retain as published: RETAIN 0")
		}
		if got := plain.expect(packets.Publish, 5*time.Second); got.FixedHeader.Retain {
			t.Errorf("[MQTT-3.3.1-12] not retain as published: RETAIN 1")
		}
	})
	// [MQTT-3.3.1-9] [MQTT-3.3.1-11]: a retained message acknowledged just
	// before the SUBSCRIBE is one of its retained messages, however far
	// behind the broker's fan-out is: RETAIN 1 (not a live message with
	// RETAIN 0), and none with Retain Handling 2.
	t.Run("MQTT-3.3.1-9 retained acknowledged just before subscribe", func(t *testing.T) {
		sub, _ := v5(t, addr, "ret-race", true, nil)
		for i := 0; i < 40; i++ {
			topic := fmt.Sprintf("ret/race/%d", i)
			pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 9, TopicName: topic, Payload: []byte("r")})
			rh := byte(0)
			if i%2 == 1 {
				rh = 2
			}
			sub.subscribeWith(uint16(i+1), 0, packets.Subscription{Filter: topic, Qos: 1, RetainHandling: rh})
			if rh == 2 {
				continue
			}
			got := sub.expect(packets.Publish, 5*time.Second)
			if got.TopicName != topic || !got.FixedHeader.Retain {
				t.Fatalf("round %d: got %s retain %v, want %s retain 1", i, got.TopicName, got.FixedHeader.Retain, topic)
			}
			sub.ackPublish(got)
		}
		sub.none(300 * time.Millisecond)
	})
	// [MQTT-3.3.4-3] the subscription identifier goes with a retained message.
	t.Run("MQTT-3.3.4-3 subscription identifier on retained", func(t *testing.T) {
		sub, _ := v5(t, addr, "ret-subid", true, nil)
		sub.subscribeWith(1, 77, packets.Subscription{Filter: "ret/rh", Qos: 1})
		got := sub.expect(packets.Publish, 5*time.Second)
		if len(got.Properties.SubscriptionIdentifier) != 1 || got.Properties.SubscriptionIdentifier[0] != 77 {
			t.Errorf("subscription identifiers %v, want [77]", got.Properties.SubscriptionIdentifier)
		}
	})
	// [MQTT-3.3.1-6] [MQTT-3.3.1-7] an empty retained payload removes it, and is not kept.
	t.Run("MQTT-3.3.1-6 empty retained payload clears", func(t *testing.T) {
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 5, TopicName: "ret/clear", Payload: []byte("c")})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 6, TopicName: "ret/clear"})
		sub, _ := v5(t, addr, "ret-clear", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "ret/clear", Qos: 1})
		sub.none(500 * time.Millisecond)
	})
	// [MQTT-3.8.4-8] retained at the lower of the two QoS.
	t.Run("MQTT-3.8.4-8 retained at granted qos", func(t *testing.T) {
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 2, Retain: true}, PacketID: 7, TopicName: "ret/q2", Payload: []byte("q")})
		sub, _ := v5(t, addr, "ret-q", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "ret/q2", Qos: 1})
		if got := sub.expect(packets.Publish, 5*time.Second); got.FixedHeader.Qos != 1 {
			t.Errorf("qos %d, want 1", got.FixedHeader.Qos)
		}
	})
}

// TestConformance5Properties: what a PUBLISH carries reaches the
// subscriber unaltered.
func TestConformance5Properties(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	sub, _ := v5(t, addr, "prop-sub", true, nil)
	sub.subscribeWith(1, 0, packets.Subscription{Filter: "prop/#", Qos: 1})
	pub, _ := v5(t, addr, "prop-pub", true, nil)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 1, TopicName: "prop/a", Payload: []byte("p")}
	pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = 1, true
	pk.Properties.ContentType = "text/plain"
	pk.Properties.ResponseTopic = "prop/reply"
	pk.Properties.CorrelationData = []byte{1, 2, 3}
	pk.Properties.MessageExpiryInterval = 100
	pk.Properties.User = []packets.UserProperty{{Key: "b", Val: "1"}, {Key: "a", Val: "2"}, {Key: "b", Val: "3"}}
	pub.publishAcked(pk)
	got := sub.expect(packets.Publish, 5*time.Second)
	p := got.Properties
	if !p.PayloadFormatFlag || p.PayloadFormat != 1 {
		t.Errorf("[MQTT-3.3.2-4] payload format %v %d", p.PayloadFormatFlag, p.PayloadFormat)
	}
	if p.ContentType != "text/plain" {
		t.Errorf("[MQTT-3.3.2-20] content type %q", p.ContentType)
	}
	if p.ResponseTopic != "prop/reply" || !bytes.Equal(p.CorrelationData, []byte{1, 2, 3}) {
		t.Errorf("[MQTT-3.3.2-15] [MQTT-3.3.2-16] response topic %q correlation %v", p.ResponseTopic, p.CorrelationData)
	}
	if p.MessageExpiryInterval == 0 || p.MessageExpiryInterval > 100 {
		t.Errorf("[MQTT-3.3.2-6] expiry %d", p.MessageExpiryInterval)
	}
	if len(p.User) != 3 || p.User[0] != pk.Properties.User[0] || p.User[1] != pk.Properties.User[1] || p.User[2] != pk.Properties.User[2] {
		t.Errorf("[MQTT-3.3.2-17] [MQTT-3.3.2-18] user properties %v", p.User)
	}
}

// TestConformance5PayloadFormatInvalid: a server may check that a
// payload whose Payload Format Indicator is 1 is well-formed UTF-8
// (§3.3.2.3.2), and the will's (§3.1.3.2.3); edgemq does, and refuses one
// that is not with 0x99 Payload format invalid: in PUBACK or PUBREC, in a
// DISCONNECT for QoS 0 (which has no acknowledgement), in CONNACK for a
// will. It delivers none of them; a payload with indicator 0 is bytes.
func TestConformance5PayloadFormatInvalid(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	sub, _ := v5(t, addr, "pfi-sub", true, nil)
	sub.subscribeWith(1, 0, packets.Subscription{Filter: "pfi/#", Qos: 2})
	pub, _ := v5(t, addr, "pfi-pub", true, nil)
	bad := []byte{'o', 'k', 0xff, 0xfe}
	publish := func(rc *rawClient, pid uint16, q, format byte, payload []byte) {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: q}, PacketID: pid, TopicName: "pfi/t", Payload: payload}
		pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = format, true
		rc.send(pk)
	}
	publish(pub, 1, 1, 1, bad)
	if ack := pub.expect(packets.Puback, 5*time.Second); ack.PacketID != 1 || ack.ReasonCode != 0x99 {
		t.Errorf("puback %d reason %#x, want 1 0x99", ack.PacketID, ack.ReasonCode)
	}
	publish(pub, 2, 2, 1, bad)
	if rec := pub.expect(packets.Pubrec, 5*time.Second); rec.PacketID != 2 || rec.ReasonCode != 0x99 {
		t.Errorf("pubrec %d reason %#x, want 2 0x99", rec.PacketID, rec.ReasonCode)
	}
	publish(pub, 3, 1, 0, bad) // unspecified bytes: delivered as they are
	pub.expect(packets.Puback, 5*time.Second)
	if got := sub.expect(packets.Publish, 5*time.Second); !bytes.Equal(got.Payload, bad) {
		t.Errorf("got %x, want the indicator 0 payload %x", got.Payload, bad)
	} else {
		sub.ackPublish(got)
	}
	q0, _ := v5(t, addr, "pfi-q0", true, nil)
	publish(q0, 0, 0, 1, bad)
	if pk := q0.expect(packets.Disconnect, 5*time.Second); pk.ReasonCode != 0x99 {
		t.Errorf("QoS 0: disconnect reason %#x, want 0x99", pk.ReasonCode)
	}
	sub.none(300 * time.Millisecond)

	rc := dialRaw(t, addr, 5)
	ack := rc.connectWith("pfi-will", true, 30, func(pk *packets.Packet) {
		willConnect("pfi/will", 0, 0)(pk)
		pk.Connect.WillPayload = bad
		pk.Connect.WillProperties.PayloadFormat, pk.Connect.WillProperties.PayloadFormatFlag = 1, true
	})
	if ack.ReasonCode != 0x99 {
		t.Errorf("will with an invalid UTF-8 payload: connack %#x, want 0x99", ack.ReasonCode)
	}
}

// TestConformance5PayloadFormatAfterAuthorization: a publish (or a will)
// the client may not make is answered as not authorized whatever its payload: at
// QoS 1 PUBACK 0x87 (§3.4.2.1), at QoS 0, which has no acknowledgement,
// a drop with the connection kept, as for any other payload; the
// Payload Format Indicator's check (0x99, §3.3.2.3.2) is for messages the
// server would take. Checked the other way round, the answer to a client
// that may not publish there depended on its payload, and at QoS 0 it was
// disconnected (0x99) for a message that was to be dropped anyway.
func TestConformance5PayloadFormatAfterAuthorization(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.ACL = []edge.ACLRule{{Topic: "ok/#", Access: "readwrite"}}
	tb := startBroker(t, cfg)
	rc, _ := v5(t, tb.Addr("tcp").String(), "pfi-acl", true, nil)
	bad := []byte{'o', 'k', 0xff, 0xfe}
	publish := func(pid uint16, q byte, topic string) {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: q}, PacketID: pid, TopicName: topic, Payload: bad}
		pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = 1, true
		rc.send(pk)
	}
	publish(1, 1, "denied/x")
	if ack := rc.expect(packets.Puback, 5*time.Second); ack.PacketID != 1 || ack.ReasonCode != 0x87 {
		t.Errorf("QoS 1: puback %d reason %#x, want 1 0x87 not authorized", ack.PacketID, ack.ReasonCode)
	}
	publish(0, 0, "denied/x")
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	if pk := rc.expect(packets.Pingresp, 5*time.Second); pk.FixedHeader.Type != packets.Pingresp {
		t.Errorf("QoS 0: got type %d, want the PINGRESP of a connection kept", pk.FixedHeader.Type)
	}
	publish(2, 1, "ok/x")
	if ack := rc.expect(packets.Puback, 5*time.Second); ack.PacketID != 2 || ack.ReasonCode != 0x99 {
		t.Errorf("QoS 1 allowed: puback %d reason %#x, want 2 0x99 payload format invalid", ack.PacketID, ack.ReasonCode)
	}
	// A will so: CONNACK 0x87, not 0x99 (§3.1.3.2.3).
	ack := dialRaw(t, tb.Addr("tcp").String(), 5).connectWith("pfi-acl-will", true, 30, func(pk *packets.Packet) {
		willConnect("denied/will", 0, 0)(pk)
		pk.Connect.WillPayload = bad
		pk.Connect.WillProperties.PayloadFormat, pk.Connect.WillProperties.PayloadFormatFlag = 1, true
	})
	if ack.ReasonCode != 0x87 {
		t.Errorf("will on a denied topic with an invalid UTF-8 payload: connack %#x, want 0x87", ack.ReasonCode)
	}
}

// TestConformance5Subscriptions: SUBSCRIBE options, identifiers and
// overlapping subscriptions.
func TestConformance5Subscriptions(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	pub, _ := v5(t, addr, "subs-pub", true, nil)

	// [MQTT-3.3.4-4] [MQTT-3.3.4-5]: overlapping subscriptions of one
	// session: one message, at the highest QoS, with every identifier.
	t.Run("MQTT-3.3.4-5 overlapping subscriptions carry every identifier", func(t *testing.T) {
		sub, _ := v5(t, addr, "overlap", true, nil)
		sub.subscribeWith(1, 456789, packets.Subscription{Filter: "ov/+", Qos: 0}) // a 3-byte varint
		sub.subscribeWith(2, 9, packets.Subscription{Filter: "ov/#", Qos: 1})
		sub.subscribeWith(3, 0, packets.Subscription{Filter: "ov/a", Qos: 0})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 2}, PacketID: 1, TopicName: "ov/a", Payload: []byte("o")})
		got := sub.expect(packets.Publish, 5*time.Second)
		ids := map[int]bool{}
		for _, id := range got.Properties.SubscriptionIdentifier {
			ids[id] = true
		}
		if got.FixedHeader.Qos == 1 {
			if !ids[456789] || !ids[9] || len(ids) != 2 {
				t.Errorf("identifiers %v, want 456789 and 9", got.Properties.SubscriptionIdentifier)
			}
			sub.ackPublish(got)
			sub.none(300 * time.Millisecond)
		} else {
			t.Errorf("qos %d, want 1 (the highest granted)", got.FixedHeader.Qos)
		}
	})

	// [MQTT-3.8.3-3] No Local: not sent back to its own connection.
	t.Run("MQTT-3.8.3-3 no local", func(t *testing.T) {
		self, _ := v5(t, addr, "nolocal", true, nil)
		self.subscribeWith(1, 0, packets.Subscription{Filter: "nl/t", Qos: 1, NoLocal: true})
		for q := byte(0); q <= 2; q++ {
			self.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: q}, PacketID: uint16(10 + q), TopicName: "nl/t", Payload: []byte("n")})
		}
		self.none(300 * time.Millisecond)
	})

	// [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
	t.Run("MQTT-3.8.3-4 no local on shared subscription", func(t *testing.T) {
		rc, _ := v5(t, addr, "nolocal-shared", true, nil)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: "$share/g/nl", Qos: 1, NoLocal: true}}})
		pk, err := rc.read(5 * time.Second)
		if err == nil && pk.FixedHeader.Type == packets.Disconnect {
			if pk.ReasonCode != 0x82 {
				t.Errorf("disconnect reason %#x, want 0x82", pk.ReasonCode)
			}
		} else if err == nil {
			t.Errorf("got packet type %d (%v), want DISCONNECT 0x82", pk.FixedHeader.Type, pk.ReasonCodes)
		}
		if !rc.closed(5 * time.Second) {
			t.Error("connection still open")
		}
	})

	// [MQTT-4.7.2-1]: # and + at the first level do not match $ topics.
	t.Run("MQTT-4.7.2-1 wildcards skip $ topics", func(t *testing.T) {
		sub, _ := v5(t, addr, "dollar", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "#", Qos: 1}, packets.Subscription{Filter: "+/x", Qos: 1})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 2, TopicName: "$dollar/x", Payload: []byte("d")})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 3, TopicName: "plain/x", Payload: []byte("p")})
		got := sub.expect(packets.Publish, 5*time.Second)
		if got.TopicName != "plain/x" {
			t.Errorf("got %s first", got.TopicName)
		}
		sub.ackPublish(got)
		sub.none(300 * time.Millisecond)
	})

	// [MQTT-4.7.2-1] holds for the filter of a shared subscription too:
	// $share/g/# gets no $SYS topic (the broker's own, published every
	// second), $share/g/$SYS/# does; $SHARE/g/$SYS/# is no shared
	// subscription [MQTT-4.7.3-4] and matches only topics that start with
	// $SHARE.
	t.Run("MQTT-4.7.2-1 shared wildcards skip $ topics", func(t *testing.T) {
		wild, _ := v5(t, addr, "dollar-shared", true, nil)
		wild.subscribeWith(1, 0, packets.Subscription{Filter: "$share/g/#", Qos: 0}, packets.Subscription{Filter: "$share/g/+/broker/#", Qos: 0},
			packets.Subscription{Filter: "$SHARE/g/$SYS/#", Qos: 0})
		sys, _ := v5(t, addr, "dollar-shared-sys", true, nil)
		sys.subscribeWith(1, 0, packets.Subscription{Filter: "$share/g/$SYS/#", Qos: 0})
		sys.expect(packets.Publish, 5*time.Second)
		wild.none(1500 * time.Millisecond)
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 30, TopicName: "dollar/x", Payload: []byte("p")})
		if got := wild.expect(packets.Publish, 5*time.Second); got.TopicName != "dollar/x" {
			t.Errorf("got %s", got.TopicName)
		}
	})

	// [MQTT-4.7.1-1] [MQTT-4.7.1-2] invalid filters: SUBACK 0x8F, the
	// others in the packet still granted [MQTT-3.9.3-1].
	t.Run("MQTT-4.7.1-2 invalid topic filters", func(t *testing.T) {
		rc, _ := v5(t, addr, "badfilter", true, nil)
		codes := rc.subscribeWith(1, 0, packets.Subscription{Filter: "a/#/b", Qos: 1}, packets.Subscription{Filter: "ok/+", Qos: 1},
			packets.Subscription{Filter: "a+", Qos: 1}, packets.Subscription{Filter: "$share/g", Qos: 1},
			packets.Subscription{Filter: "a/b#", Qos: 1}, packets.Subscription{Filter: "$share/g/", Qos: 1},
			packets.Subscription{Filter: "+/x/+", Qos: 0})
		if !bytes.Equal(codes, []byte{0x8F, 1, 0x8F, 0x8F, 0x8F, 0x8F, 0}) {
			t.Errorf("suback codes %x, want 8f 01 8f 8f 8f 8f 00", codes)
		}
	})

	// [MQTT-4.8.2-1]: a ShareName is at least one character; [MQTT-4.8.2-2]
	// it holds no '+' or '#': SUBACK 0x8F for each such filter, in v5 and
	// 3.1.1 (0x80).
	t.Run("MQTT-4.8.2-1 shared subscription without a share name", func(t *testing.T) {
		bad := []packets.Subscription{{Filter: "$share//x", Qos: 1}, {Filter: "$share//", Qos: 1}, {Filter: "$share/+/x", Qos: 1},
			{Filter: "$share/#/x", Qos: 1}, {Filter: "$share/g/x", Qos: 1}}
		rc, _ := v5(t, addr, "share-name", true, nil)
		if codes := rc.subscribeWith(1, 0, bad...); !bytes.Equal(codes, []byte{0x8F, 0x8F, 0x8F, 0x8F, 1}) {
			t.Errorf("v5 suback %x, want 8f 8f 8f 8f 01", codes)
		}
		v3c, _ := v3(t, addr, "share-name-v3", true, nil)
		v3c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, Filters: bad})
		if ack := v3c.expect(packets.Suback, 5*time.Second); !bytes.Equal(ack.ReasonCodes, []byte{0x80, 0x80, 0x80, 0x80, 1}) {
			t.Errorf("3.1.1 suback %x, want 80 80 80 80 01", ack.ReasonCodes)
		}
	})

	// [MQTT-3.10.4-5] [MQTT-3.11.3-1]: UNSUBACK per filter; 0x11 for a
	// subscription that did not exist. The filters of one UNSUBSCRIBE are
	// taken as a sequence of UNSUBSCRIBEs [MQTT-3.10.4-6]: a filter given
	// twice existed only for the first.
	t.Run("MQTT-3.11.3-1 unsuback reason codes", func(t *testing.T) {
		rc, _ := v5(t, addr, "unsub", true, nil)
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "un/a", Qos: 1})
		rc.sendUnsubscribe(2, "un/a", "un/none", "un/a")
		ack := rc.expect(packets.Unsuback, 5*time.Second)
		if !bytes.Equal(ack.ReasonCodes, []byte{0, 0x11, 0x11}) {
			t.Errorf("unsuback codes %x, want 00 11 11", ack.ReasonCodes)
		}
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 4, TopicName: "un/a", Payload: []byte("u")})
		rc.none(300 * time.Millisecond)
	})

	// [MQTT-3.8.4-3]: a SUBSCRIBE of an existing filter replaces it; the
	// new options hold.
	t.Run("MQTT-3.8.4-3 resubscribe replaces", func(t *testing.T) {
		rc, _ := v5(t, addr, "resub", true, nil)
		rc.subscribeWith(1, 1, packets.Subscription{Filter: "rs/a", Qos: 2})
		rc.subscribeWith(2, 2, packets.Subscription{Filter: "rs/a", Qos: 1})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 2}, PacketID: 5, TopicName: "rs/a", Payload: []byte("r")})
		got := rc.expect(packets.Publish, 5*time.Second)
		if got.FixedHeader.Qos != 1 || len(got.Properties.SubscriptionIdentifier) != 1 || got.Properties.SubscriptionIdentifier[0] != 2 {
			t.Errorf("qos %d ids %v, want 1 [2]", got.FixedHeader.Qos, got.Properties.SubscriptionIdentifier)
		}
		rc.ackPublish(got)
		rc.none(300 * time.Millisecond)
	})

	// [MQTT-4.8.2-3] a shared group gets one copy; a member's own
	// subscription its own copy with its identifier.
	t.Run("MQTT-4.8.2-3 shared subscription one copy per group", func(t *testing.T) {
		a, _ := v5(t, addr, "sh-a", true, nil)
		b, _ := v5(t, addr, "sh-b", true, nil)
		a.subscribeWith(1, 3, packets.Subscription{Filter: "$share/g/sh/t", Qos: 1})
		b.subscribeWith(1, 4, packets.Subscription{Filter: "$share/g/sh/t", Qos: 1})
		for i := 0; i < 4; i++ {
			pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: uint16(20 + i), TopicName: "sh/t", Payload: []byte{byte(i)}})
		}
		n := 0
		for _, c := range []*rawClient{a, b} {
			for {
				pk, err := c.read(500 * time.Millisecond)
				if err != nil {
					break
				}
				want := map[*rawClient]int{a: 3, b: 4}[c]
				if len(pk.Properties.SubscriptionIdentifier) != 1 || pk.Properties.SubscriptionIdentifier[0] != want {
					t.Errorf("shared delivery ids %v, want [%d]", pk.Properties.SubscriptionIdentifier, want)
				}
				c.ackPublish(pk)
				n++
			}
		}
		if n != 4 {
			t.Errorf("group got %d of 4", n)
		}
	})

	// §4.8.2: a shared subscription's filter starts with "$share/", and
	// topic names and filters are case-sensitive [MQTT-4.7.3-4]:
	// "$SHARE/g/up/t" is an ordinary filter, which matches the topic
	// "$SHARE/g/up/t" and not "up/t", gives each subscriber its own copy,
	// and retained messages at SUBSCRIBE.
	t.Run("MQTT-4.7.3-4 $SHARE is no shared subscription", func(t *testing.T) {
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 40, TopicName: "$SHARE/g/up/ret", Payload: []byte("r")})
		t.Cleanup(func() {
			pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 49, TopicName: "$SHARE/g/up/ret"})
		})
		a, _ := v5(t, addr, "upper-a", true, nil)
		b, _ := v5(t, addr, "upper-b", true, nil)
		for _, c := range []*rawClient{a, b} {
			if codes := c.subscribeWith(1, 0, packets.Subscription{Filter: "$SHARE/g/up/+", Qos: 1}); !bytes.Equal(codes, []byte{1}) {
				t.Fatalf("suback %x, want 01", codes)
			}
			if got := c.expect(packets.Publish, 5*time.Second); got.TopicName != "$SHARE/g/up/ret" || !got.FixedHeader.Retain {
				t.Errorf("got %q retain %v, want the retained $SHARE/g/up/ret", got.TopicName, got.FixedHeader.Retain)
			} else {
				c.ackPublish(got)
			}
		}
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 41, TopicName: "up/t", Payload: []byte("plain")})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 42, TopicName: "$SHARE/g/up/t", Payload: []byte("upper")})
		for _, c := range []*rawClient{a, b} {
			if got := c.expect(packets.Publish, 5*time.Second); got.TopicName != "$SHARE/g/up/t" {
				t.Errorf("got %q (%s), want $SHARE/g/up/t", got.TopicName, got.Payload)
			} else {
				c.ackPublish(got)
			}
			c.none(300 * time.Millisecond)
		}
	})
}

// TestConformance5ShareCase: a shared subscription's filter starts with
// "$share/" (§4.8.2 [MQTT-4.8.2-1]), and topic filters and names are
// case-sensitive (§4.7.3 [MQTT-4.7.3-4]): "$SHARE" in another case is an
// ordinary filter's first level, so the forms that would be no valid
// shared filter are valid ordinary ones, granted, No Local allowed on
// them ([MQTT-3.8.3-4] is for shared subscriptions only), and a topic name
// of those forms is published to their subscribers: "$SHARE", "$SHARE/g",
// "$SHARE/#", "$SHARE/+/x", and No Local on "$Share/g/t". In MQTT 3.1.1
// too, where the filters are the same.
func TestConformance5ShareCase(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	subs := []packets.Subscription{{Filter: "$SHARE", Qos: 1}, {Filter: "$SHARE/g", Qos: 1}, {Filter: "$SHARE/#", Qos: 1},
		{Filter: "$SHARE/+/x", Qos: 1}, {Filter: "$Share/g/t", Qos: 1, NoLocal: true}}
	sub, _ := v5(t, addr, "share-case", true, nil)
	if codes := sub.subscribeWith(1, 0, subs...); !bytes.Equal(codes, []byte{1, 1, 1, 1, 1}) {
		t.Fatalf("suback %x, want 01 01 01 01 01", codes)
	}
	pub, _ := v5(t, addr, "share-case-pub", true, nil)
	for i, topic := range []string{"$SHARE", "$SHARE/g", "$SHARE/g/x", "$Share/g/t"} {
		pub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(i + 1), TopicName: topic, Payload: []byte(topic)})
		if ack := pub.expect(packets.Puback, 5*time.Second); ack.ReasonCode != 0 {
			t.Errorf("publish to %q: puback %#x, want 0 (its subscriber matches)", topic, ack.ReasonCode)
			continue
		}
		got := sub.expect(packets.Publish, 5*time.Second)
		if got.TopicName != topic {
			t.Errorf("got %q, want %q", got.TopicName, topic)
		}
		sub.ackPublish(got)
	}
	// No Local holds: the subscriber's own publish is not sent back.
	sub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 9, TopicName: "$Share/g/t", Payload: []byte("own")})
	sub.none(300 * time.Millisecond)

	v3c, _ := v3(t, addr, "share-case-v3", true, nil)
	v3c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, Filters: subs[:4]})
	if ack := v3c.expect(packets.Suback, 5*time.Second); !bytes.Equal(ack.ReasonCodes, []byte{1, 1, 1, 1}) {
		t.Errorf("3.1.1 suback %x, want 01 01 01 01", ack.ReasonCodes)
	}
}

// sendUnsubscribe sends UNSUBSCRIBE for filters.
func (rc *rawClient) sendUnsubscribe(pid uint16, filters ...string) {
	rc.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: pid, ProtocolVersion: rc.version}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f})
	}
	var buf bytes.Buffer
	if err := pk.UnsubscribeEncode(&buf); err != nil {
		rc.t.Fatal(err)
	}
	if _, err := rc.c.Write(buf.Bytes()); err != nil {
		rc.t.Fatal(err)
	}
}

// TestConformance5Connect: what CONNACK tells and what CONNECT asks for.
func TestConformance5Connect(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()

	// [MQTT-3.2.2-16]: a zero-length client id gets an Assigned Client
	// Identifier, unique, which the session is known by.
	t.Run("MQTT-3.2.2-16 assigned client identifier", func(t *testing.T) {
		_, a := v5(t, addr, "", true, nil)
		_, b := v5(t, addr, "", true, nil)
		if a.Properties.AssignedClientID == "" || a.Properties.AssignedClientID == b.Properties.AssignedClientID {
			t.Errorf("assigned ids %q %q", a.Properties.AssignedClientID, b.Properties.AssignedClientID)
		}
	})

	// [MQTT-3.2.2-2] [MQTT-3.2.2-3]: session present.
	t.Run("MQTT-3.2.2-3 session present", func(t *testing.T) {
		rc, ack := v5(t, addr, "sp", false, nil)
		if ack.SessionPresent {
			t.Error("new session present")
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		rc, ack = v5(t, addr, "sp", false, nil)
		if !ack.SessionPresent {
			t.Error("resumed session not present")
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		if _, ack = v5(t, addr, "sp", true, nil); ack.SessionPresent {
			t.Error("[MQTT-3.2.2-2] clean start with session present")
		}
	})

	// [MQTT-3.2.2-9] ... [MQTT-3.2.2-22]: the CONNACK properties.
	t.Run("MQTT-3.2.2 connack properties", func(t *testing.T) {
		_, ack := v5(t, addr, "props", true, nil)
		p := ack.Properties
		if p.ReceiveMaximum == 0 {
			t.Error("no receive maximum")
		}
		if p.MaximumPacketSize == 0 {
			t.Error("no maximum packet size")
		}
		if p.TopicAliasMaximum == 0 {
			t.Error("no topic alias maximum")
		}
	})

	// [MQTT-3.1.2-29]: Request Problem Information 0: no Reason String or
	// User Property on anything but PUBLISH, CONNACK and DISCONNECT.
	t.Run("MQTT-3.1.2-29 request problem information 0", func(t *testing.T) {
		rc, _ := v5(t, addr, "rpi0", true, func(pk *packets.Packet) {
			pk.Properties.RequestProblemInfo, pk.Properties.RequestProblemInfoFlag = 0, true
		})
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: "a/#/b", Qos: 1}}}
		pk.Properties.User = []packets.UserProperty{{Key: "k", Val: "v"}}
		rc.send(pk)
		ack := rc.expect(packets.Suback, 5*time.Second)
		if ack.Properties.ReasonString != "" || len(ack.Properties.User) > 0 {
			t.Errorf("suback reason %q user %v", ack.Properties.ReasonString, ack.Properties.User)
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 9})
		comp := rc.expect(packets.Pubcomp, 5*time.Second)
		if comp.Properties.ReasonString != "" {
			t.Errorf("pubcomp reason string %q", comp.Properties.ReasonString)
		}
	})

	// [MQTT-4.3.3-13]: a PUBREL of a packet id the server does not hold is
	// answered PUBCOMP 0x92 Packet Identifier not found.
	t.Run("MQTT-3.7.2-1 pubrel unknown packet id", func(t *testing.T) {
		rc, _ := v5(t, addr, "pubrel-unknown", true, nil)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 42})
		comp := rc.expect(packets.Pubcomp, 5*time.Second)
		if comp.PacketID != 42 || comp.ReasonCode != 0x92 {
			t.Errorf("pubcomp %d reason %#x, want 42 0x92", comp.PacketID, comp.ReasonCode)
		}
	})

	// [MQTT-4.3.3-10] QoS 2 inbound: one delivery however often it comes
	// before PUBREL; after PUBCOMP the packet id is free for a new message
	// [MQTT-2.2.1-3].
	t.Run("MQTT-4.3.3-10 qos 2 once, packet id reuse", func(t *testing.T) {
		sub, _ := v5(t, addr, "q2-sub", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "q2/t", Qos: 1})
		rc, _ := v5(t, addr, "q2-pub", true, nil)
		for i := 0; i < 3; i++ {
			rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: i > 0}, PacketID: 7, TopicName: "q2/t", Payload: []byte("one")})
			rc.expect(packets.Pubrec, 5*time.Second)
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 7})
		if c := rc.expect(packets.Pubcomp, 5*time.Second); c.ReasonCode != 0 {
			t.Errorf("pubcomp reason %#x", c.ReasonCode)
		}
		rc.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 2}, PacketID: 7, TopicName: "q2/t", Payload: []byte("two")})
		for _, want := range []string{"one", "two"} {
			got := sub.expect(packets.Publish, 5*time.Second)
			if string(got.Payload) != want {
				t.Fatalf("got %q, want %q", got.Payload, want)
			}
			sub.ackPublish(got)
		}
		sub.none(300 * time.Millisecond)
	})

	// [MQTT-3.3.2-8]: topic alias 0 is a protocol error (0x82 or 0x94);
	// [MQTT-3.3.2-9] above the Topic Alias Maximum: DISCONNECT 0x94.
	for _, alias := range []byte{0, 65} {
		t.Run(fmt.Sprintf("MQTT-3.3.2-9 topic alias %d", alias), func(t *testing.T) {
			rc, _ := v5(t, addr, "alias-bad", true, nil)
			// QoS 1 "al/t", packet id 1, properties: topic alias, payload "a".
			if _, err := rc.c.Write([]byte{0x32, 13, 0, 4, 'a', 'l', '/', 't', 0, 1, 3, 0x23, 0, alias, 'a'}); err != nil {
				t.Fatal(err)
			}
			d := rc.expect(packets.Disconnect, 5*time.Second)
			if d.ReasonCode != 0x94 && !(alias == 0 && d.ReasonCode == 0x82) {
				t.Errorf("alias %d: disconnect %#x, want 0x94", alias, d.ReasonCode)
			}
		})
	}

	// [MQTT-3.3.2-12]: an alias set by one PUBLISH stands for its topic in
	// the next, on this connection.
	t.Run("MQTT-3.3.2-12 inbound topic alias", func(t *testing.T) {
		sub, _ := v5(t, addr, "alias-sub", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "al/#", Qos: 1})
		rc, _ := v5(t, addr, "alias-pub", true, nil)
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 1, TopicName: "al/x", Payload: []byte("1")}
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 3, true
		rc.publishAcked(pk)
		pk.TopicName, pk.PacketID, pk.Payload = "", 2, []byte("2")
		rc.publishAcked(pk)
		for i := 0; i < 2; i++ {
			got := sub.expect(packets.Publish, 5*time.Second)
			if got.TopicName != "al/x" {
				t.Errorf("topic %q", got.TopicName)
			}
			sub.ackPublish(got)
		}
	})

	// [MQTT-3.1.2-24] [MQTT-3.1.2-25]: nothing larger than the client's
	// Maximum Packet Size is sent to it; the next message flows.
	t.Run("MQTT-3.1.2-24 client maximum packet size", func(t *testing.T) {
		sub, _ := v5(t, addr, "mps-sub", true, func(pk *packets.Packet) { pk.Properties.MaximumPacketSize = 64 })
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "mps/#", Qos: 1})
		pub, _ := v5(t, addr, "mps-pub", true, nil)
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 1, TopicName: "mps/big", Payload: make([]byte, 100)})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 0}, TopicName: "mps/big0", Payload: make([]byte, 100)})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 2, TopicName: "mps/small", Payload: []byte("s")})
		got := sub.expect(packets.Publish, 5*time.Second)
		if got.TopicName != "mps/small" {
			t.Errorf("got %s", got.TopicName)
		}
	})

	// [MQTT-3.2.2-11]... a PUBLISH over the server's Maximum Packet Size:
	// DISCONNECT 0x95 [MQTT-3.1.2-24]'s server side.
	t.Run("MQTT-3.2.2-15 server maximum packet size", func(t *testing.T) {
		rc, ack := v5(t, addr, "mps-over", true, nil)
		n := int(ack.Properties.MaximumPacketSize)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 0}, TopicName: "mps/over", Payload: make([]byte, n)})
		d := rc.expect(packets.Disconnect, 5*time.Second)
		if d.ReasonCode != 0x95 {
			t.Errorf("disconnect %#x, want 0x95", d.ReasonCode)
		}
	})

	// [MQTT-3.14.2-2]: DISCONNECT with a Session Expiry Interval when
	// CONNECT had 0 is a protocol error.
	t.Run("MQTT-3.14.2-2 session expiry set at disconnect", func(t *testing.T) {
		rc, _ := v5(t, addr, "sei-dis", true, nil)
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 60, true
		rc.send(pk)
		d, err := rc.read(5 * time.Second)
		if err == nil && (d.FixedHeader.Type != packets.Disconnect || d.ReasonCode != 0x82) {
			t.Errorf("got type %d reason %#x, want DISCONNECT 0x82", d.FixedHeader.Type, d.ReasonCode)
		}
		if !rc.closed(5 * time.Second) {
			t.Error("still open")
		}
		if rc, ack := v5(t, addr, "sei-dis", false, nil); ack.SessionPresent {
			t.Error("the session was kept")
			_ = rc
		}
	})

	// [MQTT-3.12.4-1] PINGREQ: PINGRESP.
	t.Run("MQTT-3.12.4-1 pingresp", func(t *testing.T) {
		rc, _ := v5(t, addr, "ping", true, nil)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		rc.expect(packets.Pingresp, 5*time.Second)
	})

	// An Authentication Method (§3.1.2.11.9) the server does not support:
	// CONNACK 0x8C Bad authentication method [MQTT-4.12.0-1].
	t.Run("MQTT-4.12.0-1 unsupported authentication method", func(t *testing.T) {
		rc := dialRaw(t, addr, 5)
		ack := rc.connectWith("auth-method", true, 30, func(pk *packets.Packet) { pk.Properties.AuthenticationMethod = "SCRAM-SHA-1" })
		if ack.ReasonCode != 0x8C {
			t.Errorf("connack %#x, want 0x8C", ack.ReasonCode)
		}
	})

	// [MQTT-3.1.2-31]: a client that gave no Authentication Method sends
	// no AUTH; one that does commits a protocol error [MQTT-4.13.1-1].
	t.Run("MQTT-3.1.2-31 auth without authentication method", func(t *testing.T) {
		rc, _ := v5(t, addr, "auth-packet", true, nil)
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Auth}, ReasonCode: 0x19, ProtocolVersion: 5}
		pk.Properties.AuthenticationMethod = "SCRAM-SHA-1"
		var buf bytes.Buffer
		if err := pk.AuthEncode(&buf); err != nil {
			t.Fatal(err)
		}
		if _, err := rc.c.Write(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		d, err := rc.read(5 * time.Second)
		if err == nil && (d.FixedHeader.Type != packets.Disconnect || d.ReasonCode != 0x82) {
			t.Errorf("got type %d reason %#x, want DISCONNECT 0x82", d.FixedHeader.Type, d.ReasonCode)
		}
		if !rc.closed(5 * time.Second) {
			t.Error("still open")
		}
	})

	// [MQTT-3.3.1-4]: QoS 3 is malformed; [MQTT-3.3.2-2] a topic name
	// with a wildcard: DISCONNECT 0x90 or 0x81 first, then close.
	t.Run("MQTT-3.3.2-2 publish to a wildcard topic", func(t *testing.T) {
		rc, _ := v5(t, addr, "pub-wild", true, nil)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, TopicName: "a/+", Payload: []byte("w")})
		pk, err := rc.read(5 * time.Second)
		if err == nil && (pk.FixedHeader.Type != packets.Disconnect || (pk.ReasonCode != 0x90 && pk.ReasonCode != 0x82)) {
			t.Errorf("got type %d reason %#x, want DISCONNECT 0x90 or 0x82", pk.FixedHeader.Type, pk.ReasonCode)
		}
		if !rc.closed(5 * time.Second) {
			t.Error("still open")
		}
	})
}

// willConnect is a CONNECT tune with a will on topic, QoS 1, with
// delay seconds and the session expiry given.
func willConnect(topic string, delay, expiry uint32) func(*packets.Packet) {
	return func(pk *packets.Packet) {
		pk.Connect.WillFlag = true
		pk.Connect.WillTopic = topic
		pk.Connect.WillPayload = []byte("will of " + pk.Connect.ClientIdentifier)
		pk.Connect.WillQos = 1
		pk.Connect.WillProperties.WillDelayInterval = delay
		pk.Connect.WillProperties.ContentType = "text/will"
		pk.Connect.WillProperties.User = []packets.UserProperty{{Key: "w", Val: "1"}}
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = expiry, true
	}
}

// TestConformance5Will: when a will is published and when not.
func TestConformance5Will(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	watch, _ := v5(t, addr, "will-watch", true, nil)
	watch.subscribeWith(1, 0, packets.Subscription{Filter: "will/#", Qos: 1})
	wait := func(t *testing.T, topic string, d time.Duration) packets.Packet {
		t.Helper()
		got := watch.expect(packets.Publish, d)
		if got.TopicName != topic {
			t.Fatalf("will on %q, want %q", got.TopicName, topic)
		}
		watch.ackPublish(got)
		return got
	}

	// [MQTT-3.1.2-8]: a connection closed without DISCONNECT publishes
	// its will, with its properties [MQTT-3.1.3-10].
	t.Run("MQTT-3.1.2-8 will on a lost connection", func(t *testing.T) {
		rc, _ := v5(t, addr, "w-lost", true, willConnect("will/lost", 0, 0))
		_ = rc.c.Close()
		got := wait(t, "will/lost", 5*time.Second)
		if got.Properties.ContentType != "text/will" || len(got.Properties.User) != 1 {
			t.Errorf("[MQTT-3.1.3-10] will properties: content type %q user %v", got.Properties.ContentType, got.Properties.User)
		}
	})
	// [MQTT-3.1.2-10] [MQTT-3.14.4-3]: DISCONNECT 0x00 discards the will.
	t.Run("MQTT-3.14.4-3 normal disconnect discards will", func(t *testing.T) {
		rc, _ := v5(t, addr, "w-normal", true, willConnect("will/normal", 0, 0))
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		watch.none(500 * time.Millisecond)
	})
	// DISCONNECT 0x04 Disconnect with Will Message (§3.14.2.1): only 0x00
	// deletes the will [MQTT-3.1.2-8] [MQTT-3.14.4-3].
	t.Run("MQTT-3.14.2 disconnect with will message 0x04", func(t *testing.T) {
		rc, _ := v5(t, addr, "w-04", true, willConnect("will/04", 0, 0))
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: 0x04})
		rc.closed(5 * time.Second)
		wait(t, "will/04", 5*time.Second)
	})
	// [MQTT-3.1.2-10] [MQTT-3.14.4-3]: only DISCONNECT 0x00 discards the
	// will; one with an error code (the client's own failure) leaves it
	// to be published as for a lost connection.
	for _, code := range []byte{0x80, 0x83, 0x93} {
		t.Run(fmt.Sprintf("MQTT-3.1.2-10 disconnect %#x publishes the will", code), func(t *testing.T) {
			topic := fmt.Sprintf("will/err%x", code)
			rc, _ := v5(t, addr, "w-"+topic, true, willConnect(topic, 0, 0))
			rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: code})
			rc.closed(5 * time.Second)
			wait(t, topic, 5*time.Second)
		})
	}
	// §3.14.2.2: a DISCONNECT of Remaining Length 1 is a reason code with
	// no properties (Mosquitto's clients send 0x04 so): e0 01 04.
	t.Run("MQTT-3.14.2 disconnect 0x04 without properties", func(t *testing.T) {
		rc, _ := v5(t, addr, "w-04short", true, willConnect("will/04short", 0, 0))
		if _, err := rc.c.Write([]byte{0xe0, 0x01, 0x04}); err != nil {
			t.Fatal(err)
		}
		rc.closed(5 * time.Second)
		wait(t, "will/04short", 5*time.Second)
	})
	// [MQTT-3.1.3-9]: the will waits its delay; a new connection to the
	// session before then means no will.
	t.Run("MQTT-3.1.3-9 will delay cancelled by reconnect", func(t *testing.T) {
		rc, _ := v5(t, addr, "w-delay", false, willConnect("will/delay", 2, 60))
		_ = rc.c.Close()
		time.Sleep(500 * time.Millisecond)
		v5(t, addr, "w-delay", false, func(pk *packets.Packet) {
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 60, true
		})
		watch.none(2500 * time.Millisecond)
	})
	t.Run("MQTT-3.1.3-9 will after its delay", func(t *testing.T) {
		rc, _ := v5(t, addr, "w-delay2", false, willConnect("will/delay2", 1, 60))
		_ = rc.c.Close()
		watch.none(700 * time.Millisecond)
		wait(t, "will/delay2", 5*time.Second)
	})
	// [MQTT-3.1.3-9]: or when the session ends, whichever is first.
	t.Run("MQTT-3.1.3-9 will at session end before its delay", func(t *testing.T) {
		rc, _ := v5(t, addr, "w-expiry", false, willConnect("will/expiry", 30, 1))
		_ = rc.c.Close()
		wait(t, "will/expiry", 5*time.Second)
	})
	// [MQTT-3.1.4-3]: a takeover closes the old connection; its will
	// (delay 0) is published, as for any connection closed without
	// DISCONNECT [MQTT-3.1.2-8].
	t.Run("MQTT-3.1.4-3 will on takeover", func(t *testing.T) {
		old, _ := v5(t, addr, "w-take", false, willConnect("will/take", 0, 60))
		v5(t, addr, "w-take", false, func(pk *packets.Packet) {
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 60, true
		})
		if d := old.expect(packets.Disconnect, 5*time.Second); d.ReasonCode != 0x8E {
			t.Errorf("takeover disconnect %#x, want 0x8E", d.ReasonCode)
		}
		wait(t, "will/take", 5*time.Second)
	})
	// [MQTT-3.1.3-9] takeover within the delay: no will.
	t.Run("MQTT-3.1.3-9 takeover within the will delay", func(t *testing.T) {
		v5(t, addr, "w-take2", false, willConnect("will/take2", 5, 60))
		v5(t, addr, "w-take2", false, func(pk *packets.Packet) {
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 60, true
		})
		watch.none(700 * time.Millisecond)
	})
	// [MQTT-3.1.2-24]'s keepalive: a client silent 1.5 keepalives is
	// disconnected, and its will published.
	t.Run("MQTT-3.1.2-22 keepalive expiry publishes will", func(t *testing.T) {
		rc := dialRaw(t, addr, 5)
		rc.connectWith("w-keepalive", true, 1, willConnect("will/keepalive", 0, 0))
		wait(t, "will/keepalive", 5*time.Second)
	})
	// MQTT 5 §3.1.3.2.4: a will's Message Expiry Interval is "sent as the
	// Publication Expiry Interval when the Server publishes the Will
	// Message": it counts from the publication, not from the CONNECT, nor
	// from the disconnect its delay counts from [MQTT-3.3.2-6].
	t.Run("MQTT-3.1.3-9 will expiry counts from its publication", func(t *testing.T) {
		rc, _ := v5(t, addr, "w-exp", false, func(pk *packets.Packet) {
			willConnect("will/exp", 2, 60)(pk)
			pk.Connect.WillProperties.MessageExpiryInterval = 3
		})
		time.Sleep(time.Second)
		_ = rc.c.Close()
		got := wait(t, "will/exp", 5*time.Second)
		if e := got.Properties.MessageExpiryInterval; e < 2 || e > 3 {
			t.Errorf("will published with a message expiry of %d s, want 3 (2: a second boundary passed)", e)
		}
	})
	// [MQTT-3.1.2-15] will retain.
	t.Run("MQTT-3.1.2-17 retained will", func(t *testing.T) {
		rc, _ := v5(t, addr, "w-ret", true, func(pk *packets.Packet) {
			willConnect("will/ret", 0, 0)(pk)
			pk.Connect.WillRetain = true
		})
		_ = rc.c.Close()
		wait(t, "will/ret", 5*time.Second)
		late, _ := v5(t, addr, "w-ret-late", true, nil)
		late.subscribeWith(1, 0, packets.Subscription{Filter: "will/ret", Qos: 1})
		if got := late.expect(packets.Publish, 5*time.Second); !got.FixedHeader.Retain {
			t.Error("will not retained")
		}
	})
}

// TestConformance5Expiry: session and message expiry.
func TestConformance5Expiry(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	pub, _ := v5(t, addr, "exp-pub", true, nil)
	persist := func(expiry uint32) func(*packets.Packet) {
		return func(pk *packets.Packet) {
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = expiry, true
		}
	}

	// [MQTT-3.3.2-5] [MQTT-3.3.2-6]: a message queued for an offline
	// session expires there; one still alive carries what is left.
	t.Run("MQTT-3.3.2-5 queued message expires offline", func(t *testing.T) {
		rc, _ := v5(t, addr, "exp-off", false, persist(300))
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "exp/off/#", Qos: 1})
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		short := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 1, TopicName: "exp/off/short", Payload: []byte("s")}
		short.Properties.MessageExpiryInterval = 1
		pub.publishAcked(short)
		long := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 2, TopicName: "exp/off/long", Payload: []byte("l")}
		long.Properties.MessageExpiryInterval = 30
		pub.publishAcked(long)
		time.Sleep(2100 * time.Millisecond)
		rc, _ = v5(t, addr, "exp-off", false, persist(300))
		got := rc.expect(packets.Publish, 5*time.Second)
		if got.TopicName != "exp/off/long" {
			t.Fatalf("got %s, want only exp/off/long", got.TopicName)
		}
		if e := got.Properties.MessageExpiryInterval; e == 0 || e > 28 {
			t.Errorf("[MQTT-3.3.2-6] expiry %d, want 1..28", e)
		}
		rc.ackPublish(got)
		rc.none(300 * time.Millisecond)
	})
	// [MQTT-4.1.0-2] [MQTT-3.1.2-23]: a session ends its expiry after the
	// connection closed.
	t.Run("MQTT-3.1.2-23 session expiry", func(t *testing.T) {
		rc, _ := v5(t, addr, "exp-sess", false, persist(1))
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "exp/sess", Qos: 1})
		_ = rc.c.Close()
		time.Sleep(2500 * time.Millisecond)
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 3, TopicName: "exp/sess", Payload: []byte("x")})
		rc, ack := v5(t, addr, "exp-sess", false, persist(1))
		if ack.SessionPresent {
			t.Error("expired session present")
		}
		rc.none(300 * time.Millisecond)
	})
	// §3.14.2.2.2: DISCONNECT may shorten the session expiry to 0:
	// the session ends with the connection.
	t.Run("MQTT-3.1.2-23 session expiry changed at disconnect", func(t *testing.T) {
		rc, _ := v5(t, addr, "exp-dis", false, persist(300))
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "exp/dis", Qos: 1})
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 0, true
		rc.send(pk)
		rc.closed(5 * time.Second)
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 4, TopicName: "exp/dis", Payload: []byte("x")})
		if _, ack := v5(t, addr, "exp-dis", false, persist(300)); ack.SessionPresent {
			t.Error("session kept after DISCONNECT set its expiry to 0")
		}
	})
	// [MQTT-3.3.4-7] ... [MQTT-3.3.4-9]: the server sends no more QoS 1/2
	// than the client's Receive Maximum unacknowledged.
	t.Run("MQTT-3.3.4-9 client receive maximum", func(t *testing.T) {
		rc, _ := v5(t, addr, "rm2", true, func(pk *packets.Packet) { pk.Properties.ReceiveMaximum = 2 })
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "rm/t", Qos: 2})
		for i := 0; i < 5; i++ {
			pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: uint16(10 + i), TopicName: "rm/t", Payload: []byte{byte(i)}})
		}
		a := rc.expect(packets.Publish, 5*time.Second)
		b := rc.expect(packets.Publish, 5*time.Second)
		rc.none(500 * time.Millisecond)
		rc.ackPublish(a)
		c := rc.expect(packets.Publish, 5*time.Second)
		rc.none(300 * time.Millisecond)
		rc.ackPublish(b)
		rc.ackPublish(c)
		for i := 0; i < 2; i++ {
			rc.ackPublish(rc.expect(packets.Publish, 5*time.Second))
		}
	})
}

// lateInSecond waits until the wall clock is in the last tenth of a
// second: a timer counted in whole seconds from now, truncated, would
// then come due 0.1 s later, whatever its interval.
func lateInSecond() {
	ns := time.Now().UnixNano() % int64(time.Second)
	if ns < int64(900*time.Millisecond) {
		time.Sleep(time.Duration(int64(910*time.Millisecond) - ns))
	}
}

// TestConformance5NotEarly: the intervals of MQTT 5 are lower bounds:
// nothing expires, and no will is published, before its interval passed,
// wherever in its second it started.
func TestConformance5NotEarly(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	pub, _ := v5(t, addr, "early-pub", true, nil)
	persist := func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
	}

	// [MQTT-3.3.2-5]: a message is deleted once its interval has passed,
	// not before: with 3 s, published at x.91, it is alive at x.91+2.3.
	t.Run("MQTT-3.3.2-5 message expiry not early", func(t *testing.T) {
		rc, _ := v5(t, addr, "early-off", false, persist)
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "early/msg", Qos: 1})
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		lateInSecond()
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 1, TopicName: "early/msg", Payload: []byte("e")}
		pk.Properties.MessageExpiryInterval = 3
		pub.publishAcked(pk)
		time.Sleep(2300 * time.Millisecond)
		rc, _ = v5(t, addr, "early-off", false, persist)
		got := rc.expect(packets.Publish, 5*time.Second)
		if got.Properties.MessageExpiryInterval == 0 {
			t.Error("no expiry interval left")
		}
		ret, _ := v5(t, addr, "early-ret", true, nil)
		ret.subscribeWith(1, 0, packets.Subscription{Filter: "early/msg", Qos: 1})
		ret.expect(packets.Publish, 5*time.Second)
	})

	// [MQTT-3.1.3-9]: the will waits its Will Delay Interval.
	t.Run("MQTT-3.1.3-9 will delay not early", func(t *testing.T) {
		watch, _ := v5(t, addr, "early-watch", true, nil)
		watch.subscribeWith(1, 0, packets.Subscription{Filter: "early/will", Qos: 1})
		rc, _ := v5(t, addr, "early-will", false, willConnect("early/will", 1, 60))
		lateInSecond()
		start := time.Now()
		_ = rc.c.Close()
		watch.expect(packets.Publish, 5*time.Second)
		if d := time.Since(start); d < time.Second {
			t.Errorf("will published %v after the connection closed, delay 1 s", d)
		}
	})

	// [MQTT-3.1.2-23]: the session lives its Session Expiry Interval.
	t.Run("MQTT-3.1.2-23 session expiry not early", func(t *testing.T) {
		rc := dialRaw(t, addr, 5)
		rc.connectWith("early-sess-2", false, 30, func(pk *packets.Packet) {
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 1, true
		})
		lateInSecond()
		_ = rc.c.Close()
		time.Sleep(500 * time.Millisecond)
		if _, ack := v5(t, addr, "early-sess-2", false, nil); !ack.SessionPresent {
			t.Error("session ended 0.5 s into its 1 s expiry")
		}
	})
}

// TestConformance5ProtocolErrors: what a client must not send, and the
// DISCONNECT (or CONNACK) it gets for it [MQTT-4.13.1-1].
func TestConformance5ProtocolErrors(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	closesWith := func(t *testing.T, rc *rawClient, codes ...byte) {
		t.Helper()
		pk, err := rc.read(5 * time.Second)
		if err == nil {
			ok := pk.FixedHeader.Type == packets.Disconnect && bytes.IndexByte(codes, pk.ReasonCode) >= 0
			if !ok {
				t.Errorf("got type %d reason %#x, want DISCONNECT %x", pk.FixedHeader.Type, pk.ReasonCode, codes)
			}
		}
		if !rc.closed(5 * time.Second) {
			t.Error("still open")
		}
	}

	// [MQTT-3.3.4-6]: a PUBLISH from a client carries no Subscription
	// Identifier.
	t.Run("MQTT-3.3.4-6 publish with subscription identifier", func(t *testing.T) {
		rc, _ := v5(t, addr, "pe-subid", true, nil)
		// QoS 0 "a", properties: subscription identifier 1, payload "x".
		if _, err := rc.c.Write([]byte{0x30, 7, 0, 1, 'a', 2, 0x0b, 1, 'x'}); err != nil {
			t.Fatal(err)
		}
		closesWith(t, rc, 0x82)
	})
	// §3.8.2.1.2: a Subscription Identifier of 0 is a protocol error.
	t.Run("MQTT-3.8.2.1.2 subscription identifier 0", func(t *testing.T) {
		rc, _ := v5(t, addr, "pe-subid0", true, nil)
		// SUBSCRIBE id 1, properties: subscription identifier 0, "a" QoS 1.
		if _, err := rc.c.Write([]byte{0x82, 9, 0, 1, 2, 0x0b, 0, 0, 1, 'a', 1}); err != nil {
			t.Fatal(err)
		}
		closesWith(t, rc, 0x82, 0x81)
	})
	// §3.1.2.11.3, §3.1.2.11.4: Receive Maximum 0 and Maximum Packet Size 0 in
	// CONNECT are protocol errors: CONNACK 0x82 (or 0x81), closed.
	for _, tc := range []struct {
		name  string
		props []byte
	}{
		{"receive maximum 0", []byte{3, 0x21, 0, 0}},
		{"maximum packet size 0", []byte{5, 0x27, 0, 0, 0, 0}},
		{"topic alias maximum twice", []byte{6, 0x22, 0, 1, 0x22, 0, 2}},
		// §3.1.2.11.6, §3.1.2.11.7: "a value other than 0 or 1".
		{"request response information 2", []byte{2, 0x19, 2}},
		{"request problem information 2", []byte{2, 0x17, 2}},
	} {
		t.Run("MQTT-3.1.2 connect "+tc.name, func(t *testing.T) {
			rc := dialRaw(t, addr, 5)
			body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 30}, tc.props...)
			body = append(body, 0, 2, 'p', 'e')
			if _, err := rc.c.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
				t.Fatal(err)
			}
			if pk, err := rc.read(5 * time.Second); err == nil && (pk.FixedHeader.Type != packets.Connack || pk.ReasonCode < 0x80) {
				t.Errorf("got type %d reason %#x, want a refusing CONNACK", pk.FixedHeader.Type, pk.ReasonCode)
			}
			if !rc.closed(5 * time.Second) {
				t.Error("still open")
			}
		})
	}
	// [MQTT-3.3.2-14]: a Response Topic is a topic name: no wildcards.
	t.Run("MQTT-3.3.2-14 response topic with wildcard", func(t *testing.T) {
		rc, _ := v5(t, addr, "pe-resp", true, nil)
		// QoS 0 "a", properties: response topic "r/#", payload "x".
		if _, err := rc.c.Write([]byte{0x30, 11, 0, 1, 'a', 6, 0x08, 0, 3, 'r', '/', '#', 'x'}); err != nil {
			t.Fatal(err)
		}
		closesWith(t, rc, 0x82, 0x90)
	})
	// [MQTT-3.8.3-5]: reserved bits of the Subscription Options byte set:
	// malformed; Retain Handling 3 (§3.8.3.1) a protocol error; a filter
	// without its options byte malformed. The broker serves on.
	for _, tc := range []struct {
		name  string
		bytes []byte
		codes []byte
	}{
		// SUBSCRIBE id 1, no properties, "a" with the options byte given.
		{"options reserved bits", []byte{0x82, 7, 0, 1, 0, 0, 1, 'a', 0x41}, []byte{0x81}},
		{"retain handling 3", []byte{0x82, 7, 0, 1, 0, 0, 1, 'a', 0x31}, []byte{0x82, 0x81}},
		{"filter without options", []byte{0x82, 6, 0, 1, 0, 0, 1, 'a'}, []byte{0x81}},
		{"second filter without options", []byte{0x82, 10, 0, 1, 0, 0, 1, 'a', 1, 0, 1, 'b'}, []byte{0x81}},
	} {
		t.Run("MQTT-3.8.3-5 subscribe "+tc.name, func(t *testing.T) {
			rc, _ := v5(t, addr, "pe-subopts", true, nil)
			if _, err := rc.c.Write(tc.bytes); err != nil {
				t.Fatal(err)
			}
			closesWith(t, rc, tc.codes...)
			next, _ := v5(t, addr, "pe-subopts-next", true, nil)
			next.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
			next.expect(packets.Pingresp, 5*time.Second)
		})
	}
	// [MQTT-4.13.1-1]: a packet that does not decode (here a topic that is
	// not UTF-8 [MQTT-1.5.4-1]: a surrogate) is malformed: DISCONNECT 0x81,
	// which a server SHOULD send before it closes, then the close.
	t.Run("MQTT-4.13.1-1 malformed packet gets disconnect 0x81", func(t *testing.T) {
		rc, _ := v5(t, addr, "pe-utf8", true, nil)
		if _, err := rc.c.Write([]byte{0x30, 7, 0, 3, 0xed, 0xa0, 0x80, 0, 'x'}); err != nil {
			t.Fatal(err)
		}
		if d := rc.expect(packets.Disconnect, 5*time.Second); d.ReasonCode != 0x81 {
			t.Errorf("disconnect %#x, want 0x81", d.ReasonCode)
		}
		if !rc.closed(5 * time.Second) {
			t.Error("still open")
		}
	})
	// [MQTT-3.3.1-2]? DUP 1 on a QoS 0 PUBLISH.
	t.Run("MQTT-3.3.1-2 dup on qos 0", func(t *testing.T) {
		rc, _ := v5(t, addr, "pe-dup", true, nil)
		if _, err := rc.c.Write([]byte{0x38, 4, 0, 1, 'a', 0}); err != nil {
			t.Fatal(err)
		}
		closesWith(t, rc, 0x82, 0x81)
	})
	// [MQTT-4.4.0-1] [MQTT-4.3.3-11]: inbound QoS 2 across a reconnect:
	// the PUBREL of a resumed session completes the exchange (PUBCOMP
	// 0x00), the message delivered once [MQTT-4.3.3-10].
	t.Run("MQTT-4.3.3-11 pubrel after reconnect", func(t *testing.T) {
		sub, _ := v5(t, addr, "pe-q2-sub", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "pe/q2", Qos: 1})
		persist := func(pk *packets.Packet) {
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 60, true
		}
		rc, _ := v5(t, addr, "pe-q2", false, persist)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, PacketID: 3, TopicName: "pe/q2", Payload: []byte("q")})
		rc.expect(packets.Pubrec, 5*time.Second)
		_ = rc.c.Close()
		rc, _ = v5(t, addr, "pe-q2", false, persist)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 3})
		if c := rc.expect(packets.Pubcomp, 5*time.Second); c.ReasonCode != 0 {
			t.Errorf("pubcomp reason %#x, want 0", c.ReasonCode)
		}
		sub.ackPublish(sub.expect(packets.Publish, 5*time.Second))
		sub.none(300 * time.Millisecond)
	})
}

// TestConformance5Flow: outbound windows, QoS downgrade, order, aliases
// and identifiers on queued messages.
func TestConformance5Flow(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	pub, _ := v5(t, addr, "flow-pub", true, nil)

	// [MQTT-4.9.0-1] [MQTT-3.3.4-9]: a QoS 2 delivery counts against the
	// client's Receive Maximum until its PUBCOMP, PUBREC'd or not.
	t.Run("MQTT-3.3.4-9 qos 2 holds the window until pubcomp", func(t *testing.T) {
		sub, _ := v5(t, addr, "flow-rm1", true, func(pk *packets.Packet) { pk.Properties.ReceiveMaximum = 1 })
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "flow/q2", Qos: 2})
		for i := 0; i < 2; i++ {
			pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 2}, PacketID: uint16(1 + i), TopicName: "flow/q2", Payload: []byte{byte(i)}})
		}
		first := sub.expect(packets.Publish, 5*time.Second)
		sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: first.PacketID})
		sub.expect(packets.Pubrel, 5*time.Second)
		sub.none(500 * time.Millisecond)
		sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: first.PacketID})
		if second := sub.expect(packets.Publish, 5*time.Second); second.Payload[0] != 1 {
			t.Errorf("second payload %v", second.Payload)
		}
	})

	// [MQTT-3.8.4-8]: delivered at the lower of the publish's and the
	// subscription's QoS; a QoS 0 delivery has no packet id.
	t.Run("MQTT-3.8.4-8 qos downgrade", func(t *testing.T) {
		sub, _ := v5(t, addr, "flow-q0", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "flow/down", Qos: 0})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 2}, PacketID: 5, TopicName: "flow/down", Payload: []byte("d")})
		if got := sub.expect(packets.Publish, 5*time.Second); got.FixedHeader.Qos != 0 || got.PacketID != 0 {
			t.Errorf("qos %d id %d, want 0 0", got.FixedHeader.Qos, got.PacketID)
		}
	})

	// [MQTT-4.6.0-5] [MQTT-4.6.0-6]: messages of one topic and QoS reach a
	// subscriber in the order they were published.
	t.Run("MQTT-4.6.0-6 order", func(t *testing.T) {
		sub, _ := v5(t, addr, "flow-order", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "flow/order", Qos: 1})
		const n = 200
		opub, ack := v5(t, addr, "flow-order-pub", true, nil)
		window := int(ack.Properties.ReceiveMaximum) // more unacknowledged: 0x93 [MQTT-3.3.4-7]
		for i := 0; i < n; i += window {
			j := i
			for ; j < min(i+window, n); j++ {
				opub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(1 + j), TopicName: "flow/order", Payload: []byte(fmt.Sprint(j))})
			}
			for k := i; k < j; k++ {
				if pk := opub.expect(packets.Puback, 5*time.Second); pk.ReasonCode != 0 {
					t.Fatalf("puback %d reason %#x", pk.PacketID, pk.ReasonCode)
				}
			}
		}
		for i := 0; i < n; i++ {
			got := sub.expect(packets.Publish, 5*time.Second)
			if string(got.Payload) != fmt.Sprint(i) {
				t.Fatalf("message %d: %q", i, got.Payload)
			}
			sub.ackPublish(got)
		}
	})

	// [MQTT-3.3.2-11] ... [MQTT-3.3.2-12]: topic aliases the server sends
	// stay within the client's Topic Alias Maximum, and the first PUBLISH
	// with an alias carries the topic.
	t.Run("MQTT-3.3.2-10 outbound topic aliases", func(t *testing.T) {
		sub, _ := v5(t, addr, "flow-alias", true, func(pk *packets.Packet) { pk.Properties.TopicAliasMaximum = 2 })
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "flow/al/#", Qos: 1})
		known := map[uint16]string{}
		for i := 0; i < 12; i++ {
			topic := fmt.Sprintf("flow/al/%d", i%4)
			pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: uint16(400 + i), TopicName: topic, Payload: []byte("a")})
			got := sub.expect(packets.Publish, 5*time.Second)
			name := got.TopicName
			if a := got.Properties.TopicAlias; a != 0 {
				if a > 2 {
					t.Fatalf("[MQTT-3.3.2-10] alias %d over the client's maximum 2", a)
				}
				if name != "" {
					known[a] = name
				} else if name = known[a]; name == "" {
					t.Fatalf("[MQTT-3.3.2-12] alias %d used before it was set", a)
				}
			}
			if name != topic {
				t.Fatalf("message %d on %q, want %q", i, name, topic)
			}
			sub.ackPublish(got)
		}
	})

	// [MQTT-3.3.4-3]: the subscription identifier goes with messages
	// queued while the session was offline.
	t.Run("MQTT-3.3.4-3 identifier on queued messages", func(t *testing.T) {
		persist := func(pk *packets.Packet) {
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 60, true
		}
		rc, _ := v5(t, addr, "flow-subid", false, persist)
		rc.subscribeWith(1, 31, packets.Subscription{Filter: "flow/id", Qos: 1})
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 500, TopicName: "flow/id", Payload: []byte("i")})
		rc, _ = v5(t, addr, "flow-subid", false, persist)
		if got := rc.expect(packets.Publish, 5*time.Second); len(got.Properties.SubscriptionIdentifier) != 1 || got.Properties.SubscriptionIdentifier[0] != 31 {
			t.Errorf("identifiers %v, want [31]", got.Properties.SubscriptionIdentifier)
		}
	})

	// §4.8.2 (no numbered statement): no retained messages for a shared
	// subscription.
	t.Run("MQTT-4.8.2 no retained to shared subscriptions", func(t *testing.T) {
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 501, TopicName: "flow/shret", Payload: []byte("r")})
		sub, _ := v5(t, addr, "flow-shret", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "$share/g/flow/shret", Qos: 1})
		sub.none(500 * time.Millisecond)
	})

	// [MQTT-3.1.3-9]: a will with a delay on a session that ends with the
	// connection (Session Expiry 0) is published at once.
	t.Run("MQTT-3.1.3-9 delayed will of a clean session", func(t *testing.T) {
		watch, _ := v5(t, addr, "flow-will-watch", true, nil)
		watch.subscribeWith(1, 0, packets.Subscription{Filter: "flow/will", Qos: 1})
		rc, _ := v5(t, addr, "flow-will", true, willConnect("flow/will", 30, 0))
		_ = rc.c.Close()
		watch.expect(packets.Publish, 3*time.Second)
	})
}

// TestConformance5DisconnectAfterWrites: a client still writing when the
// server refuses one of its packets reads the DISCONNECT that says why, as
// Paho's interoperability suite (client_test5.py test_flow_control2) checks:
// one QoS 2 PUBLISH over the Receive Maximum [MQTT-3.3.4-7] gets DISCONNECT
// 0x93 (§3.3.4, §4.13.2), and the client, which keeps writing (a PINGREQ,
// PUBRELs for the PUBRECs queued before the DISCONNECT), reaches it. After
// the DISCONNECT the server sends nothing more [MQTT-3.14.4-1] and closes
// the connection [MQTT-3.14.4-2]: had it closed the socket at once, the
// bytes the client sent after it would have met a closed socket, whose
// reset fails the client's next write and can drop the unread DISCONNECT.
func TestConformance5DisconnectAfterWrites(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.ReceiveMaximum = 8
	tb := startBroker(t, cfg)
	rc := dialRaw(t, tb.Addr("tcp").String(), 5)
	rc.connect("bye-flood", true, 30)
	for i := range 9 {
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, TopicName: "bye/f", PacketID: uint16(i + 1), Payload: []byte("f")})
	}
	time.Sleep(300 * time.Millisecond) // the ninth is read and refused
	write := func(pk packets.Packet) {
		t.Helper()
		if _, err := rc.c.Write(encode(t, 5, pk)); err != nil {
			t.Fatalf("write %d after the refused PUBLISH: %v (the server closed before the client read its DISCONNECT)", pk.FixedHeader.Type, err)
		}
		time.Sleep(20 * time.Millisecond) // a reset comes back before the next write
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	for {
		pk, err := rc.read(5 * time.Second)
		if err != nil {
			t.Fatalf("%v, want DISCONNECT 0x93", err)
		}
		switch pk.FixedHeader.Type {
		case packets.Pubrec:
			write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: pk.PacketID})
			continue
		case packets.Disconnect:
			if pk.ReasonCode != packets.ErrReceiveMaximum.Code {
				t.Fatalf("DISCONNECT %#x, want 0x93", pk.ReasonCode)
			}
		default:
			t.Fatalf("packet type %d, want PUBREC or DISCONNECT 0x93", pk.FixedHeader.Type)
		}
		break
	}
	if !rc.closed(5 * time.Second) {
		t.Error("[MQTT-3.14.4-2] the connection stayed open after the DISCONNECT")
	}
}

// TestConformance5Reconnect: what a new connection to a session does not
// inherit from the old one.
func TestConformance5Reconnect(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	pub, _ := v5(t, addr, "rec-pub", true, nil)
	persist := func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 60, true
		pk.Properties.TopicAliasMaximum = 4
	}

	// [MQTT-3.3.2-7]: topic aliases belong to one network connection: a
	// resend, and the next message, on a new connection carry the topic.
	t.Run("MQTT-3.3.2-7 outbound aliases end with the connection", func(t *testing.T) {
		rc, _ := v5(t, addr, "rec-alias", false, persist)
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "rec/al", Qos: 1})
		for i := 0; i < 2; i++ {
			pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: uint16(1 + i), TopicName: "rec/al", Payload: []byte{byte(i)}})
		}
		first := rc.expect(packets.Publish, 5*time.Second)
		rc.ackPublish(first)
		second := rc.expect(packets.Publish, 5*time.Second) // left unacknowledged
		if second.Properties.TopicAlias == 0 {
			// The engine aliases every topic a client allows: without one
			// on the old connection the rest tests nothing of 3.3.2-7.
			t.Errorf("second message on %q without an alias (Topic Alias Maximum 4): nothing to carry over", second.TopicName)
		}
		_ = rc.c.Close()
		rc, _ = v5(t, addr, "rec-alias", false, persist)
		again := rc.expect(packets.Publish, 5*time.Second)
		if again.TopicName != "rec/al" || !again.FixedHeader.Dup {
			t.Errorf("resend on %q dup %v, want rec/al with DUP", again.TopicName, again.FixedHeader.Dup)
		}
		rc.ackPublish(again)
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 3, TopicName: "rec/al", Payload: []byte{2}})
		if next := rc.expect(packets.Publish, 5*time.Second); next.TopicName != "rec/al" && next.Properties.TopicAlias != again.Properties.TopicAlias {
			t.Errorf("next on %q alias %d: an alias of the old connection", next.TopicName, next.Properties.TopicAlias)
		}
	})

	// [MQTT-3.3.4-9]: the unacknowledged messages a session resends on a
	// new connection [MQTT-4.4.0-1] count against that connection's
	// Receive Maximum, which may be lower than the last one's: with 1, one
	// at a time, in their order [MQTT-4.6.0-1], then the next message.
	t.Run("MQTT-3.3.4-9 resends within a lower receive maximum", func(t *testing.T) {
		rc, _ := v5(t, addr, "rec-rm", false, persist)
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "rec/rm", Qos: 1})
		for i := 0; i < 4; i++ {
			pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: uint16(10 + i), TopicName: "rec/rm", Payload: []byte{byte(i)}})
		}
		for i := 0; i < 4; i++ {
			rc.expect(packets.Publish, 5*time.Second) // left unacknowledged
		}
		_ = rc.c.Close()
		rc, _ = v5(t, addr, "rec-rm", false, func(pk *packets.Packet) {
			persist(pk)
			pk.Properties.ReceiveMaximum = 1
		})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 14, TopicName: "rec/rm", Payload: []byte{4}})
		for i := 0; i < 5; i++ {
			got := rc.expect(packets.Publish, 5*time.Second)
			if got.Payload[0] != byte(i) || got.FixedHeader.Dup != (i < 4) {
				t.Fatalf("message %d: payload %v dup %v", i, got.Payload, got.FixedHeader.Dup)
			}
			rc.none(300 * time.Millisecond) // a second unacknowledged PUBLISH: over the window
			rc.ackPublish(got)
		}
	})

	// [MQTT-3.1.2-4]: Clean Start 1 discards the session: nothing queued
	// for it is delivered, and its subscriptions are gone.
	t.Run("MQTT-3.1.2-4 clean start discards the queue", func(t *testing.T) {
		rc, _ := v5(t, addr, "rec-clean", false, persist)
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "rec/clean", Qos: 1})
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 4, TopicName: "rec/clean", Payload: []byte("q")})
		rc, ack := v5(t, addr, "rec-clean", true, nil)
		if ack.SessionPresent {
			t.Error("session present")
		}
		rc.none(300 * time.Millisecond)
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 5, TopicName: "rec/clean", Payload: []byte("q")})
		rc.none(300 * time.Millisecond)
	})

	// [MQTT-3.3.1-5] [MQTT-3.3.1-7 3.1.1]: a new retained message replaces
	// the old, a QoS 0 one too; # gets every retained topic but $ ones.
	t.Run("MQTT-3.3.1-5 retained replaced", func(t *testing.T) {
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 6, TopicName: "rec/ret/a", Payload: []byte("old")})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 0, Retain: true}, TopicName: "rec/ret/a", Payload: []byte("new")})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 7, TopicName: "$rec/ret", Payload: []byte("dollar")})
		time.Sleep(100 * time.Millisecond) // the QoS 0 one has no acknowledgement to wait for
		rc, _ := v5(t, addr, "rec-ret", true, nil)
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "#", Qos: 1})
		var got []string
		for {
			pk, err := rc.read(500 * time.Millisecond)
			if err != nil {
				break
			}
			if pk.TopicName == "rec/ret/a" || pk.TopicName == "$rec/ret" {
				got = append(got, string(pk.Payload))
			}
			rc.ackPublish(pk)
		}
		if len(got) != 1 || got[0] != "new" {
			t.Errorf("retained %q, want [new]", got)
		}
	})
}

// TestConformance5AfterRestart: a persistent session's subscriptions
// after a restart of the broker are its subscriptions for every purpose.
func TestConformance5AfterRestart(t *testing.T) {
	r := newRestartable(t, nil)
	persist := func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
	}
	rc, _ := v5(t, r.ep().addr, "restart-unsub", false, persist)
	rc.subscribeWith(1, 0, packets.Subscription{Filter: "rs/a", Qos: 1})
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	rc.closed(5 * time.Second)
	r.restart()
	rc, ack := v5(t, r.ep().addr, "restart-unsub", false, persist)
	if !ack.SessionPresent {
		t.Fatal("session not present after the restart")
	}
	// [MQTT-3.11.3-1]: 0x00 for a subscription that existed, 0x11 only
	// for one that did not.
	rc.sendUnsubscribe(2, "rs/a", "rs/none")
	if ua := rc.expect(packets.Unsuback, 5*time.Second); !bytes.Equal(ua.ReasonCodes, []byte{0, 0x11}) {
		t.Errorf("unsuback %x, want 00 11", ua.ReasonCodes)
	}
}

// TestConformance5Sessions: what CONNECT starts and ends, as Paho's
// client_test5.py test_zero_length_clientid and test_session_expiry walk it.
func TestConformance5Sessions(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	pub, _ := v5(t, addr, "sess-pub", true, nil)
	expiry := func(s uint32, flag bool) func(*packets.Packet) {
		return func(pk *packets.Packet) {
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = s, flag
		}
	}

	// [MQTT-3.1.3-6] [MQTT-3.1.3-7]: a zero-length client id is assigned
	// one with Clean Start 0 too, and the session is known by it.
	t.Run("MQTT-3.1.3-7 zero length client id with clean start 0", func(t *testing.T) {
		rc, ack := v5(t, addr, "", false, expiry(300, true))
		id := ack.Properties.AssignedClientID
		if id == "" {
			t.Fatal("no Assigned Client Identifier")
		}
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "sess/assigned", Qos: 1})
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 1, TopicName: "sess/assigned", Payload: []byte("a")})
		rc, ack = v5(t, addr, id, false, expiry(300, true))
		if !ack.SessionPresent || ack.Properties.AssignedClientID != "" {
			t.Errorf("by its assigned id: session present %v, assigned again %q", ack.SessionPresent, ack.Properties.AssignedClientID)
		}
		rc.ackPublish(rc.expect(packets.Publish, 5*time.Second))
	})

	// §3.1.2.11.2: no Session Expiry Interval is 0: the session ends with
	// the connection, Clean Start 0 or not.
	t.Run("MQTT-3.1.2-23 clean start 0 without session expiry", func(t *testing.T) {
		rc, _ := v5(t, addr, "sess-noexp", false, expiry(0, false))
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "sess/noexp", Qos: 1})
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		if _, ack := v5(t, addr, "sess-noexp", false, expiry(0, false)); ack.SessionPresent {
			t.Error("session kept")
		}
	})

	// §3.14.2.2.2: DISCONNECT may lengthen the Session Expiry Interval.
	t.Run("MQTT-3.1.2-23 session expiry lengthened at disconnect", func(t *testing.T) {
		rc, _ := v5(t, addr, "sess-longer", false, expiry(1, true))
		rc.subscribeWith(1, 0, packets.Subscription{Filter: "sess/longer", Qos: 1})
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 10, true
		rc.send(pk)
		rc.closed(5 * time.Second)
		time.Sleep(2500 * time.Millisecond)
		if _, ack := v5(t, addr, "sess-longer", false, expiry(1, true)); !ack.SessionPresent {
			t.Error("session ended after its CONNECT's 1 s, not its DISCONNECT's 10 s")
		}
	})

	// [MQTT-3.2.2-6] [MQTT-3.2.2-7]: a refusing CONNACK says Session
	// Present 0 and closes; the session it did not take is still there.
	t.Run("MQTT-3.2.2-6 refused connack has no session present", func(t *testing.T) {
		rc, _ := v5(t, addr, "sess-refused", false, expiry(300, true))
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		rc = dialRaw(t, addr, 5)
		ack := rc.connectWith("sess-refused", false, 30, func(pk *packets.Packet) {
			expiry(300, true)(pk)
			pk.Properties.AuthenticationMethod = "SCRAM-SHA-1"
		})
		if ack.ReasonCode < 0x80 || ack.SessionPresent {
			t.Errorf("connack reason %#x session present %v, want a refusal without", ack.ReasonCode, ack.SessionPresent)
		}
		if !rc.closed(5 * time.Second) {
			t.Error("still open")
		}
		if _, ack := v5(t, addr, "sess-refused", false, expiry(300, true)); !ack.SessionPresent {
			t.Error("the refused CONNECT ended the session")
		}
	})

	// [MQTT-3.1.0-2]: a second CONNECT is a protocol error.
	t.Run("MQTT-3.1.0-2 second connect", func(t *testing.T) {
		rc, _ := v5(t, addr, "sess-twice", true, nil)
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}}
		pk.Connect.ProtocolName, pk.Connect.ClientIdentifier, pk.Connect.Clean = []byte("MQTT"), "sess-twice", true
		rc.send(pk)
		if d, err := rc.read(5 * time.Second); err == nil && (d.FixedHeader.Type != packets.Disconnect || d.ReasonCode != 0x82) {
			t.Errorf("got type %d reason %#x, want DISCONNECT 0x82", d.FixedHeader.Type, d.ReasonCode)
		}
		if !rc.closed(5 * time.Second) {
			t.Error("still open")
		}
	})

	// [MQTT-3.1.2-8]: a connection the server closes for a protocol error
	// publishes its will; a refused CONNECT has no session, so no will
	// (§3.1.2.5).
	t.Run("MQTT-3.1.2-8 will on a protocol error, none on a refused connect", func(t *testing.T) {
		watch, _ := v5(t, addr, "sess-will-watch", true, nil)
		watch.subscribeWith(1, 0, packets.Subscription{Filter: "sess/will/#", Qos: 1})
		refused := dialRaw(t, addr, 5)
		if ack := refused.connectWith("sess-will-refused", true, 30, func(pk *packets.Packet) {
			willConnect("sess/will/refused", 0, 0)(pk)
			pk.Properties.AuthenticationMethod = "SCRAM-SHA-1"
		}); ack.ReasonCode < 0x80 {
			t.Fatalf("connack %#x, want a refusal", ack.ReasonCode)
		}
		rc, _ := v5(t, addr, "sess-will-pe", true, willConnect("sess/will/pe", 0, 0))
		if _, err := rc.c.Write([]byte{0xf0, 0x00}); err != nil { // reserved packet type 15
			t.Fatal(err)
		}
		if got := watch.expect(packets.Publish, 5*time.Second); got.TopicName != "sess/will/pe" {
			t.Errorf("will on %q", got.TopicName)
		}
		watch.none(300 * time.Millisecond)
	})
}

// TestConformance5ServerKeepAlive: a v5 client asking for a longer
// keepalive than max_keepalive is told the Server Keep Alive in CONNACK
// (§3.2.2.3.14, which it must then use [MQTT-3.2.2-21]), and held to it:
// silent for 1.5 times that, it is disconnected as if the network had
// failed [MQTT-3.1.2-22], so its will is published [MQTT-3.1.2-8], told
// why first: DISCONNECT 0x8D Keep Alive timeout (§3.14.2.1; a server may
// send DISCONNECT before it closes the connection, §4.13), over every
// transport.
func TestConformance5ServerKeepAlive(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxKeepalive = 2 * time.Second
	tb := startBroker(t, cfg)
	for _, network := range []string{"tcp", "ws"} {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			topic := "will/keepalive-" + network
			// paho pings: the watcher is held to the same maximum.
			watch, _ := connectV5(t, dialNet(t, "tcp", tb.Addr("tcp").String(), nil), v5Opts{id: "keepalive-watch-" + network, keepalive: 1})
			watch.subscribe(t, topic, 1)
			c := dialNet(t, network, tb.Addr(network).String(), nil)
			t.Cleanup(func() { _ = c.Close() })
			rc := &rawClient{t: t, c: c, r: newReader(c), version: 5}
			ack := rc.connectWith("server-keepalive-"+network, true, 30, willConnect(topic, 0, 0))
			if !ack.Properties.ServerKeepAliveFlag || ack.Properties.ServerKeepAlive != 2 {
				t.Errorf("server keep alive %d (sent %v), want 2", ack.Properties.ServerKeepAlive, ack.Properties.ServerKeepAliveFlag)
			}
			if pk := rc.expect(packets.Disconnect, 6*time.Second); pk.ReasonCode != 0x8D {
				t.Errorf("disconnect reason %#x, want 0x8d keep alive timeout", pk.ReasonCode)
			}
			if !rc.closed(6 * time.Second) {
				t.Error("a client silent for 6 s with a server keep alive of 2 s still connected")
			}
			if got := watch.receive(t, 1)[0]; got.Topic != topic {
				t.Errorf("will on %q, want %q", got.Topic, topic)
			}
		})
	}
}

// TestConformance5Delivery: subscription options, aliases, sizes,
// acknowledgements and expiry of delivered messages, as Paho's
// client_test5.py test_subscribe_options, test_server_topic_alias,
// test_client_topic_alias, test_maximum_packet_size and
// test_message_expiry walk them.
func TestConformance5Delivery(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	pub, _ := v5(t, addr, "dlv-pub", true, nil)
	persist := func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
	}
	publish := func(pid uint16, topic string, qos byte, retain bool, payload []byte) {
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: qos, Retain: retain}, PacketID: pid, TopicName: topic, Payload: payload})
	}

	// [MQTT-3.3.1-10]: Retain Handling 1 sends again once the subscription
	// was removed, and not to the subscription a resumed session holds.
	t.Run("MQTT-3.3.1-10 retain handling 1 after unsubscribe and on a resumed session", func(t *testing.T) {
		publish(1, "dlv/rh1", 1, true, []byte("r"))
		sub, _ := v5(t, addr, "dlv-rh1", false, persist)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "dlv/rh1", Qos: 1, RetainHandling: 1})
		sub.ackPublish(sub.expect(packets.Publish, 5*time.Second))
		sub.sendUnsubscribe(2, "dlv/rh1")
		sub.expect(packets.Unsuback, 5*time.Second)
		sub.subscribeWith(3, 0, packets.Subscription{Filter: "dlv/rh1", Qos: 1, RetainHandling: 1})
		sub.ackPublish(sub.expect(packets.Publish, 5*time.Second))
		sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		sub.closed(5 * time.Second)
		sub, _ = v5(t, addr, "dlv-rh1", false, persist)
		sub.subscribeWith(4, 0, packets.Subscription{Filter: "dlv/rh1", Qos: 1, RetainHandling: 1})
		sub.none(300 * time.Millisecond)
	})

	// [MQTT-3.3.2-15] ... [MQTT-3.3.2-20]: a retained message keeps its
	// properties, and its QoS 0 (test_retained_message).
	t.Run("MQTT-3.3.2-17 retained message properties", func(t *testing.T) {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 0, Retain: true}, TopicName: "dlv/retprop", Payload: []byte("p")}
		pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = 1, true
		pk.Properties.ContentType = "text/plain"
		pk.Properties.ResponseTopic = "dlv/reply"
		pk.Properties.CorrelationData = []byte{1, 2, 3}
		pk.Properties.User = []packets.UserProperty{{Key: "b", Val: "1"}, {Key: "a", Val: "2"}, {Key: "b", Val: "3"}}
		pub.publishAcked(pk)
		time.Sleep(100 * time.Millisecond) // the QoS 0 one has no acknowledgement to wait for
		sub, _ := v5(t, addr, "dlv-retprop", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "dlv/retprop", Qos: 2})
		got := sub.expect(packets.Publish, 5*time.Second)
		p := got.Properties
		if got.FixedHeader.Qos != 0 || !p.PayloadFormatFlag || p.PayloadFormat != 1 || p.ContentType != "text/plain" ||
			p.ResponseTopic != "dlv/reply" || !bytes.Equal(p.CorrelationData, []byte{1, 2, 3}) || fmt.Sprint(p.User) != fmt.Sprint(pk.Properties.User) {
			t.Errorf("qos %d properties %+v", got.FixedHeader.Qos, p)
		}
	})

	// [MQTT-3.3.4-9]: retained messages sent at SUBSCRIBE stay within the
	// client's Receive Maximum.
	t.Run("MQTT-3.3.4-9 retained at subscribe within receive maximum", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			publish(uint16(10+i), fmt.Sprintf("dlv/rmret/%d", i), 1, true, []byte("r"))
		}
		sub, _ := v5(t, addr, "dlv-rmret", true, func(pk *packets.Packet) { pk.Properties.ReceiveMaximum = 2 })
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "dlv/rmret/#", Qos: 1})
		a, b := sub.expect(packets.Publish, 5*time.Second), sub.expect(packets.Publish, 5*time.Second)
		sub.none(500 * time.Millisecond)
		sub.ackPublish(a)
		sub.ackPublish(b)
		for i := 0; i < 3; i++ {
			sub.ackPublish(sub.expect(packets.Publish, 5*time.Second))
		}
	})

	// [MQTT-3.1.2-24] [MQTT-3.1.2-25]: the size that counts is the packet
	// written, with the properties the server adds (a Subscription
	// Identifier, a Message Expiry Interval, a topic alias); a retained
	// message too large is skipped and the next sent; a resend too large
	// for the new connection is dropped as sent.
	t.Run("MQTT-3.1.2-24 client maximum packet size counts what the server adds", func(t *testing.T) {
		sub, _ := v5(t, addr, "dlv-mps-id", true, func(pk *packets.Packet) { pk.Properties.MaximumPacketSize = 64 })
		sub.subscribeWith(1, 456789, packets.Subscription{Filter: "dm/i", Qos: 1})
		// Topics of 4 bytes: 11 bytes of packet and the payload.
		publish(20, "dm/i", 1, false, make([]byte, 50)) // 61 bytes, 65 with the identifier
		publish(21, "dm/i", 1, false, make([]byte, 49)) // 64 with it
		if got := sub.expect(packets.Publish, 5*time.Second); len(got.Payload) != 49 {
			t.Errorf("got a payload of %d", len(got.Payload))
		}
		exp, _ := v5(t, addr, "dlv-mps-exp", true, func(pk *packets.Packet) { pk.Properties.MaximumPacketSize = 64 })
		exp.subscribeWith(1, 0, packets.Subscription{Filter: "dm/e", Qos: 1})
		for i, n := range []int{49, 48} { // with an expiry: 65, then 64 bytes
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: uint16(22 + i), TopicName: "dm/e", Payload: make([]byte, n)}
			pk.Properties.MessageExpiryInterval = 100
			pub.publishAcked(pk)
		}
		if got := exp.expect(packets.Publish, 5*time.Second); len(got.Payload) != 48 {
			t.Errorf("got a payload of %d", len(got.Payload))
		}
		alias, _ := v5(t, addr, "dlv-mps-alias", true, func(pk *packets.Packet) {
			pk.Properties.MaximumPacketSize, pk.Properties.TopicAliasMaximum = 64, 4
		})
		alias.subscribeWith(1, 0, packets.Subscription{Filter: "dm/a", Qos: 1})
		publish(24, "dm/a", 1, false, make([]byte, 50)) // 61 bytes, 64 with an alias
		publish(25, "dm/a", 1, false, make([]byte, 51)) // the alias known: 62
		for i := 0; i < 2; i++ {
			got := alias.expect(packets.Publish, 5*time.Second)
			if n := 2 + got.FixedHeader.Remaining; n > 64 {
				t.Errorf("a packet of %d bytes", n)
			}
			alias.ackPublish(got)
		}

		publish(26, "dlv/mps/ret/a", 1, true, make([]byte, 200))
		publish(27, "dlv/mps/ret/b", 1, true, []byte("s"))
		ret, _ := v5(t, addr, "dlv-mps-ret", true, func(pk *packets.Packet) { pk.Properties.MaximumPacketSize = 64 })
		ret.subscribeWith(1, 0, packets.Subscription{Filter: "dlv/mps/ret/#", Qos: 1})
		if got := ret.expect(packets.Publish, 5*time.Second); got.TopicName != "dlv/mps/ret/b" {
			t.Errorf("retained %s", got.TopicName)
		}

		rs, _ := v5(t, addr, "dlv-mps-resend", false, persist)
		rs.subscribeWith(1, 0, packets.Subscription{Filter: "dlv/mps/rs/#", Qos: 1})
		publish(28, "dlv/mps/rs/big", 1, false, make([]byte, 200))
		rs.expect(packets.Publish, 5*time.Second) // left unacknowledged
		_ = rs.c.Close()
		publish(29, "dlv/mps/rs/small", 1, false, []byte("s"))
		rs, _ = v5(t, addr, "dlv-mps-resend", false, func(pk *packets.Packet) { persist(pk); pk.Properties.MaximumPacketSize = 64 })
		got := rs.expect(packets.Publish, 5*time.Second)
		if got.TopicName != "dlv/mps/rs/small" {
			t.Errorf("after the reconnect: %s (%d bytes of payload)", got.TopicName, len(got.Payload))
		}
		rs.ackPublish(got)
		_ = rs.c.Close()
		rs, _ = v5(t, addr, "dlv-mps-resend", false, persist)
		rs.none(300 * time.Millisecond) // the big one counts as sent
	})

	// [MQTT-3.3.2-11]: with a Topic Alias Maximum of 1 the server may
	// alias QoS 0, 1 and 2 alike, set once and used after; without one,
	// it sends no alias at all (test_server_topic_alias).
	t.Run("MQTT-3.3.2-11 server topic aliases across qos", func(t *testing.T) {
		for _, max := range []uint16{1, 0} {
			id := fmt.Sprintf("dlv-alias-%d", max)
			sub, _ := v5(t, addr, id, true, func(pk *packets.Packet) { pk.Properties.TopicAliasMaximum = max })
			sub.subscribeWith(1, 0, packets.Subscription{Filter: "dlv/alias", Qos: 2})
			known := map[uint16]string{}
			for i := 0; i < 6; i++ {
				q := byte(i % 3)
				publish(uint16(30+i), "dlv/alias", q, false, []byte{q})
				got := sub.expect(packets.Publish, 5*time.Second)
				name, a := got.TopicName, got.Properties.TopicAlias
				switch {
				case a > max:
					t.Fatalf("%s: alias %d over the client's maximum %d", id, a, max)
				case a > 0 && name != "":
					known[a] = name
				case a > 0:
					if name = known[a]; name == "" {
						t.Fatalf("%s: qos %d: alias %d before it was set", id, q, a)
					}
				}
				if name != "dlv/alias" {
					t.Fatalf("%s: topic %q", id, name)
				}
				sub.ackPublish(got)
			}
		}
	})

	// [MQTT-3.3.2-12]: an alias may be set again to another topic; one at
	// the server's Topic Alias Maximum is accepted; [MQTT-3.3.2-7] an alias
	// of the last connection is unknown on the next: a protocol error
	// (test_client_topic_alias).
	t.Run("MQTT-3.3.2-12 inbound topic alias set again", func(t *testing.T) {
		sub, _ := v5(t, addr, "dlv-remap-sub", true, nil)
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "dlv/remap/#", Qos: 1})
		rc, ack := v5(t, addr, "dlv-remap", false, persist)
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 1, TopicName: "dlv/remap/a", Payload: []byte("1")}
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = ack.Properties.TopicAliasMaximum, true
		for i, topic := range []string{"dlv/remap/a", "dlv/remap/b", ""} {
			pk.TopicName, pk.PacketID = topic, uint16(1+i)
			rc.publishAcked(pk)
		}
		for _, want := range []string{"dlv/remap/a", "dlv/remap/b", "dlv/remap/b"} {
			got := sub.expect(packets.Publish, 5*time.Second)
			if got.TopicName != want {
				t.Errorf("got %q, want %q", got.TopicName, want)
			}
			sub.ackPublish(got)
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		rc, _ = v5(t, addr, "dlv-remap", false, persist)
		pk.FixedHeader.Type, pk.PacketID = packets.Publish, 9
		rc.send(pk)
		if d, err := rc.read(5 * time.Second); err != nil || d.FixedHeader.Type != packets.Disconnect || (d.ReasonCode != 0x82 && d.ReasonCode != 0x94) {
			t.Errorf("an alias of the last connection: type %d reason %#x (%v), want DISCONNECT 0x82 or 0x94", d.FixedHeader.Type, d.ReasonCode, err)
		}
	})

	// §3.3.2.3.4: a zero-length topic without a Topic Alias is a protocol
	// error; [MQTT-4.7.3-1] a zero-length filter is refused (0x8F).
	t.Run("MQTT-4.7.3-1 zero length topic and filter", func(t *testing.T) {
		rc, _ := v5(t, addr, "dlv-empty", true, nil)
		if _, err := rc.c.Write([]byte{0x30, 4, 0, 0, 0, 'x'}); err != nil { // QoS 0, topic "", no properties
			t.Fatal(err)
		}
		if d, err := rc.read(5 * time.Second); err == nil && (d.FixedHeader.Type != packets.Disconnect || d.ReasonCode < 0x80) {
			t.Errorf("got type %d reason %#x, want a DISCONNECT", d.FixedHeader.Type, d.ReasonCode)
		}
		if !rc.closed(5 * time.Second) {
			t.Error("still open")
		}
		sub, _ := v5(t, addr, "dlv-emptyf", true, nil)
		if _, err := sub.c.Write([]byte{0x82, 6, 0, 1, 0, 0, 0, 1}); err != nil { // filter "", QoS 1
			t.Fatal(err)
		}
		if ack := sub.expect(packets.Suback, 5*time.Second); len(ack.ReasonCodes) != 1 || ack.ReasonCodes[0] < 0x80 {
			t.Errorf("suback %x, want a refusal", ack.ReasonCodes)
		}
	})

	// [MQTT-3.8.3-3] with overlapping subscriptions: No Local on one of
	// them does not hold back the copy the other one gets; an identifier
	// goes to every filter of its SUBSCRIBE (§3.8.2.1.2), and a SUBSCRIBE
	// without one replaces the subscription without it [MQTT-3.8.4-3].
	t.Run("MQTT-3.8.3-3 no local beside an overlapping subscription", func(t *testing.T) {
		self, _ := v5(t, addr, "dlv-nl", true, nil)
		self.subscribeWith(1, 1, packets.Subscription{Filter: "dlv/nl/#", Qos: 1, NoLocal: true})
		self.subscribeWith(2, 2, packets.Subscription{Filter: "dlv/nl/a", Qos: 1}, packets.Subscription{Filter: "dlv/nl/b", Qos: 1})
		for i, topic := range []string{"dlv/nl/a", "dlv/nl/b"} {
			self.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(10 + i), TopicName: topic, Payload: []byte("n")})
			var got []packets.Packet
			for len(got) < 2 { // its PUBACK and the copy, in either order
				pk, err := self.read(5 * time.Second)
				if err != nil {
					t.Fatalf("%s: %d packets: %v", topic, len(got), err)
				}
				got = append(got, pk)
			}
			if got[0].FixedHeader.Type == packets.Puback {
				got[0], got[1] = got[1], got[0]
			}
			if got[0].FixedHeader.Type != packets.Publish || fmt.Sprint(got[0].Properties.SubscriptionIdentifier) != "[2]" {
				t.Errorf("%s: type %d identifiers %v, want a PUBLISH with [2]", topic, got[0].FixedHeader.Type, got[0].Properties.SubscriptionIdentifier)
			}
			self.ackPublish(got[0])
		}
		self.none(300 * time.Millisecond)
		self.subscribeWith(3, 5, packets.Subscription{Filter: "dlv/clear", Qos: 1})
		self.subscribeWith(4, 0, packets.Subscription{Filter: "dlv/clear", Qos: 1})
		publish(40, "dlv/clear", 1, false, []byte("x"))
		if got := self.expect(packets.Publish, 5*time.Second); len(got.Properties.SubscriptionIdentifier) != 0 {
			t.Errorf("identifiers %v after a SUBSCRIBE without one", got.Properties.SubscriptionIdentifier)
		}
	})
}

// TestConformance5Acknowledgements: what a subscriber's acknowledgement
// ends, and the flags of what it gets.
func TestConformance5Acknowledgements(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	pub, _ := v5(t, addr, "ack-pub", true, nil)
	persist := func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
	}

	// [MQTT-4.4.0-2]: a PUBACK or PUBREC of 0x80 or above acknowledges the
	// PUBLISH: no PUBREL, its place in the window free, nothing resent.
	t.Run("MQTT-4.4.0-2 puback and pubrec of 0x80 and above", func(t *testing.T) {
		for _, q := range []byte{1, 2} {
			id := fmt.Sprintf("ack-refuse-%d", q)
			sub, _ := v5(t, addr, id, false, func(pk *packets.Packet) { persist(pk); pk.Properties.ReceiveMaximum = 1 })
			sub.subscribeWith(1, 0, packets.Subscription{Filter: "ack/" + id, Qos: q})
			for i := 0; i < 2; i++ {
				pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: q}, PacketID: uint16(1 + i), TopicName: "ack/" + id, Payload: []byte{byte(i)}})
			}
			first := sub.expect(packets.Publish, 5*time.Second)
			typ := byte(packets.Puback)
			if q == 2 {
				typ = packets.Pubrec
			}
			sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: first.PacketID, ReasonCode: 0x80})
			if second := sub.expect(packets.Publish, 5*time.Second); second.Payload[0] != 1 {
				t.Fatalf("qos %d: payload %v, want the second message", q, second.Payload)
			} else {
				sub.ackPublish(second)
			}
			sub.none(300 * time.Millisecond)
			_ = sub.c.Close()
			sub, _ = v5(t, addr, id, false, persist)
			sub.none(300 * time.Millisecond)
		}
	})

	// [MQTT-4.8.2-6]: refused by the member it went to, a shared
	// delivery goes to no other member.
	t.Run("MQTT-4.8.2-6 refused shared delivery goes to no other member", func(t *testing.T) {
		for _, q := range []byte{1, 2} {
			group := fmt.Sprintf("$share/ack%d/ack/shared%d", q, q)
			a, _ := v5(t, addr, fmt.Sprintf("ack-sh-a%d", q), true, nil)
			b, _ := v5(t, addr, fmt.Sprintf("ack-sh-b%d", q), true, nil)
			a.subscribeWith(1, 0, packets.Subscription{Filter: group, Qos: q})
			b.subscribeWith(1, 0, packets.Subscription{Filter: group, Qos: q})
			pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: q}, PacketID: 5, TopicName: fmt.Sprintf("ack/shared%d", q), Payload: []byte("s")})
			var taker, other *rawClient
			var pk packets.Packet
			for _, c := range []*rawClient{a, b} {
				if got, err := c.read(700 * time.Millisecond); err == nil {
					taker, pk = c, got
				} else {
					other = c
				}
			}
			if taker == nil || other == nil {
				t.Fatalf("qos %d: not one member got it", q)
			}
			typ := byte(packets.Puback)
			if q == 2 {
				typ = packets.Pubrec
			}
			taker.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: pk.PacketID, ReasonCode: 0x80})
			time.Sleep(100 * time.Millisecond)
			_ = taker.c.Close() // a member that leaves hands back what it holds: not this one
			other.none(700 * time.Millisecond)
		}
	})

	// [MQTT-3.3.1-3]: DUP of what the server sends says whether it is a
	// resend, whatever the publisher's PUBLISH said.
	t.Run("MQTT-3.3.1-3 dup of a first delivery", func(t *testing.T) {
		s1, _ := v5(t, addr, "ack-dup1", true, nil)
		s1.subscribeWith(1, 0, packets.Subscription{Filter: "ack/dup", Qos: 1})
		s0, _ := v5(t, addr, "ack-dup0", true, nil)
		s0.subscribeWith(1, 0, packets.Subscription{Filter: "ack/dup", Qos: 0})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Dup: true}, PacketID: 7, TopicName: "ack/dup", Payload: []byte("d")})
		for _, c := range []*rawClient{s1, s0} {
			if got := c.expect(packets.Publish, 5*time.Second); got.FixedHeader.Dup {
				t.Errorf("qos %d: DUP 1 on a first delivery", got.FixedHeader.Qos)
			}
		}
	})

	// [MQTT-3.3.2-5]: a message waiting behind a full window of a
	// connected client expires there too; one still alive carries what is
	// left of its interval [MQTT-3.3.2-6].
	t.Run("MQTT-3.3.2-5 message expires behind a full window", func(t *testing.T) {
		sub, _ := v5(t, addr, "ack-window-exp", true, func(pk *packets.Packet) { pk.Properties.ReceiveMaximum = 1 })
		sub.subscribeWith(1, 0, packets.Subscription{Filter: "ack/wexp/#", Qos: 1})
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 8, TopicName: "ack/wexp/hold", Payload: []byte("h")})
		held := sub.expect(packets.Publish, 5*time.Second)
		for i, e := range []uint32{1, 30} {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: uint16(9 + i), TopicName: fmt.Sprintf("ack/wexp/%d", e), Payload: []byte("e")}
			pk.Properties.MessageExpiryInterval = e
			pub.publishAcked(pk)
		}
		time.Sleep(2100 * time.Millisecond)
		sub.ackPublish(held)
		got := sub.expect(packets.Publish, 5*time.Second)
		if got.TopicName != "ack/wexp/30" {
			t.Errorf("got %s, want only ack/wexp/30", got.TopicName)
		}
		if e := got.Properties.MessageExpiryInterval; e == 0 || e > 28 {
			t.Errorf("expiry %d, want 1..28", e)
		}
	})
}

// TestConformance5WillProperties: a will's properties reach its
// subscribers as a PUBLISH's would (§3.1.3.2: Payload Format Indicator,
// Message Expiry Interval, Content Type, Response Topic, Correlation Data,
// User Properties in their order [MQTT-3.1.3-10]).
func TestConformance5WillProperties(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	watch, _ := v5(t, addr, "willprop-watch", true, nil)
	watch.subscribeWith(1, 0, packets.Subscription{Filter: "willprop", Qos: 1})
	rc, _ := v5(t, addr, "willprop", true, func(pk *packets.Packet) {
		pk.Mods.AllowResponseInfo = true // mochi's encoder leaves Response Topic out without it
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload, pk.Connect.WillQos = true, "willprop", []byte("w"), 1
		wp := &pk.Connect.WillProperties
		wp.PayloadFormat, wp.PayloadFormatFlag = 1, true
		wp.MessageExpiryInterval = 100
		wp.ContentType = "text/w"
		wp.ResponseTopic = "willprop/reply"
		wp.CorrelationData = []byte{9, 8}
		wp.User = []packets.UserProperty{{Key: "z", Val: "1"}, {Key: "a", Val: "2"}, {Key: "z", Val: "3"}}
	})
	_ = rc.c.Close()
	p := watch.expect(packets.Publish, 5*time.Second).Properties
	if !p.PayloadFormatFlag || p.PayloadFormat != 1 || p.ContentType != "text/w" || p.ResponseTopic != "willprop/reply" ||
		!bytes.Equal(p.CorrelationData, []byte{9, 8}) || p.MessageExpiryInterval == 0 || p.MessageExpiryInterval > 100 ||
		fmt.Sprint(p.User) != "[{z 1} {a 2} {z 3}]" {
		t.Errorf("will properties %+v", p)
	}
}

// TestConformance5OptionsAfterRestart: after a restart a persistent
// session's subscriptions keep their options (identifier [MQTT-3.3.4-3],
// Retain Handling 1 [MQTT-3.3.1-10], No Local [MQTT-3.8.3-3], Retain As
// Published [MQTT-3.3.1-12]), and messages queued for it still expire,
// the time the broker was down counted [MQTT-3.3.2-5] [MQTT-3.3.2-6].
func TestConformance5OptionsAfterRestart(t *testing.T) {
	r := newRestartable(t, nil)
	persist := func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
	}
	pub, _ := v5(t, r.ep().addr, "opts-pub", true, nil)
	pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 1, TopicName: "opts/ret", Payload: []byte("r")})
	rc, _ := v5(t, r.ep().addr, "opts-sub", false, persist)
	rc.subscribeWith(1, 21, packets.Subscription{Filter: "opts/+", Qos: 1, RetainHandling: 1, RetainAsPublished: true})
	rc.ackPublish(rc.expect(packets.Publish, 5*time.Second))
	rc.subscribeWith(2, 22, packets.Subscription{Filter: "opts/nl", Qos: 1, NoLocal: true})
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	rc.closed(5 * time.Second)
	for i, e := range []uint32{2, 60} {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: uint16(2 + i), TopicName: "opts/exp", Payload: []byte(fmt.Sprint(e))}
		pk.Properties.MessageExpiryInterval = e
		pub.publishAcked(pk)
	}
	r.restart()
	time.Sleep(3200 * time.Millisecond) // past the 2 s, whatever second it began in
	rc, ack := v5(t, r.ep().addr, "opts-sub", false, persist)
	if !ack.SessionPresent {
		t.Fatal("session not present after the restart")
	}
	got := rc.expect(packets.Publish, 5*time.Second)
	if string(got.Payload) != "60" || fmt.Sprint(got.Properties.SubscriptionIdentifier) != "[21]" {
		t.Errorf("got %q identifiers %v, want only the 60 s one, with [21]", got.Payload, got.Properties.SubscriptionIdentifier)
	}
	if e := got.Properties.MessageExpiryInterval; e == 0 || e > 57 {
		t.Errorf("expiry %d, want 1..57", e)
	}
	rc.ackPublish(got)
	rc.subscribeWith(3, 21, packets.Subscription{Filter: "opts/+", Qos: 1, RetainHandling: 1, RetainAsPublished: true})
	rc.none(300 * time.Millisecond) // it existed: no retained
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "opts/nl", Payload: []byte("n")})
	if got := rc.expect(packets.Publish, 5*time.Second); fmt.Sprint(got.Properties.SubscriptionIdentifier) != "[21]" {
		t.Errorf("own publish: identifiers %v, want [21] only (No Local on 22)", got.Properties.SubscriptionIdentifier)
	}
	pub, _ = v5(t, r.ep().addr, "opts-pub", true, nil)
	pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 4, TopicName: "opts/rap", Payload: []byte("r")})
	if got := rc.expect(packets.Publish, 5*time.Second); !got.FixedHeader.Retain {
		t.Error("Retain As Published lost in the restart: RETAIN 0")
	}
}

// TestConformanceTakeoverAtOnce: a second connection with a client id
// closes the first at once [MQTT-3.1.4-3] (3.1.1: [MQTT-3.1.4-2]) and
// gets its CONNACK without waiting for the old client, here one that
// reads nothing more: on WebSocket a close handshake with it would wait
// 5 s for its close frame, on every transport a goodbye it does not read
// must not hold the new connection back. An MQTT 5 client is told why
// first, DISCONNECT 0x8E Session taken over (§3.14.2.1). 2.5 s is far
// from either wait and from what a takeover takes on a busy machine.
func TestConformanceTakeoverAtOnce(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	for _, version := range []byte{4, 5} {
		for _, network := range []string{"tcp", "ws"} {
			t.Run(fmt.Sprintf("v%d/%s", version, network), func(t *testing.T) {
				t.Parallel()
				id := fmt.Sprintf("takeover-%d-%s", version, network)
				dial := func() *rawClient {
					c := dialNet(t, network, tb.Addr(network).String(), nil)
					t.Cleanup(func() { _ = c.Close() })
					return &rawClient{t: t, c: c, r: newReader(c), version: version}
				}
				old := dial()
				if ack := old.connect(id, true, 60); ack.ReasonCode != 0 {
					t.Fatalf("first connack %#x", ack.ReasonCode)
				}
				start := time.Now()
				if ack := dial().connect(id, true, 60); ack.ReasonCode != 0 {
					t.Fatalf("second connack %#x", ack.ReasonCode)
				}
				if d := time.Since(start); d > 2500*time.Millisecond {
					t.Errorf("CONNACK of the new connection after %v, want at once", d)
				}
				if version == 5 {
					if pk := old.expect(packets.Disconnect, time.Second); pk.ReasonCode != 0x8E {
						t.Errorf("old connection: disconnect %#x, want 0x8e session taken over", pk.ReasonCode)
					}
				}
				if !old.closed(2500*time.Millisecond - time.Since(start)) {
					t.Errorf("old connection still open %v after the takeover", time.Since(start))
				}
			})
		}
	}
}
