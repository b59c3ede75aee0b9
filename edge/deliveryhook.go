package edge

import (
	"errors"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/qos"
)

// deliveryHook turns mochi's events into calls of the delivery engine
// (qos.Engine), which keeps the durability contract (see doc.go) and owns
// every QoS 0/1/2 delivery, packet id and acknowledgement of ours. mochi
// stays the protocol codec, in the connection steps attach runs: it reads
// and validates packets, authenticates, writes CONNACK, SUBACK and UNSUBACK, and holds
// no message of ours (the read loop hands every publish to Broker.publish,
// which ends here).
//
// The places where mochi would act on its own are each one named
// function here, pinned by a test of the mochi behaviour it relies on
// (mochi_test.go): takeWill, refuseConnack, failSuback,
// mochiSharesWithoutCase, and
// Broker.publish for the steps of a publish. The acknowledgements of our exchanges never reach mochi
// (takeAck).
type deliveryHook struct {
	mqtt.HookBase
	srv     *mqtt.Server
	e       *qos.Engine
	lg      *slog.Logger
	canRead func(cl *mqtt.Client, topic string) bool
	// anyOwner is auth.cross_user_takeover; notOwner counts and logs a
	// connection refused for asking for another user's session.
	anyOwner bool
	notOwner func(cl *mqtt.Client)
	window   uint16 // the Receive Maximum the server announces
	// sent counts the PUBLISH packets the engine writes, by QoS
	// (mochiConn; the metrics hook counts mochi's own).
	sent *[3]prometheus.Counter

	mu      sync.Mutex
	clients map[*mqtt.Client]*hookClient
}

// hookClient is one connection's state in the hook.
type hookClient struct {
	h       *deliveryHook
	qc      *qos.Client
	present bool
	refused error           // the engine could not take the session: CONNACK refuses
	failed  map[uint16]bool // SUBSCRIBE / UNSUBSCRIBE packet ids whose records failed
	// existed is, per UNSUBSCRIBE packet id until its UNSUBACK, which of
	// its filters the engine's session held (unsubackCodes).
	existed map[uint16][]bool
	// shareCase is, per SUBSCRIBE packet id until its SUBACK, the codes
	// mochiSharesWithoutCase gave filters mochi misjudged.
	shareCase map[uint16][]subackCode
}

// subackCode is the reason code of a SUBACK's index-th filter.
type subackCode struct {
	index int
	code  byte
}

// ID names the hook.
func (h *deliveryHook) ID() string { return "edge-delivery" }

// Provides lists the events the hook handles.
func (h *deliveryHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect,
		mqtt.OnPacketEncode, mqtt.OnPacketSent, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnSelectSubscribers:
		return true
	}
	return false
}

func (h *deliveryHook) client(cl *mqtt.Client) *hookClient {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.clients[cl]
}

// expiryOf is the session expiry of cl's connection in seconds
// [MQTT-3.1.2-23]: for 3.1.1, 0 with a clean session, else never.
func expiryOf(cl *mqtt.Client) uint32 {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval
	}
	if cl.Properties.Clean {
		return 0
	}
	return math.MaxUint32
}

// OnSessionEstablish attaches the connection to its session in the engine
// before mochi writes CONNACK; a persistent session is durable by then.
func (h *deliveryHook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	will, delay := takeWill(cl, pk)
	info := qos.ConnectInfo{
		ClientID:        cl.ID,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		CleanStart:      pk.Connect.Clean,
		ExpiryInterval:  expiryOf(cl),
		Will:            will,
		WillDelay:       delay,
		Username:        string(cl.Properties.Username),
		AnyOwner:        h.anyOwner,
		CanRead:         func(topic string) bool { return h.canRead(cl, topic) },
	}
	if cl.Properties.ProtocolVersion == 5 {
		// MQTT 3.1.1 has no Receive Maximum: its publishers are bounded by
		// the log's queue, not disconnected.
		info.InboundMaximum = h.window
		info.ReceiveMaximum = cl.Properties.Props.ReceiveMaximum
		info.TopicAliasMaximum = cl.Properties.Props.TopicAliasMaximum
	}
	qc, present, err := h.e.Connect(newMochiConn(h.srv, cl, h.sent), info)
	hc := &hookClient{h: h, qc: qc, present: present, refused: err}
	switch {
	case errors.Is(err, qos.ErrNotOwner):
		h.notOwner(cl)
	case err != nil:
		h.lg.Warn("session not logged: connection refused", "client", cl.ID, "error", err)
	}
	h.mu.Lock()
	h.clients[cl] = hc
	h.mu.Unlock()
}

