package qos

import (
	"context"
	"errors"
	"slices"
	"time"
)

// step is one round of the sender: under the session's lock it takes the
// acknowledgements, the resends and the new deliveries the window allows
// (assigning packet ids, recording flights and, for a persistent session,
// logging them: logDeliverLocked), then writes them without the lock. It
// reports whether it found anything to do.
func (c *connection) step() bool {
	s := c.s
	s.mu.Lock()
	if c.gone || c.closing {
		c.acks, c.qos0, c.resend, c.scanR = nil, nil, nil, nil
		s.mu.Unlock()
		return false
	}
	if c.held {
		s.mu.Unlock()
		return false
	}
	c.acksOut = append(c.acksOut[:0], c.acks...)
	c.acks = c.acks[:0]
	c.qos0Out = append(c.qos0Out[:0], c.qos0...)
	clear(c.qos0)
	c.qos0 = c.qos0[:0]
	batch := c.batch[:0]
	n := c.resendsDue()
	for _, pid := range c.resend[:n] {
		batch = append(batch, outgoing{pid: pid, f: s.flights[pid], resend: true})
	}
	c.resend = c.resend[:copy(c.resend, c.resend[n:])]
	for len(s.flights) < c.window {
		en, g, pid, ok := c.next()
		if !ok {
			break
		}
		if pid != 0 { // a shared group's, flight made and logged as it was taken
			batch = append(batch, outgoing{pid: pid, f: s.flights[pid], e: en})
			continue
		}
		o, ok := c.outgoingFor(en, g)
		if !ok {
			continue
		}
		if o.pid != 0 && s.persistent {
			c.logDeliverLocked(&o)
		}
		batch = append(batch, o)
	}
	var scanQ *Queue
	var scanG *group
	var scanSubs []*sub
	if len(s.flights) < c.window {
		scanQ, scanG, scanSubs = c.scanWanted(true)
	}
	s.mu.Unlock()
	c.batch = batch

	if len(c.acksOut) == 0 && len(batch) == 0 && len(c.qos0Out) == 0 && scanQ == nil {
		return false
	}
	for _, a := range c.acksOut {
		if !c.writeAck(a) {
			return c.lostClaim(scanG)
		}
	}
	for i := range batch {
		if !c.writePublish(&batch[i]) {
			return c.lostClaim(scanG)
		}
	}
	for i := range c.qos0Out {
		o := outgoing{e: c.qos0Out[i]}
		if !c.writePublish(&o) {
			return c.lostClaim(scanG)
		}
	}
	clear(c.qos0Out)
	if !c.flush() {
		return c.lostClaim(scanG)
	}
	if scanQ != nil {
		c.scan(scanQ, scanG, scanSubs)
	}
	return true
}

// logDeliverLocked appends the Deliver record of o, a new flight of a
// persistent session, before the session's lock is released: from then
// on the flight is also the next connection's to resend (after a
// takeover, or a disconnect) and its client's to complete, and a record
// appended after that could follow the flight's end (Complete, Release)
// in the log, where a replay takes it for a flight still open: the
// message delivered again after a restart, at QoS 2 too. Every Deliver
// record is appended so, under s.mu, by the session's current connection
// and while its flight is open (relog too), so it precedes the flight's
// end, which only a party that saw the flight under s.mu appends. The
// append may wait for room in the log's queue with the lock held, as
// Pubrec's Release record and a group's Deliver record (takeSharedLocked)
// do: the log's goroutine, the only one that makes room, never waits for
// a session's lock (it tries it: kickTry, writeAcksNow, deliverNow). It
// is the work the sender did after the lock before, so a delivery costs
// nothing more. Called with s.mu held.
func (c *connection) logDeliverLocked(o *outgoing) {
	s := c.s
	rec := c.deliverRecord(o.pid, o.f)
	switch {
	case rec == nil && o.f.qos == 2:
		delete(s.flights, o.pid) // never written without its record [MQTT-4.3.3]
		o.refused = true
		return
	case rec == nil:
		return // sent unlogged, as when the log refuses the record
	case o.f.qos < 2:
		c.e.appendRecord(rec)
		return
	}
	// A QoS 2 PUBLISH is written only once its packet id is durable, or
	// a restart could deliver it again under another [MQTT-4.3.3]: its
	// writer waits for the record (awaitRecord), on this connection or
	// the next one, and appends it again if the log refused it.
	off, err := c.e.appendOne(rec)
	if err != nil {
		c.e.stats.recordFailures.Add(1)
		c.e.lg.Debug("delivery waits: its record is not logged", "client", s.id, "error", err)
		o.f.unlogged = true
	} else {
		o.f.logged = off
	}
	s.flights[o.pid] = o.f
}

