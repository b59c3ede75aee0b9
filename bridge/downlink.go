package bridge

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/edgemq/edgemq/qos"
)

// received is one downlink PUBLISH from the upstream. ack acknowledges it
// (PUBACK, or PUBREC for QoS 2): called only once it is durable locally.
type received struct {
	topic    string
	payload  []byte
	qos      byte
	retain   bool
	packetID uint16
	props    *outProps
	ack      func()
}

// inbound takes what the upstream sends down, on the library's delivery
// goroutine, in the order it came.
type inbound interface {
	deliver(m received)
	// release is a QoS 2 PUBREL; then answers it, once the broker has
	// recorded the end of the exchange.
	release(packetID uint16, then func())
}

// downlinkIn is a bridge's inbound side for one connection. Downlink
// messages are appended to the broker's log in the order they come, without
// waiting; the acker goroutine waits for each to be durable, in that order,
// and only then acknowledges it upstream. So one fsync covers a whole
// window of them (group commit), and the acknowledgements leave in order
// [MQTT-4.6.0-2].
type downlinkIn struct {
	b      *Bridge
	ctx    context.Context // ends with the connection: stops the retries and the acker
	cancel context.CancelFunc
	acks   chan pendingAck // bounded by max_inflight: a full queue holds up the library's delivery
	wg     sync.WaitGroup

	mu      sync.Mutex
	failFn  func(error) // ends the link; nil until the link exists
	failErr error       // a failure before that
}

// pendingAck is an acknowledgement waiting for its record to be durable.
type pendingAck struct {
	wait  func(context.Context) error // nil: nothing to wait for
	ack   func()
	count bool // a message made durable: counted as received
}

func newDownlinkIn(ctx context.Context, b *Bridge) *downlinkIn {
	d := &downlinkIn{b: b, acks: make(chan pendingAck, b.cfg.MaxInflight)}
	d.ctx, d.cancel = context.WithCancel(ctx)
	d.wg.Add(1)
	go d.acker()
	return d
}

// acker acknowledges, in order, what has become durable. If a record will
// not become durable (the log failed), it ends the link: the upstream sends
// what was not acknowledged again on the next one.
func (d *downlinkIn) acker() {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case p := <-d.acks:
			if p.wait != nil {
				if err := p.wait(d.ctx); err != nil {
					if d.ctx.Err() == nil {
						d.b.lg.Error("bridge: downlink message not stored; reconnecting", "error", err)
						d.failLink(fmt.Errorf("downlink message not stored: %w", err))
					}
					return
				}
			}
			if p.count {
				d.b.received.Add(1)
			}
			p.ack()
		}
	}
}

func (d *downlinkIn) enqueue(p pendingAck) {
	select {
	case d.acks <- p:
	case <-d.ctx.Done():
	}
}

// setFail gives the inbound side the link it may end.
func (d *downlinkIn) setFail(fail func(error)) {
	d.mu.Lock()
	d.failFn = fail
	err := d.failErr
	d.mu.Unlock()
	if err != nil {
		fail(err)
	}
}

func (d *downlinkIn) failLink(err error) {
	d.mu.Lock()
	fail := d.failFn
	if fail == nil {
		d.failErr = err
	}
	d.mu.Unlock()
	if fail != nil {
		fail(err)
	}
}

// stop ends the retries and the acker, and waits for it.
func (d *downlinkIn) stop() {
	d.cancel()
	d.wg.Wait()
}

// deliver appends a downlink message to the broker's log and queues its
// acknowledgement. While the broker cannot take it (a full disk), it tries
// again every second and acknowledges nothing, so the upstream keeps it: the
// downlink waits, the forward side goes on.
func (d *downlinkIn) deliver(m received) {
	b := d.b
	rule, ok := b.downlinkRule(m.topic)
	if !ok || (m.props != nil && hasMarker(m.props.user, b.cfg.ClientID)) {
		if ok {
			b.drop(DropLoop, 1)
		}
		d.enqueue(pendingAck{ack: m.ack})
		return
	}
	msg := &qos.Message{
		Topic:   expand(rule.Local, strings.TrimPrefix(m.topic, rule.StripPrefix), ""),
		Payload: m.payload,
		QoS:     m.qos,
		Retain:  m.retain,
		Origin:  b.origin,
		Created: time.Now().UnixNano(),
	}
	if m.qos == 2 {
		msg.OriginPacketID = m.packetID
	}
	if p := m.props; p != nil {
		msg.ContentType, msg.ResponseTopic, msg.CorrelationData = p.contentType, p.responseTopic, p.correlationData
		if p.payloadFormat != nil {
			msg.PayloadFormat, msg.PayloadFormatFlag = *p.payloadFormat, true
		}
		if p.expiry != nil {
			msg.Expiry = time.Now().Unix() + int64(*p.expiry)
		}
		for _, u := range p.user {
			msg.User = append(msg.User, qos.Property{Key: u[0], Value: u[1]})
		}
	}
	for {
		wait, err := b.local.Publish(msg)
		if err == nil {
			d.enqueue(pendingAck{wait: wait, ack: m.ack, count: true})
			return
		}
		b.lg.Warn("bridge: downlink message not stored; retrying", "error", err)
		if !sleep(d.ctx, time.Second) {
			return
		}
	}
}

// release ends a downlink QoS 2 exchange in the broker; then (paho's answer
// to the PUBREL, PUBCOMP) runs only once that is durable.
func (d *downlinkIn) release(id uint16, then func()) {
	for {
		wait, err := d.b.local.Release(d.b.origin, id)
		if err == nil {
			d.enqueue(pendingAck{wait: wait, ack: then})
			return
		}
		d.b.lg.Warn("bridge: downlink release not stored; retrying", "error", err)
		if !sleep(d.ctx, time.Second) {
			return
		}
	}
}

func hasMarker(user [][2]string, client string) bool {
	for _, u := range user {
		if u[0] == markerKey && u[1] == client {
			return true
		}
	}
	return false
}

// downlinkRule returns the first downlink rule whose filter matches topic.
func (b *Bridge) downlinkRule(topic string) (Downlink, bool) {
	for _, r := range b.cfg.Downlink {
		if qos.Match(r.Filter, topic) {
			return r, true
		}
	}
	return Downlink{}, false
}

// subscribe makes the downlink subscriptions with No Local, so the upstream
// does not send back what this connection forwarded [MQTT-3.8.3-3].
func (l *v5link) subscribe(ctx context.Context, rules []Downlink) error {
	s := &paho.Subscribe{}
	for _, r := range rules {
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{Topic: r.Filter, QoS: byte(r.QoS), NoLocal: true})
	}
	sa, err := l.c.Subscribe(ctx, s)
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	for i, code := range sa.Reasons {
		if code >= 0x80 && i < len(rules) {
			return fmt.Errorf("subscribe %q: refused by the upstream (reason code 0x%02x)", rules[i].Filter, code)
		}
	}
	return nil
}
