package qos_test

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemq/edgemq/qos"
)

var (
	modelSeed  = flag.Uint64("qos.seed", 0, "seed of TestModel (0: a few fixed seeds)")
	modelSteps = flag.Int("qos.steps", 1500, "operations per seed of TestModel")
	modelSeeds = flag.Int("qos.seeds", 4, "seeds TestModel runs when -qos.seed is 0")
	modelFlaky = flag.Float64("qos.flaky", 0.3, "chance that a flaky client's direct write is refused, or its direct flush takes a part (half the clients of TestModel are flaky)")
	modelSkip  = flag.String("qos.skip", "", "operations TestModel leaves out, for narrowing a failure: any of d (disconnect), t (takeover), k (checkpoint), c (crash), s (subscribe again), h (withheld acks), r (retained publishes), f (slow fsyncs)")
)

// TestModel drives the engine with random publishes (some retained),
// acknowledgements, disconnects, takeovers, subscriptions repeated (as a
// device subscribes again on every reconnect: its retained messages come
// again, as extra deliveries with RETAIN set, which the model does not
// count), checkpoints, crashes and restarts, and checks what the clients'
// applications received against a simple model:
//
//   - every publish the publisher had acknowledged reaches every
//     subscriber (all persistent, subscribed before the first publish);
//   - a QoS 2 delivery reaches the application at most once;
//   - each subscriber gets each publisher's messages, first deliveries
//     counted, in the order they were published.
//
// Longer: go test ./qos -run TestModel -qos.steps 20000 -qos.seeds 20.
func TestModel(t *testing.T) {
	seeds := []uint64{*modelSeed}
	if *modelSeed == 0 {
		seeds = nil
		for i := range *modelSeeds {
			seeds = append(seeds, uint64(i+1))
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runModel(t, seed, *modelSteps) })
	}
}

type modelClient struct {
	*client
	online  bool
	subQoS  byte
	nextPID uint16
	// publisher side
	seq      int
	pending  map[uint16]string // pid -> payload, published and not yet acknowledged
	pubQoS   map[uint16]byte
	released map[uint16]bool // QoS 2 ids PUBREC'd, PUBREL sent, awaiting PUBCOMP
	// subscriber side
	held []qos.Packet // delivered, acknowledgement withheld for now
	// first[publisher] is the last seq first-delivered from it
	first map[string]int
	count map[string]int // payload -> application deliveries
	// for a failure's report: the connection's number, what reached the
	// application (payload -> step, connection, packet id, DUP) and the
	// connection's history
	conns  int
	got    map[string][]delivery
	events []delivery // what: the event
}

// delivery is a step's note for a failure's report.
type delivery struct {
	step int
	what string
}

func (d delivery) String() string { return fmt.Sprintf("step %d: %s", d.step, d.what) }

type model struct {
	t      *testing.T
	step   int
	r      *rand.Rand
	h      *harness
	cs     []*modelClient
	acked  map[string]byte // payload -> publish QoS, acknowledged to the publisher
	byName map[string]*modelClient
	// crashes during a slow fsync, and the held records they lost and kept
	heldCrashes, heldLost, heldKept int
}

