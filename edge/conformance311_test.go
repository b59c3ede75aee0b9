package edge_test

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// The MQTT 3.1.1 normative statements an interoperability suite walks
// (Paho's client_test.py, and conformance tools that check each
// [MQTT-x.y.z-n]), over real sockets with raw packets.

// v3 connects a raw MQTT 3.1.1 client.
func v3(t *testing.T, addr, id string, clean bool, tune func(*packets.Packet)) (*rawClient, packets.Packet) {
	t.Helper()
	rc := dialRaw(t, addr, 4)
	ack := rc.connectWith(id, clean, 30, tune)
	if ack.ReasonCode != 0 {
		t.Fatalf("connack %s: return code %#x", id, ack.ReasonCode)
	}
	return rc, ack
}

// closedWithout asserts that the connection closes within d without any
// packet first: a 3.1.1 server has no DISCONNECT to send.
func (rc *rawClient) closedWithout(d time.Duration) {
	rc.t.Helper()
	pk, err := rc.read(d)
	if err == nil {
		rc.t.Fatalf("got packet type %d (reason %#x) before the close, want none", pk.FixedHeader.Type, pk.ReasonCode)
	}
	if !rc.closed(d) {
		rc.t.Fatal("connection still open")
	}
}

// TestConformance311Connect: CONNECT and CONNACK.
func TestConformance311Connect(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()

	// [MQTT-3.1.3-6] [MQTT-3.1.3-7]: a zero-length client id with Clean
	// Session 1 is accepted, one with Clean Session 0 refused with 0x02
	// and closed [MQTT-3.1.3-8] (client_test.py test_zero_length_clientid).
	t.Run("MQTT-3.1.3-8 zero length client id", func(t *testing.T) {
		rc := dialRaw(t, addr, 4)
		if ack := rc.connect("", false, 30); ack.ReasonCode != 0x02 {
			t.Errorf("clean 0: return code %#x, want 0x02", ack.ReasonCode)
		}
		if !rc.closed(5 * time.Second) {
			t.Error("refused connection still open")
		}
		v3(t, addr, "", true, nil)
	})

	// [MQTT-3.2.2-1] [MQTT-3.2.2-2]: Session Present.
	t.Run("MQTT-3.2.2-2 session present", func(t *testing.T) {
		rc, ack := v3(t, addr, "v3-sp", false, nil)
		if ack.SessionPresent {
			t.Error("new session present")
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		rc, ack = v3(t, addr, "v3-sp", false, nil)
		if !ack.SessionPresent {
			t.Error("resumed session not present")
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.closed(5 * time.Second)
		if _, ack = v3(t, addr, "v3-sp", true, nil); ack.SessionPresent {
			t.Error("[MQTT-3.2.2-1] clean session with session present")
		}
	})

	// [MQTT-3.1.4-2]: a second connection with the client id closes the
	// first, without a DISCONNECT, which 3.1.1 servers do not send.
	t.Run("MQTT-3.1.4-2 takeover closes the old connection", func(t *testing.T) {
		old, _ := v3(t, addr, "v3-take", true, nil)
		v3(t, addr, "v3-take", true, nil)
		old.closedWithout(5 * time.Second)
	})

	// Malformed CONNECTs close the connection without CONNACK.
	for _, tc := range []struct {
		name   string
		clause string
		tune   func(*packets.Packet)
	}{
		{"will qos without will flag", "MQTT-3.1.2-13", func(pk *packets.Packet) { pk.Connect.WillQos = 1 }},
		{"will retain without will flag", "MQTT-3.1.2-15", func(pk *packets.Packet) { pk.Connect.WillRetain = true }},
		{"password without username", "MQTT-3.1.2-22", func(pk *packets.Packet) {
			pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte("pw")
		}},
		{"will qos 3", "MQTT-3.1.2-14", func(pk *packets.Packet) {
			pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload, pk.Connect.WillQos = true, "w", []byte("w"), 3
		}},
		{"will topic with wildcard", "MQTT-3.1.3-11", func(pk *packets.Packet) {
			pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "w/#", []byte("w")
		}},
	} {
		t.Run(tc.clause+" "+tc.name, func(t *testing.T) {
			rc := dialRaw(t, addr, 4)
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}}
			pk.Connect.ProtocolName = []byte("MQTT")
			pk.Connect.ClientIdentifier = "v3-bad"
			pk.Connect.Clean = true
			pk.Connect.Keepalive = 30
			tc.tune(&pk)
			rc.send(pk)
			if got, err := rc.read(5 * time.Second); err == nil && !(got.FixedHeader.Type == packets.Connack && got.ReasonCode != 0) {
				t.Errorf("got packet type %d (return code %#x), want the connection closed", got.FixedHeader.Type, got.ReasonCode)
			}
			if !rc.closed(5 * time.Second) {
				t.Error("connection still open")
			}
		})
	}

	// [MQTT-3.1.2-3]: the reserved flag of CONNECT must be 0.
	t.Run("MQTT-3.1.2-3 reserved connect flag", func(t *testing.T) {
		rc := dialRaw(t, addr, 4)
		if _, err := rc.c.Write([]byte{0x10, 0x0d, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x03, 0, 30, 0, 1, 'r'}); err != nil {
			t.Fatal(err)
		}
		if got, err := rc.read(5 * time.Second); err == nil && got.FixedHeader.Type == packets.Connack && got.ReasonCode == 0 {
			t.Error("accepted")
		}
		if !rc.closed(5 * time.Second) {
			t.Error("connection still open")
		}
	})

	// [MQTT-3.1.2-24]: no packet within 1.5 keepalives: closed, will
	// published [MQTT-3.1.2-8].
	t.Run("MQTT-3.1.2-24 keepalive", func(t *testing.T) {
		watch, _ := v3(t, addr, "v3-ka-watch", true, nil)
		watch.subscribe(1, "v3will/ka", 1)
		watch.expect(packets.Suback, 5*time.Second)
		rc := dialRaw(t, addr, 4)
		rc.connectWith("v3-ka", true, 1, func(pk *packets.Packet) {
			pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload, pk.Connect.WillQos = true, "v3will/ka", []byte("ka"), 1
		})
		rc.closedWithout(5 * time.Second)
		if got := watch.expect(packets.Publish, 5*time.Second); string(got.Payload) != "ka" {
			t.Errorf("will %q", got.Payload)
		}
	})
}

