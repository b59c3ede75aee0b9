package bridge

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// rule is one forward rule and its place in the log. The cursor holds the
// durable position; in memory the rule keeps the messages sent and not yet
// acknowledged, in offset order, so that the position it commits is always
// the oldest of them (or, with none waiting, the next record to read).
type rule struct {
	fwd    Forward
	cursor qos.Cursor

	mu  sync.Mutex // guards what follows
	gen uint64     // the connection the sends belong to
	// pending[head:] are the unacknowledged messages, by offset; the
	// acknowledged front moves head, and the slice is compacted only when
	// head passed half of it, so an acknowledgement costs no copy of the
	// whole window.
	pending   []sent
	head      int
	next      uint64 // every record below it is sent or skipped
	committed uint64 // the cursor's offset

	backlog backlog // the housekeeping goroutine's alone
}

// sent is one message waiting for its acknowledgement.
type sent struct {
	off     uint64
	created int64 // Unix nanoseconds
	acked   bool
}

// restart begins a new connection: what was sent and not acknowledged on the
// last one is sent again, from the oldest. It returns the connection's
// generation, which acknowledgements of older connections do not match.
func (r *rule) restart() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next = r.lowLocked()
	r.pending, r.head = r.pending[:0], 0
	r.gen++
	return r.gen
}

func (r *rule) lowLocked() uint64 {
	if r.head < len(r.pending) {
		return r.pending[r.head].off
	}
	return r.next
}

// low is the offset the cursor may move to: every record before it is done.
func (r *rule) low() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lowLocked()
}

// oldest returns low and the acceptance time of the oldest unacknowledged
// message (0 if none waits in memory).
func (r *rule) oldest() (uint64, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.head < len(r.pending) {
		return r.pending[r.head].off, r.pending[r.head].created
	}
	return r.next, 0
}

// passed records that every record before next is sent or skipped.
func (r *rule) passed(gen, next uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen == r.gen && next > r.next {
		r.next = next
	}
}

// add records a message about to be sent.
func (r *rule) add(gen, off uint64, created int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen != r.gen {
		return
	}
	r.pending = append(r.pending, sent{off: off, created: created})
	r.next = off + 1
}

// ack marks off acknowledged and drops the acknowledged front of pending.
func (r *rule) ack(gen, off uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen != r.gen {
		return
	}
	p := r.pending[r.head:]
	i := 0
	if len(p) == 0 || p[0].off != off {
		// Upstreams acknowledge in order [MQTT-4.6.0-2]; search otherwise.
		i = sort.Search(len(p), func(i int) bool { return p[i].off >= off })
		if i == len(p) || p[i].off != off {
			return
		}
	}
	p[i].acked = true
	for r.head < len(r.pending) && r.pending[r.head].acked {
		r.head++
	}
	switch {
	case r.head == len(r.pending):
		r.pending, r.head = r.pending[:0], 0
	case r.head > len(r.pending)/2:
		r.pending = append(r.pending[:0], r.pending[r.head:]...)
		r.head = 0
	}
}

// forward sends the rules' messages over up, each rule from its position
// on, until ctx ends or the link fails. One reader serves every rule of the
// bridge: each record is read and decoded once, whatever the number of
// rules, and the rules' messages go up in log order. gens are the rules'
// connection generations (rule.restart). At most cap(sem) QoS 1/2 messages
// of all rules wait for acknowledgements at once.
func (b *Bridge) forward(ctx context.Context, up uplink, rules []*rule, gens []uint64, sem chan struct{}) {
	if len(rules) == 0 {
		return
	}
	// Each rule has sent or skipped every record below its from.
	from := make([]uint64, len(rules))
	for i, r := range rules {
		from[i] = r.low()
	}
	rd := b.log.NewReader(slices.Min(from))
	passAll := func(next uint64) {
		for i, r := range rules {
			r.passed(gens[i], next)
		}
	}
	// done takes every acknowledgement of this connection: one function
	// for all, not a closure per message.
	done := func(f flight, err error) {
		<-sem
		b.acked(f, err)
	}
	var m qos.Message // decoded into again for each record: what send keeps (topic, payload) are the record's bytes
	for {
		off, rec, err := rd.Next(ctx)
		if err != nil {
			switch {
			case ctx.Err() != nil, errors.Is(err, qos.ErrLogClosed):
				return
			case errors.Is(err, qos.ErrTrimmed):
				first := b.log.FirstOffset()
				for i := range rules {
					if at := max(from[i], rd.Offset()); first > at {
						b.drop(DropRetention, first-at)
						b.lg.Warn("bridge: the log removed records before they were forwarded", "rule", rules[i].fwd.Filter, "records", first-at)
					}
				}
				rd.Seek(first)
				passAll(first)
			default:
				b.drop(DropBad, 1)
				b.lg.Error("bridge: damaged record skipped", "offset", rd.Offset(), "error", err)
				rd.Seek(rd.Offset() + 1)
				passAll(rd.Offset())
			}
			continue
		}
		ok := b.decode(off, rec, &m)
		for i, r := range rules {
			if off < from[i] {
				continue
			}
			if !ok || !b.takes(r, &m) {
				r.passed(gens[i], off+1)
				continue
			}
			if !b.send(ctx, up, flight{r: r, gen: gens[i], off: off}, &m, sem, done) {
				return
			}
		}
	}
}

