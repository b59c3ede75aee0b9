package qos

import (
	"cmp"
	"errors"
	"slices"
	"sync"
)

// dispatch is the dispatcher: it reads durable records in log order,
// matches each message once against the index and offers it to every
// matching session's queue and shared group; it applies every record to
// the shadow state the checkpoints are made of.
func (e *Engine) dispatch() {
	defer e.wg.Done()
	r := e.log.NewReader(e.dispatched.Load())
	var m matcher
	for {
		off, rec, err := r.Next(e.ctx)
		switch {
		case err == nil:
		case e.ctx.Err() != nil || errors.Is(err, ErrLogClosed):
			return
		case errors.Is(err, ErrTrimmed):
			first := e.log.FirstOffset()
			e.lg.Error("dispatcher: records removed before they were delivered", "from", r.Offset(), "to", first)
			r.Seek(max(first, r.Offset()+1))
			continue
		default: // unreadable: skipped below, as an undecodable one is
			off = r.Offset()
			r.Seek(off + 1)
		}
		// The position moves before the offers (see Queue.CatchUp).
		e.dispatched.Store(off + 1)
		var k Kind
		var v any
		if err == nil {
			k, v, err = decodeOwned(rec)
		}
		if err != nil {
			e.stats.dropUnreadable.Add(1)
			e.lg.Error("dispatcher: record unreadable, skipped", "offset", off, "error", err)
		} else if msg, ok := v.(*Message); ok {
			e.fanout(&m, off, msg)
			e.stats.dispatched.Add(1)
		}
		e.shadowMu.Lock()
		if err == nil {
			e.shadow.ApplyDecoded(off, k, v)
		}
		e.shadowNext = off + 1
		e.shadowMu.Unlock()
		if k != KindCheckpoint {
			e.shadowLive.Store(off + 1)
		}
		e.fannedOutTo(off + 1)
	}
}

// matcher holds one caller's scratch for matching a message: the
// subscriptions it matched and, per session, the merged grant.
type matcher struct {
	subs   []*sub
	grants []sessionGrant
}

// sessionGrant is what one session gets of one message.
type sessionGrant struct {
	s  *session
	en Entry
}

// match fills m.grants (one per session, merged over its matching
// subscriptions) and returns the shared groups matched. The caller holds
// e.idx.mu for reading.
func (e *Engine) match(m *matcher, off uint64, msg *Message, groups []*group) []*group {
	m.subs = e.idx.match(msg.Topic, m.subs[:0])
	m.grants = m.grants[:0]
	for _, sb := range m.subs {
		if off < sb.since && off > 0 {
			continue
		}
		if sb.g != nil {
			if !slices.Contains(groups, sb.g) {
				groups = append(groups, sb.g)
			}
			continue
		}
		if sb.NoLocal && msg.Origin == sb.s.id { // [MQTT-3.8.3-3]
			continue
		}
		m.grants = append(m.grants, sessionGrant{s: sb.s, en: mergeGrant(Entry{Offset: off, Msg: msg}, false, sb, msg)})
	}
	if len(m.grants) > 1 {
		// A session matching several of its subscriptions gets the message
		// once, at the highest QoS, with every identifier [MQTT-3.3.4-2]
		// [MQTT-3.3.4-3].
		slices.SortStableFunc(m.grants, func(a, b sessionGrant) int { return cmp.Compare(a.s.n, b.s.n) })
		out := m.grants[:1]
		for _, g := range m.grants[1:] {
			last := &out[len(out)-1]
			if last.s != g.s {
				out = append(out, g)
				continue
			}
			last.en = mergeGrant(last.en, true, &sub{Subscribe: Subscribe{QoS: g.en.QoS, RetainAsPublished: g.en.Retain}, ids: g.en.IDs}, msg)
		}
		m.grants = out
	}
	return groups
}

// fanout offers a logged message to the queues of the sessions and groups
// it matches, and keeps the retained one.
func (e *Engine) fanout(m *matcher, off uint64, msg *Message) {
	if msg.Retain {
		e.mu.Lock()
		if len(msg.Payload) == 0 {
			delete(e.retained, msg.Topic) // [MQTT-3.3.1-6]
		} else {
			e.retained[msg.Topic] = Retained{Offset: off, Message: *msg}
		}
		e.mu.Unlock()
	}
	var groupBuf [4]*group
	e.idx.mu.RLock()
	groups := e.match(m, off, msg, groupBuf[:0])
	e.idx.mu.RUnlock()
	// Written here, when few sessions want it and nothing else waits for
	// the dispatcher (a message at a time, at a low rate): a sender per
	// delivery would cost a goroutine and a wake-up each. Under load the
	// senders write, in parallel and many messages per write.
	direct := len(m.grants) <= deliverNowFanout && off >= e.log.LastOffset()
	for i := range m.grants {
		g := &m.grants[i]
		// Kicked even when the queue turned the offer down: it overflowed,
		// and the sender reads the log from now on.
		g.s.queue.Offer(g.en)
		if c := g.s.conn.Load(); c != nil {
			if direct {
				c.deliverNow()
			} else {
				c.kick()
			}
		}
		g.en.Msg = nil
	}
	for _, g := range groups {
		g.queue.Offer(Entry{Offset: off, Msg: msg})
		g.kickMembers(nil)
	}
}

// deliverNowFanout is the most sessions a message may match for the
// dispatcher to write it to them itself (deliverNow).
const deliverNowFanout = 4

var matchers = sync.Pool{New: func() any { return new(matcher) }}

// fanoutQoS0 delivers a QoS 0 message that is not logged straight to the
// connections it matches, on the publisher's goroutine: at most once
// [MQTT-4.3.1], dropped (counted) for a connection with QoS0Limit waiting.
// A shared group gives it to one connected member, in turn.
func (e *Engine) fanoutQoS0(msg *Message) {
	m := matchers.Get().(*matcher)
	var groupBuf [4]*group
	e.idx.mu.RLock()
	groups := e.match(m, 0, msg, groupBuf[:0])
	e.idx.mu.RUnlock()
	for i := range m.grants {
		g := &m.grants[i]
		if c := g.s.conn.Load(); c != nil {
			c.offerQoS0(g.en)
		}
		g.en.Msg = nil
	}
	for _, g := range groups {
		g.mu.Lock()
		var pick *session
		var psub *sub
		for s, sb := range g.members { // map order: a cheap rotation
			if s.conn.Load() != nil {
				pick, psub = s, sb
				break
			}
		}
		g.mu.Unlock()
		if pick != nil {
			if c := pick.conn.Load(); c != nil {
				c.offerQoS0(grantShared(Entry{Msg: msg}, psub))
			}
		}
	}
	clear(m.subs)
	matchers.Put(m)
}

// offerQoS0 queues a QoS 0 delivery for the connection.
func (c *connection) offerQoS0(en Entry) {
	en.QoS = 0
	c.s.mu.Lock()
	if c.gone || len(c.qos0) >= c.e.cfg.QoS0Limit {
		c.s.mu.Unlock()
		c.e.stats.dropQoS0.Add(1)
		return
	}
	c.qos0 = append(c.qos0, en)
	c.s.mu.Unlock()
	c.kick()
}

// shadowCopy returns a copy of the shadow state and the offset it stands
// for (every record below it applied), for a checkpoint.
func (e *Engine) shadowCopy() (*State, uint64) {
	e.shadowMu.Lock()
	defer e.shadowMu.Unlock()
	return e.shadow.Clone(), e.shadowNext
}
