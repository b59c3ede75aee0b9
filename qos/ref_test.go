package qos_test

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// deliveryLogBytes delivers n 1-byte QoS 1 messages to a persistent
// subscriber whose client id is idLen bytes long, acknowledges them, and
// returns the log bytes per delivery that are the subscriber's: its
// Deliver and Complete records (the message itself is logged once,
// whoever receives it).
func deliveryLogBytes(t testing.TB, idLen, n int) float64 {
	h := newHarness(t, nil)
	sub := h.connect(strings.Repeat("s", idLen), true)
	sub.subscribe("t", 1)
	pub := h.connect("pub", false)
	for i := range n {
		pub.publish("t", 1, uint16(i%65535+1), "x")
	}
	got := 0
	for got < n {
		got += len(sub.ackAll(sub.conn.waitFor(t, 1)))
	}
	sub.conn.settle()
	deliver, nd := h.log.size(qos.KindDeliver)
	complete, nc := h.log.size(qos.KindComplete)
	if nd != n || nc != n {
		t.Fatalf("%d Deliver and %d Complete records for %d deliveries", nd, nc, n)
	}
	return float64(deliver+complete) / float64(n)
}

// A delivery to a persistent session costs a few log bytes whatever the
// length of its client id: its records name the session by a short id
// ([MQTT-3.1.3-5] allows 65,535-byte client ids; edge's
// limits.max_client_id_length allows up to that).
func TestDeliveryRecordsNameTheSessionShortly(t *testing.T) {
	for _, idLen := range []int{8, 256, 65535} {
		per := deliveryLogBytes(t, idLen, 100)
		t.Logf("client id of %d bytes: %.1f log bytes per delivery (Deliver + Complete)", idLen, per)
		if per > 32 {
			t.Errorf("client id of %d bytes: %.1f log bytes per delivery, want at most 32", idLen, per)
		}
	}
}

// BenchmarkDeliveryLogBytes reports the log bytes a QoS 1 delivery to a
// persistent subscriber costs (its Deliver and Complete records), by the
// length of the subscriber's client id:
//
//	go test ./qos -run '^$' -bench BenchmarkDeliveryLogBytes -benchtime=1x
func BenchmarkDeliveryLogBytes(b *testing.B) {
	for _, idLen := range []int{8, 256, 65535} {
		b.Run(fmt.Sprintf("id=%d", idLen), func(b *testing.B) {
			var per float64
			for range b.N {
				per = deliveryLogBytes(b, idLen, 1000)
			}
			b.ReportMetric(per, "log-B/delivery")
		})
	}
}

// The mapping from a session's Ref to its client id is in its Session
// record and in every snapshot: once a checkpoint let retention trim the
// Session record, a restart still applies the records that name the
// session by its Ref (here the Deliver of an unacknowledged message,
// which must come again).
func TestSessionRefSurvivesTrimming(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect(strings.Repeat("a-long-client-id/", 20), true)
	sub.subscribe("t", 1)
	pub := h.connect("pub", false)
	pub.publish("t", 1, 1, "first")
	sub.ackAll(sub.conn.waitFor(t, 1)) // the dispatcher has read the Session record
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if _, n := h.log.size(qos.KindSession); n != 0 {
		t.Fatalf("the Session record is still in the log: the test needs it trimmed")
	}
	pub.publish("t", 1, 2, "second")
	if p := sub.conn.waitFor(t, 1); string(p[0].Message.Payload) != "second" {
		t.Fatalf("got %q", p[0].Message.Payload) // and not acknowledged
	}
	h.crash()
	if present := sub.reconnect(); !present {
		t.Fatal("session lost")
	}
	p := sub.conn.waitFor(t, 1)
	if string(p[0].Message.Payload) != "second" || !p[0].Dup {
		t.Fatalf("after the restart: %q dup %v, want \"second\" again with DUP", p[0].Message.Payload, p[0].Dup)
	}
}