// awaitRecord waits until the record of o's stage is durable: for o, an
// open QoS 2 flight of a persistent session, its Deliver record before
// the PUBLISH, the first or a resend on the next connection, and its
// Release record before a resent PUBREL [MQTT-4.3.3] (flight.logged). A
// record not in the log (refused, or its write failed: the offset is a
// hole) is appended again first (relog). It reports whether to write the
// packet (not when the flight ended or passed the stage meanwhile), and
// ok false when the connection or the engine ends first.
func (c *connection) awaitRecord(o *outgoing) (write, ok bool) {
	e := c.e
	for {
		if o.f.unlogged {
			if write, ok := c.relog(o); !write || !ok {
				return write, ok
			}
		}
		if !c.flushBefore(o.f.logged) {
			return false, false
		}
		err := e.log.WaitDurable(e.ctx, o.f.logged)
		if err == nil {
			return true, true
		}
		if e.ctx.Err() != nil {
			return false, false
		}
		o.f.unlogged = true // its write failed: the record again
	}
}

// relog appends the record of o's stage (stageRecord) under the session's
// lock, as logDeliverLocked does, while o's flight is open at that stage
// and this connection the session's (a connection gone leaves it to the
// next one's resend); on a full log it tries again every second, so that
// the sender outlives the episode. It reports as awaitRecord does.
func (c *connection) relog(o *outgoing) (write, ok bool) {
	e, s := c.e, c.s
	for {
		s.mu.Lock()
		f, open := s.flights[o.pid]
		if c.gone || c.closing {
			s.mu.Unlock()
			return false, false
		}
		if !open || f.seq != o.f.seq || f.released != o.f.released {
			s.mu.Unlock()
			return false, true // ended or released meanwhile: nothing to write
		}
		rec := c.stageRecord(o.pid, f)
		if rec == nil {
			delete(s.flights, o.pid) // never written without its record [MQTT-4.3.3]
			s.mu.Unlock()
			return false, true
		}
		off, err := e.appendOne(rec)
		if err == nil {
			f.logged, f.unlogged = off, false
			s.flights[o.pid] = f
			s.mu.Unlock()
			o.f = f
			return true, true
		}
		f.unlogged = true
		s.flights[o.pid] = f
		s.mu.Unlock()
		e.stats.recordFailures.Add(1)
		e.lg.Debug("delivery waits: its record is not logged", "client", s.id, "error", err)
		if !c.flush() {
			return false, false
		}
		select {
		case <-e.ctx.Done():
			return false, false
		case <-time.After(time.Second):
		}
	}
}

// stageRecord is the record of flight f's stage: its Deliver record, or
// once released its Release record.
func (c *connection) stageRecord(pid uint16, f flight) []byte {
	if f.released {
		return EncodeRef(KindRelease, PacketRef{Client: c.s.id, Ref: c.s.ref.Load(), PacketID: pid})
	}
	return c.deliverRecord(pid, f)
}

// lostClaim is lost for a round that claimed g's backlog scan (g nil: no
// claim) and ends before it scans: the claim is given back, or no member
// would read the group's backlog again.
func (c *connection) lostClaim(g *group) bool {
	if g != nil {
		g.mu.Lock()
		g.scanning = false
		g.mu.Unlock()
	}
	return c.lost()
}

// lost marks the connection gone after a write failed (or the engine
// closes): its flights wait for the next connection. What the connection
// kept is written, for a connection that is still there.
func (c *connection) lost() bool {
	c.flush()
	c.s.mu.Lock()
	c.gone = true
	c.s.mu.Unlock()
	return false
}

// deliverable drops messages that expired [MQTT-3.3.2-5] or that the read
// ACL refuses, counted.
func (c *connection) deliverable(m *Message) bool {
	if m == nil {
		return true
	}
	if c.expired(m) {
		c.e.stats.dropExpired.Add(1)
		return false
	}
	if !c.readable(m) {
		c.e.stats.dropDenied.Add(1)
		return false
	}
	return true
}

// wouldDeliver is deliverable without counting a drop.
func (c *connection) wouldDeliver(m *Message) bool {
	return m == nil || (!c.expired(m) && c.readable(m))
}

// expired reports whether m's Message Expiry Interval has passed
// [MQTT-3.3.2-5]. Expiry is the second it was published, truncated, plus
// the interval: the interval has passed for certain only once that
// second is over.
func (c *connection) expired(m *Message) bool { return m.Expiry > 0 && c.e.now() > m.Expiry }

// readable asks the read ACL of the connection's user.
func (c *connection) readable(m *Message) bool {
	return c.info.CanRead == nil || c.info.CanRead(m.Topic)
}

// next takes the next message for the connection: retained messages of a
// SUBSCRIBE whose SUBACK is out, the session's queue, then its shared
// groups in turn. Called with s.mu held.
func (c *connection) next() (en Entry, g *group, pid uint16, ok bool) {
	s := c.s
	if len(c.scanned) > 0 {
		sc := c.scanned[0]
		c.scanned[0] = scanned{}
		c.scanned = c.scanned[1:]
		if sc.g != nil {
			return c.takeShared(sc.Entry, sc.g)
		}
		return sc.Entry, nil, 0, true
	}
	if c.holdRet == 0 && len(s.retained) > 0 {
		en := s.retained[0]
		s.retained[0] = Entry{}
		s.retained = s.retained[1:]
		return en, nil, 0, true
	}
	if en, ok := s.queue.Pop(); ok {
		return en, nil, 0, true
	}
	return c.nextShared()
}

