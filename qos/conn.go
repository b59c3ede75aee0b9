package qos

import (
	"errors"
	"sync/atomic"
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

	running atomic.Bool
	// inbound counts the unacknowledged QoS 1/2 publishes [MQTT-3.3.4-8]:
	// Publish, on the connection's read goroutine, adds one; the sender
	// frees the place just before it writes the PUBACK or PUBCOMP, since
	// the client may publish again as soon as it reads it.
	inbound atomic.Int32

	// Under s.mu.
	gone    bool
	held    bool      // until CONNACK is written (Client.Established)
	acks    []ack     // acknowledgements to write, in order [MQTT-4.6.0-2]
	resend  []uint16  // flights to write again, in send order [MQTT-4.4.0-1]
	qos0    []Entry   // QoS 0 messages not in the log, at most QoS0Limit
	closing bool      // closed by the engine (0x93): the rest is dropped
	scanned []scanned // what the last scan of the log found, not yet taken

	// carried holds the QoS 2 packet ids that awaited PUBREL when this
	// connection began: they took no place of its inbound window, so their
	// PUBRELs free none [MQTT-4.9.0]. nil when none. Under s.mu.
	carried map[uint16]bool

	// The sender's own.
	aliases   map[string]uint16
	nextAlias uint16
	pkt       Packet
	unflushed bool // a Write since the last Flush
	batch     []outgoing
	acksOut   []ack
	qos0Out   []Entry
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
	pid      uint16
	f        flight // QoS 1/2
	e        Entry  // QoS 0, or the message of a new flight
	resend   bool
	rec      uint64 // the Deliver record that must be durable first
	recBytes []byte // and the record itself, to append again if its write fails
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
	off, err := e.appendMessage(m, true)
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
	c.kick()
	return nil
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
		off, err := e.log.AppendAsync(EncodeRef(KindInboundRelease, PacketRef{Client: s.id, Ref: s.ref.Load(), PacketID: pid}))
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
		e.appendRecord(EncodeRef(KindComplete, PacketRef{Client: s.id, Ref: s.ref.Load(), PacketID: pid}))
	}
	cl.c.kick()
	if f.group != nil {
		f.group.kickMembers(s) // a place freed; the group's next may go elsewhere too
	}
}

// Pubrec takes the client's PUBREC of an outbound QoS 2 message. A
// failure reason ends the exchange [MQTT-4.3.3-4]; otherwise the PUBREL is
// written once the release is durable, and the PUBLISH is never sent
// again [MQTT-4.3.3-5].
func (cl *Client) Pubrec(pid uint16, reason byte) {
	e, c, s := cl.e, cl.c, cl.c.s
	s.mu.Lock()
	f, ok := s.flights[pid]
	if !ok || f.qos != 2 {
		s.mu.Unlock()
		if !ok {
			// [MQTT-4.3.3-?]: answer a PUBREC for an unknown id with a
			// PUBREL 0x92 so the client's exchange ends.
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
			e.appendRecord(EncodeRef(KindComplete, PacketRef{Client: s.id, Ref: s.ref.Load(), PacketID: pid}))
		}
		c.kick()
		return
	}
	var off uint64
	if !f.released && s.persistent {
		off = e.appendRecord(EncodeRef(KindRelease, PacketRef{Client: s.id, Ref: s.ref.Load(), PacketID: pid}))
		if off == 0 {
			// Without its record a restart would send the PUBLISH again
			// after the PUBREL: no PUBREL now; the next connection resends
			// the PUBLISH (DUP), which the client answers with PUBREC again.
			s.mu.Unlock()
			return
		}
	}
	f.released = true
	s.flights[pid] = f
	c.acks = append(c.acks, ack{offset: off, typ: PacketPubrel, pid: pid})
	s.mu.Unlock()
	c.kick()
}

// kick starts the sender unless it runs or there is nothing to write (a
// PUBACK that freed a place of an empty window): a goroutine started only
// to find nothing costs a wake-up of the scheduler per message. Whoever
// gives the connection work does so before it kicks, and a running sender
// looks for work again before it stops, so a kick is never lost. Called
// without s.mu (hasWork takes it).
func (c *connection) kick() {
	if c.running.Load() || !c.hasWork() {
		return
	}
	if c.running.CompareAndSwap(false, true) {
		if !c.e.goSender(c.run) {
			c.running.Store(false)
		}
	}
}

// run is the sender: it writes while there is work, then stops.
func (c *connection) run() {
	for {
		for c.step() {
		}
		c.running.Store(false)
		if !c.hasWork() || !c.running.CompareAndSwap(false, true) {
			return
		}
	}
}
