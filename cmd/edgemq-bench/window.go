package main

import (
	"sync/atomic"
	"time"
)

// window is the closed loop of the throughput scenarios: at most limit
// messages are in flight end to end, that is published and not yet seen by
// every subscriber that should get them. A publisher takes a token per
// message; the token comes back when the message's last copy is delivered,
// never for an acknowledgement and never for a later message that skips
// past it. A message still missing lossAfter after it was sent is presumed
// lost: its token comes back then, counted in reclaimed. So a broker that
// drops messages gets less load, not more, as it would from devices that
// wait for their data to arrive, and the loop does not stall for good.
type window struct {
	tokens    chan struct{}
	copies    uint64 // deliveries that complete one message (fan-out: the subscribers)
	lossAfter time.Duration
	pubs      []pubSlots
	reclaimed atomic.Int64
}

// windowRing is the number of slots per publisher; a message older than
// windowRing of its publisher's messages is presumed lost when its slot is
// reused.
const windowRing = 1 << 16

// pubSlots is one publisher's messages in flight, in a ring by sequence.
type pubSlots struct {
	slots []windowSlot
	next  atomic.Uint64 // sequence of the next message to be sent
	scan  uint64        // the reclaim scan's position, owned by reclaim
}

// windowSlot is one message: state packs (sequence+1)<<16 | copies still
// missing, so a late delivery of a reclaimed or reused slot changes nothing.
type windowSlot struct {
	state atomic.Uint64
	sent  atomic.Int64 // send time, ns
}

func newWindow(limit, copies, pubs int, lossAfter time.Duration) *window {
	w := &window{tokens: make(chan struct{}, limit), copies: uint64(min(copies, 0xffff)),
		lossAfter: lossAfter, pubs: make([]pubSlots, pubs)}
	for range limit {
		w.tokens <- struct{}{}
	}
	for i := range w.pubs {
		w.pubs[i].slots = make([]windowSlot, windowRing)
	}
	return w
}

// give returns one token; the channel never holds more than limit.
func (w *window) give() {
	select {
	case w.tokens <- struct{}{}:
	default:
	}
}

// take waits for a token for message seq of publisher pub (false: done was
// closed first) and records the message as in flight, sent now.
func (w *window) take(done <-chan struct{}, pub int, seq uint64) bool {
	select {
	case <-w.tokens:
	case <-done:
		return false
	}
	ps := &w.pubs[pub]
	sl := &ps.slots[seq%windowRing]
	sl.sent.Store(time.Now().UnixNano())
	if old := sl.state.Swap((seq+1)<<16 | w.copies); old&0xffff != 0 {
		w.reclaimed.Add(1) // windowRing messages later and still missing
		w.give()
	}
	ps.next.Store(seq + 1)
	return true
}

// delivered records one unique delivery of message seq of publisher pub.
func (w *window) delivered(pub uint32, seq uint64) {
	if int(pub) >= len(w.pubs) {
		return
	}
	sl := &w.pubs[pub].slots[seq%windowRing]
	for {
		v := sl.state.Load()
		if v>>16 != seq+1 || v&0xffff == 0 {
			return // reclaimed, reused, or complete already
		}
		if sl.state.CompareAndSwap(v, v-1) {
			if (v-1)&0xffff == 0 {
				w.give()
			}
			return
		}
	}
}

// reclaim gives back the tokens of messages sent before now-lossAfter and
// still missing. One goroutine calls it; each call scans only the messages
// sent since the oldest one still in flight.
func (w *window) reclaim(now time.Time) {
	cutoff := now.Add(-w.lossAfter).UnixNano()
	for i := range w.pubs {
		ps := &w.pubs[i]
		next := ps.next.Load()
		if next > ps.scan+windowRing {
			ps.scan = next - windowRing // older slots were reused by take
		}
		for ps.scan < next {
			sl := &ps.slots[ps.scan%windowRing]
			v := sl.state.Load()
			if v>>16 != ps.scan+1 || v&0xffff == 0 {
				ps.scan++ // complete, or reused
				continue
			}
			if sl.sent.Load() > cutoff {
				break // this and every later message is younger
			}
			if sl.state.CompareAndSwap(v, v&^0xffff) {
				w.reclaimed.Add(1)
				w.give()
				ps.scan++
			} // else delivered meanwhile: look again
		}
	}
}