// outgoingFor makes the PUBLISH of en, taken from the session's queue,
// its retained messages or (g) a group: false when it is not delivered
// (expired or denied, counted). A QoS 1/2 one gets its flight. Called
// with s.mu held.
func (c *connection) outgoingFor(en Entry, g *group) (outgoing, bool) {
	if en.drop || !c.deliverable(en.Msg) {
		return outgoing{}, false
	}
	if en.QoS == 0 {
		return outgoing{e: en}, true
	}
	pid, f := c.newFlightLocked(en, g)
	return outgoing{pid: pid, f: f, e: en}, true
}

// newFlightLocked assigns a packet id to a QoS 1/2 delivery and records
// its flight. Called with s.mu held.
func (c *connection) newFlightLocked(en Entry, g *group) (uint16, flight) {
	s := c.s
	pid := s.allocPID()
	s.seq++
	f := flight{offset: en.Offset, seq: s.seq, qos: en.QoS, retain: en.Retain, atSubscribe: en.atSubscribe, ids: en.IDs, group: g, msg: en.Msg}
	s.flights[pid] = f
	return pid, f
}

// takeSharedLocked makes the flight of a message taken from group g and,
// for a persistent session, appends its Deliver record, all under g.mu
// (and under s.mu, before the flight can end: see logDeliverLocked). A
// QoS 2 one is logged for a clean member too: the message is that
// member's alone, also once its session ends with the connection
// [MQTT-4.8.2-5], so that a crash must not hand it out again, to another
// member; and it keeps its record's offset, to be durable before its
// PUBLISH [MQTT-4.3.3]. A QoS 2 record the log refuses (full) stays the
// flight's to append again (relog: once a second, not a sender spinning
// on the full log taking it from the group again and again). It returns
// the flight's packet id, 0 for none. Called with s.mu and g.mu held,
// or, for a scan's find, s.mu alone (it takes g.mu).
func (c *connection) takeSharedLocked(en *Entry, g *group) uint16 {
	s := c.s
	if en.QoS == 0 && c.wouldDeliver(en.Msg) {
		en.drop = !c.handOutZeroLocked(en, g)
		return 0 // the sender's usual path writes it
	}
	if en.QoS == 0 || !c.wouldDeliver(en.Msg) {
		return 0 // the sender's usual path writes or drops it
	}
	pid, f := c.newFlightLocked(*en, g)
	if !s.persistent && f.qos < 2 {
		return pid
	}
	rec := c.deliverRecord(pid, f)
	if rec == nil {
		if f.qos == 2 {
			// Never written without its record, and not given back: it
			// would fail again.
			delete(s.flights, pid)
			return 0
		}
		return pid // sent unlogged, as when the log refuses it
	}
	off, err := c.e.appendOne(rec)
	if err != nil {
		c.e.stats.recordFailures.Add(1)
		if f.qos == 2 {
			f.unlogged = true // written once logged and durable (awaitRecord)
			s.flights[pid] = f
		}
		return pid
	}
	if f.qos == 2 {
		f.logged = off // written once durable [MQTT-4.3.3]
		s.flights[pid] = f
	}
	return pid
}

// groupHandoutAhead is how far past the dispatcher's position a
// GroupHandout record reaches: a group's QoS 0 hand-outs cost one record
// per that many log records, and a crash loses at most the QoS 0
// deliveries of the group's messages among them that were not handed out
// yet (at most once allows it [MQTT-4.3.1]).
const groupHandoutAhead = 1024

// handOutZeroLocked readies en, a message of group g's log going out at
// QoS 0, so that it goes out at most once across a crash [MQTT-4.3.1]:
// unlogged, a restart would hand it out again from the group's backlog.
// It is written only once a GroupHandout record reaching past it is
// durable (en.wait), which one record does for the group's next
// groupHandoutAhead log records; none below what such a record said
// before a restart goes out at QoS 0 again. It reports false when en is
// not handed out (counted): one such, or a record the log refused.
// Called with s.mu and g.mu held.
func (c *connection) handOutZeroLocked(en *Entry, g *group) bool {
	e := c.e
	if en.Offset < g.zeroBelow {
		e.stats.dropAtMostOnce.Add(1) // may have gone out before the restart
		return false
	}
	if g.zeroRec > 0 && en.Offset < g.zeroTop && !e.failedAppend(g.zeroRec) {
		en.wait = g.zeroRec // durable, or on its way
		return true
	}
	top := max(e.dispatched.Load(), en.Offset+1) + groupHandoutAhead
	off, err := e.log.AppendAsync(EncodeGroupHandout(GroupHandout{Group: g.key, Below: top}))
	if err != nil {
		e.stats.recordFailures.Add(1)
		e.stats.dropAtMostOnce.Add(1)
		g.zeroRec, g.zeroTop = 0, 0
		return false
	}
	g.zeroRec, g.zeroTop = off, top
	en.wait = off
	return true
}

