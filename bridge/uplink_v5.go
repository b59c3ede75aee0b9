package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"
	"github.com/eclipse/paho.golang/paho/store/memory"
)

// v5link is an MQTT 5 uplink over paho.golang. paho keeps the flow control
// (it blocks a publish while the upstream's Receive Maximum is used up);
// the bridge keeps what must survive the connection, in the log. paho's
// session state is in memory and lives exactly as long as the connection:
// after a reconnect the bridge resends from its cursors, not paho. So its
// store of the packets the bridge sent keeps nothing (noStoreV5); the store
// of what the upstream sent is paho's in-memory one, which the downlink's
// QoS 2 exchanges use within the connection.
type v5link struct {
	c    *paho.Client
	conn *watchedConn
	sess *ackSession
	win  int
	// resumed is the CONNACK's Session Present [MQTT-3.2.2-2].
	resumed bool

	pubMu sync.Mutex // one publish at a time: the write order is the send order

	stopWatch context.CancelFunc
	wg        sync.WaitGroup
	linkState
}

// dialV5 connects to addr and returns the link once CONNACK accepted it.
func dialV5(ctx context.Context, d dialer, addr string, in inbound) (*v5link, error) {
	cfg := d.cfg
	nc, err := d.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	conn := newWatchedConn(nc, cfg.Keepalive)
	l := &v5link{conn: conn, linkState: newLinkState()}
	l.sess = &ackSession{State: state.New(noStoreV5{}, memory.New()), link: l, in: in, closed: make(chan struct{})}
	pc := paho.ClientConfig{
		ClientID:                   cfg.ClientID,
		Conn:                       conn,
		Session:                    l.sess,
		EnableManualAcknowledgment: true,
		PacketTimeout:              cfg.ConnectTimeout,
		OnClientError:              func(err error) { l.fail(err) },
		OnServerDisconnect: func(d *paho.Disconnect) {
			reason := ""
			if d.Properties != nil {
				reason = d.Properties.ReasonString
			}
			l.fail(fmt.Errorf("upstream sent DISCONNECT, reason code 0x%02x %s", d.ReasonCode, reason))
		},
	}
	if in != nil {
		pc.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			l.receive(pr.Packet)
			return true, nil
		}}
	}
	l.c = paho.NewClient(pc)
	expiry := uint32(cfg.SessionExpiry / time.Second)
	recvMax := uint16(cfg.MaxInflight)
	cp := &paho.Connect{
		ClientID:   cfg.ClientID,
		KeepAlive:  uint16(cfg.Keepalive / time.Second),
		CleanStart: cfg.CleanStart,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry, ReceiveMaximum: &recvMax},
	}
	if cfg.Username != "" {
		cp.Username, cp.UsernameFlag = cfg.Username, true
	}
	if cfg.Password != "" {
		cp.Password, cp.PasswordFlag = []byte(cfg.Password), true
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	ca, err := l.c.Connect(cctx, cp)
	if err != nil {
		_ = conn.Close()
		_ = l.sess.Close()
		if ca != nil && ca.ReasonCode >= 0x80 {
			return nil, &connackError{code: ca.ReasonCode, v5: true}
		}
		return nil, fmt.Errorf("connect: %w", err)
	}
	l.win, l.resumed = cfg.MaxInflight, ca.SessionPresent
	if ca.Properties != nil && ca.Properties.ReceiveMaximum != nil {
		l.win = min(l.win, int(*ca.Properties.ReceiveMaximum))
	}
	l.sess.waiting = make(chan waitingResp, l.win)
	l.wg.Add(1)
	go l.sess.answer()
	wctx, stop := context.WithCancel(context.Background())
	l.stopWatch = stop
	keepalive := cfg.Keepalive
	if ca.Properties != nil && ca.Properties.ServerKeepAlive != nil {
		keepalive = time.Duration(*ca.Properties.ServerKeepAlive) * time.Second // [MQTT-3.2.2-21]
	}
	conn.watch(wctx, keepalive, &l.wg, func() { l.fail(errSilent) })
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		<-l.c.Done()
		if conn.silent.Load() {
			l.fail(errSilent)
		}
		l.fail(errors.New("connection closed"))
	}()
	return l, nil
}

