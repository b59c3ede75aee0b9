package qos

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
)

// The dispatcher reads durable records in log order, matches each message
// once against the index and offers it to every matching session's queue
// and shared group; it applies every record to the shadow state the
// checkpoints are made of.
//
// Two parties dispatch, one at a time: whoever holds disp.mu. The
// dispatcher goroutine (dispatch) reads while there is something durable
// to read, then parks on disp.wake, not in the log: the log's durability
// event (Engine.durableMoved, on the log's goroutine) either dispatches
// the few records it just made durable itself (dispatchQuiet: the message
// goes from the log's writer straight to a clean subscriber's socket, with
// no goroutine woken in between) or wakes the dispatcher goroutine. Both
// go through dispatchNext, one record at a time from the one reader
// (disp.r), so log order is kept and each record is dispatched once, with
// the same bookkeeping (dispatched, the shadow, fannedOut).
//
// Why no durable record is left undispatched: every record becomes
// durable at a durability event (Log.NotifyDurable), which runs
// dispatchQuiet after the log published the record. dispatchQuiet either
// takes disp.mu and reads on until nothing durable is left (or hands what
// is left to the dispatcher goroutine: owed, and a wake), or finds disp.mu
// held and wakes the dispatcher goroutine. A holder that is the dispatcher
// goroutine then reads again before it parks (the wake waits in the
// channel); one that is another event (a test's log calls them on the
// appender's goroutine) may have read before this record was published,
// and the wake covers that too. A wake too many costs the dispatcher
// goroutine one look.
//
// Why nothing else sees a difference: the reader never waits inside the
// log (Next with a context already done: a reader parked in Next would
// be woken by every batch, which is the hand-off this saves); it is read
// only under disp.mu, so a record trimmed away (ErrTrimmed, the reader
// sent on to FirstOffset) or unreadable is handled once, by whoever
// holds it. A checkpoint copies the shadow under shadowMu, which
// dispatchNext takes for each record on either goroutine, after the
// record's offers and before fannedOut moves, as it always did: the copy
// stands for a prefix of the log whichever goroutine applied it. Close and
// Crash set disp.stopped under disp.mu once the context is cancelled
// (stopDispatch), so no durability event of a log that outlives the
// engine dispatches into a stopped engine (its final checkpoint, its
// connections).

// dispatcher is the dispatching state, all of it under mu but wake.
type dispatcher struct {
	mu sync.Mutex
	r  LogReader
	m  matcher
	// held is a record dispatchQuiet read and left to the dispatcher
	// goroutine (a large fan-out, a retained message, a lock it could not
	// take): that goroutine dispatches it first.
	held struct {
		ok  bool
		off uint64
		k   Kind
		v   any
	}
	// owed is set when dispatchQuiet left records to the dispatcher
	// goroutine and woke it: until that goroutine has run, events leave
	// everything to it. stopped is set by Close (and Crash): no event
	// dispatches any more.
	owed, stopped bool
	// wide is set while messages fan out wider than the log's goroutine
	// takes (a shared group, more than deliverNowFanout sessions, a
	// retained message): the last message dispatched, on either
	// goroutine, says. While it is set the events leave the records to
	// the dispatcher goroutine at once, rather than read and match each
	// only to hand it over (a fan-out to 50 sessions would be matched
	// twice, and the dispatcher's wake wait for the first match). The
	// dispatcher goroutine clears it at the first narrow message.
	wide bool
	// later holds the connections a durability event's records were
	// offered to on the log's goroutine: dispatchQuiet writes to them once
	// all its records are offered (deliverNow), so that a batch of two
	// messages for one connection goes out in one write on that goroutine,
	// where the first one's kick started the connection's sender for it.
	later []*connection
	wake  chan struct{} // capacity 1
	// wakes and parks count the dispatcher goroutine's wakes and parks,
	// for tests: parks is wakes+1 while it is parked or about to.
	wakes, parks atomic.Uint64
}

// signal wakes the dispatcher goroutine (or makes its next park return at
// once).
func (d *dispatcher) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// dispatch is the dispatcher goroutine: it dispatches every durable
// record, then parks until a durability event wakes it.
func (e *Engine) dispatch() {
	defer e.wg.Done()
	d := &e.disp
	for {
		d.mu.Lock()
		d.owed = false
		for e.ctx.Err() == nil && e.pending() && e.dispatchNext(false) {
		}
		d.mu.Unlock()
		d.parks.Add(1)
		select {
		case <-d.wake:
			d.wakes.Add(1)
		case <-e.ctx.Done():
			return
		}
	}
}

// pending reports whether there may be a record to dispatch: one held, or
// the reader not past the log's durable end (it may be at a hole, which
// Next skips). It saves a look into the log that finds nothing. Called
// with disp.mu held.
func (e *Engine) pending() bool {
	return e.disp.held.ok || e.disp.r.Offset() <= e.log.LastOffset()
}

// quietDispatchMax is the most records a durability event dispatches on
// the log's goroutine (dispatchQuiet): as many as a quiet batch of the
// log's holds.
const quietDispatchMax = 4