// deliverRecord returns the Deliver record of flight f under pid, or nil
// (counted and logged) if it cannot be encoded. A flight is QoS 1 or 2,
// which always encodes: nil is a bug caught, and the caller refuses the
// delivery as it would a record the log refused, except that a QoS 2 one
// is dropped rather than tried again. The record is the connection's
// scratch (recScratch), good until the next call, and the log copies it: a
// delivery to a persistent session costs no allocation for it. Called with
// s.mu held.
func (c *connection) deliverRecord(pid uint16, f flight) []byte {
	d := Deliver{Client: c.s.id, Ref: c.s.ref.Load(), PacketID: pid, Offset: f.offset, QoS: f.qos, Retain: f.retain, AtSubscribe: f.atSubscribe}
	if f.group != nil {
		d.Group = f.group.key
	}
	rec, err := appendDeliver(c.recScratch[:0], &d)
	if err != nil {
		c.e.stats.recordFailures.Add(1)
		c.e.lg.Error("delivery record not encoded: delivery refused", "client", c.s.id, "qos", f.qos, "error", err)
		return nil
	}
	c.recScratch = rec
	return rec
}

// takeShared is takeSharedLocked for an entry already out of the group.
func (c *connection) takeShared(en Entry, g *group) (Entry, *group, uint16, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	pid := c.takeSharedLocked(&en, g)
	return en, g, pid, true
}

// nextShared takes one message from one of the session's groups, round
// robin. Called with s.mu held.
func (c *connection) nextShared() (Entry, *group, uint16, bool) {
	s := c.s
	if s.shared == 0 {
		return Entry{}, nil, 0, false
	}
	var gs []*sub
	for _, sb := range s.subs {
		if sb.g != nil {
			gs = append(gs, sb)
		}
	}
	for i := range gs {
		sb := gs[(s.lastGroups+i)%len(gs)]
		g := sb.g
		g.mu.Lock()
		var en Entry
		ok := false
		if len(g.returned) > 0 {
			en, ok = g.returned[0], true
			g.returned = g.returned[1:]
		} else {
			en, ok = g.queue.Pop()
		}
		if ok && en.Msg == nil {
			// Given back by a flight recovered without its message: its
			// grant is the message's (grantShared), so it is read here,
			// under the locks, once per such flight.
			m, err := c.e.logMessage(en.Offset)
			if err != nil {
				// Not handed out again. A closed log drops nothing: the
				// log still holds the flight's records, which a restart
				// gives back again.
				if !errors.Is(err, ErrLogClosed) {
					c.e.stats.dropUnreadable.Add(1)
					c.e.lg.Error("shared group's message unreadable: not handed out again", "group", g.key, "offset", en.Offset, "error", err)
				}
				ok = false
			}
			en.Msg = m
		}
		if !ok {
			g.mu.Unlock()
			continue
		}
		g.lend(en.Offset)
		s.lastGroups = (s.lastGroups + i + 1) % len(gs)
		en = grantShared(en, sb)
		pid := c.takeSharedLocked(&en, g)
		g.mu.Unlock()
		return en, g, pid, true
	}
	return Entry{}, nil, 0, false
}

// grantShared applies a member's subscription to a group's message (en
// holds it): the lesser of the message's QoS and the subscription's
// [MQTT-3.8.4-8], RETAIN as published only if the member asked for it
// [MQTT-3.3.1-12] [MQTT-3.3.1-13].
func grantShared(en Entry, sb *sub) Entry {
	en.QoS = min(en.Msg.QoS, sb.QoS)
	en.Retain = en.Msg.Retain && sb.RetainAsPublished
	en.IDs = sb.ids
	return en
}

// allocPID returns a packet id no flight of the session holds. The window
// keeps flights far below 65535. Called with s.mu held.
func (s *session) allocPID() uint16 {
	for {
		s.nextPID++
		if s.nextPID == 0 {
			s.nextPID = 1
		}
		if _, used := s.flights[s.nextPID]; !used {
			return s.nextPID
		}
	}
}