// refused reports whether the engine refused cl's session: attach then
// neither takes the client id over from the connection holding it nor
// lists cl as its holder, and CONNACK refuses (refuseConnack).
func (h *deliveryHook) refused(cl *mqtt.Client) bool {
	hc := h.client(cl)
	return hc != nil && hc.refused != nil
}

// OnSessionEstablished lets the engine write once CONNACK is out.
func (h *deliveryHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if hc := h.client(cl); hc != nil && hc.qc != nil {
		hc.qc.Established()
	}
}

// takeWill takes cl's will away from mochi, which would publish it around
// the log, and returns it with its properties as the engine publishes it:
// through the log, like any message [MQTT-3.1.2-8] [MQTT-3.1.3.2].
func takeWill(cl *mqtt.Client, pk packets.Packet) (*qos.Message, uint32) {
	if atomic.LoadUint32(&cl.Properties.Will.Flag) == 0 {
		return nil, 0
	}
	w := cl.Properties.Will
	atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
	wp := pk.Connect.WillProperties
	m := &qos.Message{Topic: w.TopicName, Payload: w.Payload, QoS: w.Qos, Retain: w.Retain, Will: true, Origin: cl.ID,
		PayloadFormat: wp.PayloadFormat, PayloadFormatFlag: wp.PayloadFormatFlag, ContentType: wp.ContentType,
		ResponseTopic: wp.ResponseTopic, CorrelationData: wp.CorrelationData}
	now := time.Now()
	m.Created = now.UnixNano()
	if wp.MessageExpiryInterval > 0 {
		// Counted from now until the engine publishes it (publishAsync
		// moves it on to the publication).
		m.Expiry = now.Unix() + int64(wp.MessageExpiryInterval)
	}
	for _, u := range w.User {
		m.User = append(m.User, qos.Property{Key: u.Key, Value: u.Val})
	}
	return m, w.WillDelayInterval
}

// OnPacketEncode completes the packets mochi writes from what the engine
// knows: CONNACK's session present flag (mochi does not know the sessions
// the log kept) [MQTT-3.2.2-3], refusals (refuseConnack, failSuback), the
// SUBACK's codes of filters mochi misjudged (mochiSharesWithoutCase), and
// the UNSUBACK's codes (unsubackCodes).
func (h *deliveryHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Connack:
		hc := h.client(cl)
		if hc == nil || pk.ReasonCode != 0 {
			return pk
		}
		if hc.refused != nil {
			return refuseConnack(cl, pk, hc.refused)
		}
		pk.SessionPresent = hc.present
	case packets.Suback, packets.Unsuback:
		if hc := h.client(cl); hc != nil {
			h.mu.Lock()
			failed := hc.failed[pk.PacketID]
			delete(hc.failed, pk.PacketID)
			existed, unsub := hc.existed[pk.PacketID]
			if pk.FixedHeader.Type == packets.Unsuback {
				delete(hc.existed, pk.PacketID)
			}
			var fixed []subackCode
			if pk.FixedHeader.Type == packets.Suback {
				fixed = hc.shareCase[pk.PacketID]
				delete(hc.shareCase, pk.PacketID)
			}
			h.mu.Unlock()
			if failed {
				return failSuback(pk)
			}
			if fixed != nil {
				return withCodes(pk, fixed)
			}
			if unsub && pk.FixedHeader.Type == packets.Unsuback {
				return unsubackCodes(pk, existed)
			}
		}
	}
	return pk
}

