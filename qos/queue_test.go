package qos_test

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/edgemq/edgemq/qos"
)

// TestQueueTakesEveryOffsetOnceInOrder runs a dispatcher that appends to a
// simulated log and offers every third offset, against a consumer that pops,
// scans, catches up and parks at random. The consumer must see exactly the
// matching offsets, each once, in order. The simulated log's offsets start
// at 1, as a Log's do: a Queue never sees offset 0 (its missed field uses 0
// for "none yet").
func TestQueueTakesEveryOffsetOnceInOrder(t *testing.T) {
	for _, limit := range []int{1, 4, 64} {
		const n = 20000
		matches := func(o uint64) bool { return o%3 == 0 }
		var end atomic.Uint64  // the dispatcher's position: moves before its offer
		var done atomic.Uint64 // its completed position: moves after the offer
		end.Store(1)
		done.Store(1)
		q := qos.NewQueue(1, limit)

		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // the dispatcher: append, then offer
			defer wg.Done()
			for o := uint64(1); o <= n; o++ {
				end.Store(o + 1)
				if matches(o) {
					q.Offer(qos.Entry{Offset: o})
				}
				done.Store(o + 1)
			}
		}()

		var got []uint64
		rng := rand.New(rand.NewPCG(1, uint64(limit)))
		for len(got) < n/3 {
			if e, ok := q.Pop(); ok {
				got = append(got, e.Offset)
				continue
			}
			if from, ok := q.Scan(); ok {
				if from < end.Load() { // the record exists: read it
					if matches(from) {
						got = append(got, from)
					}
					q.Scanned(from)
				} else {
					q.CatchUp(end.Load)
				}
				continue
			}
			if rng.IntN(50) == 0 { // offline, then back
				q.Park(done.Load())
				if p := q.Position(done.Load()); p > uint64(len(got)+1)*3 {
					t.Fatalf("limit %d: parked position %d is past the first untaken match %d", limit, p, (len(got)+1)*3)
				}
				q.Resume(done.Load())
			}
		}
		wg.Wait()
		for i, o := range got {
			if o != uint64(i+1)*3 {
				t.Fatalf("limit %d: entry %d is offset %d, want %d", limit, i, o, (i+1)*3)
			}
		}
		if _, ok := q.Pop(); ok {
			t.Fatalf("limit %d: queue holds more than the matching offsets", limit)
		}
	}
}

func TestQueueParkKeepsOldestUntaken(t *testing.T) {
	q := qos.NewQueue(10, 8)
	if !q.CatchUp(func() uint64 { return 10 }) {
		t.Fatal("queue at the log's end did not switch to push mode")
	}
	for _, o := range []uint64{12, 15, 19} {
		if !q.Offer(qos.Entry{Offset: o}) {
			t.Fatalf("offer %d refused in push mode", o)
		}
	}
	if e, _ := q.Pop(); e.Offset != 12 {
		t.Fatalf("pop = %d, want 12", e.Offset)
	}
	q.Park(30)
	if from, ok := q.Scan(); !ok || from != 15 {
		t.Fatalf("after park: scan from %d (%v), want 15", from, ok)
	}
	if q.Offer(qos.Entry{Offset: 20}) {
		t.Fatal("a parked queue took an offer")
	}
	if q.Len() != 0 || q.Position(30) != 15 {
		t.Fatalf("parked queue: len %d position %d", q.Len(), q.Position(30))
	}
}

// TestQueueParkedCleanSkipsWhatHoldsNothing: a queue parked with nothing
// pending keeps no backlog below the dispatcher's progress, and resumes at
// the first offer it turned down.
func TestQueueParkedCleanSkipsWhatHoldsNothing(t *testing.T) {
	q := qos.NewQueue(1, 8)
	q.CatchUp(func() uint64 { return 1 })
	q.Offer(qos.Entry{Offset: 3})
	q.Pop()
	q.Park(10)
	if p := q.Position(50); p != 50 {
		t.Fatalf("position of an idle parked queue = %d, want the progress 50", p)
	}
	q.Offer(qos.Entry{Offset: 60}) // turned down: it is parked
	q.Offer(qos.Entry{Offset: 70})
	if p := q.Position(80); p != 60 {
		t.Fatalf("position = %d, want 60, the first offer turned down", p)
	}
	q.Resume(80)
	if from, ok := q.Scan(); !ok || from != 60 {
		t.Fatalf("resumed scan from %d (%v), want 60", from, ok)
	}
}

func TestQueueRequeue(t *testing.T) {
	q := qos.NewQueue(1, 8)
	q.CatchUp(func() uint64 { return 1 })
	for _, o := range []uint64{2, 4, 6} {
		q.Offer(qos.Entry{Offset: o})
	}
	e, _ := q.Pop()
	q.Requeue(e) // push mode: back at the head
	if e2, _ := q.Pop(); e2.Offset != 2 {
		t.Fatalf("after requeue in push mode, pop = %d, want 2", e2.Offset)
	}
	e, _ = q.Pop() // 4
	q.Park(10)     // 6 is still queued: the scan resumes there
	q.Requeue(e)   // and now at 4
	if from, ok := q.Scan(); !ok || from != 4 {
		t.Fatalf("after requeue in scan mode, scan from %d (%v), want 4", from, ok)
	}
	e, _ = qos.Entry{Offset: 20}, true
	q2 := qos.NewQueue(1, 8)
	q2.CatchUp(func() uint64 { return 1 })
	q2.Offer(e)
	q2.Pop()
	q2.Park(30) // clean: nothing pending
	q2.Requeue(e)
	if p := q2.Position(30); p != 20 {
		t.Fatalf("clean parked queue after requeue: position %d, want 20", p)
	}
}

func TestQueueInterested(t *testing.T) {
	q := qos.NewQueue(5, 8)
	if q.Interested(9) {
		t.Fatal("a queue scanning from its start wants no offers")
	}
	q.CatchUp(func() uint64 { return 5 })
	if !q.Interested(9) || q.Interested(4) {
		t.Fatal("push mode: offers at or after next only")
	}
	q.Park(10)
	if !q.Interested(12) {
		t.Fatal("parked clean: the first offer turned down marks the backlog")
	}
	q.Offer(qos.Entry{Offset: 12})
	if q.Interested(13) {
		t.Fatal("parked with a backlog: the scan finds the rest")
	}
}