func runModel(t *testing.T, seed uint64, steps int) {
	m := &model{t: t, r: rand.New(rand.NewPCG(seed, seed^0x9e3779b9)), acked: map[string]byte{}, byName: map[string]*modelClient{}}
	m.h = newHarness(t, func(c *qos.Config) {
		c.MaxInflight = 1 + m.r.IntN(8)
		c.QueueLimit = 1 + m.r.IntN(16)
	})
	for i := range 4 {
		c := &modelClient{
			client:  m.h.connect(fmt.Sprintf("c%d", i), true),
			online:  true,
			subQoS:  byte(1 + m.r.IntN(2)),
			pending: map[uint16]string{}, pubQoS: map[uint16]byte{}, released: map[uint16]bool{},
			first: map[string]int{}, count: map[string]int{}, got: map[string][]delivery{},
		}
		// Half the clients' sockets refuse direct writes, or take a part
		// of a flush, at random: what the log writer's and the
		// dispatcher's direct writes leave goes to the sender, in order.
		if i%2 == 1 {
			c.client.flaky = *modelFlaky
			c.conn.mu.Lock()
			c.conn.flaky = *modelFlaky
			c.conn.mu.Unlock()
		}
		c.subscribe("t/#", c.subQoS)
		m.cs = append(m.cs, c)
		m.byName[c.id] = c
	}
	var fsyncs sync.WaitGroup // the slow fsyncs' releases
	for step := range steps {
		m.step = step
		c := m.cs[m.r.IntN(len(m.cs))]
		if m.r.IntN(8) == 0 {
			// Durability events dispatch themselves while the log is
			// quiet (idle), the dispatcher goroutine while it is busy.
			m.h.log.setBusy(m.r.IntN(2) == 0)
		}
		n := m.r.IntN(100)
		for _, op := range []struct {
			skip   byte
			lo, hi int
		}{{'d', 75, 82}, {'t', 82, 86}, {'k', 86, 89}, {'c', 89, 91}, {'s', 91, 95}} {
			if n >= op.lo && n < op.hi && strings.IndexByte(*modelSkip, op.skip) >= 0 {
				n = 99
			}
		}
		switch {
		case n < 40:
			if c.online {
				m.publish(c)
			}
		case n < 75:
			if c.online {
				m.pump(c, m.r.IntN(4) != 0 || strings.Contains(*modelSkip, "h"))
			}
		case n < 82:
			if c.online {
				c.cl.Disconnect(false, nil)
				m.offline(c)
				m.event(c, "disconnect")
			} else {
				m.reconnect(c)
			}
		case n < 86:
			if c.online { // takeover: a new connection, the old one just stops
				m.offline(c)
				m.event(c, "taken over")
				m.reconnect(c)
			}
		case n < 89:
			if err := m.h.e.Checkpoint(); err != nil {
				t.Fatal(err)
			}
			for _, c := range m.cs {
				m.event(c, fmt.Sprintf("checkpoint (log from %d to %d)", m.h.log.FirstOffset(), m.h.log.LastOffset()))
			}
		case n < 91:
			// A kill -9, maybe during a slow fsync: of the records it
			// held, the ones already written survive (the next process
			// reads them), the rest are lost; its release never comes.
			held := m.h.log.notDurable()
			keep := m.r.IntN(held + 1)
			if held > 0 {
				m.heldCrashes++
				m.heldLost += held - keep
				m.heldKept += keep
			}
			m.h.crashKeeping(keep)
			for _, c := range m.cs {
				m.offline(c)
				m.event(c, "crash")
			}
		case n < 95:
			if c.online {
				if err := c.cl.Subscribe([]qos.Subscribe{{Filter: "t/#", QoS: c.subQoS}}); err != nil {
					t.Fatalf("subscribe again: %v", err)
				}
				c.cl.Suback()
				m.event(c, "subscribed again")
			}
		case n < 97 && strings.IndexByte(*modelSkip, 'f') < 0:
			// A slow fsync: the records from here on wait for a moment
			// (the engine's calls that wait for one, Connect, Subscribe,
			// go on meanwhile), so acknowledgements wait for the log's
			// durability event, which writes them at once (ackNow).
			release := m.h.log.holdFrom()
			fsyncs.Add(1)
			d := time.Duration(m.r.IntN(2000)) * time.Microsecond
			go func() {
				defer fsyncs.Done()
				time.Sleep(d)
				release()
			}()
		default:
			time.Sleep(time.Millisecond)
		}
	}
	fsyncs.Wait()
	// Drain: everyone online, acknowledging everything, until quiet.
	m.step = steps
	for _, c := range m.cs {
		if !c.online {
			m.reconnect(c)
		}
	}
	// Quiet means no packet for a while, nothing queued or in flight and
	// every record dispatched (a busy machine can hold a sender, or the
	// dispatcher, back longer than a pause).
	deadline := time.Now().Add(20 * time.Second)
	for quiet := 0; quiet < 10 && time.Now().Before(deadline); {
		time.Sleep(2 * time.Millisecond)
		busy := false
		for _, c := range m.cs {
			if m.pump(c, true) {
				busy = true
			}
		}
		if st := m.h.e.Stats(); busy || st.Inflight > 0 || st.Queued > 0 || m.h.e.FannedOut() <= m.h.log.LastOffset() {
			quiet = 0
		} else {
			quiet++
		}
	}
	for p, q := range m.acked {
		for _, c := range m.cs {
			n := c.count[p]
			if n == 0 {
				t.Fatalf("seed %d: %s lost: acknowledged at QoS %d, never reached %s (sub QoS %d)\n%s", seed, p, q, c.id, c.subQoS, c.history(p))
			}
		}
	}
	for _, c := range m.cs {
		for p, n := range c.count {
			if n > 1 && c.subQoS == 2 && m.acked[p] == 2 {
				t.Fatalf("seed %d: QoS 2 message %s reached %s %d times\n%s", seed, p, c.id, n, c.history(p))
			}
		}
	}
	st := m.h.e.Stats()
	t.Logf("seed %d: %d acknowledged publishes, %d deliveries (%d resent), %d crashes during a slow fsync (%d held records lost, %d kept)", seed, len(m.acked), st.Delivered, st.Redelivered, m.heldCrashes, m.heldLost, m.heldKept)
}

func (m *model) offline(c *modelClient) {
	c.online = false
	c.held = nil
}

// event notes what happened to c's connection, for a failure's report.
func (m *model) event(c *modelClient, what string) {
	c.events = append(c.events, delivery{m.step, what})
}