// writeAck writes one acknowledgement once its record is durable: a PUBACK
// or PUBREC says the server has accepted ownership of the message
// [MQTT-4.3.2-4] [MQTT-4.3.3-8] (3.1.1: [MQTT-4.3.2-2] [MQTT-4.3.3-2]). A
// record that did not become durable turns it into a refusal (MQTT 5) or
// closes the connection (3.1.1, which has no refusal: [MQTT-3.3.5-2]).
func (c *connection) writeAck(a ack) bool {
	if a.offset > 0 {
		if !c.flushBefore(a.offset) {
			return false
		}
		if err := c.e.log.WaitDurable(c.e.ctx, a.offset); err != nil {
			if c.e.ctx.Err() != nil || c.info.ProtocolVersion < 5 {
				c.conn.Close(reasonUnspecified)
				return false
			}
			// Not on disk (a failed write: the offset is a hole).
			if a.typ == PacketPubrel {
				c.releaseAgain(a)
				return true
			}
			a.reason = reasonImplementationSpecific
			if a.typ == PacketPubrec {
				c.s.mu.Lock()
				delete(c.s.inbound, a.pid) // refused: the id is free again
				c.s.mu.Unlock()
			}
		}
	}
	if a.counts {
		c.inbound.Add(-1) // before the client can read it [MQTT-3.3.4-7]
	}
	c.pkt = Packet{Type: a.typ, PacketID: a.pid, ReasonCode: a.reason}
	return c.write(&c.pkt) == nil
}

// releaseAgain takes a PUBREL whose Release record's write failed off the
// acknowledgements: its flight, released, is resent (c.resend), which
// appends the record again and writes the PUBREL once it is durable
// (awaitRecord), as the next connection's resend would. A PUBREL that
// reached the client before its record could be followed, after a
// restart, by the PUBLISH again [MQTT-4.3.3].
func (c *connection) releaseAgain(a ack) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.flights[a.pid]
	if !ok || !f.released || f.logged != a.offset || c.gone {
		return // ended meanwhile, or the next connection's to resend
	}
	f.unlogged = true
	s.flights[a.pid] = f
	if !slices.Contains(c.resend, a.pid) {
		c.resend = append(c.resend, a.pid)
	}
}

// markWritten marks o, a shared group's QoS 2 flight whose PUBLISH is
// about to be written, written (flight.written), and reports whether it
// is still this connection's to write: not when the member went away
// meanwhile and gave it back to the group, for another member, who
// would get it too. Takes the session's lock.
func (c *connection) markWritten(o *outgoing) bool {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.flights[o.pid]
	if !ok || f.seq != o.f.seq || c.gone {
		return false
	}
	if !f.written {
		f.written = true
		s.flights[o.pid] = f
	}
	o.f.written = true
	return true
}

// writePublish writes one PUBLISH (or, for a released QoS 2 flight, its
// PUBREL). A packet too large for the client is dropped, counted, and its
// flight freed, so the next message flows.
func (c *connection) writePublish(o *outgoing) bool {
	e, s := c.e, c.s
	if o.refused {
		return true
	}
	if o.f.qos == 2 && (o.f.logged > 0 || o.f.unlogged) {
		if write, ok := c.awaitRecord(o); !ok {
			return false // the flight waits for the next connection
		} else if !write {
			return true
		}
	}
	if o.f.group != nil && o.f.qos == 2 && !o.f.released && !c.markWritten(o) {
		return true // given back to its group meanwhile (givenBack)
	}
	if o.resend && o.f.released {
		c.pkt = Packet{Type: PacketPubrel, PacketID: o.pid}
		return c.write(&c.pkt) == nil
	}
	if o.f.qos == 0 && o.e.wait > 0 {
		// A shared group's QoS 0 hand-out: once its GroupHandout record
		// is durable, or not at all (at most once [MQTT-4.3.1]).
		if !c.flushBefore(o.e.wait) {
			return false
		}
		if err := e.log.WaitDurable(e.ctx, o.e.wait); err != nil {
			if e.ctx.Err() != nil {
				return false
			}
			e.stats.dropAtMostOnce.Add(1)
			return true
		}
	}
	m := o.e.Msg
	q, retain, ids := o.e.QoS, o.e.Retain, o.e.IDs
	if o.f.qos > 0 {
		m, q, retain, ids = o.f.msg, o.f.qos, o.f.retain, o.f.ids
	}
	if m == nil && c.onLog {
		c.busy = true // read and dropped under the session's lock: the sender's
		return true
	}
	if m == nil {
		var err error
		if m, err = e.readMessage(o.f.offset); err != nil {
			e.stats.dropUnreadable.Add(1)
			c.dropFlight(o.pid)
			return true
		}
		s.mu.Lock()
		if f, ok := s.flights[o.pid]; ok && f.seq == o.f.seq {
			f.msg = m
			if f.ids == nil {
				f.ids = s.idsFor(m.Topic)
			}
			ids = f.ids
			s.flights[o.pid] = f
		}
		s.mu.Unlock()
	}
	if o.resend {
		switch {
		case c.expired(m):
			e.stats.dropExpired.Add(1)
			c.dropFlight(o.pid)
			return true
		case !c.readable(m):
			// This connection's user may not read it: the session keeps
			// it for a connection that may (a takeover by another user).
			e.stats.dropDenied.Add(1)
			return true
		}
	}
	c.pkt = Packet{Type: PacketPublish, PacketID: o.pid, Message: m, QoS: q, Dup: o.resend, Retain: retain, SubscriptionIDs: ids}
	if c.info.TopicAliasMaximum > 0 {
		c.pkt.TopicAlias, c.pkt.AliasOnly = c.alias(m.Topic)
	}
	err := c.write(&c.pkt)
	switch {
	case err == nil:
		e.stats.delivered[q].Add(1)
		if o.resend {
			e.stats.redelivers.Add(1)
		}
		return true
	case errors.Is(err, errBusy) || (c.onLog && errors.Is(err, ErrTooLarge)):
		// Not written: the sender writes it (pending), with the alias
		// assigned again in wire order. On the log's goroutine a packet
		// too large is the sender's too: dropping its flight takes the
		// session's lock.
		if c.pkt.TopicAlias > 0 && !c.pkt.AliasOnly {
			delete(c.aliases, m.Topic)
			c.nextAlias--
		}
		c.busy = true
		return true
	case errors.Is(err, ErrTooLarge):
		e.stats.dropTooLarge.Add(1)
		if c.pkt.TopicAlias > 0 && !c.pkt.AliasOnly {
			delete(c.aliases, m.Topic) // never reached the client
		}
		if o.f.qos > 0 {
			c.dropFlight(o.pid)
		}
		return true
	}
	return false
}