// TestConformance311Packets: malformed packets after CONNECT close the
// connection [MQTT-4.8.0-1], without a DISCONNECT.
func TestConformance311Packets(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	for _, tc := range []struct {
		clause, name string
		bytes        []byte
	}{
		{"MQTT-3.6.1-1", "pubrel with flags 0000", []byte{0x60, 0x02, 0x00, 0x01}},
		{"MQTT-3.10.1-1", "unsubscribe with flags 0000", []byte{0xa0, 0x05, 0x00, 0x01, 0x00, 0x01, 'a'}},
		{"MQTT-3.8.3-3", "subscribe without filters", []byte{0x82, 0x02, 0x00, 0x01}},
		{"MQTT-3.10.3-2", "unsubscribe without filters", []byte{0xa2, 0x02, 0x00, 0x01}},
		{"MQTT-3-8.3-4", "subscribe qos byte with reserved bits", []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x04}},
		{"MQTT-3.8.3-4", "subscribe qos 3", []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x03}},
		{"MQTT-2.3.1-1", "subscribe packet id 0", []byte{0x82, 0x06, 0x00, 0x00, 0x00, 0x01, 'a', 0x01}},
		{"MQTT-2.3.1-1", "qos 1 publish packet id 0", []byte{0x32, 0x05, 0x00, 0x01, 'a', 0x00, 0x00}},
		{"MQTT-4.7.3-2", "topic with NUL", []byte{0x30, 0x05, 0x00, 0x03, 'a', 0x00, 'b'}},
		{"MQTT-1.5.3-1", "topic not UTF-8", []byte{0x30, 0x04, 0x00, 0x02, 0xc3, 0x28}},
		{"MQTT-1.5.3-2", "filter with NUL", []byte{0x82, 0x07, 0x00, 0x01, 0x00, 0x02, 'a', 0x00, 0x01}},
		{"MQTT-3.14.1-1", "disconnect with flags", []byte{0xe1, 0x00}},
		{"MQTT-2.2.2-2", "reserved type 15", []byte{0xf0, 0x00}},
	} {
		t.Run(tc.clause+" "+tc.name, func(t *testing.T) {
			rc, _ := v3(t, addr, "v3-malformed", true, nil)
			if _, err := rc.c.Write(tc.bytes); err != nil {
				t.Fatal(err)
			}
			rc.closedWithout(5 * time.Second)
		})
	}
}

