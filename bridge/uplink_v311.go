package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// v311link is an MQTT 3.1.1 uplink over paho.mqtt.golang. 3.1.1 has no
// Receive Maximum: the window is Config.MaxInflight. paho keeps no store
// (noStore), so it never resends on its own; the bridge resends from its
// cursors.
type v311link struct {
	c    mqtt.Client
	conn *watchedConn
	win  int
	// resumed is the CONNACK's Session Present [MQTT-3.2.2-2].
	resumed bool

	// acks holds the tokens of the QoS 1/2 publishes in the order sent;
	// waitAcks answers each one's done. Its capacity is the window: the
	// bridge never has more waiting.
	acks     chan waitingAck
	stopAcks chan struct{} // closed by close: no more publishes come

	stopWatch context.CancelFunc
	wg        sync.WaitGroup
	linkState
}

// dialV311 connects to addr and returns the link once CONNACK accepted it.
func dialV311(ctx context.Context, d dialer, addr string, in inbound) (*v311link, error) {
	cfg := d.cfg
	l := &v311link{linkState: newLinkState(), win: cfg.MaxInflight}
	var dialErr error
	o := mqtt.NewClientOptions()
	o.AddBroker(addr)
	o.SetClientID(cfg.ClientID)
	o.SetUsername(cfg.Username)
	o.SetPassword(cfg.Password)
	o.SetCleanSession(cfg.CleanStart)
	o.SetStore(noStore{})
	o.SetKeepAlive(cfg.Keepalive)
	// paho's own check (a PINGRESP missing a keepalive after the PINGREQ,
	// which goes out at the latest a keepalive after the last packet read,
	// checked every quarter keepalive) comes after
	// the watchdog's (1.5 keepalives after the last read), which names the
	// cause; half a keepalive raced it.
	o.SetPingTimeout(cfg.Keepalive)
	o.SetConnectTimeout(cfg.ConnectTimeout)
	o.SetWriteTimeout(cfg.Keepalive)
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetResumeSubs(false)
	o.SetOrderMatters(true) // downlink messages reach the broker in the order they came
	o.SetAutoAckDisabled(true)
	o.SetProtocolVersion(4)
	o.SetCustomOpenConnectionFn(func(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
		nc, err := d.dial(ctx, addr)
		if err != nil {
			dialErr = err
			return nil, err
		}
		l.conn = newWatchedConn(nc, cfg.Keepalive)
		return l.conn, nil
	})
	o.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		if l.conn != nil && l.conn.silent.Load() {
			err = errSilent
		}
		l.fail(err)
	})
	if in != nil {
		o.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			in.deliver(received{topic: m.Topic(), payload: m.Payload(), qos: m.Qos(), retain: m.Retained(), packetID: m.MessageID(), ack: m.Ack})
		})
	}
	l.c = mqtt.NewClient(o)
	tok := l.c.Connect()
	if !tok.WaitTimeout(cfg.ConnectTimeout + time.Second) {
		l.c.Disconnect(0)
		l.closeConn()
		return nil, errors.New("connect: no CONNACK in time")
	}
	if err := tok.Error(); err != nil {
		l.closeConn()
		if dialErr != nil {
			return nil, dialErr
		}
		var code byte
		switch {
		case errors.Is(err, packets.ErrorRefusedBadProtocolVersion):
			code = 1
		case errors.Is(err, packets.ErrorRefusedIDRejected):
			code = 2
		case errors.Is(err, packets.ErrorRefusedServerUnavailable):
			code = 3
		case errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword):
			code = 4
		case errors.Is(err, packets.ErrorRefusedNotAuthorised):
			code = 5
		}
		if code != 0 {
			return nil, &connackError{code: code}
		}
		return nil, fmt.Errorf("connect: %w", err)
	}
	if ct, ok := tok.(*mqtt.ConnectToken); ok {
		l.resumed = ct.SessionPresent()
	}
	wctx, stop := context.WithCancel(context.Background())
	l.stopWatch = stop
	l.conn.watch(wctx, cfg.Keepalive, &l.wg, func() { l.fail(errSilent) })
	l.acks, l.stopAcks = make(chan waitingAck, l.win), make(chan struct{})
	l.wg.Add(1)
	go l.waitAcks()
	return l, nil
}

// closeConn closes the connection paho opened (and stops its writer), if
// it opened one: a refused CONNECT.
func (l *v311link) closeConn() {
	if l.conn != nil {
		_ = l.conn.Close()
	}
}