// receive hands a downlink PUBLISH to the bridge; the bridge acknowledges it
// (l.ack) once it is durable locally.
func (l *v5link) receive(p *paho.Publish) {
	m := received{topic: p.Topic, payload: p.Payload, qos: p.QoS, retain: p.Retain, packetID: p.PacketID}
	if pp := p.Properties; pp != nil {
		m.props = &outProps{payloadFormat: pp.PayloadFormat, expiry: pp.MessageExpiry, contentType: pp.ContentType, responseTopic: pp.ResponseTopic, correlationData: pp.CorrelationData}
		for _, u := range pp.User {
			m.props.user = append(m.props.user, [2]string{u.Key, u.Value})
		}
	}
	m.ack = func() {
		if err := l.c.Ack(p); err != nil {
			l.fail(fmt.Errorf("ack downlink message: %w", err))
		}
	}
	l.sess.in.deliver(m)
}

func (l *v5link) window() int { return l.win }

func (l *v5link) sessionPresent() bool { return l.resumed }

func (l *v5link) publish(ctx context.Context, o outbound, f flight, done func(flight, error)) error {
	p := &paho.Publish{Topic: o.topic, Payload: o.payload, QoS: o.qos, Retain: o.retain}
	if pp := o.props; pp != nil {
		p.Properties = &paho.PublishProperties{PayloadFormat: pp.payloadFormat, MessageExpiry: pp.expiry, ContentType: pp.contentType, ResponseTopic: pp.responseTopic, CorrelationData: pp.correlationData}
		for _, u := range pp.user {
			p.Properties.User = append(p.Properties.User, paho.UserProperty{Key: u[0], Value: u[1]})
		}
	}
	l.pubMu.Lock()
	defer l.pubMu.Unlock()
	if o.qos > 0 {
		l.sess.next, l.sess.nextFlight = done, f
	}
	_, err := l.c.PublishWithOptions(ctx, p, paho.PublishOptions{Method: paho.PublishMethod_AsyncSend})
	l.sess.next = nil
	if err != nil && !errors.Is(err, paho.ErrNetworkErrorAfterStored) {
		return err
	}
	return nil
}

func (l *v5link) close() {
	select {
	case <-l.lostCh:
	default:
		_ = l.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	}
	_ = l.conn.Close()
	<-l.c.Done()
	l.stopWatch()
	_ = l.sess.Close() // answers every publish still waiting: done(errLinkLost)
	close(l.sess.closed)
	l.wg.Wait()
	l.fail(errors.New("closed"))
}

// ackSession is paho's in-memory session state with two additions the bridge
// needs: the acknowledgement of each asynchronous publish reaches the
// bridge's callback (paho's AsyncSend drops it), and the PUBREL of a downlink
// QoS 2 message tells the broker the exchange is over [MQTT-4.3.3].
type ackSession struct {
	*state.State
	link *v5link
	in   inbound
	// next and nextFlight are the callback and the flight of the publish
	// being added; under link.pubMu.
	next       func(flight, error)
	nextFlight flight
	// waiting holds the publishes in the order sent, for answer; its
	// capacity is the window. closed is closed once State.Close answered
	// every publish still waiting.
	waiting chan waitingResp
	closed  chan struct{}
}

var _ session.SessionManager = (*ackSession)(nil)

// AddToSession passes the packet to paho's state with a response channel of
// ours, and calls the publish's callback with the outcome.
func (s *ackSession) AddToSession(ctx context.Context, p session.Packet, resp chan<- packets.ControlPacket) error {
	done := s.next
	if done == nil || p.Type() != packets.PUBLISH {
		return s.State.AddToSession(ctx, p, resp)
	}
	ch := make(chan packets.ControlPacket, 1) // State.Close sends without blocking only into a buffer
	if err := s.State.AddToSession(ctx, p, ch); err != nil {
		return err
	}
	s.waiting <- waitingResp{ch: ch, f: s.nextFlight, done: done} // never full: the bridge keeps within the window
	return nil
}

