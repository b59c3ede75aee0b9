package qos

import "time"

// Crash stops the engine as a kill -9 would, as far as the log is
// concerned: its goroutines end, no last checkpoint is written, and a new
// Engine over the same Log and Snapshots recovers from them.
func (e *Engine) Crash() {
	e.runMu.Lock()
	e.closed = true
	e.runMu.Unlock()
	e.cancel()
	e.stopDispatch()
	e.wg.Wait()
}

// Checkpoint writes a checkpoint now, as the dispatcher would.
func (e *Engine) Checkpoint() error {
	return e.checkpoint(e.shadowCopy())
}

// WaitDispatched waits until the dispatcher's shadow state covers every
// record in the log, so that Checkpoint snapshots them.
func (e *Engine) WaitDispatched() {
	last := e.log.LastOffset()
	for {
		e.shadowMu.Lock()
		next := e.shadowNext
		e.shadowMu.Unlock()
		if next > last {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// FannedOut is the offset below which the dispatcher has offered every
// record to every queue.
func (e *Engine) FannedOut() uint64 { return e.fannedOut.Load() }

// LockSession takes the session's lock, as a goroutine waiting for room
// in the log while it holds it would; the returned func releases it.
func (cl *Client) LockSession() (unlock func()) {
	cl.c.s.mu.Lock()
	return cl.c.s.mu.Unlock
}

// FloorWalk runs the checkpoint's walk of the sessions and groups over
// the current state, and returns how long it took.
func (e *Engine) FloorWalk() time.Duration {
	e.snaps.mu.Lock() // one walk at a time, as for checkpoints
	defer e.snaps.mu.Unlock()
	st, off := e.shadowCopy()
	start := time.Now()
	e.floor(st, off)
	return time.Since(start)
}

// DispatcherWakes counts the times the dispatcher goroutine woke to read.
func (e *Engine) DispatcherWakes() uint64 { return e.disp.wakes.Load() }

// WaitParked waits until the dispatcher goroutine is parked with no wake
// pending: from then on a durability event finds it idle (disp.mu free)
// and dispatches a quiet batch itself, until an event wakes it. Sound
// while no durability event runs meanwhile: no wake can come after the
// empty channel is seen, so parks one ahead of wakes means parked for good.
func (e *Engine) WaitParked() {
	d := &e.disp
	for {
		empty := len(d.wake) == 0
		parks := d.parks.Load()
		if empty && parks == d.wakes.Load()+1 || e.ctx.Err() != nil {
			return
		}
		time.Sleep(10 * time.Microsecond)
	}
}

// GroupTakenHeld returns how many offsets the dispatcher's shadow state
// holds taken for shared group key.
func (e *Engine) GroupTakenHeld(key string) int {
	e.shadowMu.Lock()
	defer e.shadowMu.Unlock()
	return len(e.shadow.GroupTaken[key])
}
