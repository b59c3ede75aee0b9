package qos

import (
	"errors"
	"sync/atomic"
	"time"
)

// connection is one network connection of a session. Its sender is a
// goroutine that runs only while the connection has something to write
// (kick starts it); the fields under "s.mu" are the session's lock's.
type connection struct {
	e      *Engine
	s      *session
	conn   Conn
	info   ConnectInfo
	window int // outbound QoS 1/2 window: min(client Receive Maximum, MaxInflight)
	// sender is run, as the goroutine Engine.startSender starts.
	sender func()

	running atomic.Bool
	// inbound counts the unacknowledged QoS 1/2 publishes [MQTT-3.3.4-8]:
	// Publish, on the connection's read goroutine, adds one; the sender
	// frees the place just before it writes the PUBACK or PUBCOMP, since
	// the client may publish again as soon as it reads it.
	inbound atomic.Int32
	// awaiting is set while the connection is on the engine's durWait,
	// and awaitOff is the record it waits for: its first acknowledgement's
	// (under e.durMu).
	awaiting bool
	awaitOff uint64

	// Under s.mu.
	gone    bool
	held    bool      // until CONNACK is written (Client.Established)
	acks    []ack     // acknowledgements to write, in order [MQTT-4.6.0-2]
	resend  []uint16  // flights to write again, in send order [MQTT-4.4.0-1]
	qos0    []Entry   // QoS 0 messages not in the log, at most QoS0Limit
	closing bool      // closed by the engine (0x93): the rest is dropped
	scanned []scanned // what the last scan of the log found, not yet taken
	holdRet int       // SUBACKs not yet written: the session's retained messages wait for them
	// recScratch holds the last Deliver record deliverRecord encoded.
	recScratch []byte

	// carried holds the QoS 2 packet ids that awaited PUBREL when this
	// connection began: they took no place of its inbound window, so their
	// PUBRELs free none [MQTT-4.9.0]. nil when none. Under s.mu.
	carried map[uint16]bool

	// The sender's own (or, while running is held for it, ackNow's).
	// direct makes flush not wait (Conn.FlushNow): set by ackNow, whose
	// goroutine must never wait for a client.
	direct bool
	// onLog is set while deliverNow writes on the log's goroutine
	// (dispatchQuiet): writePublish then leaves to the sender anything
	// that would take the session's lock.
	onLog     bool
	aliases   map[string]uint16
	nextAlias uint16
	pkt       Packet
	unflushed bool // a Write since the last Flush
	// pending is what deliverNow took and could not write at once, for
	// the sender to write first; busy is set when a WriteNow refused.
	pending []outgoing
	busy    bool
	// acksLeft is what writeAcksNow took and could not write at once,
	// for the sender to write first.
	acksLeft []ack
	// lastDirect is when deliverNow last wrote, and quick how many of its
	// rounds in a row came within deliverNowGap of the one before (the
	// dispatching party's, under the engine's disp.mu).
	lastDirect time.Time
	quick      int
	batch      []outgoing
	acksOut    []ack
	qos0Out    []Entry
	// scanR reads the backlog for scan, in order (a random Log.Read
	// fetches a window of the log for each record): kept from one round
	// to the next while the scan goes on, dropped when it reaches what
	// the dispatcher offered and when the connection is gone.
	scanR LogReader
}

// ack is one acknowledgement to write once the record at offset (0: none)
// is durable. counts releases a place of the inbound window as it is written.
type ack struct {
	offset uint64
	typ    PacketType
	pid    uint16
	reason byte
	counts bool
}

// outgoing is one PUBLISH or PUBREL the sender writes in a round.
type outgoing struct {
	pid     uint16
	f       flight // QoS 1/2
	e       Entry  // QoS 0, or the message of a new flight
	resend  bool
	refused bool // not written: its record could not be made
}