// waitingResp is one publish waiting for the end of its exchange.
type waitingResp struct {
	ch   <-chan packets.ControlPacket
	f    flight
	done func(flight, error)
}

// answer calls each publish's callback with its outcome, in the order they
// were sent: the upstream acknowledges in that order [MQTT-4.6.0-2], so one
// goroutine waiting for the oldest first does for the whole window what a
// goroutine per message did. After State.Close every response channel has
// its answer (the link lost); closed then ends it.
func (s *ackSession) answer() {
	defer s.link.wg.Done()
	for {
		select {
		case w := <-s.waiting:
			w.done(w.f, outcome(<-w.ch))
		case <-s.closed:
			for {
				select {
				case w := <-s.waiting:
					w.done(w.f, outcome(<-w.ch))
				default:
					return
				}
			}
		}
	}
}

// outcome is what the response to a publish means for the bridge.
func outcome(cp packets.ControlPacket) error {
	switch r := cp.Content.(type) {
	case *packets.Puback:
		if r.ReasonCode >= 0x80 {
			return &refusedError{code: r.ReasonCode}
		}
		return nil
	case *packets.Pubcomp:
		if r.ReasonCode >= 0x80 {
			return &refusedError{code: r.ReasonCode}
		}
		return nil
	case *packets.Pubrec: // a PUBREC with a failure ends the exchange [MQTT-4.3.3-4]
		return &refusedError{code: r.ReasonCode}
	default: // the session closed: the connection is gone
		return errLinkLost
	}
}

// PacketReceived tells the broker when a downlink QoS 2 exchange ends: the
// PUBREL came, so the packet id may carry a new message [MQTT-4.3.3-12].
func (s *ackSession) PacketReceived(cp *packets.ControlPacket, pubs chan<- *packets.Publish) error {
	switch r := cp.Content.(type) {
	case *packets.Pubrel:
		if s.in != nil {
			s.in.release(r.PacketID)
		}
	}
	return s.State.PacketReceived(cp, pubs)
}

// connackError is a refused CONNECT.
type connackError struct {
	code byte
	v5   bool
}

func (e *connackError) Error() string {
	what := map[byte]string{
		// MQTT 3.1.1 return codes [MQTT-3.2.2.3].
		1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable",
		4: "bad user name or password", 5: "not authorized",
	}
	if e.v5 {
		what = map[byte]string{ // MQTT 5 reason codes [MQTT-3.2.2.2]
			0x84: "unsupported protocol version", 0x85: "client identifier not valid",
			0x86: "bad user name or password", 0x87: "not authorized", 0x88: "server unavailable",
			0x89: "server busy", 0x8A: "banned", 0x8C: "bad authentication method",
		}
	}
	if s, ok := what[e.code]; ok {
		return fmt.Sprintf("upstream refused the connection: %s (code 0x%02x)", s, e.code)
	}
	return fmt.Sprintf("upstream refused the connection (code 0x%02x)", e.code)
}

// noStoreV5 is a paho.golang session store that keeps nothing, for the
// packets the bridge sends. paho reads it only to resend them when its
// session state sees the next connection, which never happens (a state
// lives as long as one connection); its in-memory store serialized each
// PUBLISH into a buffer of its own (12% of a drain's allocations).
type noStoreV5 struct{}

func (noStoreV5) Put(uint16, byte, io.WriterTo) error { return nil }
func (noStoreV5) Get(uint16) (io.ReadCloser, error) {
	return nil, errors.New("bridge: no stored packet")
}
func (noStoreV5) Delete(uint16) error     { return nil }
func (noStoreV5) Quarantine(uint16) error { return nil }
func (noStoreV5) List() ([]uint16, error) { return nil, nil }
func (noStoreV5) Reset() error            { return nil }
