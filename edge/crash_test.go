package edge_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/internal/daemontest"
)

// TestCrashLosesNothing is the durability contract under kill -9: the
// built binary runs under QoS 1 and 2 load from MQTT 5 and 3.1.1
// publishers, with persistent subscribers connected (one per protocol) and
// one offline, and is killed with SIGKILL at random moments, then restarted.
// At the end every acknowledged message must have reached every
// subscription at least once, exactly once where both sides are QoS 2, and
// in each publisher's order. EDGEMQ_CRASH_ITERATIONS sets the number of
// kills (default 6, 2 with -short).
func TestCrashLosesNothing(t *testing.T) {
	iterations := 6
	if testing.Short() {
		iterations = 2
	}
	if v, err := strconv.Atoi(os.Getenv("EDGEMQ_CRASH_ITERATIONS")); err == nil && v > 0 {
		iterations = v
	}
	d := daemontest.New(t, t.TempDir(), "warn", "")
	d.Start()

	subs := []*crashSub{
		{id: "crash-sub-v5", version: 5, qos: 2},
		{id: "crash-sub-v3", version: 4, qos: 1},
		{id: "crash-sub-offline", version: 5, qos: 2},
	}
	for _, s := range subs {
		s.init()
		if err := s.session(d.Addr(), nil, true); err != nil {
			t.Fatalf("%s: subscribe: %v", s.id, err)
		}
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, s := range subs[:2] { // the online ones
		s.stayConnected(&wg, d.Addr, stop)
	}
	pubs := []*crashPub{
		{id: "p5q1", version: 5, qos: 1}, {id: "p5q2", version: 5, qos: 2},
		{id: "p3q1", version: 4, qos: 1}, {id: "p3q2", version: 4, qos: 2},
	}
	var pwg sync.WaitGroup
	for _, p := range pubs {
		p.acked = map[int]bool{}
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			p.run(t, d.Addr, stop)
		}()
	}

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for i := range iterations {
		time.Sleep(time.Duration(300+rng.IntN(900)) * time.Millisecond)
		d.Kill()
		t.Logf("kill %d: %d messages acknowledged so far", i+1, ackedCount(pubs))
		d.Start()
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	pwg.Wait()
	wg.Wait()

	// Drain every subscription, the offline one for the first time.
	done := make(chan struct{})
	var dwg sync.WaitGroup
	for _, s := range subs {
		s.stayConnected(&dwg, d.Addr, done)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && !allDelivered(subs, pubs) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // let duplicates, if any, arrive
	close(done)
	dwg.Wait()
	d.Stop()

	for _, s := range subs {
		s.verify(t, pubs)
	}
}

func ackedCount(pubs []*crashPub) int {
	n := 0
	for _, p := range pubs {
		p.mu.Lock()
		n += len(p.acked)
		p.mu.Unlock()
	}
	return n
}

func allDelivered(subs []*crashSub, pubs []*crashPub) bool {
	for _, s := range subs {
		s.mu.Lock()
		for _, p := range pubs {
			p.mu.Lock()
			for seq := range p.acked {
				if s.count[p.id][seq] == 0 {
					p.mu.Unlock()
					s.mu.Unlock()
					return false
				}
			}
			p.mu.Unlock()
		}
		s.mu.Unlock()
	}
	return true
}

// ---- the daemon ----

// ---- publishers: the paho clients, reconnecting after every crash ----

// crashPub publishes "<id>/<seq>" with seq counting up from 0. A publish
// whose acknowledgement (PUBACK, or PUBCOMP) did not arrive is not
// repeated: the next one takes the next seq, so every seq is published
// once and a seq delivered twice is the broker's duplicate.
type crashPub struct {
	id      string
	version byte
	qos     byte
	mu      sync.Mutex
	acked   map[int]bool
	seq     int
}

func (p *crashPub) run(t *testing.T, addr func() string, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		var err error
		if p.version == 5 {
			err = p.runV5(addr(), stop)
		} else {
			err = p.runV3(addr(), stop)
		}
		if err != nil {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func (p *crashPub) payload() (int, []byte) {
	seq := p.seq
	p.seq++
	return seq, []byte(fmt.Sprintf("%s/%d", p.id, seq))
}

func (p *crashPub) ack(seq int) {
	p.mu.Lock()
	p.acked[seq] = true
	p.mu.Unlock()
}

func (p *crashPub) runV5(addr string, stop <-chan struct{}) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn, PacketTimeout: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = c.Connect(ctx, &paho.Connect{ClientID: p.id, KeepAlive: 30, CleanStart: true})
	cancel()
	if err != nil {
		conn.Close()
		return err
	}
	defer func() {
		_ = c.Disconnect(&paho.Disconnect{})
		<-doneOrTimeout(c.Done())
	}()
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		seq, body := p.payload()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.Publish(ctx, &paho.Publish{Topic: "crash/" + p.id, QoS: p.qos, Payload: body})
		cancel()
		if err != nil {
			return err
		}
		if resp != nil && resp.ReasonCode < 0x80 {
			p.ack(seq)
		}
	}
}

func (p *crashPub) runV3(addr string, stop <-chan struct{}) error {
	o := pahov3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(p.id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(true).SetConnectTimeout(2 * time.Second).
		SetWriteTimeout(5 * time.Second)
	c := pahov3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return fmt.Errorf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		seq, body := p.payload()
		tok := c.Publish("crash/"+p.id, p.qos, false, body)
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil || !c.IsConnectionOpen() {
			return fmt.Errorf("publish: %v", tok.Error())
		}
		p.ack(seq)
	}
}

// ---- subscribers: raw MQTT, with the receiver's QoS 2 state kept across
// reconnects, as a client with a persistent session must keep it ----

type crashSub struct {
	id      string
	version byte
	qos     byte

	mu      sync.Mutex
	count   map[string]map[int]int // publisher -> seq -> deliveries to the application
	order   map[string][]int       // publisher -> seqs in order of first delivery
	pending map[uint16]bool        // QoS 2 packet ids received, PUBREL not yet
	conns   atomic.Int32
}

func (s *crashSub) init() {
	s.count, s.order, s.pending = map[string]map[int]int{}, map[string][]int{}, map[uint16]bool{}
}

// session runs one connection until it breaks or stop closes. With
// subscribe it subscribes and returns.
func (s *crashSub) session(addr string, stop <-chan struct{}, subscribe bool, filter ...string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	rc := &rawConn{c: c, version: s.version}
	con := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}}
	con.Connect.ProtocolName = []byte("MQTT")
	con.Connect.ClientIdentifier, con.Connect.Keepalive = s.id, 30
	// The first connection starts a fresh session: clean start for v5 (the
	// session expiry keeps it), a persistent session for 3.1.1.
	con.Connect.Clean = subscribe && s.version == 5
	if s.version == 5 {
		con.Properties.SessionExpiryInterval, con.Properties.SessionExpiryIntervalFlag = 3600, true
	}
	if err := rc.send(con); err != nil {
		return err
	}
	if ack, err := rc.read(5 * time.Second); err != nil || ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		return fmt.Errorf("connack: %v", err)
	}
	if subscribe {
		if err := rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: append(filter, "crash/#")[0], Qos: s.qos}}}); err != nil {
			return err
		}
		if ack, err := rc.read(5 * time.Second); err != nil || ack.FixedHeader.Type != packets.Suback {
			return fmt.Errorf("suback: %v", err)
		}
		return rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	}
	s.conns.Add(1)
	for {
		select {
		case <-stop:
			return rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		default:
		}
		pk, err := rc.read(200 * time.Millisecond)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return err
		}
		var reply *packets.Packet
		switch pk.FixedHeader.Type {
		case packets.Publish:
			switch pk.FixedHeader.Qos {
			case 0:
				s.deliver(pk.Payload)
			case 1:
				s.deliver(pk.Payload)
				reply = &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}
			case 2:
				s.mu.Lock()
				dup := s.pending[pk.PacketID]
				s.pending[pk.PacketID] = true
				s.mu.Unlock()
				if !dup {
					s.deliver(pk.Payload)
				}
				reply = &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: pk.PacketID}
			}
		case packets.Pubrel:
			s.mu.Lock()
			delete(s.pending, pk.PacketID)
			s.mu.Unlock()
			reply = &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: pk.PacketID}
		}
		if reply != nil {
			if err := rc.send(*reply); err != nil {
				return err
			}
		}
	}
}