// write writes p through the connection, which may keep it until flush.
// For deliverNow and ackNow (direct) it does not wait: errBusy says the
// connection took nothing, another write holding it.
func (c *connection) write(p *Packet) error {
	var err error
	if c.direct {
		var ok bool
		if ok, err = c.conn.WriteNow(p); err == nil && !ok {
			return errBusy
		}
	} else {
		err = c.conn.Write(p)
	}
	if err == nil {
		c.unflushed = true
	}
	return err
}

// errBusy is write's "not now" for direct writes.
var errBusy = errors.New("qos: connection busy")

// flush writes what the connection kept since the last flush: a round's
// packets leave in one write. It reports false when the connection is gone.
// For ackNow (direct) it does not wait: what the socket did not take stays
// kept (unflushed) for the sender.
func (c *connection) flush() bool {
	if !c.unflushed {
		return true
	}
	if c.direct {
		all, err := c.conn.FlushNow()
		c.unflushed = !all
		return err == nil
	}
	c.unflushed = false
	return c.conn.Flush() == nil
}

// flushBefore flushes when the record at offset is not durable yet, so
// that the packets kept do not wait for its fsync. It reports false when
// the connection is gone.
func (c *connection) flushBefore(offset uint64) bool {
	if !c.unflushed || offset <= c.e.log.LastOffset() {
		return true
	}
	return c.flush()
}

// dropFlight frees a flight whose message cannot be delivered.
func (c *connection) dropFlight(pid uint16) {
	s := c.s
	s.mu.Lock()
	_, ok := s.flights[pid]
	delete(s.flights, pid)
	persistent := s.persistent
	s.mu.Unlock()
	if ok && persistent {
		c.e.appendRef(KindComplete, PacketRef{Client: s.id, Ref: s.ref.Load(), PacketID: pid})
	}
}

// alias returns the outbound topic alias for topic [MQTT-3.3.2-7]:
// assigned in the order PUBLISH packets reach the wire, one per topic
// while aliases last; only is true when the client already knows it.
func (c *connection) alias(topic string) (a uint16, only bool) {
	if a, ok := c.aliases[topic]; ok {
		return a, true
	}
	if c.nextAlias >= c.info.TopicAliasMaximum {
		return 0, false
	}
	if c.aliases == nil {
		c.aliases = map[string]uint16{}
	}
	c.nextAlias++
	c.aliases[topic] = c.nextAlias
	return c.nextAlias, false
}

// readMessage reads and decodes the message at offset, or finds it among
// the retained messages (it outlives its record). It takes Engine.mu.
func (e *Engine) readMessage(offset uint64) (*Message, error) {
	m, err := e.logMessage(offset)
	if errors.Is(err, ErrBadRecord) {
		return nil, err
	}
	if err != nil {
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, r := range e.retained {
			if r.Offset == offset {
				return &r.Message, nil
			}
		}
		return nil, err
	}
	return m, nil
}

// logMessage reads and decodes the message at offset from the log alone;
// it takes no lock of the engine's.
func (e *Engine) logMessage(offset uint64) (*Message, error) {
	rec, err := e.log.Read(offset)
	if err != nil {
		return nil, err
	}
	m := new(Message)
	if err := m.UnmarshalOwned(rec); err != nil {
		return nil, err
	}
	return m, nil
}

// idsFor returns the identifiers of the session's own subscriptions that
// match topic, for a message resent after a restart [MQTT-3.3.4-3].
// Called with s.mu held.
func (s *session) idsFor(topic string) []int {
	var ids []int
	for _, sb := range s.subs {
		_, inner := SplitShared(sb.Filter)
		if sb.Identifier > 0 && Match(inner, topic) {
			ids = append(ids, sb.Identifier)
		}
	}
	return ids
}

