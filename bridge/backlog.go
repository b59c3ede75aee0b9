package bridge

import (
	"context"
	"errors"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// backlog is what one forward rule holds back in the log: the bytes of the
// records from its position to the end, and how many of them are messages
// the rule sends. It is kept incrementally, by the bridge's housekeeping
// goroutine only: each record is read once when it arrives, its bytes are
// added to the sum of its block (blockRecords consecutive offsets), and its
// head is peeked at (qos.PeekMessage, no copy): the rule's messages are
// marked in takes. As the rule moves on, the blocks it passed leave the
// count whole, its marks leave the message count without a read, and only
// the records of the block it is in are read again. Reading every record a
// second time as the rule passed it cost a copy of each record, a sixth of
// what a drain costs the bridge beside paho.
type backlog struct {
	from, to   uint64 // the records in [from, to) are counted
	bytes      int64
	first      uint64  // the block of sums[0]
	sums       []int64 // the counted bytes of blocks first, first+1, ...
	messages   uint64  // the rule's messages in [from, to): marked in takes
	takes      marks
	head, tail qos.LogReader // at from and at to: sequential reads, 4 KiB at a time
}

// marks is a set of offsets in a sliding window, one bit each: the records
// of a backlog that are messages of its rule. It holds the window [base,
// base+64*len(bits)).
type marks struct {
	base uint64 // a multiple of 64
	bits []uint64
}

func (m *marks) set(off uint64) {
	if len(m.bits) == 0 {
		m.base = off &^ 63
	}
	i := (off - m.base) / 64
	for uint64(len(m.bits)) <= i {
		m.bits = append(m.bits, 0)
	}
	m.bits[i] |= 1 << (off % 64)
}

// count returns how many offsets in [from, to) are set.
func (m *marks) count(from, to uint64) uint64 {
	var n uint64
	for off := max(from, m.base); off < to && off < m.base+64*uint64(len(m.bits)); off++ {
		if m.bits[(off-m.base)/64]&(1<<(off%64)) != 0 {
			n++
		}
	}
	return n
}

// first returns the lowest offset set at or after from.
func (m *marks) first(from uint64) (uint64, bool) {
	for i, w := range m.bits {
		base := m.base + 64*uint64(i)
		if base+64 <= from || w == 0 {
			continue
		}
		for bit := uint64(0); bit < 64; bit++ {
			if w&(1<<bit) != 0 && base+bit >= from {
				return base + bit, true
			}
		}
	}
	return 0, false
}

// drop forgets the offsets below from.
func (m *marks) drop(from uint64) {
	for len(m.bits) > 0 && from >= m.base+64 {
		m.bits = m.bits[1:]
		m.base += 64
	}
	if len(m.bits) == 0 {
		m.bits = nil // let a long backlog's array go
	}
}

// passMessages takes the rule's messages in [from, to) out of the count,
// whether or not their records can still be read, as the rule moves to to.
func (a *backlog) passMessages(from, to uint64) {
	a.messages -= min(a.takes.count(from, to), a.messages)
	a.takes.drop(to)
}

// blockRecords is the offsets of one block: a block's sum costs 8 bytes of
// memory per blockRecords records of backlog.
const blockRecords = 256

// add counts n bytes of the record at off.
func (a *backlog) add(off uint64, n int64) {
	k := off / blockRecords
	if len(a.sums) == 0 {
		a.first = k
	}
	for a.first+uint64(len(a.sums)) <= k {
		a.sums = append(a.sums, 0)
	}
	a.sums[k-a.first] += n
	a.bytes += n
}

// leave takes n bytes of the counted record at off out of the count.
func (a *backlog) leave(off uint64, n int64) {
	if k := off / blockRecords; k >= a.first && k-a.first < uint64(len(a.sums)) {
		a.sums[k-a.first] -= n
	}
	a.bytes -= n
}

// account brings the count up to date: records the rule passed leave it,
// new records join it.
func (b *Bridge) account(r *rule) {
	a := &r.backlog
	low := r.low()
	if a.head == nil || low < a.from || low > a.to {
		*a = backlog{from: low, to: low, head: b.log.NewReader(low), tail: b.log.NewReader(low)}
	}
	a.passMessages(a.from, low)
	// The blocks wholly below low's leave without being read.
	lowBlock := low / blockRecords
	for len(a.sums) > 0 && a.first < lowBlock {
		a.bytes -= a.sums[0]
		a.sums = a.sums[1:]
		a.first++
	}
	if start := lowBlock * blockRecords; a.from < start {
		a.from = start
		a.head.Seek(start)
	}
	readUpTo(a.head, low, func(off uint64, rec []byte) { a.leave(off, int64(len(rec))) })
	a.from = low
	end := b.log.LastOffset() + 1
	readUpTo(a.tail, end, func(off uint64, rec []byte) {
		a.add(off, int64(len(rec)))
		// The head only: no copy of the payload, no allocation.
		if h, ok := qos.PeekMessage(rec); ok && string(h.Origin) != b.origin && qos.Match(r.fwd.Filter, string(h.Topic)) {
			a.takes.set(off)
			a.messages++
		}
	})
	a.to = end
	a.bytes = max(a.bytes, 0)
}

// readUpTo reads r up to (not including) end, without waiting, and calls
// f with the offset and each record read (valid during the call). Holes
// and removed records count nothing.
func readUpTo(r qos.LogReader, end uint64, f func(off uint64, rec []byte)) {
	for r.Offset() < end {
		off, rec, err := r.Next(noWait)
		if err != nil {
			if errors.Is(err, qos.ErrTrimmed) || !errors.Is(err, context.Canceled) {
				r.Seek(r.Offset() + 1) // removed or damaged: nothing to count
				continue
			}
			break
		}
		if off >= end {
			// Past end (a hole skipped over it): this record belongs to the
			// next round, so read it again then.
			r.Seek(off)
			break
		}
		f(off, rec)
	}
}

// noWait is a context that is already over: a Reader returns what is
// durable and does not wait for more.
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// trim enforces MaxBacklogAge and MaxBacklogBytes on a rule while the bridge
// is not connected (connected, the rule is sending its backlog anyway): it
// moves the rule past its oldest messages, counting the messages it drops,
// so that a long outage costs at most the configured budget of the log and
// does not fill the disk. It must not run while serve does.
//
// The rule's position (low, where the backlog starts) may be a message
// sent on the lost connection and never acknowledged; the messages the
// connection sent after it are in pending, acknowledged or not. Each
// message is dropped once: one that was sent and acknowledged, or skipped,
// expired or dropped on the way (below next, not waiting) is not counted
// again, and the flights trimmed leave pending, so that the rule's
// position moves past them and the next connection does not send them
// again, and the next count does not start from them again.
func (b *Bridge) trim(r *rule) {
	a := &r.backlog
	cutAge := b.cfg.MaxBacklogAge
	from := a.from
	r.mu.Lock()
	next, waiting := r.next, r.pending[r.head:]
	r.mu.Unlock()
	// owed reports whether the rule still owes the message at off: one it
	// has not sent, or sent without an acknowledgement. waiting is in
	// offset order, and trim asks in offset order.
	owed := func(off uint64) bool {
		if off >= next {
			return true
		}
		for len(waiting) > 0 && waiting[0].off < off {
			waiting = waiting[1:]
		}
		return len(waiting) > 0 && waiting[0].off == off && !waiting[0].acked
	}
	for a.from < a.to {
		overBytes := b.cfg.MaxBacklogBytes > 0 && a.bytes > b.cfg.MaxBacklogBytes
		rec, err := b.log.Read(a.from)
		if err != nil && !errors.Is(err, qos.ErrHole) {
			if !errors.Is(err, qos.ErrTrimmed) {
				b.drop(DropBad, 1)
			}
			a.from++
			continue
		}
		var m qos.Message
		forwarded := b.decode(a.from, rec, &m) && b.takes(r, &m)
		if !overBytes {
			if !forwarded {
				if cutAge == 0 {
					break
				}
				a.leave(a.from, int64(len(rec))) // not the rule's: passed on the way to an old message
				a.from++
				continue
			}
			if cutAge == 0 || time.Since(time.Unix(0, m.Created)) <= cutAge {
				break
			}
		}
		if forwarded && owed(a.from) {
			reason := DropMaxAge
			if overBytes {
				reason = DropMaxBytes
			}
			b.drop(reason, 1)
		}
		a.leave(a.from, int64(len(rec)))
		a.from++
	}
	a.passMessages(from, a.from)
	a.head.Seek(a.from)
	r.mu.Lock()
	for r.head < len(r.pending) && r.pending[r.head].off < a.from {
		r.head++ // a flight trimmed: dropped, not sent again
	}
	if r.head == len(r.pending) && a.from > r.next {
		r.next = a.from
	}
	r.mu.Unlock()
}

// storeBacklog publishes the largest backlog of the bridge's rules, in
// bytes and in messages, and each rule's oldest waiting message, for
// Status. Called by the housekeeping goroutine.
func (b *Bridge) storeBacklog() {
	var n int64
	var msgs uint64
	oldest := make([]oldestMark, len(b.rules))
	for i, r := range b.rules {
		a := &r.backlog
		n, msgs = max(n, a.bytes), max(msgs, a.messages)
		oldest[i].counted = true
		if off, ok := a.takes.first(a.from); ok {
			oldest[i].found, oldest[i].off = true, off
			if rec, err := b.log.Read(off); err == nil {
				if h, ok := qos.PeekMessage(rec); ok {
					oldest[i].created = h.Created
				}
			}
		}
	}
	b.backlogBytes.Store(n)
	b.backlogMessages.Store(msgs)
	b.mu.Lock()
	b.oldestMarks = oldest
	b.mu.Unlock()
}
