package edge

import (
	"math"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/qos"
)

const (
	// maxMQTTPacket is the largest packet MQTT can frame: a 1-byte header,
	// a 4-byte remaining length and 268,435,455 bytes [MQTT-2.2.3].
	maxMQTTPacket = 268435455 + 5
	// topicAliasMaximum is the inbound topic alias window per v5 client,
	// advertised in CONNACK. mochi's default (65535) lets one client pin
	// 65535 topic strings in memory.
	topicAliasMaximum = 64
	// defaultConnectTimeout bounds the TLS handshake, the WebSocket upgrade
	// and the wait for CONNECT when limits.connect_timeout is unset.
	defaultConnectTimeout = 10 * time.Second
	// defaultWriteTimeout is used when limits.write_timeout is unset.
	defaultWriteTimeout = 10 * time.Second
)

// mochiWritesPending is the capacity of mochi's per-client outbound
// channel (see capabilities).
const mochiWritesPending = 16

// capabilities maps LimitsConfig onto mochi's capabilities, starting from
// mochi's defaults (never from its config package, which zeroes every
// capability a file does not name).
func capabilities(l LimitsConfig) *mqtt.Capabilities {
	c := mqtt.NewDefaultServerCapabilities()
	if l.MaxPacketSize > 0 {
		c.MaximumPacketSize = uint32(min(int64(l.MaxPacketSize), maxMQTTPacket))
	}
	if l.MaxClients > 0 {
		c.MaximumClients = int64(l.MaxClients)
	}
	if l.ReceiveMaximum > 0 {
		c.ReceiveMaximum = uint16(min(l.ReceiveMaximum, math.MaxUint16))
	}
	if l.MaxInflight > 0 {
		c.MaximumInflight = uint16(min(l.MaxInflight, math.MaxUint16))
	}
	// mochi's outbound channel carries only mochi's own $SYS messages: the
	// engine writes everything of ours itself (limits.max_writes_pending
	// bounds its QoS 0 queue). mochi allocates the channel for every
	// client, 8 bytes a slot.
	c.MaximumClientWritesPending = mochiWritesPending
	c.TopicAliasMaximum = topicAliasMaximum
	return c
}

// limitsHook enforces what mochi's capabilities do not: topic length,
// keepalive bounds, and the CONNACK properties mochi leaves out.
type limitsHook struct {
	mqtt.HookBase
	b            *Broker
	maxTopic     int
	maxClientID  int
	maxSubs      int
	minKeepalive uint16
	maxKeepalive uint16 // 0: no maximum
	caps         *mqtt.Capabilities
	quota        sync.Map // *mqtt.Client -> overQuota
}

func newLimitsHook(b *Broker, caps *mqtt.Capabilities) *limitsHook {
	l := b.cfg.Limits
	return &limitsHook{
		b:            b,
		maxTopic:     l.MaxTopicLength,
		maxClientID:  l.MaxClientIDLength,
		maxSubs:      l.MaxSubscriptions,
		minKeepalive: keepaliveSeconds(l.MinKeepalive),
		maxKeepalive: keepaliveSeconds(l.MaxKeepalive),
		caps:         caps,
	}
}

func keepaliveSeconds(d time.Duration) uint16 {
	s := (d + time.Second - 1) / time.Second
	return uint16(min(max(int64(s), 0), math.MaxUint16))
}

// ID names the hook.
func (h *limitsHook) ID() string { return "edge-limits" }

// Provides lists the events handled.
func (h *limitsHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnSubscribe, mqtt.OnPacketEncode, mqtt.OnDisconnect:
		return true
	}
	return false
}

// emptyWill stands in for an empty will payload between fixRead and
// OnConnect; it is recognised by its address, never by its content.
var emptyWill = []byte{0}

// fixRead lets a CONNECT carry a will with an empty payload, which MQTT
// allows (3.1.1 §3.1.3.4, 5 §3.1.3.4) and mochi refuses as a protocol
// violation before any hook can see it: the payload is swapped for a
// placeholder, and OnConnect, which runs after mochi's check, puts the
// empty payload back. The read loop calls it (Broker.fixRead).
func (h *limitsHook) fixRead(pk *packets.Packet) {
	if pk.FixedHeader.Type == packets.Connect && pk.Connect.WillFlag && len(pk.Connect.WillPayload) == 0 {
		pk.Connect.WillPayload = emptyWill
	}
}