// history reports what reached c's application of payload, and the
// events of c's connections around it (the last ones if nothing did).
func (c *modelClient) history(payload string) string {
	var b strings.Builder
	got := c.got[payload]
	fmt.Fprintf(&b, "%s got %s: %v\n%s's connections meanwhile:\n", c.id, payload, got, c.id)
	lo, hi := -1, -1
	if len(got) > 0 {
		lo, hi = got[0].step-100, got[len(got)-1].step+20
	} else if len(c.events) > 40 {
		lo = c.events[len(c.events)-40].step
	}
	for _, e := range c.events {
		if e.step >= lo && (hi < 0 || e.step <= hi) {
			fmt.Fprintf(&b, "  %v\n", e)
		}
	}
	return b.String()
}

func (m *model) reconnect(c *modelClient) {
	c.reconnect()
	c.conns++
	m.event(c, fmt.Sprintf("connection %d", c.conns))
	c.online = true
	for pid := range c.released { // [MQTT-4.4.0-1]: PUBREL again
		c.cl.Pubrel(pid)
	}
}

func (m *model) publish(c *modelClient) {
	q := byte(1 + m.r.IntN(2))
	for {
		c.nextPID++
		if c.nextPID == 0 {
			c.nextPID = 1
		}
		if _, busy := c.pending[c.nextPID]; !busy && !c.released[c.nextPID] {
			break
		}
	}
	c.seq++
	p := fmt.Sprintf("%s:%d", c.id, c.seq)
	retain := m.r.IntN(8) == 0 && !strings.Contains(*modelSkip, "r")
	err := c.cl.Publish(&qos.Message{Topic: "t/" + c.id, QoS: q, Retain: retain, Payload: []byte(p)}, c.nextPID)
	if err != nil {
		m.t.Fatalf("publish: %v", err)
	}
	c.pending[c.nextPID] = p
	c.pubQoS[c.nextPID] = q
}

// pump handles what the connection has written: acknowledgements of the
// client's publishes, and deliveries (acknowledged now, or held back a
// while when ack is false). It reports whether there was anything.
func (m *model) pump(c *modelClient, ack bool) bool {
	pkts := c.conn.take()
	if ack {
		pkts = append(c.held, pkts...)
		c.held = nil
	}
	for _, p := range pkts {
		switch p.Type {
		case qos.PacketPuback:
			if pl, ok := c.pending[p.PacketID]; ok && c.pubQoS[p.PacketID] == 1 {
				delete(c.pending, p.PacketID)
				if p.ReasonCode < 0x80 {
					m.ackedDurable(c, pl)
					m.acked[pl] = 1
				}
			}
		case qos.PacketPubrec:
			if pl, ok := c.pending[p.PacketID]; ok && c.pubQoS[p.PacketID] == 2 {
				delete(c.pending, p.PacketID)
				if p.ReasonCode < 0x80 {
					m.ackedDurable(c, pl)
					m.acked[pl] = 2
					c.released[p.PacketID] = true
					c.cl.Pubrel(p.PacketID)
				}
			}
		case qos.PacketPubcomp:
			delete(c.released, p.PacketID)
		case qos.PacketPublish, qos.PacketPubrel:
			if !ack {
				c.held = append(c.held, p)
				continue
			}
			msgs := c.ackAll([]qos.Packet{p})
			if p.Type == qos.PacketPublish && p.Retain {
				// A retained message sent at a SUBSCRIBE (no subscription
				// asks for Retain As Published): a copy, not counted.
				continue
			}
			for _, msg := range msgs {
				pl := string(msg.Payload)
				c.got[pl] = append(c.got[pl], delivery{m.step, fmt.Sprintf("connection %d, packet id %d, DUP %v", c.conns, p.PacketID, p.Dup)})
				m.deliver(c, pl)
			}
		}
	}
	return len(pkts) > 0
}

// ackedDurable fails the test if the PUBACK or PUBREC of payload came
// before its record was durable: a kill -9 now would lose it.
func (m *model) ackedDurable(c *modelClient, payload string) {
	if m.h.log.acceptedNotDurable([]byte(payload)) {
		m.t.Fatalf("%s acknowledged to %s before its record was durable", payload, c.id)
	}
}

func (m *model) deliver(c *modelClient, payload string) {
	var pub string
	var seq int
	if _, err := fmt.Sscanf(payload, "c%1s:%d", &pub, &seq); err != nil {
		m.t.Fatalf("%s got a message nobody published: %q", c.id, payload)
	}
	c.count[payload]++
	if c.count[payload] == 1 {
		if seq <= c.first[pub] {
			m.t.Fatalf("%s got %s after c%s:%d: out of order\n%s", c.id, payload, pub, c.first[pub], c.history(payload))
		}
		c.first[pub] = seq
	}
}