// TestConformance311Delivery: retained, QoS flows, redelivery.
func TestConformance311Delivery(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	pub, _ := v3(t, addr, "v3-pub", true, nil)
	publish := func(pk packets.Packet) { pub.publishAcked(pk) }

	// [MQTT-3.3.1-8] [MQTT-3.3.1-9]: RETAIN 1 for a retained message sent
	// at SUBSCRIBE, 0 on a live one to an existing subscription.
	t.Run("MQTT-3.3.1-9 retain flag", func(t *testing.T) {
		publish(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 1, TopicName: "v3ret/a", Payload: []byte("r")})
		sub, _ := v3(t, addr, "v3-ret", true, nil)
		sub.subscribe(1, "v3ret/#", 1)
		sub.expect(packets.Suback, 5*time.Second)
		if got := sub.expect(packets.Publish, 5*time.Second); !got.FixedHeader.Retain {
			t.Error("[MQTT-3.3.1-8] retained at SUBSCRIBE without RETAIN")
		} else {
			sub.ackPublish(got)
		}
		publish(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 2, TopicName: "v3ret/a", Payload: []byte("live")})
		if got := sub.expect(packets.Publish, 5*time.Second); got.FixedHeader.Retain {
			t.Error("[MQTT-3.3.1-9] live message with RETAIN 1")
		}
		// [MQTT-3.3.1-10] [MQTT-3.3.1-11]: an empty retained payload
		// clears it and is delivered as usual.
		publish(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, PacketID: 3, TopicName: "v3ret/a"})
		late, _ := v3(t, addr, "v3-ret-late", true, nil)
		late.subscribe(1, "v3ret/#", 1)
		late.expect(packets.Suback, 5*time.Second)
		late.none(500 * time.Millisecond)
	})

	// [MQTT-4.4.0-1]: an unacknowledged QoS 1 message is sent again when
	// the session resumes, with DUP 1 [MQTT-3.3.1-1] (client_test.py
	// test_redelivery_on_reconnect).
	t.Run("MQTT-4.4.0-1 redelivery on reconnect", func(t *testing.T) {
		sub, _ := v3(t, addr, "v3-redeliver", false, nil)
		sub.subscribe(1, "v3re/#", 2)
		sub.expect(packets.Suback, 5*time.Second)
		publish(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 4, TopicName: "v3re/1", Payload: []byte("1")})
		publish(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 2}, PacketID: 5, TopicName: "v3re/2", Payload: []byte("2")})
		first := sub.expect(packets.Publish, 5*time.Second)
		second := sub.expect(packets.Publish, 5*time.Second)
		_ = sub.c.Close()
		sub, _ = v3(t, addr, "v3-redeliver", false, nil)
		for _, want := range []packets.Packet{first, second} {
			got := sub.expect(packets.Publish, 5*time.Second)
			if got.TopicName != want.TopicName || got.PacketID != want.PacketID || !got.FixedHeader.Dup {
				t.Errorf("got %s id %d dup %v, want %s id %d dup", got.TopicName, got.PacketID, got.FixedHeader.Dup, want.TopicName, want.PacketID)
			}
		}
		// [MQTT-4.3.3-1] [MQTT-4.4.0-1] outbound QoS 2: after PUBREC the
		// PUBREL is what is resent.
		sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: first.PacketID})
		sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: second.PacketID})
		sub.expect(packets.Pubrel, 5*time.Second)
		_ = sub.c.Close()
		sub, _ = v3(t, addr, "v3-redeliver", false, nil)
		if rel := sub.expect(packets.Pubrel, 5*time.Second); rel.PacketID != second.PacketID {
			t.Errorf("pubrel %d, want %d", rel.PacketID, second.PacketID)
		}
		sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: second.PacketID})
		sub.none(300 * time.Millisecond)
	})

	// [MQTT-3.1.2-5]: a persistent session queues QoS 1 and 2 messages
	// while offline (client_test.py test_offline_message_queueing).
	t.Run("MQTT-3.1.2-5 offline queueing", func(t *testing.T) {
		sub, _ := v3(t, addr, "v3-offline", false, nil)
		sub.subscribe(1, "v3off/#", 2)
		sub.expect(packets.Suback, 5*time.Second)
		sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		sub.closed(5 * time.Second)
		for q := byte(1); q <= 2; q++ {
			publish(packets.Packet{FixedHeader: packets.FixedHeader{Qos: q}, PacketID: uint16(10 + q), TopicName: "v3off/q", Payload: []byte{q}})
		}
		sub, _ = v3(t, addr, "v3-offline", false, nil)
		for q := byte(1); q <= 2; q++ {
			got := sub.expect(packets.Publish, 5*time.Second)
			if got.FixedHeader.Qos != q {
				t.Errorf("qos %d, want %d", got.FixedHeader.Qos, q)
			}
			sub.ackPublish(got)
		}
	})

	// [MQTT-3.8.4-3] [MQTT-3.3.5-1]: overlapping subscriptions: the
	// message at the highest QoS (client_test.py
	// test_overlapping_subscriptions accepts one or two copies).
	t.Run("MQTT-3.3.5-1 overlapping subscriptions", func(t *testing.T) {
		sub, _ := v3(t, addr, "v3-overlap", true, nil)
		sub.subscribe(1, "v3ov/#", 2)
		sub.expect(packets.Suback, 5*time.Second)
		sub.subscribe(2, "v3ov/+", 1)
		sub.expect(packets.Suback, 5*time.Second)
		publish(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 2}, PacketID: 20, TopicName: "v3ov/a", Payload: []byte("o")})
		got := sub.expect(packets.Publish, 5*time.Second)
		if got.FixedHeader.Qos != 2 {
			t.Errorf("qos %d, want 2", got.FixedHeader.Qos)
		}
	})

	// [MQTT-4.7.2-1]: # does not match $ topics (client_test.py
	// test_dollar_topics).
	t.Run("MQTT-4.7.2-1 dollar topics", func(t *testing.T) {
		sub, _ := v3(t, addr, "v3-dollar", true, nil)
		sub.subscribe(1, "#", 1)
		sub.expect(packets.Suback, 5*time.Second)
		publish(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 21, TopicName: "$v3/x", Payload: []byte("d")})
		for {
			pk, err := sub.read(500 * time.Millisecond)
			if err != nil {
				break
			}
			if pk.TopicName == "$v3/x" {
				t.Fatal("# matched a $ topic")
			}
			sub.ackPublish(pk)
		}
	})

	// [MQTT-3.8.4-5] SUBACK 0x80 for a filter refused; [MQTT-3.10.4-5]
	// UNSUBACK even for a filter never subscribed.
	t.Run("MQTT-3.9.3-2 suback failure and unsuback", func(t *testing.T) {
		rc, _ := v3(t, addr, "v3-suback", true, nil)
		codes := rc.subscribeWith(1, 0, packets.Subscription{Filter: "a+", Qos: 1}, packets.Subscription{Filter: "ok/#", Qos: 2})
		if len(codes) != 2 || codes[0] != 0x80 || codes[1] != 2 {
			t.Errorf("suback %x, want 80 02", codes)
		}
		rc.sendUnsubscribe(2, "never/subscribed")
		if ack := rc.expect(packets.Unsuback, 5*time.Second); ack.PacketID != 2 {
			t.Errorf("unsuback id %d", ack.PacketID)
		}
	})

	// [MQTT-4.3.3-2] inbound QoS 2: a PUBREL for an id not held still
	// gets PUBCOMP (3.1.1 has no reason code).
	t.Run("MQTT-4.3.3 pubrel unknown id", func(t *testing.T) {
		rc, _ := v3(t, addr, "v3-pubrel", true, nil)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 99})
		if c := rc.expect(packets.Pubcomp, 5*time.Second); c.PacketID != 99 {
			t.Errorf("pubcomp %d", c.PacketID)
		}
	})
}