// Publish takes an inbound PUBLISH with packet id pid (0 for QoS 0). QoS 0
// goes straight to the matching connections; QoS 1/2 is appended and its
// PUBACK/PUBREC written by the sender once durable. A duplicate of a QoS 2
// publish still awaiting PUBREL is acknowledged again, not delivered again
// [MQTT-4.3.3-10] (ErrDuplicate). It returns ErrReceiveMaximum (connection closed with
// 0x93), or an error when the message was refused (the sender writes the
// refusal for MQTT 5; a 3.1.1 connection is closed, since it has no way to
// hear it [MQTT-3.3.5-2]). It does not keep m, only what m's fields refer
// to (a QoS 0 message's payload, for the connections it goes to), so m
// may live on the caller's stack.
func (cl *Client) Publish(m *Message, pid uint16) error {
	e, c, s := cl.e, cl.c, cl.c.s
	m.Origin = s.id
	m.OriginPacketID = pid
	if e.publishDirect(m) {
		return nil
	}
	if m.QoS > 0 {
		s.mu.Lock()
		if c.gone {
			s.mu.Unlock()
			return ErrGone
		}
		if c.inbound.Load() >= int32(c.info.InboundMaximum) {
			c.closing = true
			s.mu.Unlock()
			c.conn.Close(reasonReceiveMaxExceeded)
			return ErrReceiveMaximum
		}
		if off, ok := s.inbound[pid]; ok && m.QoS == 2 {
			c.acks = append(c.acks, ack{offset: off, typ: PacketPubrec, pid: pid})
			s.mu.Unlock()
			e.stats.duplicates.Add(1)
			c.kick()
			return ErrDuplicate
		}
		s.mu.Unlock()
	}
	// The read goroutine holds no lock of ours here: the log may write the
	// record on it (AppendAsyncLead), and its durability event dispatch
	// the message here too.
	one := [1]*Message{m}
	off, err := e.appendMessages(one[:], true, true)
	if err != nil {
		if m.QoS == 0 {
			return err
		}
		if c.info.ProtocolVersion < 5 {
			c.conn.Close(reasonUnspecified)
			return err
		}
		reason := byte(reasonImplementationSpecific)
		if errors.Is(err, ErrFull) {
			reason = reasonQuotaExceeded
		}
		s.mu.Lock()
		c.acks = append(c.acks, ack{typ: ackType(m.QoS), pid: pid, reason: reason})
		s.mu.Unlock()
		c.kick()
		return err
	}
	e.stats.published.Add(1)
	if m.QoS == 0 {
		return nil
	}
	c.inbound.Add(1)
	s.mu.Lock()
	if m.QoS == 2 {
		s.inbound[pid] = off
	}
	c.acks = append(c.acks, ack{offset: off, typ: ackType(m.QoS), pid: pid, counts: m.QoS == 1})
	s.mu.Unlock()
	if e.resolved(off) {
		// Durable already (the log wrote it on this goroutine, or its
		// writer was quick): the acknowledgement is written here when the
		// socket takes it at once, with no sender started for it.
		c.ackNow()
		return nil
	}
	c.kick()
	return nil
}

// Refuse answers an inbound QoS 1/2 PUBLISH with packet id pid that the
// caller refused before the engine saw it (write access denied, a topic
// too long or reserved): a PUBACK (qos 1) or PUBREC (qos 2) with reason,
// in the connection's order of acknowledgements, after those of the
// publishes read before it even while they wait for the log
// [MQTT-4.6.0-2]. The Conn leaves the reason out for a client before
// MQTT 5, which gets a plain acknowledgement [MQTT-3.4.2.1]. The publish
// takes no place of the inbound window. QoS 0 needs no answer.
func (cl *Client) Refuse(qos byte, pid uint16, reason byte) {
	if qos == 0 {
		return
	}
	c, s := cl.c, cl.c.s
	s.mu.Lock()
	if c.gone || c.closing {
		s.mu.Unlock()
		return
	}
	c.acks = append(c.acks, ack{typ: ackType(qos), pid: pid, reason: reason})
	s.mu.Unlock()
	c.kick()
}