// hasWork reports whether a step would find anything to do.
func (c *connection) hasWork() bool {
	w, _ := c.work()
	return w != workNone
}

// What a step would find (work).
const (
	workNone     = iota
	workNow      // something to write now
	workAckLater // only acknowledgements, the first one's record not durable yet
)

// work says what a step would find to do and, for workAckLater, the
// offset the first acknowledgement waits for.
func (c *connection) work() (int, uint64) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return c.workLocked()
}

// workLocked is work with s.mu held.
func (c *connection) workLocked() (int, uint64) {
	if c.gone || c.closing || c.held {
		return workNone, 0
	}
	if c.resendsDue() > 0 || len(c.qos0) > 0 {
		return workNow, 0
	}
	if len(c.acks) > 0 {
		if off := c.acks[0].offset; off > 0 && !c.e.resolved(off) && !c.wantsWindow() {
			return workAckLater, off
		}
		return workNow, 0
	}
	if c.wantsWindow() {
		return workNow, 0
	}
	return workNone, 0
}

// resendsDue drops from c.resend the flights acknowledged meanwhile and
// returns how many of the rest, from the front, the window takes now. A
// flight written again counts against the client's Receive Maximum as
// its first send did [MQTT-3.3.4-9] (the window of this connection,
// which may be smaller than the last one's); those not written again
// yet hold their places in s.flights, so no new delivery overtakes them
// [MQTT-4.6.0-1]. Called with s.mu held.
func (c *connection) resendsDue() int {
	s := c.s
	if len(c.resend) == 0 {
		return 0
	}
	c.resend = slices.DeleteFunc(c.resend, func(pid uint16) bool {
		_, ok := s.flights[pid]
		return !ok
	})
	onWire := len(s.flights) - len(c.resend)
	return max(0, min(len(c.resend), c.window-onWire))
}

// wantsWindow reports whether there are deliveries to take within the
// window. Called with s.mu held.
func (c *connection) wantsWindow() bool {
	s := c.s
	if len(s.flights) >= c.window {
		return false
	}
	if len(c.scanned) > 0 {
		return true
	}
	if (c.holdRet == 0 && len(s.retained) > 0) || s.queue.Len() > 0 {
		return true
	}
	if s.shared > 0 {
		for _, sb := range s.subs {
			if g := sb.g; g != nil {
				g.mu.Lock()
				n := len(g.returned) + g.queue.Len()
				g.mu.Unlock()
				if n > 0 {
					return true
				}
			}
		}
	}
	q, _, _ := c.scanWanted(false)
	return q != nil
}

// scanBatch is the most messages one scan round collects.
const scanBatch = 64

// scanWanted returns the queue the sender must read the log for: the
// session's own (with its subscriptions) or, when that one is caught up, a
// group's no other member is scanning, which claim marks as this member's
// to scan (the step that scans it clears the mark, lostClaim when the
// step ends before its scan; hasWork, which only
// asks, must not set it, or the group waits for a scan nobody runs).
// Called with s.mu held.
func (c *connection) scanWanted(claim bool) (*Queue, *group, []*sub) {
	s, end := c.s, c.e.dispatched.Load
	if len(c.scanned) > 0 {
		return nil, nil, nil
	}
	if _, ok := s.queue.Scan(); ok && !s.queue.CatchUp(end) {
		var subs []*sub
		for _, sb := range s.subs {
			if sb.g == nil {
				subs = append(subs, sb)
			}
		}
		return s.queue, nil, subs
	}
	if s.shared == 0 {
		return nil, nil, nil
	}
	for _, sb := range s.subs {
		g := sb.g
		if g == nil {
			continue
		}
		g.mu.Lock()
		if !g.scanning && len(g.returned) == 0 {
			if _, ok := g.queue.Scan(); ok && !g.queue.CatchUp(end) {
				g.scanning = claim
				g.mu.Unlock()
				return g.queue, g, []*sub{sb}
			}
		}
		g.mu.Unlock()
	}
	return nil, nil, nil
}

