package qos_test

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// waitKind waits until the log holds n records of kind k (appended,
// durable or not).
func waitKind(t *testing.T, l *memLog, k qos.Kind, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for l.count(k) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d records of kind %d, want %d", l.count(k), k, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// returned reports whether done closes within a while (a call that does
// not return while another waits for an fsync waits on it: a bug, not
// slowness).
func returned(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

// A persistent session's CONNACK and a SUBSCRIBE's SUBACK wait for their
// records [MQTT-3.2.2-6] [MQTT-3.9.3], but not with the engine held: the
// connections and subscriptions of others go on meanwhile (a reconnect
// storm shares its fsyncs instead of queueing one each), and a PUBLISH
// appended after the SUBSCRIBE's record reaches the new subscription.
func TestDurableWaitsDoNotHoldTheEngine(t *testing.T) {
	h := newHarness(t, nil)
	pub := h.connect("pub", false)
	h.log.holdFrom() // a slow fsync from here on
	t.Cleanup(h.log.release)

	connected := make(chan struct{})
	var a *qos.Client
	aConn := newFakeConn()
	go func() {
		defer close(connected)
		cl, _, err := h.e.Connect(aConn, qos.ConnectInfo{ClientID: "a", ProtocolVersion: 5, ExpiryInterval: 60})
		if err != nil {
			t.Error(err)
		}
		a = cl
	}()
	waitKind(t, h.log, qos.KindSession, 1)
	other := make(chan struct{})
	go func() {
		defer close(other)
		if _, _, err := h.e.Connect(newFakeConn(), qos.ConnectInfo{ClientID: "clean", ProtocolVersion: 5}); err != nil {
			t.Error(err)
		}
	}()
	if !returned(other) {
		t.Fatal("a clean connection waited for another's fsync")
	}
	select {
	case <-connected:
		t.Fatal("a persistent Connect returned before its record was durable")
	default:
	}
	h.log.release()
	if !returned(connected) || a == nil {
		t.Fatal("Connect did not return once its record was durable")
	}
	a.Established()

	h.log.holdFrom()
	subscribed := make(chan error, 1)
	go func() { subscribed <- a.Subscribe([]qos.Subscribe{{Filter: "t", QoS: 1}}) }()
	waitKind(t, h.log, qos.KindSubscribe, 1)
	pub.publish("t", 1, 1, "after the SUBSCRIBE") // appended after its record
	other = make(chan struct{})
	go func() {
		defer close(other)
		cl, _, err := h.e.Connect(newFakeConn(), qos.ConnectInfo{ClientID: "clean2", ProtocolVersion: 5})
		if err == nil {
			err = cl.Subscribe([]qos.Subscribe{{Filter: "x", QoS: 1}})
		}
		if err != nil {
			t.Error(err)
		}
	}()
	if !returned(other) {
		t.Fatal("a clean SUBSCRIBE waited for another's fsync")
	}
	select {
	case err := <-subscribed:
		t.Fatalf("a persistent Subscribe returned (%v) before its record was durable", err)
	default:
	}
	h.log.release()
	if err := <-subscribed; err != nil {
		t.Fatal(err)
	}
	a.Suback()
	if got := aConn.waitFor(t, 1); got[0].Type != qos.PacketPublish || string(got[0].Message.Payload) != "after the SUBSCRIBE" {
		t.Fatalf("subscriber got %s, want the PUBLISH that came after its SUBSCRIBE", types(got))
	}
}

// A record that the log took but failed to write leaves nothing of what
// it was for: a new persistent session is refused and gone, a new
// subscription is taken out again (a later message does not reach it), a
// repeated one keeps its old options; a session resumed goes on.
func TestDurableWriteFailureUndoes(t *testing.T) {
	h := newHarness(t, nil)
	c := h.connect("c", true)
	c.subscribe("keep", 2)
	failKind := func(k qos.Kind) {
		h.log.mu.Lock()
		defer h.log.mu.Unlock()
		h.log.fail = func(recs [][]byte) error {
			if k != 0 && qos.KindOf(recs[0]) == k {
				return errors.New("input/output error")
			}
			return nil
		}
	}
	failKind(qos.KindSubscribe)
	if err := c.cl.Subscribe([]qos.Subscribe{{Filter: "t", QoS: 1}, {Filter: "keep", QoS: 0}}); err == nil {
		t.Fatal("subscribe succeeded with its records' write failed")
	}
	c.cl.Suback()
	failKind(0)
	pub := h.connect("pub", false)
	pub.publish("t", 1, 1, "not subscribed")
	pub.publish("keep", 2, 2, "kept at QoS 2")
	got := c.conn.waitFor(t, 1)
	if p := got[0]; len(got) != 1 || p.Message.Topic != "keep" || p.QoS != 2 {
		t.Fatalf("got %s, want one QoS 2 PUBLISH on keep", types(got))
	}
	if p := c.conn.settle(); len(p) != 0 {
		t.Fatalf("after a failed SUBSCRIBE: %s", types(p))
	}

	failKind(qos.KindSession)
	if _, _, err := h.e.Connect(newFakeConn(), qos.ConnectInfo{ClientID: "new", ProtocolVersion: 5, ExpiryInterval: 60}); err == nil {
		t.Fatal("a new persistent session was taken with its record's write failed")
	}
	if _, ok := h.e.Owner("new"); ok {
		t.Fatal("the refused session is still there")
	}
	if _, present, err := h.e.Connect(newFakeConn(), c.info); err != nil || !present {
		t.Fatalf("resuming a durable session whose new record failed: present %v err %v", present, err)
	}
}

// A member that subscribes again to its shared subscription (as clients
// do on every reconnect) keeps the group's backlog: when it was the only
// member, the group was ended and begun again at the log's end.
func TestSharedResubscribeKeepsBacklog(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("a", true)
	a.subscribe("$share/g/s/#", 1)
	a.cl.Disconnect(false, nil)
	src := h.connect("src", false)
	const n = 10
	for i := range n {
		src.publish("s/t", 1, uint16(i+1), fmt.Sprint(i))
	}
	src.conn.waitFor(t, n)
	h.e.WaitDispatched()
	a.reconnect()
	a.subscribe("$share/g/s/#", 1)
	seen := map[string]bool{}
	if got := receiveAll(a, seen, n); got < n {
		t.Fatalf("a got %d of %d after subscribing again", got, n)
	}
}

// TestSharedGroupEndsWithItsLastSubscriber: a shared group stays while any
// session, online or not, holds its subscription (its backlog waits for
// them), and ends with the last one's UNSUBSCRIBE or end [MQTT-4.8.2]: a
// group subscribed again later starts afresh, without what came between.
func TestSharedGroupEndsWithItsLastSubscriber(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("a", true)
	a.subscribe("$share/g/s/#", 1)
	a.cl.Disconnect(false, nil)
	b := h.connect("b", false)
	b.subscribe("$share/g/s/#", 1)
	if _, err := b.cl.Unsubscribe([]string{"$share/g/s/#"}); err != nil {
		t.Fatal(err)
	}
	c := h.connect("c", false) // a clean member that ends with its connection
	c.subscribe("$share/g/s/#", 1)
	c.cl.Disconnect(false, nil)
	src := h.connect("src", false)
	src.publish("s/t", 1, 1, "kept")
	src.conn.waitFor(t, 1)
	h.e.WaitDispatched()
	a.reconnect()
	if got := receiveAll(a, map[string]bool{}, 1); got < 1 {
		t.Fatal("the group ended while an offline session held its subscription")
	}
	if _, err := a.cl.Unsubscribe([]string{"$share/g/s/#"}); err != nil {
		t.Fatal(err)
	}
	src.publish("s/t", 1, 2, "between")
	src.conn.waitFor(t, 1)
	h.e.WaitDispatched()
	d := h.connect("d", false)
	d.subscribe("$share/g/s/#", 1)
	src.publish("s/t", 1, 3, "after")
	src.conn.waitFor(t, 1)
	seen := map[string]bool{}
	receiveAll(d, seen, 2)
	if !seen["after"] || seen["between"] {
		t.Fatalf("a new group after the last subscriber left got %v, want only after", seen)
	}
}

// A connection taken over between its SUBSCRIBE and its SUBACK never
// writes that SUBACK, or writes it late: the new connection's retained
// messages wait for their own SUBACK, no more and no less
// [MQTT-3.3.1-9].
func TestTakeoverDropsTheOldSubackHold(t *testing.T) {
	for _, late := range []bool{false, true} {
		t.Run(fmt.Sprintf("late=%v", late), func(t *testing.T) {
			h := newHarness(t, nil)
			retain(t, h, "ret", 3)
			c := h.connect("c", true)
			old := c.cl
			if err := old.Subscribe([]qos.Subscribe{{Filter: "other", QoS: 1}}); err != nil {
				t.Fatal(err)
			}
			c.reconnect() // taken over before the SUBACK
			if err := c.cl.Subscribe([]qos.Subscribe{{Filter: "ret/#", QoS: 1}}); err != nil {
				t.Fatal(err)
			}
			if late {
				old.Suback()
				if p := c.conn.settle(); len(p) != 0 {
					t.Fatalf("retained messages before their SUBACK: %s", types(p))
				}
			}
			c.cl.Suback()
			if got := c.conn.waitFor(t, 3); len(got) != 3 {
				t.Fatalf("got %s, want the 3 retained messages", types(got))
			}
		})
	}
}

// A retained message sent at a SUBSCRIBE is a recent offset: its Deliver
// record must not move a session's position in the log past the backlog
// it has not received yet (a device subscribing again as it reconnects,
// its queue read back from the log), or a crash loses that backlog.
func TestRetainedDeliveryKeepsTheBacklog(t *testing.T) {
	for _, how := range []string{"replay", "snapshot"} {
		t.Run(how, func(t *testing.T) {
			h := newHarness(t, func(c *qos.Config) { c.QueueLimit = 2 })
			sub := h.connect("sub", true, func(i *qos.ConnectInfo) { i.ReceiveMaximum = 2 })
			sub.subscribe("t/#", 1)
			sub.cl.Disconnect(false, nil)
			src := h.connect("src", false)
			const n = 20
			for i := range n {
				src.publish("t/x", 1, uint16(i+1), fmt.Sprint(i))
			}
			src.cl.Publish(&qos.Message{Topic: "t/r", QoS: 1, Retain: true, Payload: []byte("retained")}, 100)
			src.conn.waitFor(t, n+1)
			h.e.WaitDispatched()
			// It subscribes again, before its sender runs: the retained
			// message goes first, its backlog after it.
			sub.conn = newFakeConn()
			cl, _, err := h.e.Connect(sub.conn, sub.info)
			if err != nil {
				t.Fatal(err)
			}
			sub.cl = cl
			if err := cl.Subscribe([]qos.Subscribe{{Filter: "t/#", QoS: 1}}); err != nil {
				t.Fatal(err)
			}
			cl.Suback()
			cl.Established()
			seen := map[string]bool{}
			for !seen["retained"] { // what comes before it, unacknowledged
				for _, p := range sub.conn.waitFor(t, 1) {
					if p.Type == qos.PacketPublish && p.Retain {
						seen["retained"] = true
					}
				}
			}
			if how == "snapshot" {
				h.e.WaitDispatched()
				if err := h.e.Checkpoint(); err != nil {
					t.Fatal(err)
				}
			}
			h.crash()
			seen = map[string]bool{"retained": true}
			sub.reconnect()
			if got := receiveAll(sub, seen, n+1); got < n+1 {
				t.Fatalf("got %d of the %d backlog messages after the crash", got-1, n)
			}
		})
	}
}

// A clean session that ends between a QoS 2 PUBREC and its PUBREL leaves
// no exchange behind [MQTT-4.3.3-10 holds within a session]: not in the
// state the checkpoints keep (it grew with every such session), and not
// for a new persistent session of that client id after a restart, whose
// next QoS 2 publish on that packet id was taken for a duplicate and
// never delivered.
func TestCleanSessionEndForgetsInboundQoS2(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", true)
	sub.subscribe("t", 2)
	dev := h.connect("dev", false)
	dev.publish("t", 2, 1, "first")
	dev.conn.waitFor(t, 1) // PUBREC; the PUBREL never comes
	dev.cl.Disconnect(true, nil)
	sub.ackAll(sub.conn.waitFor(t, 1))
	h.e.WaitDispatched()
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	h.snaps.mu.Lock()
	st, _, err := qos.ReadSnapshot(bytes.NewReader(h.snaps.snaps[len(h.snaps.snaps)-1]))
	h.snaps.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if in := st.Inbound["dev"]; len(in) != 0 {
		t.Errorf("the checkpoint keeps the ended clean session's QoS 2 exchange: %v", in)
	}

	dev = h.connect("dev", true) // a new session, persistent
	dev.cl.Disconnect(false, nil)
	h.crash()
	dev.reconnect()
	sub.reconnect()
	dev.publish("t", 2, 1, "second")
	seen := map[string]bool{}
	if receiveAll(sub, seen, 1); !seen["second"] {
		t.Fatalf("subscriber got %v, want second", seen)
	}
}

// A retained message published while a persistent SUBSCRIBE waits for its
// records comes once: live, as every message after the SUBSCRIBE, and
// not once more as one of the retained messages of the SUBSCRIBE
// [MQTT-3.3.1-9].
func TestRetainedDuringSubscribeWaitComesOnce(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", true)
	pub := h.connect("pub", false)
	h.log.holdFrom()
	t.Cleanup(h.log.release)
	done := make(chan error, 1)
	go func() { done <- sub.cl.Subscribe([]qos.Subscribe{{Filter: "r", QoS: 1}}) }()
	waitKind(t, h.log, qos.KindSubscribe, 1)
	if err := pub.cl.Publish(&qos.Message{Topic: "r", QoS: 1, Retain: true, Payload: []byte("once")}, 1); err != nil {
		t.Fatal(err)
	}
	h.log.release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	sub.cl.Suback()
	var got []qos.Packet
	for {
		p := sub.conn.settle()
		if len(p) == 0 {
			break
		}
		got = append(got, p...)
		sub.ackAll(p)
	}
	if len(got) != 1 {
		t.Fatalf("got %s, want the message once", types(got))
	}
}

// A repeated subscription with wildcards replaces the old one in the
// index, so an UNSUBSCRIBE ends it: no message after the UNSUBACK
// [MQTT-3.10.4-2], and the repeated one's options are the ones in force
// [MQTT-3.8.4-3].
func TestRepeatedWildcardSubscriptionReplaces(t *testing.T) {
	h := newHarness(t, nil)
	pub := h.connect("pub", false)
	for _, filter := range []string{"a/+", "a/#", "+/b", "a/b"} {
		sub := h.connect("sub", true)
		sub.subscribe(filter, 1)
		sub.subscribe(filter, 0) // again, at QoS 0
		pub.publish("a/b", 1, 1, "while subscribed")
		got := sub.conn.waitFor(t, 1)
		if len(got) != 1 || got[0].QoS != 0 {
			t.Fatalf("%s: got %s, want one QoS 0 PUBLISH", filter, types(got))
		}
		if _, err := sub.cl.Unsubscribe([]string{filter}); err != nil {
			t.Fatal(err)
		}
		pub.publish("a/b", 1, 2, "after the UNSUBSCRIBE")
		if p := sub.conn.settle(); len(p) != 0 {
			t.Fatalf("%s: after the UNSUBSCRIBE: %s", filter, types(p))
		}
		sub.cl.Disconnect(false, nil)
		pub.conn.settle()
	}
}

// A sender appends a new flight's Deliver record in the step that makes
// the flight: should the session's next connection (a takeover) resend
// the flight and the client complete it before that record is appended,
// the record would follow the flight's end in the log, and a restart
// with no checkpoint since would deliver the message once more, at QoS 2
// too. Here the first Deliver record's append stops until the takeover's
// connection has resent and completed the flight, or half a second
// passed (a takeover that waits for the append: the resend comes after
// it).
func TestTakeoverDuringDeliverAppendDeliversOnce(t *testing.T) {
	for _, q := range []byte{1, 2} {
		t.Run(fmt.Sprint("qos", q), func(t *testing.T) {
			h := newHarness(t, nil)
			sub := h.connect("sub", true)
			sub.subscribe("t", q)
			reached, resume := make(chan struct{}), make(chan struct{})
			var once sync.Once
			h.log.mu.Lock()
			h.log.beforeAppend = func(recs [][]byte) {
				if qos.KindOf(recs[0]) != qos.KindDeliver {
					return
				}
				once.Do(func() {
					close(reached)
					select {
					case <-resume:
					case <-time.After(500 * time.Millisecond):
					}
				})
			}
			h.log.mu.Unlock()
			pub := h.connect("pub", false)
			pub.publish("t", q, 1, "m")
			if !returned(reached) {
				t.Fatal("no Deliver record appended")
			}
			next := &client{t: t, h: h, id: "sub", info: sub.info, rec: map[uint16]bool{}, conn: newFakeConn()}
			done := make(chan struct{})
			go func() {
				defer close(done)
				cl, _, err := h.e.Connect(next.conn, next.info)
				if err != nil {
					t.Errorf("takeover: %v", err)
					return
				}
				next.cl = cl
				cl.Established()
			}()
			if !returned(done) || t.Failed() {
				t.Fatal("the takeover did not return")
			}
			next.ackAll(next.conn.waitFor(t, 1)) // the resend
			if q == 2 {
				next.ackAll(next.conn.waitFor(t, 1)) // PUBREL
			}
			close(resume)
			waitKind(t, h.log, qos.KindComplete, 1)
			waitKind(t, h.log, qos.KindDeliver, 1)
			h.crash()
			again := h.connect("sub", true)
			if got := again.ackAll(again.conn.settle()); len(got) > 0 {
				t.Fatalf("after a restart, delivered again: %q", payloads(got))
			}
		})
	}
}

// A QoS 2 flight resent on the session's next connection waits for its
// Deliver record as its first PUBLISH did [MQTT-4.3.3]: a resend before
// the record is durable, and a crash that loses the record, deliver the
// message again after the restart, under another packet id. Here the
// record waits for a slow fsync while the takeover's connection (whose
// Session record the full log refused: a resumed session goes on) has
// the flight.
func TestTakeoverResendWaitsForDeliverRecord(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", true)
	sub.subscribe("t", 2)
	h.log.holdAtKind(qos.KindDeliver)
	roomAgain := h.log.refuseKind(qos.KindSession)
	pub := h.connect("pub", false)
	pub.publish("t", 2, 1, "m")
	waitKind(t, h.log, qos.KindDeliver, 1)
	next := h.connect("sub", true)
	got := len(next.ackAll(next.conn.settle()))
	roomAgain()
	h.crash() // the Deliver record was not durable yet
	again := h.connect("sub", true)
	got += len(again.ackAll(again.conn.settle()))
	if got != 1 {
		t.Fatalf("delivered %d times, want once", got)
	}
}

// A released QoS 2 flight's PUBREL, resent on the session's next
// connection, waits for the flight's Release record as the first PUBREL
// did: the client forgets the packet id on PUBREL [MQTT-4.3.3-9], and
// should a crash lose the record, the restart resends the PUBLISH (DUP),
// which the client takes for a new message [MQTT-4.3.3]. Here the Release
// record waits for a slow fsync while the takeover's connection (whose
// Session record the full log refused: a resumed session goes on) resends
// the flight; the client keeps its QoS 2 state across its connections.
func TestTakeoverResentPubrelWaitsForReleaseRecord(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", true)
	sub.subscribe("t", 2)
	h.log.holdAtKind(qos.KindRelease)
	pub := h.connect("pub", false)
	pub.publish("t", 2, 1, "m")
	got := len(sub.ackAll(sub.conn.waitFor(t, 1))) // PUBLISH, answered with PUBREC
	waitKind(t, h.log, qos.KindRelease, 1)
	roomAgain := h.log.refuseKind(qos.KindSession)
	sub.reconnect()
	got += len(sub.ackAll(sub.conn.settle())) // a PUBREL now is answered
	roomAgain()
	h.crash() // the Release record was not durable yet
	sub.reconnect()
	got += len(sub.settled())
	if got != 1 {
		t.Fatalf("delivered %d times, want once", got)
	}
}

// A PUBREL whose Release record's write failed is not written: the record
// is appended again and the PUBREL follows once it is durable. Written at
// once (with a reason code), the client forgets the packet id, and a
// restart that lost its PUBCOMP's Complete record resends the PUBLISH,
// which the Release record's hole left unreleased: a new message to the
// client [MQTT-4.3.3].
func TestPubrelWaitsForReleaseRecordWrittenAgain(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", true)
	sub.subscribe("t", 2)
	var failOnce sync.Once
	h.log.mu.Lock()
	h.log.fail = func(recs [][]byte) (err error) {
		if qos.KindOf(recs[0]) == qos.KindRelease {
			failOnce.Do(func() { err = errors.New("EIO") })
		}
		return err
	}
	h.log.mu.Unlock()
	h.log.holdAtKind(qos.KindComplete)
	pub := h.connect("pub", false)
	pub.publish("t", 2, 1, "m")
	got := 0
	got += len(sub.settled())
	waitKind(t, h.log, qos.KindComplete, 1)
	h.crash() // the Complete record was not durable yet
	sub.reconnect()
	got += len(sub.settled())
	if got != 1 {
		t.Fatalf("delivered %d times, want once", got)
	}
}