// refuseConnack turns mochi's CONNACK into a refusal, when the engine
// did not take the session (err): another user's session (qos.ErrNotOwner)
// 0x87 not authorized (MQTT 5) or 0x05 (3.1.1); a session it could not
// make durable [MQTT-3.2.2-6] 0x80 or 0x03 server unavailable (3.1.1).
// OnPacketSent then closes.
func refuseConnack(cl *mqtt.Client, pk packets.Packet, err error) packets.Packet {
	pk.SessionPresent = false
	v5, v3 := packets.ErrUnspecifiedError.Code, packets.ErrServerUnavailable.Code
	if errors.Is(err, qos.ErrNotOwner) {
		v5, v3 = packets.ErrNotAuthorized.Code, packets.Err3NotAuthorized.Code
	}
	pk.ReasonCode = v5
	if cl.Properties.ProtocolVersion < 5 {
		pk.ReasonCode = v3
	}
	return pk
}

// withCodes is pk, a SUBACK, with the reason codes fixed at their
// indexes.
func withCodes(pk packets.Packet, fixed []subackCode) packets.Packet {
	codes := append([]byte(nil), pk.ReasonCodes...)
	for _, c := range fixed {
		if c.index < len(codes) {
			codes[c.index] = c.code
		}
	}
	pk.ReasonCodes = codes
	return pk
}

// failSuback gives every filter of a SUBACK or UNSUBACK the failure code
// 0x80: its records could not be appended [MQTT-3.9.3-1].
func failSuback(pk packets.Packet) packets.Packet {
	codes := make([]byte, len(pk.ReasonCodes))
	for i := range codes {
		codes[i] = packets.ErrUnspecifiedError.Code
	}
	pk.ReasonCodes = codes
	return pk
}

// OnPacketSent lets retained messages follow their SUBACK, and closes a
// connection whose CONNACK refused it.
func (h *deliveryHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, b []byte) {
	switch pk.FixedHeader.Type {
	case packets.Suback:
		if hc := h.client(cl); hc != nil && hc.qc != nil {
			hc.qc.Suback()
		}
	case packets.Connack:
		if hc := h.client(cl); hc != nil && hc.refused != nil {
			cl.Stop(hc.refused)
		}
	}
}

// OnDisconnect ends the connection in the engine: a persistent session
// stays offline until it expires. The will is due unless the client said
// DISCONNECT (err is nil only then) [MQTT-3.14.4-3].
func (h *deliveryHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.mu.Lock()
	hc := h.clients[cl]
	delete(h.clients, cl)
	h.mu.Unlock()
	if hc == nil {
		return
	}
	if hc.qc != nil {
		expiry := expiryOf(cl)
		hc.qc.Disconnect(err != nil, &expiry)
	}
	// mochi keeps an offline client, with its buffers, for as long as it
	// thinks the session lives; the engine keeps the session (or refused
	// it), so mochi's copy goes.
	if cur, ok := h.srv.Clients.Get(cl.ID); ok && cur == cl {
		h.srv.Clients.Delete(cl.ID)
	}
}

// publish hands a publish of hc's client cl to the engine, which logs it,
// delivers it and writes its acknowledgement itself (Broker.publish calls
// it, at the end of mochi's steps); now is when it was accepted.
func (hc *hookClient) publish(cl *mqtt.Client, pk *packets.Packet, now time.Time) {
	if hc == nil || hc.qc == nil {
		// No session: the engine refused it, and OnPacketSent stopped the
		// client with its CONNACK, before the read loop began (attach's
		// readLoop reads nothing once stopped). Nothing is owed to such a
		// publish.
		return
	}
	if pk.TopicName == "" {
		// An alias this connection never set [MQTT-3.3.2-7]: mochi
		// resolves it to nothing.
		mochiConn{srv: hc.h.srv, cl: cl}.Close(packets.ErrProtocolViolation.Code)
		return
	}
	// The engine has answered and counted every refusal itself (a PUBACK
	// or PUBREC with its reason, DISCONNECT 0x93, the close of a 3.1.1
	// connection, a PUBREC again for a duplicate); ErrGone is a publish
	// read as the connection was taken over, left unacknowledged for the
	// client to send again.
	m := messageOf(pk, now)
	if err := hc.qc.Publish(&m, pk.PacketID); err != nil && !errors.Is(err, qos.ErrDuplicate) {
		hc.h.lg.Debug("publish not taken", "client", cl.ID, "error", err)
	}
}

