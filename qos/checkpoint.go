package qos

import (
	"context"
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
//  2. appends a checkpoint record, waits for it and makes the log durable
//     up to it (Log.Sync: under sync "interval" an append returns before
//     any fsync), so every record the snapshot covers, and every Deliver
//     record the positions rely on, survives whatever the snapshot
//     survives: a power cut must never leave a snapshot past the end of
//     the log;
//  3. saves the snapshot (Snapshots.Save);
//  4. commits the engine's cursor to the lowest offset anything still
//     needs: the snapshot's offset, each queue's position, each unreleased
//     flight. The log may then remove whole segments below it.

// checkpointLoop checkpoints every CheckpointInterval. When no record
// came since the last one it only trims: positions move and consumers end
// without records (a clean session's deliveries and its end are not
// logged), and the log must follow them even when nothing is written (a
// full log refuses publishes until it is trimmed).
func (e *Engine) checkpointLoop() {
	defer e.wg.Done()
	if e.cfg.Snapshots == nil {
		return
	}
	t := time.NewTicker(e.cfg.CheckpointInterval)
	defer t.Stop()
	var last uint64
	failures := 0
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
		st, offset := e.shadowCopy()
		var err error
		if offset == last {
			// Nothing new: the snapshot on disk is current.
			if floor := e.floor(nil, offset); floor > e.cursor.Offset() {
				err = e.cursor.Commit(floor)
			}
			if err == nil {
				e.stats.lastCheckpoint.Store(e.cfg.Now().UnixNano())
			}
		} else if err = e.checkpoint(st, offset); err == nil {
			last = offset
		}
		switch {
		case err != nil:
			failures++
			if failures == 1 || failures%60 == 0 {
				e.lg.Error("checkpoint failed: the log is not trimmed and replay grows until one succeeds",
					"offset", offset, "failures", failures, "error", err)
			}
		case failures > 0:
			e.lg.Info("checkpoint succeeded again", "offset", offset, "failures_before", failures)
			failures = 0
		}
	}
}

// checkpoint runs the steps above for st, the state after every record
// below offset.
func (e *Engine) checkpoint(st *State, offset uint64) error {
	started := time.Now()
	floor := e.floor(st, offset)
	if err := e.appendWait(EncodeCheckpoint(offset)); err != nil {
		e.stats.checkpointFailures.Add(1)
		return fmt.Errorf("checkpoint record: %w", err)
	}
	if err := e.log.Sync(context.Background()); err != nil { // the one at Close too
		e.stats.checkpointFailures.Add(1)
		return fmt.Errorf("sync the log: %w", err)
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
	e.stats.lastCheckpoint.Store(e.cfg.Now().UnixNano())
	e.lg.Debug("checkpoint", "offset", offset, "floor", floor, "sessions", len(st.Sessions), "seconds", time.Since(started).Seconds())
	return nil
}

// floor returns the lowest offset below upTo the engine still needs: each
// queue's position, each unreleased flight, what a scan read and nobody
// took, what members gave back to a group. With st, it also brings st up
// to the live sessions (step 1 above).
func (e *Engine) floor(st *State, upTo uint64) uint64 {
	progress := e.fannedOut.Load()
	floor := upTo
	heldByClean := map[*group]uint64{}
	e.mu.Lock()
	for id, s := range e.sessions {
		s.mu.Lock()
		pos := s.queue.Position(progress)
		if c := s.conn.Load(); c != nil {
			for _, sc := range c.scanned { // read past, not yet taken
				floor = min(floor, sc.Offset)
				if sc.g == nil { // the session's own: its position too
					pos = min(pos, sc.Offset)
				}
			}
		}
		floor = min(floor, pos)
		var ss *SessionState
		if st != nil {
			ss = st.Sessions[id]
		}
		if ss != nil && s.persistent {
			ss.Next = max(ss.Next, pos)
			clear(ss.Inflight)
		}
		for pid, f := range s.flights {
			if !f.released {
				floor = min(floor, f.offset)
			}
			if f.group != nil && !s.persistent {
				// A clean member's message is lost with it at a restart:
				// the group takes it again from its position.
				if h, ok := heldByClean[f.group]; !ok || f.offset < h {
					heldByClean[f.group] = f.offset
				}
			}
			if ss != nil && s.persistent {
				in := Inflight{Offset: f.offset, QoS: f.qos, Released: f.released}
				if f.group != nil {
					in.Group = f.group.key
				}
				ss.Inflight[pid] = in
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
		if h, ok := heldByClean[g]; ok {
			pos = min(pos, h)
		}
		floor = min(floor, pos)
		if st != nil {
			if _, ok := st.GroupNext[key]; ok {
				st.GroupNext[key] = max(st.GroupNext[key], pos)
			}
		}
	}
	e.mu.Unlock()
	return floor
}
