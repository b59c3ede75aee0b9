package edge_test

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The tests here pin the mochi behaviour each shim of the delivery hook
// (edge/deliveryhook.go, edge/mochiconn.go) relies on, on plain mochi: if
// an upgrade changes it, they fail here first.

// plainMochi serves plain mochi (anonymous) on a loopback port, with the
// extra hooks given.
func plainMochi(t *testing.T, hooks ...mqtt.Hook) string {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	for _, h := range hooks {
		if err := srv.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return l.Address()
}

// Broker.publish takes a PUBLISH from mochi's decoder on, in mochi's
// steps, and relies on these functions of mochi doing what processPacket
// and processPublish have them do: PublishValidate refuses what MQTT
// forbids, with the reason code the client gets; a connection's inbound aliases
// resolve an empty topic to the one the alias was set to, and to nothing
// for an alias the connection never set [MQTT-3.3.2-7].
func TestMochiPublishSteps(t *testing.T) {
	pub := func(topic string, qos byte, pid uint16, alias uint16) packets.Packet {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, PacketID: pid}
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = alias, alias > 0
		return pk
	}
	for _, tc := range []struct {
		name string
		pk   packets.Packet
		want packets.Code
	}{
		{"valid", pub("a/b", 1, 7, 0), packets.CodeSuccess},
		{"alias only", pub("", 1, 7, 3), packets.CodeSuccess},
		{"qos 1 without packet id", pub("a/b", 1, 0, 0), packets.ErrProtocolViolationNoPacketID},
		{"qos 0 with packet id", pub("a/b", 0, 7, 0), packets.ErrProtocolViolationSurplusPacketID},
		{"wildcard", pub("a/+", 0, 0, 0), packets.ErrProtocolViolationSurplusWildcard},
		{"alias over the maximum", pub("a/b", 0, 0, 11), packets.ErrTopicAliasInvalid},
		{"no topic, no alias", pub("", 0, 0, 0), packets.ErrProtocolViolationNoTopic},
	} {
		if got := tc.pk.PublishValidate(10); got != tc.want {
			t.Errorf("PublishValidate %s: %v, want %v", tc.name, got, tc.want)
		}
	}
	aliases := mqtt.NewInboundTopicAliases(10)
	for _, step := range []struct {
		alias       uint16
		topic, want string
	}{{1, "a/b", "a/b"}, {1, "", "a/b"}, {2, "", ""}, {1, "c", "c"}, {1, "", "c"}} {
		if got := aliases.Set(step.alias, step.topic); got != step.want {
			t.Errorf("alias %d topic %q: %q, want %q", step.alias, step.topic, got, step.want)
		}
	}
}

// TestNoHookOnPublishEvents: Broker.publish runs no OnPublish, OnPublished
// or OnPacketProcessed hook for a client's publish (mochi's
// processPublish would), and readPacket no OnPacketRead hook for any
// packet (mochi's ReadPacket would): a hook added for one of them would
// never run.
func TestNoHookOnPublishEvents(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	for _, ev := range []byte{mqtt.OnPublish, mqtt.OnPublished, mqtt.OnPacketProcessed, mqtt.OnPacketRead} {
		if ids := tb.HooksProviding(ev); len(ids) > 0 {
			t.Errorf("event %d: provided by %v, which Broker.publish and readPacket do not call", ev, ids)
		}
	}
}

// mochiConn.Close leaves a takeover to mochi: mochi disconnects the old
// connection itself when a new one connects with its client id, with
// DISCONNECT 0x8E for MQTT 5 (inheritClientSession).
func TestMochiTakeoverDisconnects(t *testing.T) {
	addr := plainMochi(t)
	old := dialRaw(t, addr, 5)
	old.connect("same", false, 30)
	nu := dialRaw(t, addr, 5)
	nu.connect("same", false, 30)
	pk, err := old.read(5 * time.Second)
	if err != nil || pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != packets.ErrSessionTakenOver.Code {
		t.Fatalf("old connection got %v type %d reason %#x, want DISCONNECT 0x8E", err, pk.FixedHeader.Type, pk.ReasonCode)
	}
	if !old.closed(5 * time.Second) {
		t.Fatal("old connection still open")
	}
}

// willCounter counts the wills mochi publishes.
type willCounter struct {
	mqtt.HookBase
	takeFlag bool
	wills    atomic.Int32
}

func (h *willCounter) ID() string { return "will-counter" }
func (h *willCounter) Provides(b byte) bool {
	return b == mqtt.OnWillSent || b == mqtt.OnSessionEstablish
}
func (h *willCounter) OnWillSent(*mqtt.Client, packets.Packet) { h.wills.Add(1) }
func (h *willCounter) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if h.takeFlag {
		atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
	}
}

