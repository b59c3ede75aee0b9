package edge

import (
	"context"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// publish takes one PUBLISH a client sent, on its read goroutine, from
// mochi's decoder to the engine: the read loop hands it here instead of to
// mochi (receive), which would run it through processPublish and the
// OnPublish hook chain, copying the packet into and out of every hook,
// only for the engine to take it at the end. The steps are mochi's
// (processPacket's PublishValidate, then processPublish) in mochi's
// order, with what the hooks did as calls; the mochi functions it uses are
// pinned by TestMochiPublishSteps. What it leaves out holds nothing for
// us: mochi's receive quota (never lowered for a client of ours, whose
// QoS 1/2 publishes and acknowledgements mochi never sees; the engine
// counts the window, [MQTT-3.3.4-7]), its write ACL check (every write
// passes authHook.OnACLCheck: the ACL is decided here, on the resolved
// topic), its inflight map (no entry of ours), retaining and fanning out,
// and the OnPublish, OnPublished and OnPacketProcessed hooks (no hook of
// ours provides them: TestNoHookOnPublishEvents).
//
// It returns the error that ends the connection (a packet that fails
// validation); a refused publish is answered and counted here.
func (b *Broker) publish(a *attached, pk *packets.Packet) error {
	cl, caps := a.cl, b.srv.Options.Capabilities
	if code := pk.PublishValidate(caps.TopicAliasMaximum); code != packets.CodeSuccess {
		return code
	}
	if strings.ContainsAny(pk.Properties.ResponseTopic, "+#") {
		// A Response Topic is a topic name [MQTT-3.3.2-14]: a protocol
		// error [MQTT-4.13.1-1], which mochi passes on.
		return packets.ErrProtocolViolationInvalidTopic
	}
	if code, ok := reservedTopic(pk.TopicName); ok {
		// $SYS, or "$share" with no topic (the will's check too). mochi
		// drops it unanswered, leaving a QoS 1/2 publisher waiting forever.
		b.auth.refuseReserved(a, pk, code)
		return nil
	}
	now := time.Now()
	if expiry := minExpiry(caps.MaximumMessageExpiryInterval, int64(pk.Properties.MessageExpiryInterval)); expiry > 0 {
		pk.Expiry = now.Unix() + expiry
	}
	if pk.Properties.TopicAliasFlag && pk.Properties.TopicAlias > 0 { // [MQTT-3.3.2-11]
		// The connection's own aliases [MQTT-3.3.2-7]: an alias it never
		// set resolves to "", which the delivery hook refuses.
		// The alias keeps a copy of the topic: pk's bytes are the read
		// loop's, reused for its next packet (bodyFor).
		pk.TopicName = cl.State.TopicAliases.Inbound.Set(pk.Properties.TopicAlias, strings.Clone(pk.TopicName))
	}
	if pk.FixedHeader.Qos > caps.MaximumQos {
		pk.FixedHeader.Qos = caps.MaximumQos // [MQTT-3.2.2-9]
	}
	b.metrics.received[pk.FixedHeader.Qos].Inc() // refused ones count too
	if b.limits.maxTopic > 0 && len(pk.TopicName) > b.limits.maxTopic {
		b.metrics.dropped.topicTooLong.Add(1)
		a.hc.refuse(pk, packets.ErrTopicNameInvalid)
		return nil
	}
	// Authorization first: a client that may not publish to the topic
	// gets that answer (v5 QoS 1/2 0x87, §3.4.2.1; QoS 0 a drop; 3.1.1 a
	// normal acknowledgement [MQTT-3.3.5-2]) whatever the payload, and
	// the payload's check is for messages the server would take.
	if !b.auth.mayWrite(cl, pk.TopicName) {
		a.hc.refuse(pk, packets.ErrNotAuthorized)
		return nil
	}
	if payloadFormatInvalid(&pk.Properties, pk.Payload) {
		b.metrics.dropped.payloadFormat.Add(1)
		if pk.FixedHeader.Qos == 0 {
			// No acknowledgement to say it in: DISCONNECT 0x99
			// (packetFailed), as §3.3.2.3.2 allows.
			return packets.ErrPayloadFormatInvalid
		}
		a.hc.refuse(pk, packets.ErrPayloadFormatInvalid)
		return nil
	}
	a.hc.publish(cl, pk, now)
	return nil
}

// payloadFormatInvalid reports whether a payload is not the well-formed
// UTF-8 (RFC 3629) its MQTT 5 Payload Format Indicator of 1 says it is
// (§3.3.2.3.2's text; [MQTT-1.5.4-1] is the same rule for UTF-8 Encoded
// Strings, not payloads). A server may check it and refuse the message with 0x99 Payload format
// invalid (§3.3.2.3.2, and §3.1.3.2.3 for a will); edgemq does, as
// Moquette does (HiveMQ, off by default; Mosquitto does not), so that a
// subscriber the indicator promised text never gets bytes that are not.
// Only payloads that carry the indicator pay for utf8.Valid: 29-39 ns for
// 256 bytes of ASCII, 0.4-1.4 us for 256 bytes of accented text (this
// machine, go test -bench, 3 runs).
func payloadFormatInvalid(p *packets.Properties, payload []byte) bool {
	return p.PayloadFormatFlag && p.PayloadFormat == 1 && !utf8.Valid(payload)
}

// refuse answers a PUBLISH of hc's client that is neither delivered nor
// retained, through the engine (qos.Client.Refuse), so that its PUBACK or
// PUBREC comes after those of the publishes read before it, which may be
// waiting for the log [MQTT-4.6.0-2]:
//   - QoS 0: nothing to answer.
//   - v5 QoS 1/2: PUBACK or PUBREC with code's reason code (no reason
//     string: the engine's acknowledgements carry none).
//   - v3 QoS 1/2: MQTT 3.1.1 cannot refuse a PUBLISH; the server MUST either
//     acknowledge it normally or close the connection [MQTT-3.3.5-2]. Closing
//     makes the client resend it forever, so it is acknowledged and dropped
//     (a QoS 2 PUBREL then finds no packet id in the engine, which
//     completes it).
//
// A connection without an engine client was refused at CONNECT: nothing
// is owed to its publishes (hookClient.publish).
func (hc *hookClient) refuse(pk *packets.Packet, code packets.Code) {
	if hc == nil || hc.qc == nil {
		return
	}
	hc.qc.Refuse(pk.FixedHeader.Qos, pk.PacketID, code.Code)
}

// minExpiry is mochi's choice of a message's expiry interval in seconds
// (processPublish): the smaller of the server's maximum and the message's
// own, where 0 means none; 0 if both are.
func minExpiry(server, message int64) int64 {
	switch {
	case server == 0:
		return message
	case message == 0 || message > server:
		return server
	}
	return message
}

// mayWrite decides write access on the resolved topic, and counts a denial.
func (h *authHook) mayWrite(cl *mqtt.Client, topic string) bool {
	if h.policy.Load().acl.allowed(string(cl.Properties.Username), cl.ID, topic, true) {
		return true
	}
	h.b.metrics.aclDenials.WithLabelValues("write").Inc()
	if h.b.log.Enabled(context.Background(), slog.LevelDebug) {
		h.b.log.Debug("publish denied by acl", "client", cl.ID, "topic", topic)
	}
	return false
}
