package edge

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/qos"
)

// mochiEncode is what mochi's WritePacket writes for p: the packet built
// as the engine's packets were handed to mochi before appendPacket, the
// remaining expiry and the modifiers WritePacket sets, then mochi's encoder.
func mochiEncode(t *testing.T, p *qos.Packet, version byte, now int64) []byte {
	t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: byte(p.Type)}, PacketID: p.PacketID, ReasonCode: p.ReasonCode, ProtocolVersion: version}
	pk.Mods.AllowResponseInfo = true
	var buf bytes.Buffer
	var err error
	switch p.Type {
	case qos.PacketPublish:
		m := p.Message
		pk.FixedHeader.Qos, pk.FixedHeader.Dup, pk.FixedHeader.Retain = p.QoS, p.Dup, p.Retain
		pk.TopicName, pk.Payload = m.Topic, m.Payload
		if m.Expiry > 0 {
			pk.Properties.MessageExpiryInterval = uint32(max(m.Expiry-now, 1))
		}
		pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = m.PayloadFormat, m.PayloadFormatFlag
		pk.Properties.ContentType, pk.Properties.ResponseTopic, pk.Properties.CorrelationData = m.ContentType, m.ResponseTopic, m.CorrelationData
		for _, u := range m.User {
			pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: u.Key, Val: u.Value})
		}
		pk.Properties.SubscriptionIdentifier = p.SubscriptionIDs
		if p.TopicAlias > 0 {
			pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = p.TopicAlias, true
			if p.AliasOnly {
				pk.TopicName = ""
			}
		}
		err = pk.PublishEncode(&buf)
	case qos.PacketPuback:
		err = pk.PubackEncode(&buf)
	case qos.PacketPubrec:
		err = pk.PubrecEncode(&buf)
	case qos.PacketPubrel:
		pk.FixedHeader.Qos = 1 // [MQTT-3.6.1-1]
		err = pk.PubrelEncode(&buf)
	case qos.PacketPubcomp:
		err = pk.PubcompEncode(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// appendPacket writes the bytes mochi's encoders write for every packet
// the engine writes, in both versions (reason codes of 0x80 and above:
// mochi leaves out a lower one, which MQTT 5 allows only for 0x00).
func TestEncodeAsMochi(t *testing.T) {
	now := time.Now().Unix()
	long := bytes.Repeat([]byte("x"), 300) // a two-byte remaining length
	full := &qos.Message{
		Topic: "site/1/temp", Payload: []byte("21.5"), QoS: 2, Expiry: now + 90,
		PayloadFormat: 1, PayloadFormatFlag: true, ContentType: "text/plain",
		ResponseTopic: "reply/1", CorrelationData: []byte{1, 2, 3},
		User: []qos.Property{{Key: "k", Value: "v"}, {Key: "unit", Value: "C"}},
	}
	cases := []qos.Packet{
		{Type: qos.PacketPuback, PacketID: 7},
		{Type: qos.PacketPuback, PacketID: 0x1234, ReasonCode: 0x97},
		{Type: qos.PacketPubrec, PacketID: 65535, ReasonCode: 0x83},
		{Type: qos.PacketPubrel, PacketID: 9},
		{Type: qos.PacketPubrel, PacketID: 9, ReasonCode: 0x92},
		{Type: qos.PacketPubcomp, PacketID: 300, ReasonCode: 0x92},
		{Type: qos.PacketPublish, Message: &qos.Message{Topic: "a/b", Payload: []byte("hello")}},
		{Type: qos.PacketPublish, PacketID: 5, QoS: 1, Dup: true, Retain: true, Message: &qos.Message{Topic: "a/b", Payload: long}},
		{Type: qos.PacketPublish, PacketID: 6, QoS: 2, Message: full, SubscriptionIDs: []int{1, 200, 0, 268435455}},
		{Type: qos.PacketPublish, PacketID: 6, QoS: 1, Message: full, TopicAlias: 3},
		{Type: qos.PacketPublish, PacketID: 6, QoS: 1, Message: full, TopicAlias: 3, AliasOnly: true},
		{Type: qos.PacketPublish, QoS: 0, Message: &qos.Message{Topic: "t", Expiry: now - 5, ResponseTopic: "wild/#"}},
	}
	for i, p := range cases {
		for _, v := range []byte{4, 5} {
			t.Run(fmt.Sprintf("%d/v%d", i, v), func(t *testing.T) {
				want := mochiEncode(t, &p, v, now)
				got := appendPacket([]byte("kept"), &p, v, now)
				if !bytes.Equal(got[4:], want) {
					t.Fatalf("packet %+v\n got %x\nwant %x", p, got[4:], want)
				}
			})
		}
	}
}
