package qos_test

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// harness is one engine over an in-memory log, restartable.
type harness struct {
	t     testing.TB
	log   *memLog
	snaps *memSnaps
	e     *qos.Engine
	cfg   func(*qos.Config)
}

func newHarness(t testing.TB, cfg func(*qos.Config)) *harness {
	h := &harness{t: t, log: newMemLog(), snaps: &memSnaps{}, cfg: cfg}
	h.start()
	t.Cleanup(func() {
		if h.e != nil {
			h.e.Close()
		}
	})
	return h
}

func (h *harness) start() {
	c := qos.DefaultConfig(h.log)
	c.Snapshots = h.snaps
	c.CheckpointInterval = time.Hour
	c.Logger = slog.New(slog.DiscardHandler)
	if h.cfg != nil {
		h.cfg(&c)
	}
	e, err := qos.New(c)
	if err != nil {
		h.t.Fatal(err)
	}
	e.Start()
	// Every test starts with the dispatcher goroutine parked, so that the
	// first durability event finds it idle, however late it was scheduled.
	e.WaitParked()
	h.e = e
}

// crash stops the engine without a last checkpoint, as a kill -9 does, and
// starts a new one: the log loses what was not durable (memLog.crash).
func (h *harness) crash() { h.crashKeeping(0) }

// crashKeeping is crash, but the first keep records that were not durable
// survive it (written, not yet fsynced: the next process reads them).
func (h *harness) crashKeeping(keep int) {
	h.e.Crash()
	h.log.crash(keep)
	h.start()
}

// client is the test's MQTT client: it plays a real client's part of the
// QoS 1/2 exchanges.
type client struct {
	t    testing.TB
	h    *harness
	id   string
	info qos.ConnectInfo
	cl   *qos.Client
	conn *fakeConn
	// QoS 2 packet ids received and not yet released (the receiver's
	// state of [MQTT-4.3.3-9]), kept across connections.
	rec map[uint16]bool
	// maxSize is every connection's fakeConn.maxSize, set before the
	// engine can write to it.
	maxSize int
	// flaky is every connection's fakeConn.flaky.
	flaky float64
}

func (h *harness) connect(id string, persistent bool, mod ...func(*qos.ConnectInfo)) *client {
	h.t.Helper()
	info := qos.ConnectInfo{ClientID: id, ProtocolVersion: 5}
	if persistent {
		info.ExpiryInterval = math.MaxUint32
	}
	for _, m := range mod {
		m(&info)
	}
	c := &client{t: h.t, h: h, id: id, info: info, rec: map[uint16]bool{}}
	c.reconnect()
	return c
}

func (c *client) reconnect() bool {
	c.t.Helper()
	c.conn = newFakeConn()
	c.conn.maxSize = c.maxSize
	c.conn.flaky = c.flaky
	cl, present, err := c.h.e.Connect(c.conn, c.info)
	if err != nil {
		c.t.Fatalf("connect %s: %v", c.id, err)
	}
	c.cl = cl
	cl.Established()
	return present
}

func (c *client) subscribe(filter string, q byte, mod ...func(*qos.Subscribe)) {
	c.t.Helper()
	s := qos.Subscribe{Filter: filter, QoS: q}
	for _, m := range mod {
		m(&s)
	}
	if err := c.cl.Subscribe([]qos.Subscribe{s}); err != nil {
		c.t.Fatalf("subscribe %s: %v", filter, err)
	}
	c.cl.Suback()
}

func (c *client) publish(topic string, q byte, pid uint16, payload string) {
	c.t.Helper()
	if err := c.cl.Publish(&qos.Message{Topic: topic, QoS: q, Payload: []byte(payload)}, pid); err != nil {
		c.t.Fatalf("publish: %v", err)
	}
}

// drain acknowledges what c receives until n distinct payloads came, and
// returns how many times each came; a round that brings nothing first
// fails the test.
func (c *client) drain(n int) map[string]int {
	c.t.Helper()
	seen := map[string]int{}
	for len(seen) < n {
		got := c.conn.settle()
		if len(got) == 0 {
			c.t.Fatalf("%s got %d of %d", c.id, len(seen), n)
		}
		for _, m := range c.ackAll(got) {
			seen[string(m.Payload)]++
		}
	}
	return seen
}