// subscribe makes the downlink subscriptions and waits for SUBACK.
func (l *v311link) subscribe(ctx context.Context, rules []Downlink) error {
	filters := map[string]byte{}
	for _, r := range rules {
		filters[r.Filter] = max(filters[r.Filter], byte(r.QoS))
	}
	tok := l.c.SubscribeMultiple(filters, nil)
	if err := l.wait(ctx, tok); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for f, code := range st.Result() {
			if code == 0x80 { // failure [MQTT-3.9.3]
				return fmt.Errorf("subscribe %q: refused by the upstream", f)
			}
		}
	}
	return nil
}

// unsubscribe removes upstream subscriptions no downlink rule has any more,
// and waits for UNSUBACK.
func (l *v311link) unsubscribe(ctx context.Context, filters []string) error {
	if err := l.wait(ctx, l.c.Unsubscribe(filters...)); err != nil {
		return fmt.Errorf("unsubscribe: %w", err)
	}
	return nil
}

// wait waits for tok's answer, the end of ctx or the loss of the link,
// whichever comes first, and returns the token's error or the cause.
func (l *v311link) wait(ctx context.Context, tok mqtt.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-l.lostCh:
		return l.cause()
	}
}

func (l *v311link) window() int { return l.win }

func (l *v311link) sessionPresent() bool { return l.resumed }

func (l *v311link) publish(ctx context.Context, o outbound, f flight, done func(flight, error)) error {
	tok := l.c.Publish(o.topic, o.qos, o.retain, o.payload)
	if o.qos == 0 {
		return l.wait(ctx, tok)
	}
	a := waitingAck{tok: tok, f: f, done: done}
	select {
	case l.acks <- a: // the common case, without a select over two channels
		return nil
	default:
	}
	select {
	case l.acks <- a:
		return nil
	case <-l.lostCh:
		return l.cause()
	}
}

// waitingAck is one QoS 1/2 publish waiting for its acknowledgement.
type waitingAck struct {
	tok  mqtt.Token
	f    flight
	done func(flight, error)
}

// waitAcks calls done for each publish, in the order they were sent: the
// upstream acknowledges in that order [MQTT-4.6.0-2], so waiting for the
// oldest first costs nothing, and one goroutine does for the whole window
// what a goroutine per message did. Once the link is lost every publish
// still waiting, and every one that comes until close, gets errLinkLost.
func (l *v311link) waitAcks() {
	defer l.wg.Done()
	for {
		a, ok := l.nextAck()
		if !ok {
			break
		}
		if !l.waitAck(a.tok) {
			a.done(a.f, errLinkLost)
			break
		}
		if a.tok.Error() != nil {
			a.done(a.f, errLinkLost)
		} else {
			a.done(a.f, nil)
		}
	}
	for {
		select {
		case a := <-l.acks:
			a.done(a.f, errLinkLost)
		case <-l.stopAcks:
			for {
				select {
				case a := <-l.acks:
					a.done(a.f, errLinkLost)
				default:
					return
				}
			}
		}
	}
}

// nextAck returns the next publish to wait for; false once the link is
// lost. The first, non-blocking receive is the common case while messages
// flow, and costs no select over two channels: in profiles of a drain the
// selects of this goroutine took 5% of the CPU.
func (l *v311link) nextAck() (waitingAck, bool) {
	select {
	case a := <-l.acks:
		return a, true
	default:
	}
	select {
	case a := <-l.acks:
		return a, true
	case <-l.lostCh:
		return waitingAck{}, false
	}
}

// waitAck waits for tok to complete; false if the link was lost first.
func (l *v311link) waitAck(tok mqtt.Token) bool {
	done := tok.Done()
	select {
	case <-done:
		return true
	default:
	}
	select {
	case <-done:
		return true
	case <-l.lostCh:
		return false
	}
}

func (l *v311link) close() {
	l.c.Disconnect(100)
	l.closeConn()
	l.stopWatch()
	l.fail(errors.New("closed"))
	close(l.stopAcks)
	l.wg.Wait()
}

// noStore is a paho.mqtt.golang store that keeps nothing. paho reads its
// store only to resend after a reconnect (resume), which the bridge never
// lets it do: it resends from its cursors on a new client. Its in-memory
// store cost a map insert and delete, with their key strings, per message.
type noStore struct{}

func (noStore) Open()                             {}
func (noStore) Put(string, packets.ControlPacket) {}
func (noStore) Get(string) packets.ControlPacket  { return nil }
func (noStore) All() []string                     { return nil }
func (noStore) Del(string)                        {}
func (noStore) Close()                            {}
func (noStore) Reset()                            {}