// OnConnect bounds the keepalive and the will topic.
//
// Keepalive: a v5 client is told the server's value in CONNACK (Server Keep
// Alive, which it MUST then use [MQTT-3.2.2-21]): 0 (none) or more than
// max_keepalive becomes max_keepalive, less than min_keepalive becomes
// min_keepalive. A v3 client cannot be told. Its 0 turns the keep alive
// mechanism off (3.1.1 §3.1.2.10): it keeps no schedule of PINGREQs, so
// holding it to max_keepalive would cut a silent client that broke no
// promise; the listeners' TCP keep-alive probes still find a dead peer.
// Raising a short value only makes the server wait longer, so one under
// min_keepalive becomes min_keepalive; a value above max_keepalive is
// refused with 0x02 (identifier rejected, as Mosquitto does), since
// shortening it would cut a client that keeps to its own promise.
func (h *limitsHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if wc, ok := cl.Net.Conn.(*conn); ok {
		wc.v5.Store(cl.Properties.ProtocolVersion == 5)
	}
	if len(cl.ID) > h.maxClientID {
		h.b.log.Debug("client id too long", "length", len(cl.ID), "max", h.maxClientID, "remote", cl.Net.Remote)
		return refuseConnect(cl, packets.ErrClientIdentifierNotValid, packets.Err3ClientIdentifierNotValid.Code)
	}
	if p := cl.Properties.Will.Payload; len(p) == 1 && &p[0] == &emptyWill[0] {
		cl.Properties.Will.Payload = []byte{}
	}
	if pk.Connect.WillFlag && h.maxTopic > 0 && len(pk.Connect.WillTopic) > h.maxTopic {
		h.b.metrics.dropped.topicTooLong.Add(1)
		return refuseConnect(cl, packets.ErrTopicNameInvalid, packets.Err3NotAuthorized.Code)
	}
	// The will is published under its topic, so it is a topic name: not
	// empty [MQTT-4.7.3-1], no wildcards [MQTT-3.3.2-2]. mochi takes any.
	if pk.Connect.WillFlag && (pk.Connect.WillTopic == "" || strings.ContainsAny(pk.Connect.WillTopic, "+#")) {
		h.b.log.Debug("will topic is not a topic name", "client", cl.ID, "topic", pk.Connect.WillTopic)
		return refuseConnect(cl, packets.ErrTopicNameInvalid, packets.Err3NotAuthorized.Code)
	}
	v5 := cl.Properties.ProtocolVersion == 5
	ka := cl.State.Keepalive
	want := ka
	switch {
	case ka == 0 && !v5:
		// None (see above).
	case ka == 0:
		want = h.maxKeepalive
	case h.maxKeepalive > 0 && ka > h.maxKeepalive:
		if !v5 {
			h.b.log.Debug("keepalive above max_keepalive refused", "client", cl.ID, "keepalive", ka, "max", h.maxKeepalive)
			return refuseConnect(cl, packets.ErrClientIdentifierNotValid, packets.Err3ClientIdentifierNotValid.Code)
		}
		want = h.maxKeepalive
	case ka < h.minKeepalive:
		want = h.minKeepalive
	}
	if want != ka {
		cl.State.Keepalive = want
		cl.State.ServerKeepalive = v5 // mochi then sends Server Keep Alive in CONNACK
	}
	return nil
}

// connackCode fixes the refusals mochi sends in forms the client cannot
// read:
//   - an unsupported protocol level gets 0x82 from mochi; MQTT 3.1.1 wants
//     return code 0x01 [MQTT-3.1.2-2] and MQTT 5 reason 0x84. mochi writes
//     every version but 5 in the 3.1.1 format, so 0x01 goes to those.
//   - a 3.1.1 client with an empty client id and clean session 0 gets
//     0x80, which 3.1.1 does not have; it wants 0x02 (identifier
//     rejected) [MQTT-3.1.3-8].
func connackCode(version, code byte, reason string) byte {
	if reason == packets.ErrProtocolViolationProtocolVersion.Reason {
		if version == 5 {
			return packets.ErrUnsupportedProtocolVersion.Code
		}
		return packets.Err3UnsupportedProtocolVersion.Code
	}
	if version != 5 && code == packets.ErrUnspecifiedError.Code {
		return packets.Err3ClientIdentifierNotValid.Code
	}
	return code
}

// invalidFilter replaces a filter that is too long, or one mochi takes
// although it is no valid filter (validFilter); mochi refuses it as an
// invalid filter, SUBACK 0x8F (0x80 for v3) [MQTT-3.9.3].
const invalidFilter = "#/topic-filter-too-long"

// quotaFilter replaces a filter past max_subscriptions: mochi refuses it
// as invalid (0x8F, v3 0x80), and OnPacketEncode turns that into 0x97
// Quota exceeded for v5 clients.
const quotaFilter = "#/subscription-quota-exceeded"

// overQuota is a SUBSCRIBE's filters refused for max_subscriptions, kept
// from OnSubscribe to the SUBACK's OnPacketEncode (same goroutine).
type overQuota struct {
	pid     uint16
	indexes []int
}

