package qos

import (
	"container/heap"
	"time"
)

// timer is a moment a session is due for something: its will published
// (will) or its end (its expiry). A session's times change; an entry
// whose time is no longer the session's is stale and skipped when due.
type timer struct {
	at   int64 // Unix seconds
	s    *session
	will bool
}

// timerHeap orders timers by time: the timer loop sleeps until the
// earliest, not scanning every session every second.
type timerHeap []timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)        { *h = append(*h, x.(timer)) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = timer{}
	*h = old[:len(old)-1]
	return t
}

// pushTimerLocked adds a timer and wakes the loop if it is the earliest.
// Called with e.mu held.
func (e *Engine) pushTimerLocked(at int64, s *session, will bool) {
	heap.Push(&e.timers, timer{at: at, s: s, will: will})
	if e.timers[0].s == s && e.timers[0].at == at {
		select {
		case e.timerWake <- struct{}{}:
		default:
		}
	}
}

// timerLoop publishes due wills and ends expired sessions.
func (e *Engine) timerLoop() {
	defer e.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		e.mu.Lock()
		e.fireLocked(e.now())
		wait := time.Hour
		if len(e.timers) > 0 {
			wait = time.Until(time.Unix(e.timers[0].at, 0))
		}
		e.mu.Unlock()
		t.Reset(max(wait, 10*time.Millisecond))
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		case <-e.timerWake:
		}
	}
}

// fireLocked runs every timer due at now. Called with e.mu held.
func (e *Engine) fireLocked(now int64) {
	for len(e.timers) > 0 && e.timers[0].at <= now {
		t := heap.Pop(&e.timers).(timer)
		s := t.s
		if e.sessions[s.id] != s {
			continue
		}
		s.mu.Lock()
		online := s.conn.Load() != nil
		var will *Message
		end := false
		switch {
		case online:
		case t.will && s.willDue == t.at && s.will != nil:
			will, s.will, s.willDue = s.will, nil, 0
		case !t.will && s.expiresAt == t.at:
			end = true
			if s.will != nil { // the session ends first [MQTT-3.1.3-9]
				will, s.will, s.willDue = s.will, nil, 0
			}
		}
		s.mu.Unlock()
		if will != nil {
			e.publishAsync(will)
		}
		if end {
			e.stats.expired.Add(1)
			e.appendRecord(EncodeEnd(ClientRef{Client: s.id, Ref: s.ref.Load()}))
			e.endSessionLocked(s, false)
		}
	}
}