// takeWill relies on mochi publishing no will whose flag is cleared
// (sendLWT checks Properties.Will.Flag), where OnSessionEstablish runs.
func TestMochiSkipsWillWithoutFlag(t *testing.T) {
	for _, take := range []bool{false, true} {
		h := &willCounter{takeFlag: take}
		rc := dialRaw(t, plainMochi(t, h), 5)
		rc.connectWith("w", true, 30, func(pk *packets.Packet) {
			pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "will/w", []byte("gone")
		})
		_ = rc.c.Close()
		time.Sleep(200 * time.Millisecond) // mochi's read loop sees the close
		want := int32(1)
		if take {
			want = 0
		}
		if got := h.wills.Load(); got != want {
			t.Fatalf("flag taken %v: %d wills, want %d", take, got, want)
		}
	}
}

// encodeRewriter rewrites CONNACK and SUBACK as the delivery hook does.
type encodeRewriter struct{ mqtt.HookBase }

func (h *encodeRewriter) ID() string           { return "rewriter" }
func (h *encodeRewriter) Provides(b byte) bool { return b == mqtt.OnPacketEncode }
func (h *encodeRewriter) OnPacketEncode(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Connack:
		pk.SessionPresent = true
	case packets.Suback:
		pk.ReasonCodes = []byte{0x80}
	}
	return pk
}

// refuseConnack, failSuback and the session present flag rely on mochi
// encoding the packet OnPacketEncode returns (WritePacket).
func TestMochiEncodesRewrittenPackets(t *testing.T) {
	rc := dialRaw(t, plainMochi(t, new(encodeRewriter)), 5)
	if ack := rc.connect("r", false, 30); !ack.SessionPresent {
		t.Fatal("CONNACK rewritten in OnPacketEncode went out unchanged")
	}
	rc.subscribe(1, "t", 1)
	pk, err := rc.read(5 * time.Second)
	if err != nil || pk.FixedHeader.Type != packets.Suback || len(pk.ReasonCodes) != 1 || pk.ReasonCodes[0] != 0x80 {
		t.Fatalf("SUBACK: %v %+v, want the rewritten 0x80", err, pk.ReasonCodes)
	}
}

// [MQTT-3.3.2-7]: topic aliases belong to one connection; a PUBLISH with an
// empty topic and an alias this connection never set is a protocol error,
// DISCONNECT 0x82, never a message with an empty topic.
func TestUnknownInboundTopicAlias(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	sub, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "alias-sub"})
	sub.subscribe(t, "#", 1)
	rc := dialRaw(t, addr, 5)
	rc.connect("alias-pub", true, 30)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, Payload: []byte("x")}
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 5, true
	rc.send(pk)
	got, err := rc.read(5 * time.Second)
	if err != nil || got.FixedHeader.Type != packets.Disconnect || got.ReasonCode != packets.ErrProtocolViolation.Code {
		t.Fatalf("got %v type %d reason %#x, want DISCONNECT 0x82", err, got.FixedHeader.Type, got.ReasonCode)
	}
	sub.quiet(t, 300*time.Millisecond)
}

// [MQTT-3.3.4-8]: more unacknowledged QoS 2 publishes than the Receive
// Maximum announced get DISCONNECT 0x93, written before the close; a
// client holding as many PUBREC'd deliveries is not disconnected for a
// QoS 0 publish (mochi alone counts its PUBRECs against it).
func TestInboundReceiveMaximumOverSockets(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.ReceiveMaximum = 3
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()

	holder := dialRaw(t, addr, 5)
	holder.connect("holder", true, 30)
	holder.subscribe(1, "rm/#", 2)
	if _, err := holder.read(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	p, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "rm-src"})
	for i := range 3 {
		if _, err := p.publish(t, "rm/t", 2, false, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, pk := range holder.readPublishes(3, 5*time.Second) {
		holder.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: pk.PacketID})
	}
	for range 3 { // the PUBRELs; no PUBCOMP follows
		if pk, err := holder.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Pubrel {
			t.Fatalf("want PUBREL: %v type %d", err, pk.FixedHeader.Type)
		}
	}
	holder.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "other", Payload: []byte("q0")})
	holder.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	if pk, err := holder.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Pingresp {
		t.Fatalf("after a QoS 0 publish: %v type %d reason %#x, want PINGRESP (no 0x93)", err, pk.FixedHeader.Type, pk.ReasonCode)
	}

	rc := dialRaw(t, addr, 5)
	rc.connect("rm-flood", true, 30)
	for i := range 4 {
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, TopicName: "rm/f", PacketID: uint16(i + 1), Payload: []byte("f")})
	}
	var recs int
	for {
		pk, err := rc.read(5 * time.Second)
		if err != nil {
			t.Fatalf("after %d PUBRECs: %v, want DISCONNECT 0x93", recs, err)
		}
		if pk.FixedHeader.Type == packets.Pubrec {
			recs++
			continue
		}
		if pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != packets.ErrReceiveMaximum.Code {
			t.Fatalf("got type %d reason %#x, want DISCONNECT 0x93", pk.FixedHeader.Type, pk.ReasonCode)
		}
		break
	}
	if recs > 3 {
		t.Fatalf("%d PUBRECs for a Receive Maximum of 3", recs)
	}
}

