package edge

import (
	"context"
	"errors"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// acker writes, each once its record is durable: one connection's PUBACKs
// and PUBRECs, in the order its publishes came [MQTT-4.6.0-2]; the PUBRELs
// of the QoS 2 messages it received; and the logged QoS 2 PUBLISHes the
// session's pump hands it [MQTT-4.3.3]. Each kind keeps its order. mochi
// would write the acknowledgement on the read goroutine right after
// OnPublish returns, so waiting there for the fsync would let a connection
// have one publish in the log's group commit at a time. With the acker the
// read goroutine goes on reading, and a connection's whole window (the
// server's Receive Maximum) shares one fsync.
type acker struct {
	s      *store
	cl     *mqtt.Client
	limit  int
	ctx    context.Context // ends with the connection
	cancel context.CancelFunc

	mu   sync.Mutex
	q    []pendingAck
	wake chan struct{} // capacity 1: q has an entry
	room chan struct{} // capacity 1: an entry left q
}

// pendingAck is an acknowledgement waiting for its message to be durable.
type pendingAck struct {
	offset uint64
	ack    packets.Packet
}

// ackerOf returns cl's acker, starting it on the first QoS 1/2 publish.
func (s *store) ackerOf(cl *mqtt.Client) *acker {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	if a := s.ackers[cl]; a != nil {
		return a
	}
	ctx, cancel := context.WithCancel(s.ctx)
	a := &acker{s: s, cl: cl, limit: s.ackWindow, ctx: ctx, cancel: cancel,
		wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
	s.ackers[cl] = a
	s.wg.Add(1)
	go a.run()
	return a
}

// stopAcker ends cl's acker: its connection is gone, and the client sends
// again what it has no acknowledgement for.
func (s *store) stopAcker(cl *mqtt.Client) {
	s.ackMu.Lock()
	a := s.ackers[cl]
	delete(s.ackers, cl)
	s.ackMu.Unlock()
	if a != nil {
		a.cancel()
	}
}

// enqueue queues ack for the message logged at offset. It blocks while the
// connection has its window full: the broker stops reading from a client
// that publishes faster than the log takes it.
func (a *acker) enqueue(offset uint64, ack packets.Packet) {
	for {
		a.mu.Lock()
		if len(a.q) < a.limit {
			a.q = append(a.q, pendingAck{offset: offset, ack: ack})
			a.mu.Unlock()
			signal(a.wake)
			return
		}
		a.mu.Unlock()
		select {
		case <-a.room:
		case <-a.ctx.Done():
			return
		}
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// run writes the acknowledgements in order.
func (a *acker) run() {
	defer a.s.wg.Done()
	for {
		a.mu.Lock()
		if len(a.q) == 0 {
			a.mu.Unlock()
			select {
			case <-a.wake:
				continue
			case <-a.ctx.Done():
				return
			}
		}
		head := a.q[0]
		a.mu.Unlock()

		err := a.s.log.WaitDurable(a.ctx, head.offset)
		if a.ctx.Err() != nil {
			return
		}
		ack, write := head.ack, true
		switch {
		case err != nil && ack.FixedHeader.Type == packets.Publish:
			// Its delivery record is lost: a QoS 2 PUBLISH waits for the
			// reconnect, which logs it again; QoS 0/1 may go (at most or at
			// least once either way).
			write = ack.FixedHeader.Qos < 2
		case err != nil && ack.FixedHeader.Type == packets.Pubrel:
			write = false // the reconnect sends it, from the session's flight
		case err != nil:
			// The append failed after all: refuse it (v5), or leave it
			// unacknowledged so that the v3 client sends it again.
			a.s.refuse(err)
			a.s.dropInbound(a.cl.ID, ack.PacketID, head.offset)
			ack.ReasonCode = packets.ErrImplementationSpecificError.Code
			write = a.cl.Properties.ProtocolVersion == 5
		case ack.FixedHeader.Type == packets.Pubrec, ack.FixedHeader.Type == packets.Pubrel:
			// mochi answers a PUBREL, and takes a PUBCOMP, only for a packet
			// id it holds in that stage.
			a.cl.State.Inflight.Set(ack)
		}
		if write {
			err := a.cl.WritePacket(ack)                                                              // a failed write means the connection is ending
			if errors.Is(err, packets.ErrPacketTooLarge) && ack.FixedHeader.Type == packets.Publish { // [MQTT-3.1.2-25]
				a.s.m.dropped.WithLabelValues("too_large").Inc()
				a.s.complete(a.cl, ack.PacketID, packets.Pubcomp)
				a.cl.State.Inflight.Delete(ack.PacketID)
			}
		}
		a.mu.Lock()
		a.q[0] = pendingAck{}
		a.q = a.q[1:]
		a.mu.Unlock()
		signal(a.room)
	}
}

// dropInbound forgets an inbound QoS 2 message whose append failed.
func (s *store) dropInbound(client string, pid uint16, offset uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inbound[client][pid] == offset {
		delete(s.inbound[client], pid)
	}
}