// flight is one message of a rule on its way upstream: the rule, the
// connection (generation) it was sent on and its offset, which its
// acknowledgement moves the rule past.
type flight struct {
	r        *rule
	gen, off uint64
}

// send forwards m (at f.off) for rule f.r, or drops it if it expired or is
// older than MaxBacklogAge. It returns false when the link or ctx ended.
func (b *Bridge) send(ctx context.Context, up uplink, f flight, m *qos.Message, sem chan struct{}, done func(flight, error)) bool {
	var now time.Time // only if something needs it: time.Now per message showed in profiles
	if m.Expiry > 0 || b.cfg.MaxBacklogAge > 0 {
		now = time.Now()
	}
	if m.Expiry > 0 && now.Unix() >= m.Expiry {
		b.drop(DropExpired, 1)
		f.r.passed(f.gen, f.off+1)
		return true
	}
	if a := b.cfg.MaxBacklogAge; a > 0 && now.Sub(time.Unix(0, m.Created)) > a {
		b.drop(DropMaxAge, 1)
		f.r.passed(f.gen, f.off+1)
		return true
	}
	o := b.outbound(f.r.fwd, m, now)
	if f.r.fwd.QoS == 0 {
		if err := up.publish(ctx, o, f, nil); err != nil {
			return false
		}
		b.forwarded.Add(1)
		f.r.passed(f.gen, f.off+1)
		return true
	}
	select {
	case sem <- struct{}{}: // room in the window: no select with ctx
	default:
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return false
		}
	}
	f.r.add(f.gen, f.off, m.Created)
	if err := up.publish(ctx, o, f, done); err != nil {
		<-sem
		return false
	}
	return true
}

// acked takes the outcome of one QoS 1/2 publish.
func (b *Bridge) acked(f flight, err error) {
	switch {
	case err == nil:
		b.forwarded.Add(1)
	case isRefused(err):
		// Sending it again would be refused again, and would hold up every
		// message behind it.
		b.drop(DropRefused, 1)
		b.lg.Warn("bridge: upstream refused a message; dropped", "offset", f.off, "error", err)
	default:
		return // the link is gone: sent again on the next one
	}
	f.r.ack(f.gen, f.off)
}

// isRefused reports whether err is an upstream's refusal. A function of its
// own: the target of errors.As escapes to the heap, and in acked it cost an
// allocation per acknowledgement.
func isRefused(err error) bool {
	var refused *refusedError
	return errors.As(err, &refused)
}

// decode decodes the message record rec (at off) into m; false for a
// record of another kind. An undecodable message record is skipped: counted
// (unreadable) and logged, at most once a minute with how many were skipped.
func (b *Bridge) decode(off uint64, rec []byte, m *qos.Message) bool {
	if qos.KindOf(rec) != qos.KindMessage {
		return false
	}
	// The record is ours (LogReader.Next, Log.Read) and nobody writes it:
	// the message's fields are its bytes, not copies.
	if err := m.UnmarshalOwned(rec); err != nil {
		b.drop(DropBad, 1)
		if n, ok := b.badRecords.allow(time.Now()); ok {
			b.lg.Error("bridge: undecodable record skipped", "offset", off, "skipped_since_last_report", n, "error", err)
		}
		return false
	}
	return true
}

