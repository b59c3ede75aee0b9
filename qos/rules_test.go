package qos_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// [MQTT-3.3.4-8]: more unacknowledged QoS 1/2 publishes than the Receive
// Maximum given gets DISCONNECT 0x93; QoS 0 publishes and the client's
// own unfinished deliveries do not count.
func TestInboundReceiveMaximum(t *testing.T) {
	h := newHarness(t, nil)
	// QoS 2 publishes stay counted until PUBREL.
	pub := h.connect("pub", false, func(i *qos.ConnectInfo) { i.InboundMaximum = 3 })
	for pid := uint16(1); pid <= 3; pid++ {
		pub.publish("t", 2, pid, "m")
	}
	pub.conn.waitFor(t, 3) // PUBRECs
	pub.publish("t", 0, 0, "qos0 does not count")
	if pub.conn.closed {
		t.Fatal("closed for a QoS 0 publish")
	}
	err := pub.cl.Publish(&qos.Message{Topic: "t", QoS: 1, Payload: []byte("4th")}, 4)
	if !errors.Is(err, qos.ErrReceiveMaximum) || !pub.conn.closed || pub.conn.reason != 0x93 {
		t.Fatalf("4th unacknowledged publish: err %v, closed %v reason %#x; want ErrReceiveMaximum and 0x93", err, pub.conn.closed, pub.conn.reason)
	}

	// A PUBREL frees a place; outbound QoS 2 deliveries the client holds
	// at PUBREC do not take one.
	pub2 := h.connect("pub2", false, func(i *qos.ConnectInfo) { i.InboundMaximum = 2 })
	pub2.subscribe("x", 2)
	src := h.connect("src", false)
	src.publish("x", 2, 1, "in")
	src.publish("x", 2, 2, "in")
	got := pub2.conn.waitFor(t, 2)
	for _, p := range got {
		pub2.cl.Pubrec(p.PacketID, 0) // and never PUBCOMP
	}
	pub2.conn.waitFor(t, 2) // PUBRELs
	for pid := uint16(1); pid <= 2; pid++ {
		pub2.publish("y", 2, pid, "m")
	}
	pub2.conn.waitFor(t, 2)
	pub2.cl.Pubrel(1)
	pub2.conn.waitFor(t, 1) // PUBCOMP
	pub2.publish("y", 1, 3, "fits again")
	if pub2.conn.closed {
		t.Fatalf("closed with %#x", pub2.conn.reason)
	}
}