// TestConformance311Protocol: what a 3.1.1 server does with a CONNECT it
// cannot take, a packet before or after CONNECT that breaks the protocol,
// and the DUP of what it sends.
func TestConformance311Protocol(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()

	// [MQTT-3.1.2-2]: an unsupported protocol level: CONNACK 0x01, then
	// closed; [MQTT-3.1.2-1] another protocol name: closed, not accepted.
	for _, tc := range []struct {
		clause, name string
		body         []byte
	}{
		{"MQTT-3.1.2-2", "level 6", []byte{0, 4, 'M', 'Q', 'T', 'T', 6, 0x02, 0, 30, 0, 1, 'r'}},
		{"MQTT-3.1.2-2", "level 2", []byte{0, 4, 'M', 'Q', 'T', 'T', 2, 0x02, 0, 30, 0, 1, 'r'}},
		{"MQTT-3.1.2-1", "name MQTX", []byte{0, 4, 'M', 'Q', 'T', 'X', 4, 0x02, 0, 30, 0, 1, 'r'}},
	} {
		t.Run(tc.clause+" connect "+tc.name, func(t *testing.T) {
			rc := dialRaw(t, addr, 4)
			if _, err := rc.c.Write(append([]byte{0x10, byte(len(tc.body))}, tc.body...)); err != nil {
				t.Fatal(err)
			}
			if got, err := rc.read(5 * time.Second); err == nil && (got.FixedHeader.Type != packets.Connack || got.ReasonCode == 0) {
				t.Errorf("got type %d return code %#x, want CONNACK 0x01 or a close", got.FixedHeader.Type, got.ReasonCode)
			}
			if !rc.closed(5 * time.Second) {
				t.Error("still open")
			}
		})
	}

	// [MQTT-3.1.0-1]: the first packet is CONNECT, or the connection is
	// closed; [MQTT-3.1.0-2] a second CONNECT closes it too.
	t.Run("MQTT-3.1.0-1 first packet not connect", func(t *testing.T) {
		rc := dialRaw(t, addr, 4)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		rc.closedWithout(5 * time.Second)
	})
	t.Run("MQTT-3.1.0-2 second connect", func(t *testing.T) {
		rc, _ := v3(t, addr, "v3-twice", true, nil)
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}}
		pk.Connect.ProtocolName, pk.Connect.ClientIdentifier, pk.Connect.Clean = []byte("MQTT"), "v3-twice", true
		rc.send(pk)
		rc.closedWithout(5 * time.Second)
	})

	// [MQTT-4.7.3-1]: topic names and filters are at least one character:
	// a PUBLISH to "" closes the connection [MQTT-4.8.0-1], a SUBSCRIBE to
	// "" is refused (0x80) or closes it.
	t.Run("MQTT-4.7.3-1 zero length topic", func(t *testing.T) {
		rc, _ := v3(t, addr, "v3-empty", true, nil)
		if _, err := rc.c.Write([]byte{0x30, 3, 0, 0, 'x'}); err != nil {
			t.Fatal(err)
		}
		rc.closedWithout(5 * time.Second)
	})
	t.Run("MQTT-4.7.3-1 zero length filter", func(t *testing.T) {
		rc, _ := v3(t, addr, "v3-emptyf", true, nil)
		if _, err := rc.c.Write([]byte{0x82, 5, 0, 1, 0, 0, 1}); err != nil {
			t.Fatal(err)
		}
		if got, err := rc.read(5 * time.Second); err == nil && (got.FixedHeader.Type != packets.Suback || len(got.ReasonCodes) != 1 || got.ReasonCodes[0] != 0x80) {
			t.Errorf("got type %d codes %x, want SUBACK 0x80 or a close", got.FixedHeader.Type, got.ReasonCodes)
		}
	})

	// [MQTT-3.1.2-8]: closed for a protocol error, the connection's will
	// is published.
	t.Run("MQTT-3.1.2-8 will on a protocol error", func(t *testing.T) {
		watch, _ := v3(t, addr, "v3-pe-watch", true, nil)
		watch.subscribe(1, "v3will/pe", 1)
		watch.expect(packets.Suback, 5*time.Second)
		rc := dialRaw(t, addr, 4)
		rc.connectWith("v3-pe", true, 30, func(pk *packets.Packet) {
			pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload, pk.Connect.WillQos = true, "v3will/pe", []byte("pe"), 1
		})
		if _, err := rc.c.Write([]byte{0xf0, 0x00}); err != nil { // reserved packet type 15
			t.Fatal(err)
		}
		rc.closedWithout(5 * time.Second)
		if got := watch.expect(packets.Publish, 5*time.Second); string(got.Payload) != "pe" {
			t.Errorf("will %q", got.Payload)
		}
	})

	// [MQTT-3.3.1-3]: the DUP of an outgoing PUBLISH says whether it is a
	// resend, not what the incoming one said.
	t.Run("MQTT-3.3.1-3 dup of a first delivery", func(t *testing.T) {
		sub, _ := v3(t, addr, "v3-dup-sub", true, nil)
		sub.subscribe(1, "v3dup", 1)
		sub.expect(packets.Suback, 5*time.Second)
		pub, _ := v3(t, addr, "v3-dup-pub", true, nil)
		pub.publishAcked(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Dup: true}, PacketID: 1, TopicName: "v3dup", Payload: []byte("d")})
		if got := sub.expect(packets.Publish, 5*time.Second); got.FixedHeader.Dup {
			t.Error("DUP 1 on a first delivery")
		}
	})
}