// OnSubscribe refuses filters longer than max_topic_length or invalid
// (validFilter), and new filters past max_subscriptions. A filter the
// client holds already replaces its subscription and costs nothing
// [MQTT-3.8.4-3]; so does a filter named again in the same SUBSCRIBE,
// which the packet's earlier grant of it made a subscription
// [MQTT-3.8.4-4].
func (h *limitsHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	var filters packets.Subscriptions
	change := func(i int, to string) {
		if filters == nil {
			filters = append(packets.Subscriptions(nil), pk.Filters...)
		}
		filters[i].Filter = to
	}
	held, has := h.held(cl, pk.Filters)
	var over []int
	var added map[string]bool // new filters this packet granted
	for i, f := range pk.Filters {
		if (h.maxTopic > 0 && len(f.Filter) > h.maxTopic) || !validFilter(f.Filter) {
			change(i, invalidFilter)
			continue
		}
		if has[i] || cl.Net.Inline || added[f.Filter] {
			continue
		}
		if held >= h.maxSubs {
			change(i, quotaFilter)
			over = append(over, i)
			continue
		}
		held++
		if added == nil {
			added = map[string]bool{}
		}
		added[f.Filter] = true
	}
	if over != nil {
		h.b.throttledLog.info(h.b.log, "subscriptions refused: limits.max_subscriptions reached",
			"client", cl.ID, "refused", len(over), "max_subscriptions", h.maxSubs)
		if cl.Properties.ProtocolVersion == 5 {
			h.quota.Store(cl, overQuota{pk.PacketID, over})
		}
	}
	if filters != nil {
		pk.Filters = filters
	}
	return pk
}

// held is how many subscriptions cl's session holds and whether it holds
// each of filters, from the engine: its session knows those it kept
// across a restart, which mochi's client state never had. The inline
// client, which has no engine session, holds none (and no quota).
func (h *limitsHook) held(cl *mqtt.Client, filters packets.Subscriptions) (int, []bool) {
	fs := make([]string, len(filters))
	for i, f := range filters {
		fs[i] = f.Filter
	}
	if hc := h.b.hookClient(cl); hc != nil && hc.qc != nil {
		return hc.qc.Holds(fs)
	}
	return 0, make([]bool, len(filters))
}

// validFilter checks what mochi's IsValidFilter does not: '+' and '#'
// are whole levels [MQTT-4.7.1-2] [MQTT-4.7.1-3] ("a+" and "a/b#" are
// no filters), and a shared subscription has a ShareName of at least one
// character [MQTT-4.8.2-1] ("$share//x" has none), without '+' or '#',
// and a filter after it [MQTT-4.8.2-2] ("$share/g/" has none).
func validFilter(f string) bool {
	if qos.CheckFilter(f) != "" {
		return false
	}
	if !strings.HasPrefix(f, "$share/") { // case-sensitive [MQTT-4.7.3-4]
		return true
	}
	group, inner := qos.SplitShared(f)
	return group != "" && !strings.ContainsAny(group, "+#") && qos.CheckFilter(inner) == ""
}

