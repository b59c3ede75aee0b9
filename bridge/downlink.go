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
	release(packetID uint16)
}

// downlinkIn is a bridge's inbound side for one connection. The MQTT
// library hands it each PUBLISH on the goroutine that reads the connection
// (in order: paho.mqtt.golang with SetOrderMatters(true)); storing one may
// wait for a long time (a full disk), and while that goroutine waits the
// library reads nothing more, not even the PUBACKs of the forward side and
// the PINGRESPs, so the link would stall and be declared dead. deliver
// therefore only queues the message. One goroutine per connection (run)
// takes what queued up, in the order it came, appends it to the log in one
// append (Local.Publish), waits until it is durable and acknowledges each
// message upstream in order [MQTT-4.6.0-2]; what comes meanwhile queues for
// the next append, so one fsync covers a window of messages. One append at
// a time, each durable or failed as a whole, is what keeps the order: a
// message whose write failed is appended again before any message that
// came after it.
type downlinkIn struct {
	b      *Bridge
	ctx    context.Context // ends with the connection: stops the retries
	cancel context.CancelFunc
	queue  chan received // from deliver to run
	wg     sync.WaitGroup
}

// downlinkQueue is the capacity of a connection's downlink queue, and the
// most messages one append takes. The upstream sends no more
// unacknowledged QoS 1/2 messages than its window (our Receive Maximum, or
// its own limit for 3.1.1), and QoS 0 messages do not wait for the disk,
// so it only fills when an upstream overruns the window; deliver then
// waits, as the library itself would.
const downlinkQueue = 1024

func newDownlinkIn(ctx context.Context, b *Bridge) *downlinkIn {
	d := &downlinkIn{b: b, queue: make(chan received, downlinkQueue)}
	d.ctx, d.cancel = context.WithCancel(ctx)
	d.wg.Add(1)
	go d.run()
	return d
}

// stop ends the connection's downlink: what is queued stays unacknowledged
// (the upstream sends it again on the next connection).
func (d *downlinkIn) stop() {
	d.cancel()
	d.wg.Wait()
}

// deliver queues m for run.
func (d *downlinkIn) deliver(m received) {
	select {
	case d.queue <- m:
	case <-d.ctx.Done():
	}
}

// run stores what queued up and acknowledges it, one append at a time,
// until the connection ends.
func (d *downlinkIn) run() {
	defer d.wg.Done()
	batch := make([]received, 0, downlinkQueue)
	msgs := make([]*qos.Message, 0, downlinkQueue)
	for {
		batch, msgs = batch[:0], msgs[:0]
		select {
		case m := <-d.queue:
			batch = append(batch, m)
		case <-d.ctx.Done():
			return
		}
	more:
		for len(batch) < cap(batch) {
			select {
			case m := <-d.queue:
				batch = append(batch, m)
			default:
				break more
			}
		}
		acked := 0
		for i, m := range batch {
			msg := d.b.localMessage(m)
			if msg == nil {
				continue
			}
			if msg.QoS == 0 {
				// On its own: one the log does not keep is delivered at
				// once, and must not be again with a retry of the others.
				if !d.store(msgs) || !d.store([]*qos.Message{msg}) {
					return
				}
				d.ack(batch[acked : i+1])
				acked, msgs = i+1, msgs[:0]
				continue
			}
			msgs = append(msgs, msg)
		}
		if !d.store(msgs) {
			return
		}
		d.ack(batch[acked:])
	}
}

// ack acknowledges ms upstream, in order, once they are stored (or
// dropped): PUBACK, PUBREC, or nothing for QoS 0.
func (d *downlinkIn) ack(ms []received) {
	for _, m := range ms {
		m.ack()
	}
}

// store appends msgs in one append and waits until they are durable, and
// counts them received (none: nothing to do). While
// the broker cannot take them (a full disk, refused up front or failed in
// the write) it tries again every second and acknowledges nothing, so the
// upstream keeps them: the downlink waits, the forward side goes on. It
// returns false when the connection ended first.
func (d *downlinkIn) store(msgs []*qos.Message) bool {
	for len(msgs) > 0 {
		wait, err := d.b.local.Publish(msgs...)
		if err == nil {
			if err = wait(d.ctx); err == nil {
				d.b.received.Add(uint64(len(msgs)))
				return true
			}
		}
		if d.ctx.Err() != nil {
			return false
		}
		d.b.lg.Warn("bridge: downlink messages not stored; retrying", "messages", len(msgs), "error", err)
		if !sleep(d.ctx, time.Second) {
			return false
		}
	}
	return true
}

// localMessage is what the downlink message m becomes in the broker; nil
// for one that is dropped (counted): no rule takes it, or it is one of the
// bridge's own (a loop).
func (b *Bridge) localMessage(m received) *qos.Message {
	rule, ok := b.downlinkRule(m.topic)
	if !ok {
		// The upstream session still holds a subscription no rule has
		// any more (a rule removed while edgemq was down, or one whose
		// UNSUBSCRIBE failed): acknowledged, so that the upstream does not
		// send it again, and counted.
		b.drop(DropNoRule, 1)
		if n, ok := b.noRule.allow(time.Now()); ok {
			b.lg.Warn("bridge: downlink message matches no downlink rule; dropped (a stale upstream subscription?)", "topic", m.topic, "dropped_since_last_report", n)
		}
		return nil
	}
	if m.props != nil && hasMarker(m.props.user, b.cfg.ClientID) {
		b.drop(DropLoop, 1)
		return nil
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
	return msg
}

// release ends a downlink QoS 2 exchange in the broker before paho answers
// the PUBREL with PUBCOMP.
func (d *downlinkIn) release(id uint16) {
	for {
		err := d.b.local.Release(d.ctx, d.b.origin, id)
		if err == nil {
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

// unsubscribe removes upstream subscriptions no downlink rule has any more.
func (l *v5link) unsubscribe(ctx context.Context, filters []string) error {
	ua, err := l.c.Unsubscribe(ctx, &paho.Unsubscribe{Topics: filters})
	if err != nil {
		return fmt.Errorf("unsubscribe: %w", err)
	}
	for i, code := range ua.Reasons {
		// 0x11 No subscription existed: what we wanted [MQTT-3.11.3].
		if code >= 0x80 && i < len(filters) {
			return fmt.Errorf("unsubscribe %q: refused by the upstream (reason code 0x%02x)", filters[i], code)
		}
	}
	return nil
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