// stayConnected runs sessions one after the other, reconnecting after
// every broken connection, until stop closes.
func (s *crashSub) stayConnected(wg *sync.WaitGroup, addr func() string, stop <-chan struct{}) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			_ = s.session(addr(), stop, false)
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
}

func (s *crashSub) deliver(body []byte) {
	pub, seqs, ok := strings.Cut(string(body), "/")
	seq, err := strconv.Atoi(seqs)
	if !ok || err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.count[pub] == nil {
		s.count[pub] = map[int]int{}
	}
	if s.count[pub][seq] == 0 {
		s.order[pub] = append(s.order[pub], seq)
	}
	s.count[pub][seq]++
}

// verify checks and prints what the subscriber got from each publisher.
func (s *crashSub) verify(t *testing.T, pubs []*crashPub) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range pubs {
		p.mu.Lock()
		acked := len(p.acked)
		var lost, dups, extra []int
		for seq := range p.acked {
			if s.count[p.id][seq] == 0 {
				lost = append(lost, seq)
			}
		}
		delivered := 0
		for seq, n := range s.count[p.id] {
			delivered += n
			if n > 1 {
				dups = append(dups, seq)
			}
			if !p.acked[seq] {
				extra = append(extra, seq) // published, not acknowledged, delivered: allowed
			}
		}
		p.mu.Unlock()
		reordered := 0
		order := s.order[p.id]
		for i := 1; i < len(order); i++ {
			if order[i] < order[i-1] {
				reordered++
			}
		}
		exactlyOnce := min(p.qos, s.qos) == 2
		t.Logf("%s <- %s (QoS %d->%d): acknowledged %d, delivered %d (unique %d), lost %d, duplicates %d, reordered %d, unacknowledged but delivered %d",
			s.id, p.id, p.qos, s.qos, acked, delivered, len(s.count[p.id]), len(lost), len(dups), reordered, len(extra))
		if len(lost) > 0 {
			t.Errorf("%s lost %d acknowledged messages of %s, e.g. seq %d", s.id, len(lost), p.id, lost[0])
		}
		if exactlyOnce && len(dups) > 0 {
			t.Errorf("%s got %d QoS 2 messages of %s more than once, e.g. seq %d", s.id, len(dups), p.id, dups[0])
		}
		if reordered > 0 {
			t.Errorf("%s got %s's messages out of order %d times", s.id, p.id, reordered)
		}
	}
}

// rawConn reads and writes MQTT packets on a connection.
type rawConn struct {
	c       net.Conn
	version byte
	rd      *rawClient
}

func (rc *rawConn) send(pk packets.Packet) error {
	b, err := encodePacket(rc.version, pk)
	if err != nil {
		return err
	}
	_ = rc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = rc.c.Write(b)
	return err
}

func (rc *rawConn) read(d time.Duration) (packets.Packet, error) {
	if rc.rd == nil {
		rc.rd = &rawClient{c: rc.c, r: bufio.NewReader(rc.c), version: rc.version}
	}
	return rc.rd.read(d)
}