// dispatchQuiet is the dispatching part of the log's durability event, on
// the log's goroutine (see the top of this file). When the dispatcher
// goroutine is parked with nothing left to do, the log has nothing queued
// behind this batch (Log.Idle) and the batch is at most quietDispatchMax
// records, it dispatches them here: a message with at most
// deliverNowFanout sessions and no shared group, not retained, whose
// clean subscribers' sockets take it at once, goes out on this goroutine
// (deliverNow). Anything else it leaves to the dispatcher goroutine: the
// work here stays small and bounded, since the log's next batch waits for
// it. Like ackNow, it never waits for a lock whose holder may wait for
// the log (a session's, a group's, the index's, the engine's: see
// dispatchNext) nor for a client.
func (e *Engine) dispatchQuiet() {
	d := &e.disp
	if !d.mu.TryLock() {
		d.signal()
		return
	}
	defer d.mu.Unlock()
	if d.stopped || d.owed {
		return // owed: the dispatcher goroutine is woken and reads on
	}
	if last, next := e.log.LastOffset(), d.r.Offset(); next > last {
		return // nothing new (a failed batch, or read already)
	} else if last-next >= quietDispatchMax || d.wide || !e.log.Idle() {
		d.owed = true
		d.signal()
		return
	}
	for range quietDispatchMax {
		if !e.pending() || !e.dispatchNext(true) {
			break
		}
	}
	for i, c := range d.later {
		c.deliverNow(true)
		d.later[i] = nil
	}
	d.later = d.later[:0]
	if e.pending() {
		d.owed = true
		d.signal()
	}
}

// dispatchNext dispatches the next durable record, if there is one, and
// reports whether it did. Called with disp.mu held: by the dispatcher
// goroutine, or with onLog by dispatchQuiet on the log's goroutine. There
// it must not wait for a lock that a goroutine may hold while it waits
// for the log (for room in its queue, which only the log's goroutine
// makes): the index's lock is tried, a retained message (the engine's
// lock) or a shared group's is not dispatched there, and the sessions'
// locks are tried (deliverNow, kickTry); the shadow's lock, the queues'
// and fanMu are only ever held for memory work. A record it does not
// dispatch stays in disp.held for the dispatcher goroutine, and it
// returns false.
func (e *Engine) dispatchNext(onLog bool) bool {
	d := &e.disp
	var off uint64
	var k Kind
	var v any
	var err error
	if d.held.ok {
		off, k, v = d.held.off, d.held.k, d.held.v
		d.held.ok, d.held.v = false, nil
	} else {
		var rec []byte
		off, rec, err = d.r.Next(doneCtx) // never waits: the wake says when to look
		switch {
		case err == nil:
			k, v, err = decodeOwned(rec)
		case errors.Is(err, context.Canceled), errors.Is(err, ErrLogClosed):
			return false // nothing durable left (or nothing ever again)
		case errors.Is(err, ErrTrimmed):
			first := e.log.FirstOffset()
			e.lg.Error("dispatcher: records removed before they were delivered", "from", d.r.Offset(), "to", first)
			d.r.Seek(max(first, d.r.Offset()+1))
			return true
		default: // unreadable: skipped below, as an undecodable one is
			off = d.r.Offset()
			d.r.Seek(off + 1)
		}
	}
	msg, _ := v.(*Message)
	var groupBuf [4]*group
	var groups []*group
	if err == nil && msg != nil {
		if onLog && msg.Retain {
			d.wide = true
		}
		if onLog && (msg.Retain || !e.idx.mu.TryRLock()) {
			d.held.ok, d.held.off, d.held.k, d.held.v = true, off, k, v
			return false
		}
		if !onLog {
			e.idx.mu.RLock()
		}
		groups = e.match(&d.m, off, msg, groupBuf[:0])
		e.idx.mu.RUnlock()
		d.wide = msg.Retain || len(groups) > 0 || len(d.m.grants) > deliverNowFanout
		if onLog && d.wide {
			d.held.ok, d.held.off, d.held.k, d.held.v = true, off, k, v
			return false
		}
	}
	// The position moves before the offers (see Queue.CatchUp). It moves
	// after the match, which a subscription's start does not mind: one
	// that enters the index after the match started at the position read
	// before it moved, at most, as one that entered after the match
	// under the old order (its start read before the move) did.
	e.dispatched.Store(off + 1)
	if err != nil {
		e.stats.dropUnreadable.Add(1)
		e.lg.Error("dispatcher: record unreadable, skipped", "offset", off, "error", err)
	} else if msg != nil {
		e.fanout(&d.m, off, msg, groups, onLog)
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
	return true
}

// stopDispatch ends dispatching on the log's goroutine, for Close and
// Crash (after the engine's context is cancelled): once it returns, no
// durability event dispatches, so nothing touches the shadow or a
// connection of a stopped engine. The dispatcher goroutine sees the
// cancelled context at its next record.
func (e *Engine) stopDispatch() {
	e.disp.mu.Lock()
	e.disp.stopped = true
	e.disp.mu.Unlock()
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

// fanout offers a logged message to the queues of the sessions (m.grants)
// and groups it matched, and keeps the retained one. onLog: on the log's
// goroutine (dispatchQuiet: no group, not retained), where the sessions
// are written to at the end of the event (disp.later).
func (e *Engine) fanout(m *matcher, off uint64, msg *Message, groups []*group, onLog bool) {
	if msg.Retain {
		e.mu.Lock()
		if len(msg.Payload) == 0 {
			delete(e.retained, msg.Topic) // [MQTT-3.3.1-6]
		} else {
			e.retained[msg.Topic] = Retained{Offset: off, Message: *msg}
		}
		e.mu.Unlock()
	}
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
			switch {
			case onLog:
				// Written at the end of the event (dispatchQuiet), with
				// what its later records bring.
				if !slices.Contains(e.disp.later, c) {
					e.disp.later = append(e.disp.later, c)
				}
			case direct:
				c.deliverNow(false)
			default:
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