// scan reads q's backlog from the log, up to what the dispatcher has
// offered, and keeps what matches for the next step. For a group it also
// takes the member's grant.
func (c *connection) scan(q *Queue, g *group, subs []*sub) {
	e, s := c.e, c.s
	from, _ := q.Scan()
	end := e.dispatched.Load()
	var skip map[uint64]bool // what members took of a recovered backlog
	if g != nil {
		g.mu.Lock()
		skip = g.skip
		g.mu.Unlock()
	}
	var found []Entry
	r := c.scanReader(from)
	off := from // where the next round begins: every offset before it was looked at
read:
	for off < end && len(found) < scanBatch {
		at, rec, err := r.Next(doneCtx) // never waits: below end every record is durable
		switch {
		case errors.Is(err, context.Canceled): // only holes up to the log's end
			off = min(r.Offset(), end)
			break read
		case errors.Is(err, ErrLogClosed):
			// Nothing more can be read, nor dropped: the round ends at the
			// dispatcher's position, counting nothing (no checkpoint can
			// record it, its record cannot be appended either; a restart
			// reads the backlog from the log again).
			off = end
			break read
		case errors.Is(err, ErrTrimmed):
			e.stats.dropUnreadable.Add(1)
			r.Seek(max(r.Offset(), e.log.FirstOffset()))
			off = r.Offset()
			continue
		case err != nil:
			e.stats.dropUnreadable.Add(1)
			e.lg.Error("backlog record unreadable: skipped", "offset", r.Offset(), "error", err)
			r.Seek(r.Offset() + 1)
			off = r.Offset()
			continue
		}
		if at >= end { // past what the dispatcher offered: the next round reads it again
			off = end
			break
		}
		off = at + 1
		if KindOf(rec) != KindMessage {
			continue
		}
		// Matched on the record's head first: only a message the scan
		// keeps is decoded (its Message, its properties), the one
		// allocation of the scan besides the record's (BenchmarkBacklogScan).
		h, ok := PeekMessage(rec)
		if !ok {
			e.stats.dropUnreadable.Add(1)
			continue
		}
		topic, origin := h.strings()
		if g != nil {
			if at < g.since || skip[at] || !Match(g.filter, topic) {
				continue
			}
		} else if !slices.ContainsFunc(subs, func(sb *sub) bool { return sb.wants(at, topic, origin, s.id) }) {
			continue
		}
		m := new(Message)
		if err := m.UnmarshalOwned(rec); err != nil {
			e.stats.dropUnreadable.Add(1)
			continue
		}
		if g != nil {
			found = append(found, grantShared(Entry{Offset: at, Msg: m}, subs[0]))
		} else if en, ok := grant(at, m, s.id, subs); ok {
			found = append(found, en)
		}
	}
	// The position moves past what was read in one step with the finds
	// becoming the connection's, under the session's lock: a checkpoint's
	// floor sees them in one place or the other. A connection gone
	// meanwhile (taken over, disconnected) moves nothing and drops its
	// finds: the next connection's scan reads them again from the same
	// position. Its own queue's may have begun already, concurrently with
	// this one (only a group's scans are one at a time), and delivered
	// them: giving them back behind it would deliver them twice.
	s.mu.Lock()
	defer s.mu.Unlock()
	if g != nil {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.scanning = false
	}
	if c.gone || off >= e.dispatched.Load() {
		c.scanR = nil // the scan is over, or the next round starts it again
	}
	if c.gone {
		return
	}
	if g != nil && skip != nil && off > g.skipTop {
		g.skip = nil // the scans are past it
	}
	if off > from {
		q.Scanned(off - 1)
	}
	for i := range found {
		c.scanned = append(c.scanned, scanned{Entry: found[i], g: g})
		if g != nil {
			g.lend(found[i].Offset)
		}
	}
}

// scanReader returns the connection's reader of the log for a scan,
// positioned at from (a round that ended on a record past the
// dispatcher's position, or a scan of another queue, moved it). The
// sender's own.
func (c *connection) scanReader(from uint64) LogReader {
	if c.scanR == nil {
		c.scanR = c.e.log.NewReader(from)
	} else if c.scanR.Offset() != from {
		c.scanR.Seek(from)
	}
	return c.scanR
}

// scanned is a message a scan found for the connection.
type scanned struct {
	Entry
	g *group
}

// grant matches a message against one session's own subscriptions (for a
// scan of its backlog; the dispatcher does the same from the index): the
// highest QoS of those it matches, every identifier, RETAIN if one asked
// for Retain As Published; none with No Local for its own messages
// [MQTT-3.8.3-3].
func grant(off uint64, m *Message, client string, subs []*sub) (Entry, bool) {
	en := Entry{Offset: off, Msg: m}
	ok := false
	for _, sb := range subs {
		if !sb.wants(off, m.Topic, m.Origin, client) {
			continue
		}
		en = mergeGrant(en, ok, sb, m)
		ok = true
	}
	return en, ok
}

// wants reports whether sb, a session's own subscription, matches the
// message at off on topic from origin, for the session of client: logged
// after it began, its filter matching, not its own with No Local
// [MQTT-3.8.3-3].
func (sb *sub) wants(off uint64, topic, origin, client string) bool {
	return off >= sb.since && Match(sb.Filter, topic) && !(sb.NoLocal && origin == client)
}

// mergeGrant adds one more matching subscription to a delivery.
func mergeGrant(en Entry, had bool, sb *sub, m *Message) Entry {
	q := min(m.QoS, sb.QoS)
	rap := m.Retain && sb.RetainAsPublished
	if !had {
		en.QoS, en.Retain, en.IDs = q, rap, sb.ids
		return en
	}
	en.QoS = max(en.QoS, q)
	en.Retain = en.Retain || rap
	if len(sb.ids) > 0 {
		en.IDs = append(append([]int(nil), en.IDs...), sb.ids...)
	}
	return en
}