// TestConformance311KeepaliveGrace: [MQTT-3.1.2-24] the server closes a
// connection silent for one and a half times its Keep Alive, not before:
// with a Keep Alive of 1 s a client that sends a PINGREQ every 1.1 s
// stays connected (an odd keepalive in whole seconds too: the deadline
// of 1 s that k+k/2 in whole seconds gave closed it). 0.4 s of margin to
// the 1.5 s deadline, for a test goroutine that wakes late on a busy
// machine.
func TestConformance311KeepaliveGrace(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	for _, ver := range []byte{4, 5} {
		rc := dialRaw(t, addr, ver)
		rc.connect("keepalive-grace", true, 1)
		for i := 0; i < 3; i++ {
			time.Sleep(1100 * time.Millisecond)
			rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
			if pk, err := rc.read(time.Second); err != nil || pk.FixedHeader.Type != packets.Pingresp {
				t.Fatalf("v%d: ping %d, 1.1 s after the last packet: %v (type %d), want PINGRESP", ver, i, err, pk.FixedHeader.Type)
			}
		}
	}
}

// TestConformance311KeepaliveZero: a 3.1.1 client's Keep Alive of 0 turns
// the keep alive mechanism off (§3.1.2.10): the server has no way to tell
// it another value, so limits.max_keepalive does not apply and a silent
// client stays connected past 1.5 times it. An MQTT 5 client asking for
// 0 is told max_keepalive in CONNACK (Server Keep Alive, which it MUST
// use [MQTT-3.2.2-21]) and held to it [MQTT-3.1.2-22].
func TestConformance311KeepaliveZero(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxKeepalive = time.Second
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	t.Run("v3 none", func(t *testing.T) {
		t.Parallel()
		rc := dialRaw(t, addr, 4)
		if ack := rc.connect("keepalive-zero-v3", true, 0); ack.ReasonCode != 0 {
			t.Fatalf("connack %#x", ack.ReasonCode)
		}
		if pk, err := rc.read(3 * time.Second); err == nil {
			t.Fatalf("silent with keep alive 0: got packet type %d (reason %#x), want none", pk.FixedHeader.Type, pk.ReasonCode)
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		if pk, err := rc.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Pingresp {
			t.Fatalf("ping after 3 s silent with keep alive 0: %v (type %d), want PINGRESP", err, pk.FixedHeader.Type)
		}
	})
	t.Run("v5 server keep alive", func(t *testing.T) {
		t.Parallel()
		rc := dialRaw(t, addr, 5)
		ack := rc.connect("keepalive-zero-v5", true, 0)
		if ack.ReasonCode != 0 || !ack.Properties.ServerKeepAliveFlag || ack.Properties.ServerKeepAlive != 1 {
			t.Fatalf("connack %#x, server keep alive %d (sent %v), want 1", ack.ReasonCode, ack.Properties.ServerKeepAlive, ack.Properties.ServerKeepAliveFlag)
		}
		if pk := rc.expect(packets.Disconnect, 5*time.Second); pk.ReasonCode != 0x8D {
			t.Errorf("disconnect reason %#x, want 0x8d keep alive timeout", pk.ReasonCode)
		}
	})
}