func ackType(q byte) PacketType {
	if q == 2 {
		return PacketPubrec
	}
	return PacketPuback
}

// Pubrel takes the client's PUBREL of an inbound QoS 2 message: the
// exchange ends durably, then PUBCOMP is written [MQTT-4.3.3-11]. An
// unknown packet id gets PUBCOMP 0x92 on MQTT 5 [MQTT-3.7.2.1].
func (cl *Client) Pubrel(pid uint16) {
	e, c, s := cl.e, cl.c, cl.c.s
	s.mu.Lock()
	_, ok := s.inbound[pid]
	delete(s.inbound, pid)
	carried := c.carried[pid]
	delete(c.carried, pid)
	s.mu.Unlock()
	a := ack{typ: PacketPubcomp, pid: pid, counts: ok && !carried}
	if ok {
		off, err := e.logRef(KindInboundRelease, PacketRef{Client: s.id, Ref: s.ref.Load(), PacketID: pid})
		if err != nil {
			e.stats.recordFailures.Add(1)
			s.mu.Lock()
			s.inbound[pid] = 0 // the PUBREL will come again
			if carried {
				c.carried[pid] = true
			}
			s.mu.Unlock()
			a.reason = reasonUnspecified
			a.counts = false
		}
		a.offset = off
	} else if c.info.ProtocolVersion >= 5 {
		a.reason = reasonPacketIDNotFound
	}
	s.mu.Lock()
	c.acks = append(c.acks, a)
	s.mu.Unlock()
	c.kick()
}

// Puback takes the client's PUBACK of an outbound QoS 1 message.
func (cl *Client) Puback(pid uint16) { cl.complete(pid, 1) }

// Pubcomp takes the client's PUBCOMP of an outbound QoS 2 message.
func (cl *Client) Pubcomp(pid uint16) { cl.complete(pid, 2) }

// complete frees pid if it holds a flight of qos q (a QoS 2 flight only
// once released); a stray acknowledgement changes nothing.
func (cl *Client) complete(pid uint16, q byte) {
	e, s := cl.e, cl.c.s
	s.mu.Lock()
	f, ok := s.flights[pid]
	if !ok || f.qos != q || (q == 2 && !f.released) {
		s.mu.Unlock()
		return
	}
	delete(s.flights, pid)
	persistent := s.persistent
	s.mu.Unlock()
	e.stats.acked.Add(1)
	if persistent {
		e.appendRef(KindComplete, PacketRef{Client: s.id, Ref: s.ref.Load(), PacketID: pid})
	}
	cl.c.kick()
	if f.group != nil {
		f.group.kickMembers(s) // a place freed; the group's next may go elsewhere too
	}
}

// Pubrec takes the client's PUBREC of an outbound QoS 2 message. A
// failure reason ends the exchange [MQTT-4.3.3-4]; otherwise the PUBREL is
// written once the release is durable, and the PUBLISH is never sent
// again [MQTT-4.3.3-6].
func (cl *Client) Pubrec(pid uint16, reason byte) {
	e, c, s := cl.e, cl.c, cl.c.s
	s.mu.Lock()
	f, ok := s.flights[pid]
	if !ok || f.qos != 2 {
		s.mu.Unlock()
		if !ok {
			// A PUBREC is answered by a PUBREL [MQTT-4.3.3-4]; for an
			// unknown id its reason is 0x92 Packet Identifier not found
			// (MQTT 5 §3.6.2.1), so the client's exchange ends.
			s.mu.Lock()
			c.acks = append(c.acks, ack{typ: PacketPubrel, pid: pid, reason: reasonPacketIDNotFound})
			s.mu.Unlock()
			c.kick()
		}
		return
	}
	if reason >= 0x80 {
		delete(s.flights, pid)
		persistent := s.persistent
		s.mu.Unlock()
		if persistent {
			e.appendRef(KindComplete, PacketRef{Client: s.id, Ref: s.ref.Load(), PacketID: pid})
		}
		c.kick()
		return
	}
	// The PUBREL waits for the Release record (a PUBREC again for a
	// released flight: the same record), and so does a resend of it on
	// the next connection (flight.logged): the client forgets the packet
	// id on PUBREL [MQTT-4.3.3-9], and a restart that lost the record
	// would send the PUBLISH again, a new message to it.
	off := f.logged
	if !f.released && s.persistent {
		off = e.appendRef(KindRelease, PacketRef{Client: s.id, Ref: s.ref.Load(), PacketID: pid})
		if off == 0 {
			// Without its record a restart would send the PUBLISH again
			// after the PUBREL: no PUBREL now; the next connection resends
			// the PUBLISH (DUP), which the client answers with PUBREC again.
			s.mu.Unlock()
			return
		}
		f.logged, f.unlogged = off, false
	} else if !s.persistent {
		off = 0
	}
	f.released = true
	s.flights[pid] = f
	c.acks = append(c.acks, ack{offset: off, typ: PacketPubrel, pid: pid})
	s.mu.Unlock()
	c.kick()
}