// ackAll acknowledges what the packets ask for, as a client does, and
// returns the messages delivered to the application (a QoS 2 message
// once, on its first PUBLISH).
func (c *client) ackAll(pkts []qos.Packet) []*qos.Message {
	var got []*qos.Message
	for _, p := range pkts {
		switch p.Type {
		case qos.PacketPublish:
			switch p.QoS {
			case 0:
				got = append(got, p.Message)
			case 1:
				got = append(got, p.Message)
				c.cl.Puback(p.PacketID)
			case 2:
				if !c.rec[p.PacketID] {
					c.rec[p.PacketID] = true
					got = append(got, p.Message)
				}
				c.cl.Pubrec(p.PacketID, 0)
			}
		case qos.PacketPubrel:
			delete(c.rec, p.PacketID)
			c.cl.Pubcomp(p.PacketID)
		case qos.PacketPubrec:
			c.cl.Pubrel(p.PacketID)
		}
	}
	return got
}

// settled acknowledges what c receives until the engine has written
// everything, three quiet spells in a row (a resend may follow one), and
// returns the messages delivered to the application.
func (c *client) settled() []*qos.Message {
	var got []*qos.Message
	for range 3 {
		got = append(got, c.ackAll(c.conn.settle())...)
	}
	return got
}

// offlineMember is a persistent session of client id that subscribed to
// shared group key at QoS 2 and went offline: a member for later, which
// takes nothing until it reconnects.
func (h *harness) offlineMember(id, key string) *client {
	h.t.Helper()
	c := h.connect(id, true)
	c.subscribe(key, 2)
	c.cl.Disconnect(false, nil)
	return c
}

func payloads(ms []*qos.Message) []string {
	var s []string
	for _, m := range ms {
		s = append(s, string(m.Payload))
	}
	return s
}

func types(pkts []qos.Packet) string {
	s := ""
	for _, p := range pkts {
		s += fmt.Sprintf("%d:%d ", p.Type, p.PacketID)
	}
	return s
}

func TestQoS1PublishAckedAndDelivered(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", false)
	sub.subscribe("a/+", 1)
	pub := h.connect("pub", false)
	pub.publish("a/b", 1, 7, "hello")
	acks := pub.conn.waitFor(t, 1)
	if acks[0].Type != qos.PacketPuback || acks[0].PacketID != 7 || acks[0].ReasonCode != 0 {
		t.Fatalf("publisher got %+v, want PUBACK 7", acks[0])
	}
	got := sub.conn.waitFor(t, 1)
	if got[0].Type != qos.PacketPublish || got[0].QoS != 1 || string(got[0].Message.Payload) != "hello" || got[0].PacketID == 0 {
		t.Fatalf("subscriber got %+v", got[0])
	}
	sub.ackAll(got)
	if p := sub.conn.settle(); len(p) != 0 {
		t.Fatalf("more packets after PUBACK: %s", types(p))
	}
}

// A session belongs to the user that created it: another user asking for
// its client id is refused with ErrNotOwner, clean start or not, and the
// owner's connection and session stay as they were, unless that user may
// take over any session (AnyOwner).
func TestConnectRefusesAnotherOwner(t *testing.T) {
	h := newHarness(t, nil)
	user := func(u string) func(*qos.ConnectInfo) { return func(i *qos.ConnectInfo) { i.Username = u } }
	alice := h.connect("shared-X", true, user("alice"))
	alice.subscribe("devices/alice/#", 1)
	for _, clean := range []bool{false, true} {
		info := qos.ConnectInfo{ClientID: "shared-X", ProtocolVersion: 5, ExpiryInterval: math.MaxUint32, Username: "bob", CleanStart: clean}
		conn := newFakeConn()
		if _, _, err := h.e.Connect(conn, info); !errors.Is(err, qos.ErrNotOwner) {
			t.Fatalf("bob clean=%v: %v, want ErrNotOwner", clean, err)
		}
	}
	if closed, reason := alice.conn.closedWith(50 * time.Millisecond); closed {
		t.Fatalf("alice's connection closed (%#x) by a refused takeover", reason)
	}
	if owner, ok := h.e.Owner("shared-X"); !ok || owner != "alice" {
		t.Fatalf("owner %q %v, want alice", owner, ok)
	}
	pub := h.connect("pub", false)
	pub.publish("devices/alice/t", 1, 1, "m")
	if got := alice.ackAll(alice.conn.waitFor(t, 1)); len(got) != 1 {
		t.Fatalf("alice got %d messages after the refused takeover", len(got))
	}
	h.connect("shared-X", true, user("bob"), func(i *qos.ConnectInfo) { i.AnyOwner = true })
	if closed, reason := alice.conn.closedWith(5 * time.Second); !closed || reason != 0x8E {
		t.Fatal("AnyOwner: alice's connection not taken over")
	}
	if owner, _ := h.e.Owner("shared-X"); owner != "alice" {
		t.Fatalf("owner after AnyOwner takeover %q, want alice (the session is still hers)", owner)
	}
}