// takes reports whether rule r forwards m: a message on a topic its filter
// matches, not one this bridge brought down (a loop).
func (b *Bridge) takes(r *rule, m *qos.Message) bool {
	return m.Origin != b.origin && qos.Match(r.fwd.Filter, m.Topic)
}

// markerKey is the MQTT 5 user property on every message a bridge forwards;
// its value is the bridge's client id. A downlink message carrying the
// bridge's own marker came back from the upstream and is dropped.
const markerKey = "edgemq-bridge"

// outbound is m as the rule sends it upstream.
func (b *Bridge) outbound(f Forward, m *qos.Message, now time.Time) outbound {
	o := outbound{
		topic:   expand(f.Remote, strings.TrimPrefix(m.Topic, f.StripPrefix), m.Origin),
		payload: m.Payload,
		qos:     byte(f.QoS),
		retain:  m.Retain && f.Retain == "keep",
	}
	if b.cfg.Protocol != "5" {
		return o
	}
	p := &outProps{contentType: m.ContentType, responseTopic: m.ResponseTopic, correlationData: m.CorrelationData}
	if m.PayloadFormatFlag {
		pf := m.PayloadFormat
		p.payloadFormat = &pf
	}
	if m.Expiry > 0 {
		// What is left of the expiry interval goes with it [MQTT-3.3.2-6].
		left := uint32(max(m.Expiry-now.Unix(), 1))
		p.expiry = &left
	}
	for _, u := range m.User {
		p.user = append(p.user, [2]string{u.Key, u.Value})
	}
	p.user = append(p.user, [2]string{markerKey, b.cfg.ClientID})
	o.props = p
	return o
}

// expand fills a topic template. It runs for every message: the common
// templates take no work ("{topic}") or one concatenation.
func expand(tmpl, topic, client string) string {
	switch {
	case tmpl == "{topic}":
		return topic
	case !strings.Contains(tmpl, "{"):
		return tmpl
	}
	var b strings.Builder
	b.Grow(len(tmpl) + len(topic))
	for {
		i := strings.IndexByte(tmpl, '{')
		if i < 0 {
			b.WriteString(tmpl)
			return b.String()
		}
		b.WriteString(tmpl[:i])
		switch rest := tmpl[i:]; {
		case strings.HasPrefix(rest, "{topic}"):
			b.WriteString(topic)
			tmpl = rest[len("{topic}"):]
		case strings.HasPrefix(rest, "{client}"):
			b.WriteString(client)
			tmpl = rest[len("{client}"):]
		default:
			b.WriteByte('{')
			tmpl = rest[1:]
		}
	}
}

// housekeeping moves the cursors up to what is acknowledged, every
// commitInterval while something changed: one cursor-table write covers many
// acknowledgements. A crash loses at most the last interval's commits; those
// messages are sent again (at least once). Every accountInterval it also
// counts the backlog (and logs it, reportBacklog) and, while no connection
// serves, trims it to the configured limits.
func (b *Bridge) housekeeping(ctx context.Context) {
	t := time.NewTicker(commitInterval)
	defer t.Stop()
	lastAccount := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if now.Sub(lastAccount) >= accountInterval {
				lastAccount = now
				limits := b.cfg.MaxBacklogAge > 0 || b.cfg.MaxBacklogBytes > 0
				idle := limits && b.serving.TryLock()
				for _, r := range b.rules {
					b.account(r)
					if idle {
						b.trim(r)
					}
				}
				if idle {
					b.serving.Unlock()
				}
				b.storeBacklog()
				b.reportBacklog(now)
			}
			if err := b.commit(); err != nil {
				b.lg.Error("bridge: cursor commit failed", "error", err)
			}
		}
	}
}

const (
	commitInterval  = 20 * time.Millisecond
	accountInterval = 500 * time.Millisecond
)

// commit moves each rule's cursor to its low mark.
func (b *Bridge) commit() error {
	var errs []error
	for _, r := range b.rules {
		low := r.low()
		r.mu.Lock()
		if low <= r.committed {
			r.mu.Unlock()
			continue
		}
		r.mu.Unlock()
		if err := r.cursor.Commit(low); err != nil {
			errs = append(errs, err)
			continue
		}
		r.mu.Lock()
		r.committed = max(r.committed, low)
		r.mu.Unlock()
	}
	return errors.Join(errs...)
}