// kick starts the sender unless it runs or there is nothing to write (a
// PUBACK that freed a place of an empty window): a goroutine started only
// to find nothing costs a wake-up of the scheduler per message. When the
// only work is an acknowledgement whose record is not durable yet (a
// publish just appended), the sender starts at the log's next durability
// event instead (awaitDurable), not now only to wait for it. Whoever gives
// the connection work does so before it kicks, and a running sender looks
// for work again before it stops, so a kick is never lost. Called without
// s.mu (work takes it).
func (c *connection) kick() {
	if c.running.Load() {
		return
	}
	switch w, off := c.work(); w {
	case workNone:
	case workAckLater:
		c.e.awaitDurable(c, off)
	default:
		c.start()
	}
}

// start starts the sender unless it runs.
func (c *connection) start() {
	if c.running.CompareAndSwap(false, true) {
		if !c.e.startSender(c) {
			c.running.Store(false)
		}
	}
}

// ackNow is the log's durability event for a connection that waited for
// it, and Publish's for a record durable at once: when its only work is
// acknowledgements whose records are durable, it writes them on the
// calling goroutine (the log's, or the publisher's read goroutine) and, if the socket
// takes them at once, starts no sender at all; otherwise the sender
// writes them, or what the socket left of them. It never waits for the
// client: a slow or dead socket cannot hold the log's writer.
func (c *connection) ackNow() {
	if !c.running.CompareAndSwap(false, true) {
		return // the sender runs: it takes them
	}
	if c.writeAcksNow() {
		c.running.Store(false)
		c.kickTry() // work that came meanwhile saw the sender running
		return
	}
	if !c.e.startSender(c) {
		c.running.Store(false)
	}
}

// kickTry is kick for the log's goroutine, which must not wait for a
// session's or a group's lock (a holder may be waiting for room in the
// log's queue, which only that goroutine makes): when the lock is taken,
// or the session has shared groups, it starts the sender to look.
func (c *connection) kickTry() {
	if c.running.Load() {
		return
	}
	s := c.s
	if !s.mu.TryLock() {
		c.start()
		return
	}
	if s.hasGroups() {
		s.mu.Unlock()
		c.start()
		return
	}
	w, off := c.workLocked()
	s.mu.Unlock()
	switch w {
	case workNone:
	case workAckLater:
		c.e.awaitDurable(c, off)
	default:
		c.start()
	}
}

// hasGroups reports whether the session is a member of a shared group.
// Called with s.mu held.
func (s *session) hasGroups() bool { return s.shared > 0 }

// putSub puts sb in s.subs under filter, counting a shared one
// (s.shared). Called with s.mu held, or during recovery.
func (s *session) putSub(filter string, sb *sub) {
	if _, ok := s.subs[filter]; !ok && isShared(filter) {
		s.shared++
	}
	s.subs[filter] = sb
}