// Two users racing for a client id that has no session yet: exactly one
// gets it, the other is refused, and the session's owner is the winner.
func TestConnectOwnerRace(t *testing.T) {
	h := newHarness(t, nil)
	for round := range 200 {
		id := fmt.Sprintf("race-%d", round)
		start := make(chan struct{})
		errs := make([]error, 2)
		users := []string{"alice", "bob"}
		var wg sync.WaitGroup
		for i, u := range users {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, _, errs[i] = h.e.Connect(newFakeConn(), qos.ConnectInfo{ClientID: id, ProtocolVersion: 5, ExpiryInterval: math.MaxUint32, Username: u})
			}()
		}
		close(start)
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil:
				if won >= 0 {
					t.Fatalf("round %d: both %s and %s got session %s", round, users[won], users[i], id)
				}
				won = i
			case !errors.Is(err, qos.ErrNotOwner):
				t.Fatalf("round %d: %s: %v", round, users[i], err)
			}
		}
		if won < 0 {
			t.Fatalf("round %d: neither got the session", round)
		}
		if owner, _ := h.e.Owner(id); owner != users[won] {
			t.Fatalf("round %d: owner %q, winner %s", round, owner, users[won])
		}
	}
}

// The sender writes a round of packets at once (Conn.Flush), but an
// acknowledgement whose record is durable never waits in the buffer for
// the fsync of the next one [MQTT-4.6.0-2 keeps their order].
func TestReadyAckDoesNotWaitForNextFsync(t *testing.T) {
	h := newHarness(t, nil)
	conn := newFakeConn()
	cl, _, err := h.e.Connect(conn, qos.ConnectInfo{ClientID: "pub", ProtocolVersion: 5})
	if err != nil {
		t.Fatal(err)
	}
	// Until CONNACK is out the sender holds back: both acks wait for one round.
	if err := cl.Publish(&qos.Message{Topic: "t", QoS: 1, Payload: []byte("durable")}, 1); err != nil {
		t.Fatal(err)
	}
	h.log.holdFrom()
	t.Cleanup(h.log.release) // before the engine closes, should the test fail
	if err := cl.Publish(&qos.Message{Topic: "t", QoS: 1, Payload: []byte("held")}, 2); err != nil {
		t.Fatal(err)
	}
	cl.Established()
	got := conn.waitFor(t, 1)
	if got[0].Type != qos.PacketPuback || got[0].PacketID != 1 {
		t.Fatalf("got %s, want PUBACK 1 while 2 waits for its fsync", types(got))
	}
	if p := conn.settle(); len(p) != 0 {
		t.Fatalf("acknowledged before its record is durable: %s", types(p))
	}
	h.log.release()
	if got := conn.waitFor(t, 1); got[0].Type != qos.PacketPuback || got[0].PacketID != 2 {
		t.Fatalf("got %s, want PUBACK 2", types(got))
	}
}

