package edge

import (
	"errors"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/qos"
)

// mochiConn is one mochi client as the engine's qos.Conn: the engine
// decides what to write, mochi encodes it (Maximum Packet Size, problem
// information, its hooks and counters) on the engine's sender goroutine,
// into our conn corked until Flush: a round of the sender is one write.
type mochiConn struct {
	srv *mqtt.Server
	cl  *mqtt.Client
	wc  *conn // cl's connection; nil: writes are not corked
}

var _ qos.Conn = mochiConn{}

// newMochiConn is cl as a qos.Conn.
func newMochiConn(srv *mqtt.Server, cl *mqtt.Client) mochiConn {
	wc, _ := cl.Net.Conn.(*conn)
	return mochiConn{srv: srv, cl: cl, wc: wc}
}

// Write encodes p as a mochi packet and writes it, corked until Flush.
// mochi's "packet too large" becomes qos.ErrTooLarge: nothing was written
// [MQTT-3.1.2-24].
func (c mochiConn) Write(p *qos.Packet) error {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: byte(p.Type)}, PacketID: p.PacketID, ReasonCode: p.ReasonCode}
	switch p.Type {
	case qos.PacketPubrel:
		pk.FixedHeader.Qos = 1 // [MQTT-3.6.1-1]
	case qos.PacketPublish:
		publishPacket(&pk, p)
	}
	if c.wc != nil {
		c.wc.cork()
	}
	err := c.cl.WritePacket(pk)
	if errors.Is(err, packets.ErrPacketTooLarge) {
		return qos.ErrTooLarge
	}
	return err
}

// Flush writes the packets Write corked.
func (c mochiConn) Flush() error {
	if c.wc == nil {
		return nil
	}
	return c.wc.flush()
}

// publishPacket fills pk with the PUBLISH of a delivery.
func publishPacket(pk *packets.Packet, p *qos.Packet) {
	m := p.Message
	pk.FixedHeader.Qos, pk.FixedHeader.Dup, pk.FixedHeader.Retain = p.QoS, p.Dup, p.Retain
	pk.TopicName = m.Topic
	pk.Payload = m.Payload
	pk.Expiry = m.Expiry // mochi writes the remaining interval [MQTT-3.3.2-6]
	pk.Properties = packets.Properties{
		PayloadFormat:     m.PayloadFormat,
		PayloadFormatFlag: m.PayloadFormatFlag,
		ContentType:       m.ContentType,
		ResponseTopic:     m.ResponseTopic,
		CorrelationData:   m.CorrelationData,
	}
	if len(m.User) > 0 {
		pk.Properties.User = make([]packets.UserProperty, len(m.User))
		for i, u := range m.User {
			pk.Properties.User[i] = packets.UserProperty{Key: u.Key, Val: u.Value}
		}
	}
	pk.Properties.SubscriptionIdentifier = p.SubscriptionIDs
	if p.TopicAlias > 0 {
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = p.TopicAlias, true
		if p.AliasOnly {
			pk.TopicName = "" // [MQTT-3.3.2-12]
		}
	}
	pk.Created = time.Now().Unix()
}

// Close writes DISCONNECT with reason (MQTT 5), then closes the
// connection. A takeover (0x8E) is mochi's: it disconnects the old client
// itself when the new one connects (see TestMochiTakeoverDisconnects).
func (c mochiConn) Close(reason byte) {
	if reason == 0x8E {
		return
	}
	code := packets.Code{Code: reason, Reason: reasonText(reason)}
	if c.cl.Properties.ProtocolVersion < 5 {
		c.cl.Stop(code)
		return
	}
	_ = c.srv.DisconnectClient(c.cl, code)
}

// reasonText is the reason string of a DISCONNECT the engine asks for.
func reasonText(reason byte) string {
	switch reason {
	case 0x93:
		return packets.ErrReceiveMaximum.Reason
	case 0x82:
		return packets.ErrProtocolViolation.Reason
	case 0x97:
		return packets.ErrQuotaExceeded.Reason
	}
	return packets.ErrUnspecifiedError.Reason
}