// [MQTT-3.3.4-7]: a place of the inbound window is free once its PUBACK
// is written: a client that publishes again the moment it reads the
// PUBACK, before the engine's sender goes on, is within its Receive
// Maximum and must not get 0x93.
func TestInboundWindowFreedBeforeWrite(t *testing.T) {
	h := newHarness(t, nil)
	pub := h.connect("pub", false, func(i *qos.ConnectInfo) { i.InboundMaximum = 1 })
	const n = 5
	var mu sync.Mutex
	var acked int
	var errs []error
	pub.conn.mu.Lock()
	pub.conn.onFlush = func(pkts []qos.Packet) {
		for _, p := range pkts {
			if p.Type != qos.PacketPuback {
				continue
			}
			mu.Lock()
			acked++
			next := acked < n
			mu.Unlock()
			if next {
				if err := pub.cl.Publish(&qos.Message{Topic: "t", QoS: 1, Payload: []byte("m")}, p.PacketID+1); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}
	}
	pub.conn.mu.Unlock()
	if err := pub.cl.Publish(&qos.Message{Topic: "t", QoS: 1, Payload: []byte("m")}, 1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		done, e := acked, errs
		mu.Unlock()
		if len(e) > 0 {
			t.Fatalf("after %d PUBACKs: %v (closed %v reason %#x)", done, e, pub.conn.closed, pub.conn.reason)
		}
		if done == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d PUBACKs", done, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// [MQTT-3.3.4-9]: no more unacknowledged QoS 1/2 deliveries than the
// client's Receive Maximum, retained messages at SUBSCRIBE included.
func TestOutboundWindowCountsRetained(t *testing.T) {
	h := newHarness(t, nil)
	src := retain(t, h, "ret", 5)
	sub := h.connect("sub", false, func(i *qos.ConnectInfo) { i.ReceiveMaximum = 2 })
	sub.subscribe("ret/#", 1)
	src.publish("ret/live", 1, 9, "live")
	total := 0
	for range 10 {
		got := sub.conn.settle()
		if n := len(got); n > 2 {
			t.Fatalf("%d deliveries unacknowledged, window 2: %s", n, types(got))
		}
		total += len(got)
		sub.ackAll(got)
		if total == 6 {
			break
		}
	}
	if total != 6 {
		t.Fatalf("got %d of 5 retained + 1 live", total)
	}
}

// retain publishes n retained QoS 1 messages on prefix/0.. from a client
// "src", which it returns, and waits until the engine holds them.
func retain(t *testing.T, h *harness, prefix string, n int) *client {
	t.Helper()
	src := h.connect("src", false)
	for i := range n {
		src.cl.Publish(&qos.Message{Topic: fmt.Sprintf("%s/%d", prefix, i), QoS: 1, Retain: true, Payload: []byte("r")}, uint16(i+1))
	}
	src.conn.waitFor(t, n)
	waitRetained(t, h, n)
	return src
}

// waitRetained waits until the engine holds n retained messages: they are
// visible only once durable and dispatched.
func waitRetained(t *testing.T, h *harness, n int) {
	t.Helper()
	probe := h.connect("probe-"+t.Name(), false)
	defer probe.cl.Disconnect(false, nil)
	for range 1000 {
		probe.subscribe("#", 0)
		if got := probe.conn.settle(); len(got) >= n {
			return
		}
	}
	t.Fatalf("fewer than %d retained", n)
}

// [MQTT-3.3.1-9]: retained messages are sent at SUBSCRIBE, after its SUBACK,
// with RETAIN set, and through the window (10,000 of them, none dropped).
func TestRetainedAtSubscribeAllFlow(t *testing.T) {
	h := newHarness(t, nil)
	src := h.connect("src", false)
	const n = 2000
	for i := range n {
		src.cl.Publish(&qos.Message{Topic: fmt.Sprintf("ret/%d", i), QoS: 1, Retain: true, Payload: []byte("r")}, uint16(i%60000+1))
		if i%100 == 99 {
			src.conn.waitFor(t, 100)
		}
	}
	sub := h.connect("sub", false, func(i *qos.ConnectInfo) { i.ReceiveMaximum = 10 })
	// wait until the last retained is in
	for {
		probe := h.connect("probe", false)
		probe.subscribe(fmt.Sprintf("ret/%d", n-1), 0)
		got := probe.conn.settle()
		probe.cl.Disconnect(false, nil)
		if len(got) == 1 {
			break
		}
	}
	if err := sub.cl.Subscribe([]qos.Subscribe{{Filter: "ret/#", QoS: 1}}); err != nil {
		t.Fatal(err)
	}
	if got := sub.conn.settle(); len(got) != 0 {
		t.Fatalf("retained messages before SUBACK: %d", len(got))
	}
	sub.cl.Suback()
	seen := map[string]bool{}
	for len(seen) < n {
		got := sub.conn.settle()
		if len(got) == 0 {
			t.Fatalf("stalled at %d of %d", len(seen), n)
		}
		for _, p := range got {
			if !p.Retain {
				t.Fatalf("retained message without RETAIN: %+v", p)
			}
			seen[p.Message.Topic] = true
		}
		sub.ackAll(got)
	}
}

// [MQTT-3.1.2-24]: a message larger than the client's Maximum Packet Size
// is dropped, counted, and the next one flows, also for a persistent
// session after reconnecting.
func TestOversizedDroppedNextFlows(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", true)
	sub.maxSize = 10
	sub.conn.maxSize = 10
	sub.subscribe("t", 1)
	src := h.connect("src", false)
	src.publish("t", 1, 1, "this one is far too large")
	src.publish("t", 1, 2, "small")
	got := sub.conn.waitFor(t, 1)
	if string(got[0].Message.Payload) != "small" {
		t.Fatalf("got %q", got[0].Message.Payload)
	}
	sub.ackAll(got)
	sub.cl.Disconnect(false, nil)
	src.publish("t", 1, 3, "big big big big big")
	src.publish("t", 1, 4, "small2")
	sub.reconnect() // maxSize set before the sender writes
	got = sub.conn.waitFor(t, 1)
	if string(got[0].Message.Payload) != "small2" {
		t.Fatalf("after reconnect got %q", got[0].Message.Payload)
	}
	if st := h.e.Stats(); st.DroppedTooLarge < 2 {
		t.Fatalf("DroppedTooLarge %d, want 2", st.DroppedTooLarge)
	}
}

// [MQTT-3.3.4-3]: the subscription identifiers go with every delivery,
// resends after a reconnect and a restart included, shared groups too.
func TestSubscriptionIdentifiersOnResend(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", true)
	sub.subscribe("a/+", 1, func(s *qos.Subscribe) { s.Identifier = 7 })
	sub.subscribe("a/#", 1, func(s *qos.Subscribe) { s.Identifier = 9 })
	sub.subscribe("$share/g/s/#", 1, func(s *qos.Subscribe) { s.Identifier = 11 })
	src := h.connect("src", false)
	src.publish("a/b", 1, 1, "m")
	src.publish("s/x", 1, 2, "shared")
	check := func(pkts []qos.Packet, dup bool) {
		t.Helper()
		for _, p := range pkts {
			want, wantDup := []int{7, 9}, dup
			if p.Message.Topic == "s/x" {
				// A shared group's QoS 1 message a member left with goes
				// back to the group [MQTT-4.8.2]: a new delivery.
				want, wantDup = []int{11}, p.Dup
			}
			ids := slices.Sorted(slices.Values(p.SubscriptionIDs))
			if !slices.Equal(ids, want) || p.Dup != wantDup {
				t.Fatalf("%s: ids %v dup %v, want %v dup %v", p.Message.Topic, ids, p.Dup, want, dup)
			}
		}
	}
	got := sub.conn.waitFor(t, 2)
	check(got, false)
	sub.cl.Disconnect(false, nil) // unacknowledged
	sub.reconnect()
	check(sub.conn.waitFor(t, 2), true)
	sub.cl.Disconnect(false, nil)
	h.crash()
	sub.reconnect()
	got = sub.conn.waitFor(t, 2)
	check(got, true)
}

// [MQTT-3.8.3-3]: No Local, for QoS 0 and QoS 1/2 alike.
func TestNoLocal(t *testing.T) {
	h := newHarness(t, nil)
	c := h.connect("c", false)
	c.subscribe("t", 1, func(s *qos.Subscribe) { s.NoLocal = true })
	c.publish("t", 0, 0, "own0")
	c.publish("t", 1, 1, "own1")
	other := h.connect("o", false)
	other.publish("t", 1, 1, "other")
	var msgs []string
	for _, p := range c.conn.settle() {
		if p.Type == qos.PacketPublish {
			msgs = append(msgs, string(p.Message.Payload))
		}
	}
	if !slices.Equal(msgs, []string{"other"}) {
		t.Fatalf("got %v, want only [other]", msgs)
	}
}

// [MQTT-3.3.2-7]: outbound topic aliases for QoS 0, 1 and 2 when the
// client allows them, in wire order, no more than its maximum.
func TestOutboundTopicAliases(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", false, func(i *qos.ConnectInfo) { i.TopicAliasMaximum = 2 })
	sub.subscribe("#", 2)
	src := h.connect("src", false)
	for i, topic := range []string{"a", "a", "b", "c", "b"} {
		src.publish(topic, byte(i%3), uint16(i+1), "m")
	}
	var got []qos.Packet
	for len(got) < 5 {
		p := sub.conn.settle()
		sub.ackAll(p)
		for _, x := range p {
			if x.Type == qos.PacketPublish {
				got = append(got, x)
			}
		}
	}
	// Arrival order differs by QoS (QoS 0 skips the log), so check the
	// rule rather than the sequence: a topic's first packet carries the
	// name and an alias, later ones the alias only; c has none (max 2).
	seen := map[string]uint16{}
	for _, p := range got {
		a, ok := seen[p.Message.Topic]
		switch {
		case p.TopicAlias == 0:
			if len(seen) < 2 {
				t.Fatalf("%s without alias while aliases are left", p.Message.Topic)
			}
		case !ok:
			if p.AliasOnly {
				t.Fatalf("first use of alias %d without the topic", p.TopicAlias)
			}
			seen[p.Message.Topic] = p.TopicAlias
		case a != p.TopicAlias || !p.AliasOnly:
			t.Fatalf("%s: alias %d only %v, want %d alone", p.Message.Topic, p.TopicAlias, p.AliasOnly, a)
		}
		if p.TopicAlias > 2 {
			t.Fatalf("alias %d above the client's maximum 2", p.TopicAlias)
		}
	}
}

// [MQTT-3.9.3]: a SUBSCRIBE whose record cannot be appended fails (SUBACK
// 0x80), as does the CONNECT of a persistent session (CONNACK 0x80).
func TestSubscribeAndConnectFailWhenLogFails(t *testing.T) {
	h := newHarness(t, nil)
	c := h.connect("c", true)
	h.log.mu.Lock()
	h.log.fail = func([][]byte) error { return qos.ErrFull }
	h.log.mu.Unlock()
	if err := c.cl.Subscribe([]qos.Subscribe{{Filter: "t", QoS: 1}}); err == nil {
		t.Fatal("subscribe succeeded with a full log")
	}
	if _, _, err := h.e.Connect(newFakeConn(), qos.ConnectInfo{ClientID: "d", ProtocolVersion: 5, ExpiryInterval: 10}); err == nil {
		t.Fatal("persistent connect succeeded with a full log")
	}
	// A session that is durable already is resumed all the same: refusing
	// it would keep its backlog from draining.
	if _, present, err := h.e.Connect(newFakeConn(), c.info); err != nil || !present {
		t.Fatalf("resuming a durable session on a full log: present %v err %v", present, err)
	}
	c.reconnect()
	// A publish is refused with 0x97 for MQTT 5.
	err := c.cl.Publish(&qos.Message{Topic: "t", QoS: 1}, 5)
	if !errors.Is(err, qos.ErrFull) {
		t.Fatalf("publish: %v", err)
	}
	p := c.conn.waitFor(t, 1)
	if p[0].Type != qos.PacketPuback || p[0].ReasonCode != 0x97 {
		t.Fatalf("got %+v, want PUBACK 0x97", p[0])
	}
}

// [MQTT-3.2.0-1]: nothing is written before CONNACK, resends included.
func TestNothingBeforeEstablished(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", true)
	sub.subscribe("t", 1)
	src := h.connect("src", false)
	src.publish("t", 1, 1, "m")
	sub.conn.waitFor(t, 1)
	sub.cl.Disconnect(false, nil) // unacknowledged
	conn := newFakeConn()
	cl, present, err := h.e.Connect(conn, sub.info)
	if err != nil || !present {
		t.Fatalf("connect: present %v err %v", present, err)
	}
	if got := conn.settle(); len(got) != 0 {
		t.Fatalf("written before CONNACK: %s", types(got))
	}
	cl.Established()
	if p := conn.waitFor(t, 1); !p[0].Dup {
		t.Fatalf("resend without DUP: %+v", p[0])
	}
}

// [MQTT-3.1.4-3]: a takeover closes the old connection (0x8E) and the new
// one gets what the old held unacknowledged, with DUP, in order.
func TestTakeover(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", true)
	sub.subscribe("t", 1)
	src := h.connect("src", false)
	for i := range 3 {
		src.publish("t", 1, uint16(i+1), fmt.Sprint(i))
	}
	sub.conn.waitFor(t, 3)
	old := sub.conn
	sub.reconnect()
	got := sub.conn.waitFor(t, 3)
	for i, p := range got {
		if !p.Dup || string(p.Message.Payload) != fmt.Sprint(i) {
			t.Fatalf("resend %d: %+v", i, p)
		}
	}
	for range 100 {
		old.mu.Lock()
		closed, reason := old.closed, old.reason
		old.mu.Unlock()
		if closed {
			if reason != 0x8E {
				t.Fatalf("old connection closed with %#x, want 0x8E", reason)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("old connection not closed")
}

// [MQTT-3.1.2-8] [MQTT-3.1.3-9]: a will goes after its delay unless the
// client is back first; a session ends at its expiry, and its will with
// it when that comes first. Properties travel with it.
func TestWillDelayAndExpiry(t *testing.T) {
	h := newHarness(t, nil)
	watch := h.connect("watch", false)
	watch.subscribe("will/#", 1)
	will := func(id string) func(*qos.ConnectInfo) {
		return func(i *qos.ConnectInfo) {
			i.ExpiryInterval = 60
			i.Will = &qos.Message{Topic: "will/" + id, QoS: 1, Payload: []byte(id), Will: true, ContentType: "text/plain"}
			i.WillDelay = 1
		}
	}
	back := h.connect("back", true, will("back"))
	gone := h.connect("gone", true, will("gone"))
	short := h.connect("short", true, will("short"), func(i *qos.ConnectInfo) { i.ExpiryInterval, i.WillDelay = 1, 30 })
	for _, c := range []*client{back, gone, short} {
		c.cl.Disconnect(true, nil)
	}
	back.reconnect()
	var topics []string
	deadline := time.Now().Add(5 * time.Second)
	for len(topics) < 2 && time.Now().Before(deadline) {
		for _, m := range watch.ackAll(watch.conn.settle()) {
			if m.ContentType != "text/plain" {
				t.Fatalf("will lost its properties: %+v", m)
			}
			topics = append(topics, m.Topic)
		}
	}
	slices.Sort(topics)
	if !slices.Equal(topics, []string{"will/gone", "will/short"}) {
		t.Fatalf("wills %v, want gone's and short's", topics)
	}
	if _, ok := h.e.Owner("short"); ok {
		t.Fatal("short's session outlived its expiry")
	}
}

// [MQTT-4.8.2]: a shared group gives each message to one member; a QoS 1
// message a member held unacknowledged when it left goes to another one.
func TestSharedGroup(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("a", false)
	a.subscribe("$share/g/s/#", 1)
	src := h.connect("src", false)
	const n = 20
	for i := range n {
		src.publish("s/t", 1, uint16(i+1), fmt.Sprint(i))
	}
	if held := a.conn.waitFor(t, n); len(held) != n { // a never acknowledges them
		t.Fatalf("a got %d of %d", len(held), n)
	}
	b := h.connect("b", true)
	b.subscribe("$share/g/s/#", 1)
	for i := range n {
		src.publish("s/t", 1, uint16(n+i+1), fmt.Sprint(n+i))
	}
	a.cl.Disconnect(false, nil) // what a held goes to b
	for p, c := range b.drain(2 * n) {
		if c > 1 {
			t.Fatalf("%s reached b %d times", p, c)
		}
	}
}

// Retained messages at SUBSCRIBE are flights like any other: what was sent
// and not acknowledged, and what the window had not let out yet, reach a
// persistent session's next connection.
func TestRetainedResentAfterReconnect(t *testing.T) {
	h := newHarness(t, nil)
	retain(t, h, "r", 3)
	sub := h.connect("sub", true, func(i *qos.ConnectInfo) { i.ReceiveMaximum = 1 })
	sub.subscribe("r/#", 1)
	first := sub.conn.waitFor(t, 1)
	sub.cl.Disconnect(false, nil) // nothing acknowledged
	sub.reconnect()
	seen := map[string]bool{}
	for len(seen) < 3 {
		got := sub.conn.settle()
		if len(got) == 0 {
			t.Fatalf("got %d of 3 retained after the reconnect", len(seen))
		}
		for _, p := range got {
			if p.Message.Topic == first[0].Message.Topic && !p.Dup {
				t.Fatalf("resend of %s without DUP", p.Message.Topic)
			}
			seen[p.Message.Topic] = true
		}
		sub.ackAll(got)
	}
}

// Engine.Publish counts a publish the log refuses for want of room as
// RefusedFull, as a client's publish is (edge labels it storage_full).
func TestEnginePublishOnFullLogCountsRefusedFull(t *testing.T) {
	h := newHarness(t, nil)
	h.log.mu.Lock()
	h.log.fail = func([][]byte) error { return qos.ErrFull }
	h.log.mu.Unlock()
	if err := h.e.Publish(context.Background(), &qos.Message{Topic: "t", QoS: 1}); !errors.Is(err, qos.ErrFull) {
		t.Fatalf("publish: %v", err)
	}
	if st := h.e.Stats(); st.Refused != 1 || st.RefusedFull != 1 {
		t.Fatalf("Refused %d RefusedFull %d, want 1 and 1", st.Refused, st.RefusedFull)
	}
}

// A QoS 2 message of a non-client (a bridge's downlink) whose Publish
// failed after the append is taken once when it comes again
// [MQTT-4.3.3-10]: a wait that ended early leaves the first append, which
// the retry waits for (ErrDuplicate); an append that failed leaves
// nothing, and the retry appends it.
func TestEnginePublishQoS2RetryTakenOnce(t *testing.T) {
	for _, tc := range []struct {
		name    string
		waitErr bool // else the append fails
		want    error
	}{
		{"wait ended early", true, qos.ErrDuplicate},
		{"append failed", false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			sub := h.connect("sub", false)
			sub.subscribe("d/#", 2)
			h.log.mu.Lock()
			if tc.waitErr {
				h.log.waitFail = func(uint64) error { return context.Canceled }
			} else {
				h.log.fail = func([][]byte) error { return errors.New("EIO") }
			}
			h.log.mu.Unlock()
			m := func() *qos.Message {
				return &qos.Message{Topic: "d/t", QoS: 2, Payload: []byte("once"), Origin: "bridge", OriginPacketID: 7}
			}
			if err := h.e.Publish(context.Background(), m()); err == nil {
				t.Fatal("first publish: no error")
			}
			h.log.mu.Lock()
			h.log.waitFail, h.log.fail = nil, nil
			h.log.mu.Unlock()
			if err := h.e.Publish(context.Background(), m()); !errors.Is(err, tc.want) {
				t.Fatalf("retry: %v, want %v", err, tc.want)
			}
			if n := h.log.count(qos.KindMessage); n != 1 {
				t.Errorf("%d message records, want 1", n)
			}
			var got []*qos.Message
			for {
				pkts := sub.conn.settle()
				if len(pkts) == 0 {
					break
				}
				got = append(got, sub.ackAll(pkts)...)
			}
			if len(got) != 1 {
				t.Fatalf("delivered %q, want it once", payloads(got))
			}
			if err := h.e.Release(context.Background(), "bridge", 7); err != nil {
				t.Fatal(err)
			}
			if err := h.e.Publish(context.Background(), m()); err != nil {
				t.Fatalf("after Release the id is free again: %v", err)
			}
		})
	}
}

// A will the log does not take (full) is counted as a refused publish,
// not only logged.
func TestFailedWillCounted(t *testing.T) {
	h := newHarness(t, nil)
	c := h.connect("w", false, func(i *qos.ConnectInfo) {
		i.Will = &qos.Message{Topic: "will/w", QoS: 1, Payload: []byte("w"), Will: true}
	})
	h.log.refuseKind(qos.KindMessage)
	c.cl.Disconnect(true, nil)
	deadline := time.Now().Add(5 * time.Second)
	for h.e.Stats().Refused == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if st := h.e.Stats(); st.Refused != 1 || st.RefusedFull != 1 || st.Wills != 0 {
		t.Fatalf("Refused %d RefusedFull %d Wills %d, want 1 1 0", st.Refused, st.RefusedFull, st.Wills)
	}
}

// Stats.LastCheckpoint is read from Config.Now, the engine's one clock.
func TestLastCheckpointUsesConfigClock(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	h := newHarness(t, func(c *qos.Config) {
		c.Now = func() time.Time { return at }
		c.CheckpointInterval = 5 * time.Millisecond
	})
	c := h.connect("p", false)
	c.publish("t", 1, 1, "x")
	deadline := time.Now().Add(5 * time.Second)
	for h.e.Stats().Checkpoints == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := h.e.Stats().LastCheckpoint; !got.Equal(at) {
		t.Fatalf("LastCheckpoint %v, want %v (Config.Now)", got, at)
	}
}

// A session that a Clean Start connection discards ends, and with it the
// wait for its will: a connection taken over has its will published, and
// so does an offline session's will still in its delay (MQTT 5 §3.1.2.5:
// "until the Will Delay Interval has passed or the Session ends, whichever
// happens first"; 3.1.1: the network connection closed without DISCONNECT
// [MQTT-3.1.2-8]). A session resumed instead keeps its delayed will
// unpublished [MQTT-3.1.3-9].
func TestWillOfSessionDiscardedByCleanStart(t *testing.T) {
	h := newHarness(t, nil)
	watch := h.connect("watch", false)
	watch.subscribe("will/#", 1)
	will := func(id string, delay uint32) func(*qos.ConnectInfo) {
		return func(i *qos.ConnectInfo) {
			i.Will = &qos.Message{Topic: "will/" + id, QoS: 1, Payload: []byte(id), Will: true}
			i.WillDelay = delay
		}
	}
	clean := func(i *qos.ConnectInfo) { i.CleanStart = true }

	h.connect("online", false, will("online", 0))          // still connected
	h.connect("online", false, clean)                      // takes it over
	off := h.connect("offline", true, will("offline", 60)) // its will waits a minute
	off.cl.Disconnect(true, nil)
	h.connect("offline", false, clean)
	res := h.connect("resumed", true, will("resumed", 60))
	res.cl.Disconnect(true, nil)
	res.reconnect()

	var topics []string
	for _, m := range watch.ackAll(watch.conn.settle()) {
		topics = append(topics, m.Topic)
	}
	slices.Sort(topics)
	if !slices.Equal(topics, []string{"will/offline", "will/online"}) {
		t.Fatalf("wills %v, want will/offline and will/online", topics)
	}
}

// A persistent session resumed by a connection with a Session Expiry
// Interval of 0 ends with that connection [MQTT-3.1.2-23], in the log too:
// after a restart it is gone, not back with its old expiry.
func TestResumedWithExpiryZeroEndsForGood(t *testing.T) {
	h := newHarness(t, nil)
	c := h.connect("g", true)
	c.subscribe("g/#", 1)
	c.cl.Disconnect(false, nil)
	c.info.ExpiryInterval = 0
	if !c.reconnect() {
		t.Fatal("session not present on resume")
	}
	c.cl.Disconnect(false, nil)
	if _, ok := h.e.Owner("g"); ok {
		t.Fatal("session outlived its connection")
	}
	h.crash()
	if _, ok := h.e.Owner("g"); ok {
		t.Fatal("session back after a restart")
	}
}

// The inbound window restarts with each connection [MQTT-4.9.0]: the
// PUBRELs a resumed session's client sends again for QoS 2 publishes of
// its last connection free no place they did not take here (the quota
// never grows above Receive Maximum), so Receive Maximum still holds.
func TestInboundWindowAfterResume(t *testing.T) {
	h := newHarness(t, nil)
	max2 := func(i *qos.ConnectInfo) { i.InboundMaximum = 2 }
	pub := h.connect("pub", true, max2)
	pub.publish("t", 2, 1, "a")
	pub.publish("t", 2, 2, "b")
	pub.conn.waitFor(t, 2) // PUBRECs; the connection ends before PUBREL
	pub.cl.Disconnect(false, nil)
	pub.reconnect()
	pub.cl.Pubrel(1)
	pub.cl.Pubrel(2)
	pub.conn.waitFor(t, 2) // PUBCOMPs
	for pid := uint16(3); pid <= 4; pid++ {
		pub.publish("t", 2, pid, "m")
	}
	pub.conn.waitFor(t, 2)
	err := pub.cl.Publish(&qos.Message{Topic: "t", QoS: 2, Payload: []byte("3rd")}, 5)
	if !errors.Is(err, qos.ErrReceiveMaximum) || pub.conn.reason != 0x93 {
		t.Fatalf("3rd unacknowledged publish: err %v, reason %#x; want ErrReceiveMaximum and 0x93", err, pub.conn.reason)
	}
}

// Engine.PublishAsync takes a QoS 2 message of an origin once from its
// append on: a resend before the first copy is durable is a duplicate
// [MQTT-4.3.3-10]; a copy whose write failed frees the packet id for the
// message sent again.
func TestEnginePublishAsyncQoS2(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	msg := func() *qos.Message {
		return &qos.Message{Topic: "t", QoS: 2, Origin: "$bridge/x", OriginPacketID: 7}
	}
	wait, err := h.e.PublishAsync(msg())
	if err != nil {
		t.Fatal(err)
	}
	resend, err := h.e.PublishAsync(msg())
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := resend(ctx); !errors.Is(err, qos.ErrDuplicate) {
		t.Fatalf("resend before the first copy's wait: %v, want ErrDuplicate", err)
	}
	if err := h.e.Release(ctx, "$bridge/x", 7); err != nil {
		t.Fatal(err)
	}
	h.log.mu.Lock()
	h.log.fail = func([][]byte) error { return errors.New("input/output error") }
	h.log.mu.Unlock()
	wait, err = h.e.PublishAsync(msg())
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(ctx); err == nil {
		t.Fatal("wait after a failed write: nil, want the write's error")
	}
	h.log.mu.Lock()
	h.log.fail = nil
	h.log.mu.Unlock()
	wait, err = h.e.PublishAsync(msg())
	if err != nil {
		t.Fatalf("publish again after the failed write: %v", err)
	}
	if err := wait(ctx); err != nil {
		t.Fatal(err)
	}
}

// A will whose write fails after the log took it (an I/O error) is
// counted as refused, not as published.
func TestWillLostInWriteCounted(t *testing.T) {
	h := newHarness(t, nil)
	c := h.connect("w", false, func(i *qos.ConnectInfo) {
		i.Will = &qos.Message{Topic: "will/w", QoS: 1, Payload: []byte("w"), Will: true}
	})
	h.log.mu.Lock()
	h.log.fail = func(recs [][]byte) error {
		if qos.KindOf(recs[0]) == qos.KindMessage {
			return errors.New("EIO")
		}
		return nil
	}
	h.log.mu.Unlock()
	c.cl.Disconnect(true, nil)
	deadline := time.Now().Add(5 * time.Second)
	for h.e.Stats().Refused == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if st := h.e.Stats(); st.Refused != 1 || st.Wills != 0 {
		t.Fatalf("Refused %d Wills %d, want 1 and 0", st.Refused, st.Wills)
	}
}

// A connection taken over while its sender reads the session's backlog
// from the log leaves the backlog to the new connection: what the old
// scan found is neither given back behind the new one's back (which
// delivered it, QoS 2 once [MQTT-4.3.3]) nor taken off the queue.
func TestTakeoverDuringBacklogScan(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", true)
	sub.subscribe("t", 2)
	sub.cl.Disconnect(false, nil)
	src := h.connect("src", false)
	for i := range 3 {
		src.publish("t", 2, uint16(i+1), fmt.Sprint(i))
	}
	src.conn.waitFor(t, 3) // PUBRECs
	last := h.log.LastOffset()
	for h.e.FannedOut() <= last {
		time.Sleep(time.Millisecond)
	}
	// The first read of the log (the old connection's scan) stops until
	// the new connection has its backlog; then the reads are noted.
	var mu sync.Mutex
	blocked, release, reread := make(chan struct{}), make(chan struct{}), make(chan struct{})
	state := 0 // 0: before the first read, -1: in it, 1: released, 2: the old scan read the last
	h.log.mu.Lock()
	h.log.onScan = func(off uint64) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case state == 0:
			state = -1
			close(blocked)
			mu.Unlock()
			<-release
			mu.Lock()
			state = 1
		case state == 1 && off == last:
			state = 2
			close(reread)
		}
	}
	h.log.mu.Unlock()
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)

	sub.reconnect() // the old connection: its scan stops at its first read
	select {
	case <-blocked:
	case <-time.After(10 * time.Second):
		t.Fatal("the resumed session did not read its backlog")
	}
	sub.reconnect() // the takeover
	count := map[string]int{}
	for _, m := range sub.ackAll(sub.conn.waitFor(t, 3)) {
		count[string(m.Payload)]++
	}
	sub.ackAll(sub.conn.waitFor(t, 3)) // PUBRELs: the flights end
	unblock()
	select {
	case <-reread:
	case <-time.After(10 * time.Second):
		t.Fatal("the old connection's scan did not go on")
	}
	src.publish("t", 2, 4, "3") // kicks the new connection's sender
	for {
		p := sub.conn.settle()
		if len(p) == 0 {
			break
		}
		for _, m := range sub.ackAll(p) {
			count[string(m.Payload)]++
		}
	}
	for i := range 4 {
		if n := count[fmt.Sprint(i)]; n != 1 {
			t.Errorf("message %d reached the application %d times, want once: %v", i, n, count)
		}
	}
}

// A retained message sent at SUBSCRIBE and not acknowledged is resent as
// it was, RETAIN included [MQTT-3.3.1-9], with DUP and its packet id
// [MQTT-4.4.0-1], across a crash (the Deliver record) and a clean restart
// (the snapshot's flight) alike; a live message resent with it keeps
// RETAIN=0 [MQTT-3.3.1-12].
func TestRetainedResentAfterRestart(t *testing.T) {
	for _, how := range []string{"crash", "snapshot"} {
		t.Run(how, func(t *testing.T) {
			h := newHarness(t, nil)
			src := retain(t, h, "r", 1)
			sub := h.connect("sub", true)
			sub.subscribe("r/#", 1)
			first := sub.conn.waitFor(t, 1)[0]
			src.publish("r/live", 1, 100, "live")
			live := sub.conn.waitFor(t, 1)[0]
			if !first.Retain || live.Retain {
				t.Fatalf("first delivery: retained %v, live %v; want RETAIN=1 and RETAIN=0", first.Retain, live.Retain)
			}
			sub.cl.Disconnect(false, nil) // nothing acknowledged
			if how == "crash" {
				h.crash()
			} else {
				h.e.Close()
				h.snaps.mu.Lock()
				n := len(h.snaps.snaps)
				h.snaps.mu.Unlock()
				if n == 0 {
					t.Fatal("no snapshot saved at Close")
				}
				h.start()
			}
			sub.reconnect()
			got := sub.conn.waitFor(t, 2)
			for _, p := range got {
				want := first
				if p.Message.Topic == live.Message.Topic {
					want = live
				}
				if p.PacketID != want.PacketID || !p.Dup || p.Retain != want.Retain {
					t.Fatalf("resend of %s: packet id %d dup %v retain %v, want packet id %d dup true retain %v",
						p.Message.Topic, p.PacketID, p.Dup, p.Retain, want.PacketID, want.Retain)
				}
			}
		})
	}
}

// A shared group whose queue overflowed is read back from the log by the
// member whose sender claims the scan; asking whether there is work (a
// kick, the end of a round) must not claim it, or the group waits for a
// scan nobody runs.
func TestSharedGroupBacklogScan(t *testing.T) {
	h := newHarness(t, func(c *qos.Config) { c.QueueLimit = 4 })
	a := h.connect("a", false, func(i *qos.ConnectInfo) { i.ReceiveMaximum = 1 })
	a.subscribe("$share/g/s/#", 1)
	src := h.connect("src", false)
	const n = 40
	for i := range n {
		src.publish("s/t", 1, uint16(i+1), fmt.Sprint(i))
	}
	a.drain(n)
}

// TestSharedGroupScanReleasedByFailedWrite: a member whose round claimed
// its group's backlog scan and then failed to write (its connection lost)
// gives the claim back: another member scans the backlog and gets every
// message. The claim used to stay set, and no member read the group's
// backlog again.
func TestSharedGroupScanReleasedByFailedWrite(t *testing.T) {
	h := newHarness(t, func(c *qos.Config) { c.QueueLimit = 4 })
	a := h.connect("a", false, func(i *qos.ConnectInfo) { i.ReceiveMaximum = 10 })
	a.subscribe("$share/g/s/#", 1)
	a.conn.mu.Lock()
	a.conn.fail = true // its first round's writes fail
	a.conn.mu.Unlock()
	src := h.connect("src", false)
	const n = 40
	for i := range n {
		src.publish("s/t", 1, uint16(i+1), fmt.Sprint(i))
	}
	a.conn.settle()
	b := h.connect("b", false, func(i *qos.ConnectInfo) { i.ReceiveMaximum = 10 })
	b.subscribe("$share/g/s/#", 1)
	a.cl.Disconnect(false, nil)
	b.drain(n)
}

// Engine.PublishAsync with several messages appends them in one append:
// a failed write fails them all (none reaches a subscriber, and a retry
// appends them again in their order), and a QoS 2 message that comes twice
// among them is appended once [MQTT-4.3.3-10].
func TestEnginePublishAsyncBatch(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	batch := func() []*qos.Message {
		return []*qos.Message{
			{Topic: "t", QoS: 1, Payload: []byte("a")},
			{Topic: "t", QoS: 2, Origin: "$bridge/x", OriginPacketID: 7, Payload: []byte("b")},
			{Topic: "t", QoS: 2, Origin: "$bridge/x", OriginPacketID: 7, Payload: []byte("b")},
			{Topic: "t", QoS: 1, Payload: []byte("c")},
		}
	}
	appends := 0
	h.log.mu.Lock()
	h.log.fail = func(recs [][]byte) error {
		appends++
		if len(recs) != 3 {
			t.Errorf("one append of %d records, want 3 (b once)", len(recs))
		}
		return errors.New("input/output error")
	}
	h.log.mu.Unlock()
	wait, err := h.e.PublishAsync(batch()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(ctx); err == nil {
		t.Fatal("wait after a failed write: nil, want the write's error")
	}
	h.log.mu.Lock()
	h.log.fail = nil
	n := len(h.log.recs)
	h.log.mu.Unlock()
	wait, err = h.e.PublishAsync(batch()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(ctx); !errors.Is(err, qos.ErrDuplicate) {
		t.Fatalf("wait of the batch again: %v, want ErrDuplicate (b's second copy)", err)
	}
	h.log.mu.Lock()
	defer h.log.mu.Unlock()
	var got []string
	for _, rec := range h.log.recs[n:] {
		var m qos.Message
		if qos.KindOf(rec) == qos.KindMessage && m.UnmarshalBinary(rec) == nil {
			got = append(got, string(m.Payload))
		}
	}
	if appends != 1 || fmt.Sprint(got) != "[a b c]" {
		t.Fatalf("%d failed appends, then %v logged; want 1, then [a b c]", appends, got)
	}
}

// [MQTT-3.3.1-9]: a retained message whose PUBACK the publisher got before
// a SUBSCRIBE is among the retained messages that SUBSCRIBE gets, even
// when the dispatcher has not reached it yet (the PUBACK follows the
// record's durability, not the dispatcher): the SUBSCRIBE waits for it.
func TestRetainedAckedBeforeSubscribe(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", false)
	pub := h.connect("pub", false)
	hold := make(chan struct{})
	var once sync.Once
	h.log.setBusy(true) // the dispatcher goroutine reads, not the publisher's event
	h.log.mu.Lock()
	h.log.onNext = func(uint64) { <-hold }
	h.log.mu.Unlock()
	t.Cleanup(func() { once.Do(func() { close(hold) }) })
	if err := pub.cl.Publish(&qos.Message{Topic: "r", QoS: 1, Retain: true, Payload: []byte("kept")}, 1); err != nil {
		t.Fatal(err)
	}
	if got := pub.conn.waitFor(t, 1); got[0].Type != qos.PacketPuback {
		t.Fatalf("got %s, want PUBACK", types(got))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sub.subscribe("r", 1)
	}()
	select {
	case <-done:
		t.Error("SUBSCRIBE returned while the dispatcher had not reached an acknowledged retained message")
	case <-time.After(50 * time.Millisecond):
	}
	h.log.mu.Lock()
	h.log.onNext = nil
	h.log.mu.Unlock()
	once.Do(func() { close(hold) })
	<-done
	got := sub.conn.waitFor(t, 1)
	if got[0].Type != qos.PacketPublish || !got[0].Retain || string(got[0].Message.Payload) != "kept" {
		t.Fatalf("got %s retain %v, want the retained message with RETAIN", types(got), got[0].Retain)
	}
	sub.ackAll(got)
	if p := sub.conn.settle(); len(p) != 0 {
		t.Fatalf("delivered again: %s", types(p))
	}
}

// Concurrent copies of one QoS 2 message of a non-client (a bridge's
// downlink retrying while its first attempt is still appending) are
// logged once: the duplicate check and the record of the exchange are
// one step, so no two of them both append [MQTT-4.3.3-10].
func TestEnginePublishAsyncQoS2Concurrent(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	// An append takes a while (a log whose append queue is full makes its
	// appender wait): the copies overlap.
	h.log.mu.Lock()
	h.log.beforeAppend = func([][]byte) { time.Sleep(time.Millisecond) }
	h.log.mu.Unlock()
	const copies, ids = 8, 20
	for id := range uint16(ids) {
		start := make(chan struct{})
		errs := make([]error, copies)
		var wg sync.WaitGroup
		for i := range copies {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				wait, err := h.e.PublishAsync(&qos.Message{Topic: "t", QoS: 2, Origin: "$bridge/x", OriginPacketID: id + 1})
				if err == nil {
					err = wait(ctx)
				}
				errs[i] = err
			}()
		}
		close(start)
		wg.Wait()
		first := 0
		for _, err := range errs {
			switch {
			case err == nil:
				first++
			case !errors.Is(err, qos.ErrDuplicate):
				t.Fatalf("packet id %d: %v", id+1, err)
			}
		}
		if first != 1 {
			t.Fatalf("packet id %d: %d of %d copies taken as the first, want 1", id+1, first, copies)
		}
	}
	if n := h.log.count(qos.KindMessage); n != ids {
		t.Fatalf("%d message records for %d packet ids", n, ids)
	}
}

// [MQTT-4.6.0-2]: a publish refused before the engine saw it (Refuse) is
// acknowledged in the order the PUBLISHes were received: after the PUBACK
// of an earlier publish that waits for its fsync, with its reason code,
// and without taking a place of the inbound window.
func TestRefuseInAckOrder(t *testing.T) {
	h := newHarness(t, nil)
	pub := h.connect("pub", false, func(i *qos.ConnectInfo) { i.InboundMaximum = 2 })
	h.log.holdFrom()
	pub.publish("t", 1, 1, "waits for its fsync")
	pub.cl.Refuse(1, 2, 0x87)
	pub.cl.Refuse(2, 3, 0x90)
	pub.cl.Refuse(0, 0, 0x87) // QoS 0: nothing
	if got := pub.conn.settle(); len(got) > 0 {
		t.Fatalf("wrote %v while the first publish waits for its fsync", got)
	}
	h.log.release()
	got := pub.conn.waitFor(t, 3)
	want := []qos.Packet{{Type: qos.PacketPuback, PacketID: 1}, {Type: qos.PacketPuback, PacketID: 2, ReasonCode: 0x87}, {Type: qos.PacketPubrec, PacketID: 3, ReasonCode: 0x90}}
	for i, w := range want {
		if got[i].Type != w.Type || got[i].PacketID != w.PacketID || got[i].ReasonCode != w.ReasonCode {
			t.Errorf("acknowledgement %d: %+v, want %+v", i, got[i], w)
		}
	}
	if extra := pub.conn.settle(); len(extra) > 0 {
		t.Errorf("more written: %v", extra)
	}
	// Refused publishes took no place: two more fit the window of 2.
	pub.publish("t", 1, 4, "fits")
	pub.publish("t", 1, 5, "fits")
	pub.conn.waitFor(t, 2)
	if pub.conn.closed {
		t.Fatalf("closed with %#x", pub.conn.reason)
	}
}

// TestBacklogScanOfClosedLogDropsNothing: a backlog scan that finds the log
// closed under it ends its round without counting the records it could not
// read as dropped: the log still holds them (it counted every one left up
// to the dispatcher's position as unreadable before).
func TestBacklogScanOfClosedLogDropsNothing(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", true)
	sub.subscribe("t", 1)
	sub.cl.Disconnect(false, nil)
	src := h.connect("src", false)
	for i := range 5 {
		src.publish("t", 1, uint16(i+1), fmt.Sprint(i))
	}
	src.conn.waitFor(t, 5) // PUBACKs
	last := h.log.LastOffset()
	for h.e.FannedOut() <= last {
		time.Sleep(time.Millisecond)
	}
	scanned := make(chan struct{})
	var once sync.Once
	h.log.mu.Lock()
	h.log.onScan = func(uint64) { // the scan's first record: the log closes behind it
		once.Do(func() {
			h.log.mu.Lock()
			h.log.closed = true
			h.log.mu.Unlock()
			close(scanned)
		})
	}
	h.log.mu.Unlock()
	sub.reconnect()
	<-scanned
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if st := h.e.Stats(); st.DroppedUnreadable != 0 {
			t.Fatalf("%d records counted unreadable: the log closed, it dropped none", st.DroppedUnreadable)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