// A publish whose record is not durable yet starts no sender that would
// only wait for it: the log's durability event starts it, and the PUBACK
// still follows the record's durability.
func TestAckStartsNoSenderBeforeDurable(t *testing.T) {
	h := newHarness(t, nil)
	conn := newFakeConn()
	cl, _, err := h.e.Connect(conn, qos.ConnectInfo{ClientID: "pub", ProtocolVersion: 5})
	if err != nil {
		t.Fatal(err)
	}
	cl.Established()
	conn.settle()
	before := runtime.NumGoroutine()
	h.log.holdFrom()
	t.Cleanup(h.log.release)
	if err := cl.Publish(&qos.Message{Topic: "t", QoS: 1, Payload: []byte("held")}, 1); err != nil {
		t.Fatal(err)
	}
	if p := conn.settle(); len(p) != 0 {
		t.Fatalf("acknowledged before its record is durable: %s", types(p))
	}
	if n := runtime.NumGoroutine(); n != before {
		t.Errorf("%d goroutines while the record waits, %d before the publish: a sender waits for it", n, before)
	}
	h.log.release()
	if got := conn.waitFor(t, 1); got[0].Type != qos.PacketPuback || got[0].PacketID != 1 {
		t.Fatalf("got %s, want PUBACK 1", types(got))
	}
}

// The acknowledgements a durability event made ready are written on the
// log's goroutine only when the connection takes them at once; a busy
// connection, or a socket that takes nothing now, leaves them to the
// sender, in order [MQTT-4.6.0-2].
func TestAckNowLeavesTheRestToTheSender(t *testing.T) {
	for _, tc := range []struct {
		name       string
		slow, busy bool
	}{{"takes them", false, false}, {"socket full", true, false}, {"another write holds it", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			conn := newFakeConn()
			conn.slow, conn.busy = tc.slow, tc.busy
			cl, _, err := h.e.Connect(conn, qos.ConnectInfo{ClientID: "pub", ProtocolVersion: 5})
			if err != nil {
				t.Fatal(err)
			}
			cl.Established()
			conn.settle()
			h.log.holdFrom()
			t.Cleanup(h.log.release)
			for pid := uint16(1); pid <= 3; pid++ {
				if err := cl.Publish(&qos.Message{Topic: "t", QoS: 1, Payload: []byte("m")}, pid); err != nil {
					t.Fatal(err)
				}
			}
			h.log.release()
			got := conn.waitFor(t, 3)
			for i, p := range got {
				if p.Type != qos.PacketPuback || p.PacketID != uint16(i+1) {
					t.Fatalf("got %s, want PUBACK 1, 2, 3", types(got))
				}
			}
			// The window is free again: three more go through.
			for pid := uint16(4); pid <= 6; pid++ {
				if err := cl.Publish(&qos.Message{Topic: "t", QoS: 1, Payload: []byte("m")}, pid); err != nil {
					t.Fatal(err)
				}
			}
			if got := conn.waitFor(t, 3); len(got) != 3 {
				t.Fatalf("got %s after the window freed", types(got))
			}
		})
	}
}

// The dispatcher writes a clean session's new messages itself only when
// the connection takes them at once; a busy connection, or a socket that
// takes nothing now, leaves them to the sender: every message arrives,
// once, in order, with topic aliases assigned in the order the packets
// reach the wire [MQTT-3.3.2-7].
func TestDeliverNowLeavesTheRestToTheSender(t *testing.T) {
	for _, tc := range []struct {
		name       string
		slow, busy bool
	}{{"takes them", false, false}, {"socket full", true, false}, {"another write holds it", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			sub := h.connect("sub", false, func(i *qos.ConnectInfo) { i.TopicAliasMaximum = 10 })
			sub.subscribe("t/#", 1)
			sub.conn.settle()
			sub.conn.mu.Lock()
			sub.conn.slow, sub.conn.busy = tc.slow, tc.busy
			sub.conn.mu.Unlock()
			pub := h.connect("pub", false)
			const n = 20
			for i := range n {
				pub.publish(fmt.Sprintf("t/%d", i%3), 1, uint16(i+1), fmt.Sprint(i))
			}
			var got []qos.Packet
			for len(got) < n {
				got = append(got, sub.conn.waitFor(t, 1)...)
			}
			aliases := map[uint16]string{}
			for i, p := range got {
				if p.Type != qos.PacketPublish || string(p.Message.Payload) != fmt.Sprint(i) {
					t.Fatalf("delivery %d: %s %q, want PUBLISH %d", i, types(got[i:i+1]), p.Message.Payload, i)
				}
				topic := p.Message.Topic
				switch {
				case p.AliasOnly && aliases[p.TopicAlias] != topic:
					t.Fatalf("delivery %d: alias %d for %s, which the client knows as %q", i, p.TopicAlias, topic, aliases[p.TopicAlias])
				case !p.AliasOnly && p.TopicAlias > 0:
					if _, ok := aliases[p.TopicAlias]; ok {
						t.Fatalf("delivery %d: alias %d set again", i, p.TopicAlias)
					}
					if int(p.TopicAlias) != len(aliases)+1 {
						t.Fatalf("delivery %d: alias %d first on the wire, want %d", i, p.TopicAlias, len(aliases)+1)
					}
					aliases[p.TopicAlias] = topic
				}
				sub.cl.Puback(p.PacketID)
			}
			if p := sub.conn.settle(); len(p) != 0 {
				t.Fatalf("more after the %d: %s", n, types(p))
			}
		})
	}
}