// OnDisconnect forgets a SUBSCRIBE whose SUBACK was never written.
func (h *limitsHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { h.quota.Delete(cl) }

// OnPacketEncode adds the limits a v5 client must know to a successful
// CONNACK: Maximum Packet Size [MQTT-3.2.2-15] and Topic Alias Maximum
// [MQTT-3.2.2-17], which mochi enforces but does not announce. It also
// corrects the refusals mochi words in v5 codes for clients that are not
// v5 (see connackCode).
func (h *limitsHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Suback {
		if v, ok := h.quota.LoadAndDelete(cl); ok && v.(overQuota).pid == pk.PacketID {
			codes := append([]byte(nil), pk.ReasonCodes...)
			for _, i := range v.(overQuota).indexes {
				if i < len(codes) {
					codes[i] = packets.ErrQuotaExceeded.Code
				}
			}
			pk.ReasonCodes = codes
		}
		return pk
	}
	if pk.FixedHeader.Type != packets.Connack {
		return pk
	}
	if pk.ReasonCode >= packets.ErrUnspecifiedError.Code {
		pk.ReasonCode = connackCode(pk.ProtocolVersion, pk.ReasonCode, pk.Properties.ReasonString)
		return pk
	}
	if pk.ProtocolVersion != 5 {
		return pk
	}
	pk.Properties.MaximumPacketSize = h.caps.MaximumPacketSize
	pk.Properties.TopicAliasMaximum = h.caps.TopicAliasMaximum
	return pk
}

// packetFramer follows the MQTT framing of a client's byte stream
// [MQTT-2.1.1] to learn each packet's whole size (fixed header, length
// bytes and the rest) before mochi reads it. mochi compares only the
// remaining length plus one with the maximum, so it takes packets up to
// four bytes over it, and answers a larger one by closing the socket with
// the packet unread, which the client sees as a reset. For MQTT 5 (it reads
// the version from CONNECT) it also looks at the first propertyWindow bytes
// of each packet's body to find properties repeated that may appear once,
// or with a value they may not have (badProperty), which mochi takes,
// keeping the last: in place when they arrive in one read, from a copy
// only when they straddle reads.
type packetFramer struct {
	max      int64
	state    byte  // framerHeader, framerLength, framerBody or framerOff
	header   byte  // the current packet's first byte
	length   int64 // remaining length decoded so far
	lenBytes uint
	left     int64 // body bytes still to come

	connected bool    // CONNECT went by
	v5        bool    // and said MQTT 5
	window    *[]byte // the current packet's first body bytes when they straddle reads (from windowPool); nil: none kept
	want      int     // how many of them to keep
	property  byte    // the bad property found
	inConnect bool    // and it was in CONNECT
}

const (
	framerHeader = iota
	framerLength
	framerBody
	framerOff // malformed length: mochi refuses it, nothing more to follow
)

// propertyWindow is how much of a packet's body is searched for repeated
// properties: enough for any sensible header; properties past it are not
// checked.
const propertyWindow = 4096

// scan follows p, the next bytes of the stream. It returns how many bytes
// of p come before the first packet it refuses, and the reason code: 0x95
// Packet too large [MQTT-3.2.2-15], 0x82 Protocol Error (a repeated
// property), or 0 when it refuses none.
func (f *packetFramer) scan(p []byte) (int, byte) {
	start := 0 // where the current packet starts in p (0: before p)
	for i := 0; i < len(p); {
		switch f.state {
		case framerHeader:
			start = i
			f.header = p[i]
			f.state, f.length, f.lenBytes = framerLength, 0, 0
			i++
		case framerLength:
			b := p[i]
			i++
			f.length |= int64(b&0x7f) << (7 * f.lenBytes)
			f.lenBytes++
			if b&0x80 != 0 {
				if f.lenBytes == 4 { // [MQTT-1.5.5] at most four bytes
					f.state = framerOff
				}
				continue
			}
			if 1+int64(f.lenBytes)+f.length > f.max {
				return start, packets.ErrPacketTooLarge.Code
			}
			f.left, f.state = f.length, framerBody
			f.putWindow()
			if f.v5 || !f.connected {
				want := int(min(f.length, propertyWindow))
				if len(p)-i >= want {
					// All of it is in this read: look at it in place.
					if f.inspect(p[i : i+want]) {
						return start, packets.ErrProtocolViolation.Code
					}
				} else {
					// It straddles reads: keep a copy until it is whole.
					f.window = windowPool.Get().(*[]byte)
					*f.window = (*f.window)[:0]
					f.want = want
				}
			}
			if f.left == 0 {
				f.state = framerHeader
				if f.packetDone() {
					return start, packets.ErrProtocolViolation.Code
				}
			}
		case framerBody:
			n := min(f.left, int64(len(p)-i))
			if f.window != nil && len(*f.window) < f.want {
				*f.window = append(*f.window, p[i:i+int(min(n, int64(f.want-len(*f.window))))]...)
			}
			f.left -= n
			i += int(n)
			if f.left == 0 {
				f.state = framerHeader
				if f.packetDone() {
					return start, packets.ErrProtocolViolation.Code
				}
			}
		default:
			return len(p), 0
		}
	}
	return len(p), 0
}

// windowPool holds the buffers of packetFramer.window: one per packet in
// flight on the read goroutines, not one per connection.
var windowPool = sync.Pool{New: func() any {
	b := make([]byte, 0, propertyWindow)
	return &b
}}

// putWindow gives the window back to the pool.
func (f *packetFramer) putWindow() {
	if f.window != nil {
		windowPool.Put(f.window)
		f.window = nil
	}
}

// packetDone looks at the packet just read if its first bytes were kept
// (they straddled reads); true: it has a bad property.
func (f *packetFramer) packetDone() bool {
	if f.window == nil {
		return false
	}
	defer f.putWindow()
	return f.inspect(*f.window)
}

// inspect looks at w, the first bytes of the current packet's body (up to
// propertyWindow); true: it has a bad property.
func (f *packetFramer) inspect(w []byte) bool {
	typ := f.header >> 4
	if !f.connected {
		f.connected, f.inConnect = true, true
		// Protocol name "MQTT" (a two-byte length and four bytes), then
		// the level [MQTT-3.1.2-2].
		f.v5 = typ == packets.Connect && len(w) > 6 && w[6] == 5
		if !f.v5 {
			// Past CONNECT: goodbye must not answer a 3.1.1 client's
			// later packet with a CONNACK [MQTT-3.2.0-1].
			f.inConnect = false
			return false
		}
	}
	if id, ok := badProperty(typ, f.header&0x0f, w); ok {
		f.property = id
		return true
	}
	f.inConnect = false
	return false
}
