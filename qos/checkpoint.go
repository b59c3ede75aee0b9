package qos

import (
	"fmt"
	"io"
	"time"
)

// Checkpoints bound replay and let the log be trimmed. The dispatcher
// applies every record it reads to a shadow State; every
// CheckpointInterval it hands a copy to the checkpointer, which
//
//  1. takes from the live sessions what the records do not say yet: each
//     queue's position (it also knows what did not match) and the flights
//     as they are (some Deliver or Complete records may not be durable);
//  2. appends a checkpoint record and waits for it, so every record
//     appended before it (the Deliver records the positions rely on) is
//     durable too;
//  3. saves the snapshot (Snapshots.Save);
//  4. commits the engine's cursor to the lowest offset anything still
//     needs: the snapshot's offset, each queue's position, each unreleased
//     flight. The log may then remove whole segments below it.

// checkpointLoop writes the snapshots the dispatcher hands it.
func (e *Engine) checkpointLoop() {
	defer e.wg.Done()
	for {
		select {
		case <-e.ctx.Done():
			return
		case c := <-e.checks:
			if err := e.checkpoint(c.st, c.offset); err != nil {
				e.lg.Error("checkpoint failed: replay will be longer and the log is not trimmed", "offset", c.offset, "error", err)
			}
		}
	}
}

// checkpoint runs the steps above for st, the state after every record
// below offset.
func (e *Engine) checkpoint(st *State, offset uint64) error {
	started := time.Now()
	progress := e.fannedOut.Load()
	floor := offset
	e.mu.Lock()
	for id, s := range e.sessions {
		s.mu.Lock()
		pos := s.queue.Position(progress)
		if c := s.conn.Load(); c != nil {
			for _, sc := range c.scanned { // read past, not yet taken
				if sc.g == nil {
					pos = min(pos, sc.Offset)
				}
			}
		}
		floor = min(floor, pos)
		ss := st.Sessions[id]
		if ss != nil && s.persistent {
			ss.Next = max(ss.Next, pos)
			clear(ss.Inflight)
		}
		for pid, f := range s.flights {
			if !f.released {
				floor = min(floor, f.offset)
			}
			if ss != nil && s.persistent {
				in := Inflight{Offset: f.offset, QoS: f.qos, Released: f.released}
				if f.group != nil {
					in.Group = f.group.key
				}
				ss.Inflight[pid] = in
			}
		}
		if c := s.conn.Load(); c != nil {
			for _, sc := range c.scanned {
				floor = min(floor, sc.Offset)
			}
		}
		s.mu.Unlock()
	}
	for key, g := range e.groups {
		pos := g.queue.Position(progress)
		g.mu.Lock()
		for _, r := range g.returned {
			pos = min(pos, r.Offset)
		}
		g.mu.Unlock()
		floor = min(floor, pos)
		if _, ok := st.GroupNext[key]; ok {
			st.GroupNext[key] = max(st.GroupNext[key], pos)
		}
	}
	e.mu.Unlock()

	if err := e.appendWait(EncodeCheckpoint(offset)); err != nil {
		e.stats.checkpointFailures.Add(1)
		return fmt.Errorf("checkpoint record: %w", err)
	}
	if err := e.cfg.Snapshots.Save(offset, func(w io.Writer) error { return WriteSnapshot(w, st, offset) }); err != nil {
		e.stats.checkpointFailures.Add(1)
		return fmt.Errorf("save snapshot: %w", err)
	}
	if err := e.cursor.Commit(floor); err != nil {
		e.stats.checkpointFailures.Add(1)
		return fmt.Errorf("commit cursor at %d: %w", floor, err)
	}
	e.stats.checkpoints.Add(1)
	e.lg.Debug("checkpoint", "offset", offset, "floor", floor, "sessions", len(st.Sessions), "seconds", time.Since(started).Seconds())
	return nil
}