// The log's durability event never waits for a session's lock: its holder
// may be waiting for room in the log's queue, which only the log's
// goroutine makes. The PUBACK then comes from the sender, once the lock is
// free.
func TestAckNowDoesNotWaitForTheSessionLock(t *testing.T) {
	h := newHarness(t, nil)
	pub := h.connect("pub", false)
	pub.conn.settle()
	h.log.holdFrom()
	t.Cleanup(h.log.release)
	pub.publish("t", 1, 1, "m")
	unlock := pub.cl.LockSession()
	released := make(chan struct{})
	go func() {
		h.log.release() // the durability event, on this goroutine
		close(released)
	}()
	select {
	case <-released:
	case <-time.After(5 * time.Second):
		unlock()
		t.Fatal("the durability event waited for the session's lock")
	}
	unlock()
	if got := pub.conn.waitFor(t, 1); got[0].Type != qos.PacketPuback || got[0].PacketID != 1 {
		t.Fatalf("got %s, want PUBACK 1", types(got))
	}
}

// goid returns the calling goroutine's id, from its stack trace.
func goid() string {
	b := make([]byte, 64)
	b = b[:runtime.Stack(b, false)]
	f := strings.Fields(string(b))
	return f[1] // "goroutine N [running]:"
}

// While the log is quiet (nothing queued behind) and the dispatcher is
// parked, the log's durability event dispatches the records it made
// durable itself: a clean subscriber's PUBLISH is written on the event's
// goroutine (memLog's events run on the appender's, here the publisher's),
// in log order, and the dispatcher goroutine is not woken for them. With
// appends queued behind (busy), the dispatcher goroutine writes it.
func TestQuietDispatchOnTheEvent(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", false)
	sub.subscribe("t", 1)
	pub := h.connect("pub", false)
	h.e.WaitDispatched()
	var mu sync.Mutex
	var by []string // the goroutine that flushed each PUBLISH
	sub.conn.mu.Lock()
	sub.conn.onFlush = func(ps []qos.Packet) {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range ps {
			if p.Type == qos.PacketPublish {
				by = append(by, goid())
			}
		}
	}
	sub.conn.mu.Unlock()
	me := goid()
	wakes := h.e.DispatcherWakes()
	const n = 4
	for i := range n {
		time.Sleep(time.Millisecond) // past deliverNowGap: each is written alone
		pub.publish("t", 1, uint16(i+1), fmt.Sprint("m", i))
	}
	h.log.setBusy(true)
	pub.publish("t", 1, n+1, "busy")
	got := sub.ackAll(sub.conn.waitFor(t, n+1))
	if want := "[m0 m1 m2 m3 busy]"; fmt.Sprint(payloads(got)) != want {
		t.Fatalf("got %v, want %s", payloads(got), want)
	}
	// onFlush runs after the packets are out: wait for the last one's.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		done := len(by) > n
		mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(by) <= n {
		t.Fatalf("%d PUBLISH flushes seen, want %d", len(by), n+1)
	}
	for i, g := range by[:n] {
		if g != me {
			t.Errorf("PUBLISH %d written by goroutine %s, not the durability event's (%s)", i, g, me)
		}
	}
	if by[n] == me {
		t.Errorf("with appends queued behind, the durability event wrote the PUBLISH itself")
	}
	if w := h.e.DispatcherWakes() - wakes; w != 1 {
		t.Errorf("the dispatcher goroutine woke %d times, want once (for the busy one)", w)
	}
}

