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
// Receive Maximum: the window is Config.MaxInflight. paho's store is its
// in-memory one, new for each connection, so paho never resends on its own;
// the bridge resends from its cursors.
type v311link struct {
	c    mqtt.Client
	conn *watchedConn
	win  int

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
	o.SetKeepAlive(cfg.Keepalive)
	o.SetPingTimeout(cfg.Keepalive / 2) // paho's own check: a ping unanswered for half a keepalive
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
		l.conn = newWatchedConn(nc)
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
		return nil, errors.New("connect: no CONNACK in time")
	}
	if err := tok.Error(); err != nil {
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
	wctx, stop := context.WithCancel(context.Background())
	l.stopWatch = stop
	l.conn.watch(wctx, cfg.Keepalive, &l.wg, func() { l.fail(errSilent) })
	return l, nil
}

// subscribe makes the downlink subscriptions and waits for SUBACK.
func (l *v311link) subscribe(ctx context.Context, rules []Downlink) error {
	filters := map[string]byte{}
	for _, r := range rules {
		filters[r.Filter] = max(filters[r.Filter], byte(r.QoS))
	}
	tok := l.c.SubscribeMultiple(filters, nil)
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return ctx.Err()
	case <-l.lostCh:
		return l.cause()
	}
	if err := tok.Error(); err != nil {
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

func (l *v311link) window() int { return l.win }

func (l *v311link) publish(ctx context.Context, o outbound, done func(error)) error {
	tok := l.c.Publish(o.topic, o.qos, o.retain, o.payload)
	if o.qos == 0 {
		select {
		case <-tok.Done():
			return tok.Error()
		case <-l.lostCh:
			return l.cause()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		select {
		case <-tok.Done():
			if err := tok.Error(); err != nil {
				done(errLinkLost)
				return
			}
			done(nil)
		case <-l.lostCh:
			done(errLinkLost)
		}
	}()
	return nil
}

func (l *v311link) close() {
	l.c.Disconnect(100)
	l.stopWatch()
	l.fail(errors.New("closed"))
	l.wg.Wait()
}