// messageOf builds the engine's message of an inbound PUBLISH accepted at
// now (a value: Client.Publish does not keep it).
func messageOf(pk *packets.Packet, now time.Time) qos.Message {
	m := qos.Message{
		Topic:             pk.TopicName,
		Payload:           pk.Payload,
		QoS:               pk.FixedHeader.Qos,
		Retain:            pk.FixedHeader.Retain,
		Created:           now.UnixNano(),
		Expiry:            pk.Expiry,
		PayloadFormat:     pk.Properties.PayloadFormat,
		PayloadFormatFlag: pk.Properties.PayloadFormatFlag,
		ContentType:       pk.Properties.ContentType,
		ResponseTopic:     pk.Properties.ResponseTopic,
		CorrelationData:   pk.Properties.CorrelationData,
	}
	for _, u := range pk.Properties.User {
		m.User = append(m.User, qos.Property{Key: u.Key, Value: u.Val})
	}
	return m
}

// takeAck gives the engine an acknowledgement (PUBACK, PUBREC, PUBREL,
// PUBCOMP) hc's client sent, of a QoS 1/2 exchange in either direction:
// the engine owns every exchange of ours, so the read loop hands them here
// instead of to mochi (receive), which would answer a PUBREC or PUBREL
// itself. It reports whether pk was one; one for a connection the engine
// does not know (hc nil, or without an engine client) is dropped.
func (hc *hookClient) takeAck(pk *packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp:
	default:
		return false
	}
	if hc == nil || hc.qc == nil {
		return true
	}
	switch pk.FixedHeader.Type {
	case packets.Puback:
		hc.qc.Puback(pk.PacketID)
	case packets.Pubrec:
		hc.qc.Pubrec(pk.PacketID, pk.ReasonCode)
	case packets.Pubrel:
		hc.qc.Pubrel(pk.PacketID)
	case packets.Pubcomp:
		hc.qc.Pubcomp(pk.PacketID)
	}
	return true
}

// OnSubscribed adds the granted subscriptions to the engine, durably for a
// persistent session, before mochi writes SUBACK; if their records fail,
// the SUBACK says so (failSuback).
func (h *deliveryHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	hc := h.client(cl)
	if hc == nil || hc.qc == nil {
		return
	}
	codes = h.mochiSharesWithoutCase(hc, cl, pk, codes)
	var subs []qos.Subscribe
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] >= 0x80 {
			continue
		}
		subs = append(subs, qos.Subscribe{Filter: f.Filter, QoS: min(f.Qos, codes[i]), NoLocal: f.NoLocal,
			RetainAsPublished: f.RetainAsPublished, RetainHandling: f.RetainHandling, Identifier: f.Identifier})
	}
	if err := hc.qc.Subscribe(subs); err != nil {
		h.lg.Warn("subscription not logged: refused", "client", cl.ID, "error", err)
		h.markFailed(hc, pk.PacketID)
	}
}