// A durability event that makes several messages for one clean
// subscriber durable writes them together, on its own goroutine, once it
// has offered them all: the first one's kick started the subscriber's
// sender, a goroutine for one message, where the event writes both in one
// write anyway.
func TestQuietDispatchWritesABatchOnce(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", false)
	sub.subscribe("t", 1)
	pub := h.connect("pub", false)
	h.e.WaitDispatched()
	var mu sync.Mutex
	var flushes [][2]string // per flush with a PUBLISH: its goroutine and payloads
	sub.conn.mu.Lock()
	sub.conn.onFlush = func(ps []qos.Packet) {
		mu.Lock()
		defer mu.Unlock()
		var got []string
		for _, p := range ps {
			if p.Type == qos.PacketPublish {
				got = append(got, string(p.Message.Payload))
			}
		}
		if len(got) > 0 {
			flushes = append(flushes, [2]string{goid(), strings.Join(got, " ")})
		}
	}
	sub.conn.mu.Unlock()
	release := h.log.holdFrom()
	pub.publish("t", 1, 1, "m0")
	pub.publish("t", 1, 2, "m1")
	release() // the durability event of both, on this goroutine
	sub.ackAll(sub.conn.waitFor(t, 2))
	mu.Lock()
	defer mu.Unlock()
	if want := [][2]string{{goid(), "m0 m1"}}; !reflect.DeepEqual(flushes, want) {
		t.Fatalf("PUBLISH flushes (goroutine, payloads) %v, want %v: both at once by the durability event's goroutine", flushes, want)
	}
}

// The durability event never waits for a subscriber's session lock when
// it dispatches: the holder may be waiting for room in the log's queue.
// The PUBLISH then comes from the subscriber's sender, once it is free.
func TestQuietDispatchDoesNotWaitForTheSessionLock(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", false)
	sub.subscribe("t", 1)
	pub := h.connect("pub", false)
	h.e.WaitDispatched()
	unlock := sub.cl.LockSession()
	published := make(chan struct{})
	go func() {
		defer close(published)
		pub.publish("t", 1, 1, "m") // its durability event, on this goroutine
	}()
	select {
	case <-published:
	case <-time.After(5 * time.Second):
		unlock()
		t.Fatal("the durability event waited for the subscriber's session lock")
	}
	unlock()
	if got := sub.conn.waitFor(t, 1); got[0].Type != qos.PacketPublish || string(got[0].Message.Payload) != "m" {
		t.Fatalf("got %s, want the PUBLISH", types(got))
	}
}

// A message wider than the durability event dispatches (here more than 4
// sessions) goes to the dispatcher goroutine, and while messages are
// that wide the events hand the records over without reading them
// first; the first narrow one the dispatcher goroutine dispatches gives
// the events their quiet path back.
func TestQuietDispatchLeavesWideFanoutsToTheDispatcher(t *testing.T) {
	h := newHarness(t, nil)
	var subs []*client
	for i := range 5 {
		s := h.connect(fmt.Sprint("sub", i), false)
		s.subscribe("w", 1)
		subs = append(subs, s)
	}
	narrow := h.connect("narrow", false)
	narrow.subscribe("n", 1)
	pub := h.connect("pub", false)
	h.e.WaitDispatched()
	me := goid()
	var mu sync.Mutex
	readBy := map[uint64]string{}
	h.log.mu.Lock()
	h.log.onNext = func(off uint64) {
		mu.Lock()
		readBy[off] = goid()
		mu.Unlock()
	}
	h.log.mu.Unlock()
	step := func(topic string, pid uint16, to *client) (readHere bool) {
		t.Helper()
		time.Sleep(time.Millisecond) // past deliverNowGap
		pub.publish(topic, 1, pid, topic)
		off := h.log.LastOffset()
		to.ackAll(to.conn.waitFor(t, 1))
		h.e.WaitDispatched()
		mu.Lock()
		defer mu.Unlock()
		return readBy[off] == me
	}
	got := []bool{step("w", 1, subs[0]), step("w", 2, subs[0]), step("n", 3, narrow), step("n", 4, narrow)}
	if want := []bool{true, false, false, true}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("read on the durability event's goroutine: %v for wide, wide, narrow, narrow; want %v", got, want)
	}
}
