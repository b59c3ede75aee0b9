package edge

import (
	"encoding/binary"
	"strings"

	"github.com/edgemq/edgemq/qos"
)

// appendPacket appends the encoding of p, a packet the engine writes, for
// a client of MQTT version `version`; now is the time in Unix seconds (a
// message's remaining expiry interval [MQTT-3.3.2-6]). The bytes are
// those mochi's encoders write (TestEncodeAsMochi), without their
// allocations: the engine's packets are written without mochi's
// WritePacket, which allocates a buffer per packet (see mochiConn).
func appendPacket(b []byte, p *qos.Packet, version byte, now int64) []byte {
	if p.Type == qos.PacketPublish {
		return appendPublish(b, p, version, now)
	}
	// PUBACK, PUBREC, PUBREL, PUBCOMP [MQTT-3.4.2] to [MQTT-3.7.2].
	first := byte(p.Type) << 4
	if p.Type == qos.PacketPubrel {
		first |= 0x02 // [MQTT-3.6.1-1]
	}
	if version == 5 && p.ReasonCode != 0 {
		// The reason code may be left out only for success, with no
		// properties [MQTT-3.4.2.1]; the engine sends none.
		return append(b, first, 3, byte(p.PacketID>>8), byte(p.PacketID), p.ReasonCode)
	}
	return append(b, first, 2, byte(p.PacketID>>8), byte(p.PacketID))
}

// MQTT 5 PUBLISH property identifiers [MQTT-3.3.2.3].
const (
	propPayloadFormat  = 0x01
	propMessageExpiry  = 0x02
	propContentType    = 0x03
	propResponseTopic  = 0x08
	propCorrelation    = 0x09
	propSubscriptionID = 0x0B
	propTopicAlias     = 0x23
	propUser           = 0x26
)

// appendPublish appends a PUBLISH [MQTT-3.3], its properties in mochi's order.
func appendPublish(b []byte, p *qos.Packet, version byte, now int64) []byte {
	m := p.Message
	topic := m.Topic
	if p.AliasOnly {
		topic = "" // [MQTT-3.3.2-12]
	}
	var expiry int64
	if m.Expiry > 0 {
		expiry = max(m.Expiry-now, 1) // the remaining interval [MQTT-3.3.2-6]
	}
	// A response topic with wildcards is not sent [MQTT-3.3.2-14].
	response := m.ResponseTopic != "" && !strings.ContainsAny(m.ResponseTopic, "+#")
	n := 2 + len(topic) + len(m.Payload)
	if p.QoS > 0 {
		n += 2
	}
	props := 0
	if version == 5 {
		if m.PayloadFormatFlag {
			props += 2
		}
		if expiry > 0 {
			props += 5
		}
		if m.ContentType != "" {
			props += 3 + len(m.ContentType)
		}
		if response {
			props += 3 + len(m.ResponseTopic)
		}
		if len(m.CorrelationData) > 0 {
			props += 3 + len(m.CorrelationData)
		}
		for _, id := range p.SubscriptionIDs {
			if id > 0 {
				props += 1 + varintLen(id)
			}
		}
		if p.TopicAlias > 0 {
			props += 3
		}
		for _, u := range m.User {
			props += 5 + len(u.Key) + len(u.Value)
		}
		n += varintLen(props) + props
	}

	first := byte(qos.PacketPublish)<<4 | p.QoS<<1 // [MQTT-3.3.1]
	if p.Dup {
		first |= 0x08
	}
	if p.Retain {
		first |= 0x01
	}
	b = appendVarint(append(b, first), n)
	b = appendString(b, topic)
	if p.QoS > 0 {
		b = append(b, byte(p.PacketID>>8), byte(p.PacketID))
	}
	if version == 5 {
		b = appendVarint(b, props)
		if m.PayloadFormatFlag {
			b = append(b, propPayloadFormat, m.PayloadFormat)
		}
		if expiry > 0 {
			e := uint32(expiry)
			b = append(b, propMessageExpiry, byte(e>>24), byte(e>>16), byte(e>>8), byte(e))
		}
		if m.ContentType != "" {
			b = appendString(append(b, propContentType), m.ContentType)
		}
		if response {
			b = appendString(append(b, propResponseTopic), m.ResponseTopic)
		}
		if len(m.CorrelationData) > 0 {
			b = appendBytes(append(b, propCorrelation), m.CorrelationData)
		}
		for _, id := range p.SubscriptionIDs {
			if id > 0 {
				b = appendVarint(append(b, propSubscriptionID), id)
			}
		}
		if p.TopicAlias > 0 {
			b = append(b, propTopicAlias, byte(p.TopicAlias>>8), byte(p.TopicAlias))
		}
		for _, u := range m.User {
			b = appendString(appendString(append(b, propUser), u.Key), u.Value)
		}
	}
	return append(b, m.Payload...)
}

// appendString appends a UTF-8 string with its two-byte length [MQTT-1.5.4].
func appendString(b []byte, s string) []byte {
	return append(append(b, byte(len(s)>>8), byte(len(s))), s...)
}

// appendBytes is appendString for binary data.
func appendBytes(b, v []byte) []byte {
	return append(append(b, byte(len(v)>>8), byte(len(v))), v...)
}

// appendVarint appends a Variable Byte Integer [MQTT-1.5.5-1]: seven bits
// a byte, the least significant first, 0x80 on all but the last, which is
// the varint encoding/binary writes.
func appendVarint(b []byte, v int) []byte { return binary.AppendUvarint(b, uint64(v)) }

// varintLen is the size of v as a Variable Byte Integer.
func varintLen(v int) int {
	n := 1
	for v >= 128 {
		v /= 128
		n++
	}
	return n
}
