package qos

import "sync"

// Entry is one message in a Queue: its log offset and, while it is fresh,
// the decoded message shared by every queue it was offered to, with what
// the consumer's subscriptions grant it.
type Entry struct {
	Offset uint64
	Msg    *Message
	// IDs are the identifiers of the matching subscriptions
	// [MQTT-3.3.4-3]; shared, read only.
	IDs []int
	// wait is, for a shared group's QoS 0 hand-out, the GroupHandout
	// record to be durable before it is written; drop says it is not
	// handed out (see connection.handOutZeroLocked). (The small fields
	// last: an Entry is copied per delivery, and stays 56 bytes.)
	wait uint64
	// QoS is the delivery QoS: the message's, at most the highest of the
	// matching subscriptions' [MQTT-3.8.4-8].
	QoS byte
	// Retain is the RETAIN flag of the delivery [MQTT-3.3.1-12].
	Retain bool
	// atSubscribe marks a retained message sent at a SUBSCRIBE, not taken
	// from a queue (see Deliver.AtSubscribe).
	atSubscribe bool
	drop        bool
}

// Queue is one consumer's backlog: the log offsets it must still take, in
// log order. The log is the queue; a Queue holds at most Limit recent
// entries in RAM as a shortcut. Past that bound, and while the consumer is
// offline, it holds only a position, and the consumer scans the log from it
// (scan mode) until it has caught up with the log's end; then it takes
// offers again (push mode).
//
// One goroutine offers, in increasing offset order and only offsets the log
// already holds (the dispatcher); one goroutine takes (the consumer). Every
// offset from the first Offer or scan position on is either queued, or
// found by the consumer's scan: none is lost and none is taken twice.
type Queue struct {
	mu    sync.Mutex
	next  uint64 // every matching offset below next is queued or taken
	ring  []Entry
	head  int
	scan  bool
	limit int
	wake  chan struct{}
	// clean is true while the queue is parked with nothing pending at the
	// park: then its backlog starts at missed, the first offer it turned
	// down (0: none yet: a Log's offsets start at 1), not at next.
	clean  bool
	missed uint64
}

// NewQueue returns a queue in scan mode at position next, holding at most
// limit entries in RAM (limit < 1 means 1).
func NewQueue(next uint64, limit int) *Queue {
	return &Queue{next: next, scan: true, limit: max(limit, 1), wake: make(chan struct{}, 1)}
}

// Interested reports whether an Offer of offset could change the queue: it
// is in push mode, or parked clean and has turned no offer down yet. The
// dispatcher asks first and skips matching a message against a queue whose
// scan will find it anyway.
func (q *Queue) Interested(offset uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return offset >= q.next && (!q.scan || (q.clean && q.missed == 0))
}

// Offer queues a matching message. It returns false if the queue is in scan
// mode or has just overflowed into it: the consumer's scan will find it.
func (q *Queue) Offer(e Entry) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if e.Offset < q.next {
		return false
	}
	if q.scan {
		if q.clean && q.missed == 0 {
			q.missed = e.Offset
		}
		return false
	}
	if len(q.ring)-q.head >= q.limit {
		q.scan, q.clean = true, false // q.next stays at e.Offset: the scan resumes there
		q.signal()
		return false
	}
	q.ring = append(q.ring, e)
	q.next = e.Offset + 1
	q.signal()
	return true
}

func (q *Queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Wake returns a channel that receives after an Offer or a Park; the
// consumer waits on it when Pop and Scan have nothing for it.
func (q *Queue) Wake() <-chan struct{} { return q.wake }

// Pop takes the oldest queued entry.
func (q *Queue) Pop() (Entry, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.ring) {
		return Entry{}, false
	}
	e := q.ring[q.head]
	q.ring[q.head] = Entry{}
	q.head++
	if q.head == len(q.ring) {
		q.ring, q.head = q.ring[:0], 0
	}
	return e, true
}

// Requeue gives back an entry the consumer popped but could not deliver (it
// lost its connection first): the entry goes back to the head of the RAM
// queue, or, if the queue was parked meanwhile, the scan resumes at it.
func (q *Queue) Requeue(e Entry) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.scan {
		q.next = min(q.next, e.Offset)
		q.clean, q.missed = false, 0
		return
	}
	q.ring = append([]Entry{e}, q.ring[q.head:]...)
	q.head = 0
}

// Scan reports whether the consumer must read the log, and from where: the
// queue is in scan mode and has no RAM entries left before the position.
func (q *Queue) Scan() (from uint64, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.next, q.scan && q.head == len(q.ring)
}

// Scanned moves the scan position past offset: the consumer has taken or
// skipped every offset up to and including it.
func (q *Queue) Scanned(offset uint64) {
	q.mu.Lock()
	q.next = max(q.next, offset+1)
	q.mu.Unlock()
}

// CatchUp switches the queue back to push mode if the scan has reached the
// dispatcher. end must return the dispatcher's position: every offset below
// it has been, or is being, offered, and no offer at or above it has begun
// (the dispatcher moves its position before it offers). The scan must only
// read offsets below that position. end is called under the queue's lock,
// which is what makes the switch safe against a concurrent Offer.
func (q *Queue) CatchUp(end func() uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.scan && q.head == len(q.ring) && q.next >= end() {
		q.scan = false
	}
	return !q.scan
}

// Park drops the RAM entries and puts the queue in scan mode at the oldest
// one not taken: the consumer went offline, and its backlog stays in the
// log. progress is the dispatcher's completed position (every offset below
// it has been offered to every queue it matches): a queue that had taken
// everything it was offered has no backlog below it.
func (q *Queue) Park(progress uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.clean, q.missed = false, 0
	switch {
	case q.head < len(q.ring):
		q.next = q.ring[q.head].Offset
	case !q.scan:
		q.next = max(q.next, progress)
		q.clean = true
	}
	q.ring, q.head, q.scan = nil, 0, true
	q.signal()
}

// Resume is called when the consumer comes back: a queue parked clean
// starts its scan at the first offer it turned down, or at progress if it
// turned none down, instead of reading what it already knows holds nothing
// for it.
func (q *Queue) Resume(progress uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.clean {
		if q.missed > 0 {
			q.next = max(q.next, q.missed)
		} else {
			q.next = max(q.next, progress)
		}
		q.clean, q.missed = false, 0
	}
}

// Position returns the offset from which the queue's backlog starts: the
// oldest RAM entry, or where its scan must start. The log must keep every
// record from it on. progress is as for Park.
func (q *Queue) Position(progress uint64) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.head < len(q.ring):
		return q.ring[q.head].Offset
	case !q.scan:
		return max(q.next, progress)
	case q.clean && q.missed > 0:
		return max(q.next, q.missed)
	case q.clean:
		return max(q.next, progress)
	}
	return q.next
}

// Len returns the number of entries held in RAM.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.ring) - q.head
}