// Records of version 1 name a session by its client id: a log written
// before Refs still recovers, and a session from it gets a Ref at its
// next connection, after which its records name it by Ref.
func TestVersion1RecordsStillRead(t *testing.T) {
	h := newHarness(t, nil)
	h.e.Crash()
	enc := func(v any) []byte {
		b, err := qos.Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	old := [][]byte{
		enc(&qos.Session{Client: "old", ProtocolVersion: 5, ExpiryInterval: math.MaxUint32, Username: "u"}),
		enc(&qos.Subscribe{Client: "old", Filter: "t", QoS: 1}),
		enc(&qos.Message{Topic: "t", QoS: 1, Payload: []byte("a")}),
		enc(&qos.Deliver{Client: "old", PacketID: 1, Offset: 3, QoS: 1}),
		enc(&qos.Message{Topic: "t", QoS: 1, Payload: []byte("b")}),
		enc(&qos.Disconnect{Client: "old", At: time.Now().Unix(), ExpiryInterval: math.MaxUint32}),
	}
	for _, rec := range old {
		if rec[1] != 1 {
			t.Fatalf("kind %d written as version %d, want 1", rec[0], rec[1])
		}
	}
	if _, err := h.log.AppendAsync(old...); err != nil {
		t.Fatal(err)
	}
	h.start()
	c := h.connect("old", true, func(i *qos.ConnectInfo) { i.Username = "u" })
	got := c.ackAll(c.conn.waitFor(t, 2))
	if !slices.Equal(payloads(got), []string{"a", "b"}) {
		t.Fatalf("got %v, want the held a (again) and the queued b", payloads(got))
	}
	c.conn.settle()
	c.cl.Disconnect(false, nil)
	for _, k := range []qos.Kind{qos.KindSession, qos.KindDeliver, qos.KindComplete, qos.KindDisconnect} {
		rec := h.log.last(k)
		if rec == nil || rec[1] != 2 {
			t.Fatalf("last record of kind %d: %x, want version 2 (by Ref)", k, rec)
		}
	}
	h.crash()
	c = h.connect("old", true, func(i *qos.ConnectInfo) { i.Username = "u" })
	if p := c.conn.settle(); len(p) != 0 {
		t.Fatalf("after a restart: %s, want nothing (both acknowledged)", types(p))
	}
}

// A persistent session resumed with an expiry of 0 is ended in the log at
// CONNECT and goes on as a clean one: its records name its client id
// again, not a Ref the log no longer maps. A QoS 2 exchange it ends
// (PUBREL) stays ended across restarts: the next publish on that packet
// id, from a new persistent session of the client, is a new message, not
// a duplicate.
func TestSessionEndedAtResumeDropsItsRef(t *testing.T) {
	h := newHarness(t, nil)
	sub := h.connect("sub", false)
	sub.subscribe("q/#", 2)
	c := h.connect("g", true)
	c.cl.Disconnect(false, nil)
	c.info.ExpiryInterval = 0
	c.reconnect()
	c.publish("q/1", 2, 5, "first")
	c.ackAll(c.conn.waitFor(t, 1)) // PUBREC: PUBREL follows
	c.cl.Pubrel(5)
	c.conn.waitFor(t, 1) // PUBCOMP: the release is durable
	if got := sub.ackAll(sub.conn.waitFor(t, 1)); len(got) != 1 {
		t.Fatalf("sub got %d messages", len(got))
	}
	sub.ackAll(sub.conn.settle()) // PUBREL
	h.crash()
	c.info.ExpiryInterval = math.MaxUint32 // persistent again: a new session
	c.reconnect()
	h.crash()
	sub.reconnect()
	sub.subscribe("q/#", 2)
	c.reconnect()
	c.publish("q/1", 2, 5, "second")
	got := sub.ackAll(sub.conn.waitFor(t, 1))
	if len(got) != 1 || string(got[0].Payload) != "second" {
		t.Fatalf("after a restart, a new QoS 2 publish on packet id 5: sub got %v, want second", payloads(got))
	}
}