// mochiSharesWithoutCase decides the filters of a SUBSCRIBE whose first
// level is "$share" in another case ("$SHARE", "$Share/g/t"): filters are
// case-sensitive [MQTT-4.7.3-4] and a shared subscription's starts with
// "$share/" [MQTT-4.8.2-1], so they are ordinary filters, but mochi takes
// them for shared in any case (pinned by TestMochiSharesWithoutCase) and
// refuses them before its ACL check: those that would be no valid shared
// filter ("$SHARE", "$SHARE/g", "$SHARE/#", "$SHARE/+/x") with 0x8F (v3
// 0x80), No Local on any ("$SHARE/g/t") with 0x82. limitsHook.OnSubscribe
// has refused what is no valid filter of ours already; what is left of
// those forms gets the ACL's answer (0x87, v3 0x80) or its QoS, in the
// SUBACK too (OnPacketEncode). It returns the codes the engine takes.
func (h *deliveryHook) mochiSharesWithoutCase(hc *hookClient, cl *mqtt.Client, pk packets.Packet, codes []byte) []byte {
	var fixed []subackCode
	for i, f := range pk.Filters {
		level, _, _ := strings.Cut(f.Filter, "/")
		if i >= len(codes) || codes[i] < 0x80 || level == "$share" || !strings.EqualFold(level, "$share") {
			continue
		}
		code := min(f.Qos, h.srv.Options.Capabilities.MaximumQos) // [MQTT-3.2.2-9] [MQTT-3.9.3-1]
		if !h.canRead(cl, f.Filter) {
			code = packets.ErrNotAuthorized.Code
			if cl.Properties.ProtocolVersion < 5 {
				code = packets.ErrUnspecifiedError.Code // 3.1.1's only failure [MQTT-3.9.3-2]
			}
		}
		if fixed == nil {
			codes = append([]byte(nil), codes...)
		}
		codes[i] = code
		fixed = append(fixed, subackCode{i, code})
	}
	if fixed != nil {
		h.mu.Lock()
		if hc.shareCase == nil {
			hc.shareCase = map[uint16][]subackCode{}
		}
		hc.shareCase[pk.PacketID] = fixed
		h.mu.Unlock()
	}
	return codes
}

// OnSelectSubscribers drops, from the shared subscriptions mochi found for
// a topic it fans out itself ($SYS: the engine delivers every other), those
// whose filter after $share/<group>/ begins with a wildcard: a '#' or '+'
// at the first level does not match a topic beginning with '$'
// [MQTT-4.7.2-1], which mochi applies to plain subscriptions only, so that
// a $share/g/# member got every $SYS topic (TestMochiSharedWildcardGetsSys).
// It drops too those mochi took for shared without case ($SHARE/g/#):
// they are ordinary filters [MQTT-4.7.3-4], which match no $SYS topic.
func (h *deliveryHook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	if !strings.HasPrefix(pk.TopicName, "$") {
		return subs
	}
	for filter := range subs.Shared {
		if group, inner := qos.SplitShared(filter); group == "" || inner == "" || inner[0] == '#' || inner[0] == '+' {
			delete(subs.Shared, filter)
		}
	}
	return subs
}

// OnUnsubscribed removes the subscriptions from the engine.
func (h *deliveryHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	hc := h.client(cl)
	if hc == nil || hc.qc == nil {
		return
	}
	filters := make([]string, 0, len(pk.Filters))
	for _, f := range pk.Filters {
		filters = append(filters, f.Filter)
	}
	existed, err := hc.qc.Unsubscribe(filters)
	if err != nil {
		h.lg.Warn("unsubscription not logged: refused", "client", cl.ID, "error", err)
		h.markFailed(hc, pk.PacketID)
		return
	}
	if pk.PacketID != 0 && cl.Properties.ProtocolVersion == 5 { // 0: mochi's UnsubscribeClient
		h.mu.Lock()
		if hc.existed == nil {
			hc.existed = map[uint16][]bool{}
		}
		hc.existed[pk.PacketID] = existed
		h.mu.Unlock()
	}
}

// unsubackCodes gives an UNSUBACK the engine's answer per filter: 0x00, or
// 0x11 No subscription existed [MQTT-3.11.3-1]. mochi's comes from its own
// topic tree, which knows nothing of the subscriptions a persistent
// session had before a restart: it said 0x11 for them. A code of another
// refusal stays.
func unsubackCodes(pk packets.Packet, existed []bool) packets.Packet {
	if len(existed) != len(pk.ReasonCodes) {
		return pk
	}
	codes := append([]byte(nil), pk.ReasonCodes...)
	for i, c := range codes {
		switch {
		case c != packets.CodeSuccess.Code && c != packets.CodeNoSubscriptionExisted.Code:
		case existed[i]:
			codes[i] = packets.CodeSuccess.Code
		default:
			codes[i] = packets.CodeNoSubscriptionExisted.Code
		}
	}
	pk.ReasonCodes = codes
	return pk
}

func (h *deliveryHook) markFailed(hc *hookClient, pid uint16) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if hc.failed == nil {
		hc.failed = map[uint16]bool{}
	}
	hc.failed[pid] = true
}