// deliveryHook.OnSelectSubscribers corrects this: plain mochi gives a
// shared subscription whose filter begins with a wildcard ($share/g/#)
// the $SYS topics it publishes every second, against [MQTT-4.7.2-1]
// (its gatherSharedSubscriptions has no $ check).
func TestMochiSharedWildcardGetsSys(t *testing.T) {
	addr := plainMochi(t)
	rc := dialRaw(t, addr, 5)
	rc.connect("shared-sys", true, 30)
	rc.subscribeWith(1, 0, packets.Subscription{Filter: "$share/g/#", Qos: 0})
	if got := rc.expect(packets.Publish, 5*time.Second); got.TopicName == "" || got.TopicName[0] != '$' {
		t.Errorf("got %q, want a $SYS topic", got.TopicName)
	}
}

// OnSelectSubscribers and mochiSharesWithoutCase rely on this: plain
// mochi takes $SHARE/... in any case for a shared subscription (the
// spec's prefix is "$share/" [MQTT-4.8.2-1], and filters are
// case-sensitive [MQTT-4.7.3-4]), so that $SHARE/g/$SYS/# gets $SYS
// topics, No Local on $SHARE/g/t is refused (SUBACK 0x82), and so are
// $SHARE, $SHARE/g, $SHARE/# and $SHARE/+/x, shared filters without a
// group or a filter or with a wildcard group (0x8F); OnSubscribed gets
// every filter with the SUBACK's code: docs/ARCHITECTURE.md lists these.
func TestMochiSharesWithoutCase(t *testing.T) {
	h := &subscribedCodes{}
	addr := plainMochi(t, h)
	rc := dialRaw(t, addr, 5)
	rc.connect("upper-share", true, 30)
	rc.subscribeWith(1, 0, packets.Subscription{Filter: "$SHARE/g/$SYS/#", Qos: 0})
	if got := rc.expect(packets.Publish, 5*time.Second); !strings.HasPrefix(got.TopicName, "$SYS/") {
		t.Errorf("got %q, want a $SYS topic", got.TopicName)
	}
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 2,
		Filters: packets.Subscriptions{{Filter: "$SHARE/g/t", Qos: 0, NoLocal: true}, {Filter: "$SHARE/#", Qos: 0},
			{Filter: "$SHARE", Qos: 0}, {Filter: "$SHARE/g", Qos: 0}, {Filter: "$SHARE/+/x", Qos: 0}}})
	want := []byte{0x82, 0x8F, 0x8F, 0x8F, 0x8F}
	for {
		pk, err := rc.read(5 * time.Second)
		if err != nil {
			t.Fatalf("no SUBACK: %v", err)
		}
		if pk.FixedHeader.Type == packets.Suback {
			if !bytes.Equal(pk.ReasonCodes, want) {
				t.Errorf("suback %x for No Local on $SHARE/g/t, $SHARE/#, $SHARE, $SHARE/g and $SHARE/+/x, want %x", pk.ReasonCodes, want)
			}
			break
		}
	}
	if got := h.last.Load(); got == nil || len(got.filters) != len(want) || !bytes.Equal(got.codes, want) {
		t.Errorf("OnSubscribed got %+v, want the 5 filters with codes %x", got, want)
	}
}

// subscribedCodes keeps the last SUBSCRIBE's filters and codes
// OnSubscribed got.
type subscribedCodes struct {
	mqtt.HookBase
	last atomic.Pointer[subscribed]
}

type subscribed struct {
	filters packets.Subscriptions
	codes   []byte
}

func (h *subscribedCodes) ID() string           { return "subscribed-codes" }
func (h *subscribedCodes) Provides(b byte) bool { return b == mqtt.OnSubscribed }
func (h *subscribedCodes) OnSubscribed(_ *mqtt.Client, pk packets.Packet, codes []byte) {
	h.last.Store(&subscribed{pk.Filters, append([]byte(nil), codes...)})
}

// keepWill relies on this: plain mochi publishes a will after DISCONNECT
// 0x04 and, as after 0x00, discards it after an error code such as 0x80.
func TestMochiDisconnectCodesAndWill(t *testing.T) {
	for _, tc := range []struct {
		code  byte
		wills int32
	}{{0x00, 0}, {0x04, 1}, {0x80, 0}} {
		h := &willCounter{}
		rc := dialRaw(t, plainMochi(t, h), 5)
		rc.connectWith("w", true, 30, func(pk *packets.Packet) {
			pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "will/w", []byte("w")
		})
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: tc.code})
		rc.closed(5 * time.Second)
		time.Sleep(200 * time.Millisecond) // mochi's read loop ends the client
		if got := h.wills.Load(); got != tc.wills {
			t.Errorf("DISCONNECT %#x: %d wills, want %d", tc.code, got, tc.wills)
		}
	}
}