// deleteSub takes filter's subscription out of s.subs. Called with s.mu
// held.
func (s *session) deleteSub(filter string) {
	if _, ok := s.subs[filter]; ok && isShared(filter) {
		s.shared--
	}
	delete(s.subs, filter)
}

// isShared reports whether filter is a shared subscription's
// ($share/<group>/<filter>).
func isShared(filter string) bool {
	name, _ := SplitShared(filter)
	return name != ""
}

// ackNowMax is the most acknowledgements ackNow writes itself: a round
// far below edge's cork limit, which would write with a wait.
const ackNowMax = 64

// writeAcksNow writes the connection's acknowledgements without waiting,
// when they are all it has to do and each one's record is durable (a
// failed one closes a 3.1.1 connection, which may wait: the sender does
// that). It reports whether it did and the socket took them all; false
// leaves what is left to the sender (acksLeft, unflushed). It runs on the
// log's goroutine, so it takes the session's lock only if it is free and
// no group's lock at all: their holders may wait for the log. Called
// with running held.
func (c *connection) writeAcksNow() bool {
	s := c.s
	if !s.mu.TryLock() {
		return false
	}
	if c.gone || c.closing || c.held || len(c.resend) > 0 || len(c.qos0) > 0 ||
		len(c.acks) == 0 || len(c.acks) > ackNowMax || s.hasGroups() || c.wantsWindow() {
		s.mu.Unlock()
		return false
	}
	for _, a := range c.acks {
		if a.offset > 0 && c.e.log.WaitDurable(doneCtx, a.offset) != nil {
			s.mu.Unlock()
			return false
		}
	}
	c.acksOut = append(c.acksOut[:0], c.acks...)
	c.acks = c.acks[:0]
	s.mu.Unlock()
	c.direct = true
	defer func() { c.direct = false }()
	for i, a := range c.acksOut {
		if a.counts {
			c.inbound.Add(-1) // before the client can read it [MQTT-3.3.4-7]
		}
		c.pkt = Packet{Type: a.typ, PacketID: a.pid, ReasonCode: a.reason}
		ok, err := c.conn.WriteNow(&c.pkt)
		if err != nil || !ok {
			if a.counts {
				c.inbound.Add(1) // not written: the sender frees it
			}
			// The rest is the sender's, first [MQTT-4.6.0-2]; a broken
			// connection it finds so.
			c.acksLeft = append(c.acksLeft[:0], c.acksOut[i:]...)
			return false
		}
		c.unflushed = true
	}
	c.flush() // an error leaves it unflushed: the sender's flush finds it
	return !c.unflushed
}

// writeAcksLeft writes what writeAcksNow left, first; false when the
// connection is gone.
func (c *connection) writeAcksLeft() bool {
	defer func() { c.acksLeft = c.acksLeft[:0] }()
	for _, a := range c.acksLeft {
		if !c.writeAck(a) {
			return false
		}
	}
	return true
}

// deliverNow is the dispatcher's kick: for a clean session whose only
// work is the few messages just offered to its queue, it writes them on
// the dispatching goroutine when the socket takes them at once, and
// starts no sender; otherwise it kicks, or leaves what the socket did not
// take to the sender. It never waits for
// the client: a slow or dead socket cannot hold the dispatcher. onLog: it
// runs on the log's goroutine (dispatchQuiet), and tries the session's
// lock rather than waiting for it (kickTry, writeDeliveriesNow).
func (c *connection) deliverNow(onLog bool) {
	if c.running.Load() {
		return // the sender runs: it takes them
	}
	kick := c.kick
	if onLog {
		kick = c.kickTry
	}
	now := time.Now()
	if now.Sub(c.lastDirect) >= deliverNowGap {
		c.quick = 0
	} else if c.quick++; c.quick >= deliverNowQuick {
		kick() // a busy connection: its sender writes many per write
		return
	}
	if !c.running.CompareAndSwap(false, true) {
		return
	}
	c.lastDirect = now
	if c.writeDeliveriesNow(onLog) {
		if !c.e.startSender(c) {
			c.running.Store(false)
		}
		return
	}
	c.running.Store(false)
	kick() // its work, or what came meanwhile and saw the sender running
}

