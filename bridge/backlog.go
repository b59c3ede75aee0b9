package bridge

import (
	"context"
	"errors"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// backlog is what one forward rule holds back in the log: the bytes of the
// records from its position to the end. It is kept incrementally (each
// record is read once when it arrives and once when the rule passes it), by
// the bridge's housekeeping goroutine only.
type backlog struct {
	from, to   uint64 // the records in [from, to) are counted
	bytes      int64
	head, tail qos.LogReader // at from and at to: sequential reads, 4 KiB at a time
}

// account brings the count up to date: records the rule passed leave it,
// new records join it.
func (b *Bridge) account(r *rule) {
	a := &r.backlog
	low := r.low()
	if a.head == nil || low < a.from || low > a.to {
		*a = backlog{from: low, to: low, head: b.log.NewReader(low), tail: b.log.NewReader(low)}
	}
	a.bytes -= readUpTo(a.head, low)
	a.from = low
	end := b.log.LastOffset() + 1
	a.bytes += readUpTo(a.tail, end)
	a.to = end
	a.bytes = max(a.bytes, 0)
}

// readUpTo reads r up to (not including) end, without waiting, and returns
// the bytes of the records read. Holes and removed records count nothing.
func readUpTo(r qos.LogReader, end uint64) int64 {
	var n int64
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
		n += int64(len(rec))
	}
	return n
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
func (b *Bridge) trim(r *rule) {
	a := &r.backlog
	cutAge := b.cfg.MaxBacklogAge
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
		m := b.decode(a.from, rec)
		forwarded := b.takes(r, m)
		if !overBytes {
			if !forwarded {
				if cutAge == 0 {
					break
				}
				a.bytes -= int64(len(rec)) // not the rule's: passed on the way to an old message
				a.from++
				continue
			}
			if cutAge == 0 || time.Since(time.Unix(0, m.Created)) <= cutAge {
				break
			}
		}
		if forwarded {
			reason := DropMaxAge
			if overBytes {
				reason = DropMaxBytes
			}
			b.drop(reason, 1)
		}
		a.bytes -= int64(len(rec))
		a.from++
	}
	a.head.Seek(a.from)
	r.mu.Lock()
	if len(r.pending) == 0 && a.from > r.next {
		r.next = a.from
	}
	r.mu.Unlock()
}