// deliverNowMax is the most messages deliverNow takes from a queue, and
// deliverNowGap the least time between two of its rounds for one
// connection: a connection whose rounds come closer than that
// deliverNowQuick times in a row (over 4,000 messages a second) is left
// to its sender, which, running for a while, writes many of them per
// system call; the dispatcher would write each alone. One close pair, as
// a steady 1,000 a second has every few messages, is not a busy
// connection: its sender would start for one message and stop.
const (
	deliverNowMax   = 4
	deliverNowGap   = 250 * time.Microsecond
	deliverNowQuick = 2
)

// writeDeliveriesNow takes the session's queued messages and writes them
// without waiting, when the session is clean (it logs nothing per
// delivery, so nothing here waits for the log) and the queue holds all
// there is to do, at most deliverNowMax, within the window. It reports
// whether it wrote some and left the rest (pending, unflushed) to the
// sender; false when it wrote everything, found the connection gone, or
// left all to the sender's usual round. onLog (the log's goroutine) takes
// the session's lock only if it is free, and leaves a connection that
// failed to the sender (which finds it so and marks it lost) rather than
// take the lock again. Called with running held.
func (c *connection) writeDeliveriesNow(onLog bool) bool {
	s := c.s
	if !onLog {
		s.mu.Lock()
	} else if !s.mu.TryLock() {
		return false
	}
	if c.gone || c.closing || c.held || s.persistent || len(c.acks) > 0 || len(c.resend) > 0 ||
		len(c.qos0) > 0 || len(c.scanned) > 0 || c.holdRet > 0 || len(s.retained) > 0 ||
		s.queue.Len() == 0 || s.queue.Len() > deliverNowMax || len(s.flights)+s.queue.Len() > c.window {
		s.mu.Unlock()
		return false
	}
	if s.hasGroups() {
		s.mu.Unlock()
		return false // a shared group's turn is the sender's
	}
	if _, ok := s.queue.Scan(); ok {
		s.mu.Unlock()
		return false // the queue overflowed: the sender reads the log
	}
	batch := c.batch[:0]
	for {
		en, ok := s.queue.Pop()
		if !ok {
			break
		}
		if o, ok := c.outgoingFor(en, nil); ok {
			batch = append(batch, o)
		}
	}
	s.mu.Unlock()
	c.batch = batch
	c.direct, c.onLog = true, onLog
	defer func() { c.direct, c.onLog = false, false }()
	for i := range batch {
		ok := c.writePublish(&batch[i])
		if !ok && !onLog {
			c.lost()
			return false
		}
		if !ok || c.busy {
			c.busy = false
			c.pending = append(c.pending[:0], batch[i:]...)
			clear(batch)
			return true
		}
	}
	clear(batch)
	if !c.flush() {
		if onLog {
			c.unflushed = true // the sender's flush finds the connection gone
			return true
		}
		c.lost()
		return false
	}
	return c.unflushed
}

// writePending writes what deliverNow left, first; false when the
// connection is gone.
func (c *connection) writePending() bool {
	for i := range c.pending {
		if !c.writePublish(&c.pending[i]) {
			clear(c.pending)
			c.pending = c.pending[:0]
			return false
		}
	}
	clear(c.pending)
	c.pending = c.pending[:0]
	return true
}

// run is the sender: it writes while there is work, then stops.
func (c *connection) run() {
	if len(c.acksLeft) > 0 && !c.writeAcksLeft() {
		c.lost()
	}
	if len(c.pending) > 0 && !c.writePending() {
		c.lost()
	}
	for {
		for c.step() {
		}
		if c.unflushed && !c.flush() { // what ackNow's socket did not take
			c.lost()
		}
		c.running.Store(false)
		if !c.hasWork() || !c.running.CompareAndSwap(false, true) {
			return
		}
	}
}
