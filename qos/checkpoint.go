package qos

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// Checkpoints bound replay and let the log be trimmed. The dispatcher
// applies every record it reads to a shadow State; every
// CheckpointInterval it hands a copy to the checkpointer, which
//
//  1. takes from the live sessions what the records do not say yet: each
//     queue's position (it also knows what did not match) and the flights
//     as they are (some Deliver or Complete records may not be durable),
//     and from the shared groups where each one's backlog stands and
//     what it lent out below that and may have to hand out again (owed);
//  2. appends a checkpoint record, waits for it and makes the log durable
//     up to it (Log.Sync: under sync "interval" an append returns before
//     any fsync), so every record the snapshot covers, and every Deliver
//     record the positions rely on, survives whatever the snapshot
//     survives: a power cut must never leave a snapshot past the end of
//     the log;
//  3. saves the snapshot (Snapshots.Save, which keeps it and the one
//     before it);
//  4. commits the engine's cursor to the lowest offset anything still
//     needs: each queue's position (a session's only while it has a
//     subscription of its own), each unreleased flight (but a retained
//     message's sent at a SUBSCRIBE, which holds its message), and the
//     offset of the older snapshot kept, so that recovery from it, when
//     the newest reads back damaged, finds every record after it. The log
//     may then remove whole segments below it. A floor below the log's
//     first offset (retention's age or size limit removed what it
//     pointed at, counted by the log) commits the first offset
//     (Cursor.Commit).
//
// When nothing came since the newest snapshot but its own checkpoint
// record, or when a checkpoint fails (a full log refuses its record), the
// checkpointer only trims: positions move and consumers end without
// records (a clean session's deliveries and its end are not logged), and
// the log must follow them with the snapshots already on disk (a full log
// refuses publishes until it is trimmed). The first idle tick after
// activity takes one more snapshot, of the same state, so that the older
// snapshot kept no longer holds the records of the busy period: the
// trim point then follows the consumers all the way.

// snapshotsKept is what the checkpointer knows of the snapshots the store
// keeps. mu serialises checkpoints and trims.
type snapshotsKept struct {
	mu sync.Mutex
	// newest is the offset of the newest snapshot (saved, or recovered
	// from; 0: none), older the one saved before it (until this engine
	// saves one: where the cursor stood at recovery, which the previous
	// process kept below it; 0: none).
	newest, older uint64
	// settled: newest is the extra snapshot of an idle tick (see above).
	settled bool
}

// checkpointLoop checkpoints every CheckpointInterval, or trims.
func (e *Engine) checkpointLoop() {
	defer e.wg.Done()
	if e.cfg.Snapshots == nil {
		return
	}
	t := time.NewTicker(e.cfg.CheckpointInterval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
		st, offset := e.shadowCopy()
		e.snaps.mu.Lock()
		// Nothing new: every record from the newest snapshot's offset on
		// is a checkpoint record.
		idle := e.shadowLive.Load() <= e.snaps.newest
		again := idle && !e.snaps.settled && offset > e.snaps.newest
		e.snaps.mu.Unlock()
		var err error
		if !idle || again {
			if err = e.checkpoint(st, offset); err == nil {
				e.snaps.mu.Lock()
				e.snaps.settled = idle
				e.snaps.mu.Unlock()
			} else if terr := e.trim(); terr != nil {
				e.lg.Debug("trim after a failed checkpoint failed too", "error", terr)
			}
		} else if err = e.trim(); err == nil {
			e.stats.lastCheckpoint.Store(e.cfg.Now().UnixNano()) // the snapshot on disk is current
		}
		switch {
		case err != nil:
			failures++
			if failures == 1 || failures%60 == 0 {
				e.lg.Error("checkpoint failed: the log is trimmed only to the snapshots on disk, and replay grows until one succeeds",
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
	e.snaps.mu.Lock()
	defer e.snaps.mu.Unlock()
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
	e.shadowMu.Lock()
	e.shadow.settleGroups(st, offset)
	e.shadowMu.Unlock()
	if offset != e.snaps.newest { // a Save of the same offset replaced it
		e.snaps.older, e.snaps.newest = e.snaps.newest, offset
	}
	if e.snaps.older > 0 {
		floor = min(floor, e.snaps.older)
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

// trim commits the engine's cursor to the lowest offset needed with the
// snapshots already on disk, if that is past where it stands.
func (e *Engine) trim() error {
	e.snaps.mu.Lock()
	defer e.snaps.mu.Unlock()
	if e.snaps.newest == 0 {
		return nil // no snapshot: recovery replays the whole log
	}
	floor := e.floor(nil, e.snaps.newest)
	if e.snaps.older > 0 {
		floor = min(floor, e.snaps.older)
	}
	if floor > e.cursor.Offset() {
		return e.cursor.Commit(floor)
	}
	return nil
}

// floor returns the lowest offset below upTo the engine still needs: each
// queue's position, each unreleased flight, what a scan read and nobody
// took, what members gave back to a group. With st, it also brings st up
// to the live sessions and groups (step 1 above): a group's backlog
// starts where its queue stands, what it lent out below that and may have
// to hand out again is State.GroupOwed, and what members took from there
// on State.GroupTaken; once the snapshot is saved, the dispatcher's state
// drops what it holds taken below the new position (State.settleGroups).
//
// It holds one lock at a time, never for the whole walk: Engine.mu to
// list the sessions and groups (listLiveLocked) and reset the groups'
// lent, then each session's lock, then
// each group's, so a Connect, SUBSCRIBE, UNSUBSCRIBE or DISCONNECT waits
// for the list at most, and a session's publishes, deliveries and acknowledgements for
// the reading of that session (BenchmarkCheckpointSessions).
//
// Sessions and groups are read at different moments, and a message moves
// between a group and a member (taken, found by the member's scan of the
// group's backlog, given back, returned by a member going away) under
// both their locks in between. One that went from a member to its group
// after the member was read is in the group when the group is read, or
// was taken from it again. One taken from a group after its member was
// read would be in neither walk: so each group keeps the offsets it has
// handed out since the walk began (group.lent, while walking): they are
// owed, and not among what members took, as if the group had been read
// when the walk began. A persistent member's take among them is logged
// (a Deliver record after the checkpoint's offset, which recovery
// replays, settling what is owed), and so is a clean member's QoS 2
// take; a clean member's QoS 1 take is lost with it at a restart, when
// its group must hand it out again, as for one the member held when the
// walk began. A session that
// ended is skipped, as if it had ended before the walk: it ended after the
// state was copied, so its record of the end (if it has one) follows the
// checkpoint's offset, and what it held of a group went back to the group
// as it ended.
func (e *Engine) floor(st *State, upTo uint64) uint64 {
	// The groups' notes start under Engine.mu with the list: a session
	// that joins a group after it, and so is not walked, takes nothing
	// from the group unnoted.
	e.mu.Lock()
	sessions, groups := e.listLiveLocked()
	for _, g := range groups {
		g.mu.Lock()
		g.lent, g.walking = g.lent[:0], true
		g.mu.Unlock()
	}
	e.mu.Unlock()
	progress := e.fannedOut.Load()
	floor := upTo
	// With st, owed notes what members hold of a group that the group
	// must hand out again after a restart, below its position (a clean
	// member's QoS 1 flights and unlogged QoS 2 ones, lost with it, and
	// what a scan found and nobody took yet), and took what members took
	// with a logged delivery, which it must not: a persistent member's
	// flights (its QoS 1 ones it gives back as it goes: the state's
	// records say so) and a clean member's logged QoS 2 ones. The trim
	// point stays below all of them: the flights' offsets, the finds'.
	owed, took := map[*group][]uint64{}, map[*group][]uint64{}
	for _, s := range sessions {
		s.mu.Lock()
		if s.ended {
			s.mu.Unlock()
			continue
		}
		pos := s.queue.Position(progress)
		if c := s.conn.Load(); c != nil {
			for _, sc := range c.scanned { // read past, not yet taken
				floor = min(floor, sc.Offset)
				if sc.g == nil { // the session's own: its position too
					pos = min(pos, sc.Offset)
				} else if st != nil {
					owed[sc.g] = append(owed[sc.g], sc.Offset)
				}
			}
		}
		if len(s.subs) > s.shared {
			// Only a session's own subscriptions give its queue a
			// backlog: the position of one that has none (a device that
			// only publishes, gone before its sender caught up with the
			// log, or back from a restart) holds nothing.
			floor = min(floor, pos)
		}
		var inflight map[uint16]Inflight
		if st != nil && s.persistent && st.Sessions[s.id] != nil {
			inflight = make(map[uint16]Inflight, len(s.flights))
		}
		for pid, f := range s.flights {
			// A retained message sent at a SUBSCRIBE outlives its record:
			// the flight, and the state's Inflight, hold the message.
			if !f.released && !(f.atSubscribe && f.msg != nil) {
				floor = min(floor, f.offset)
			}
			if f.group != nil {
				// A QoS 2 flight is its member's for good once written, or
				// logged to be [MQTT-4.8.2-5]; a clean member's unlogged
				// one is lost with it at a restart, as its QoS 1 ones are.
				kept := f.qos == 2 && (s.persistent || !f.unlogged)
				switch {
				case st == nil:
				case s.persistent || kept:
					took[f.group] = append(took[f.group], f.offset)
				default:
					owed[f.group] = append(owed[f.group], f.offset)
				}
			}
			if inflight != nil {
				in := Inflight{Offset: f.offset, QoS: f.qos, Released: f.released, Retain: f.retain, AtSubscribe: f.atSubscribe}
				if f.atSubscribe {
					in.Msg = f.msg // it outlives its record
				}
				if f.group != nil {
					in.Group = f.group.key
				}
				inflight[pid] = in
			}
		}
		s.mu.Unlock()
		if inflight != nil {
			st.live(s.id, pos, inflight)
		}
	}
	for _, g := range groups {
		g.mu.Lock()
		// The group's position is where its backlog stands: what it lent
		// out below it and may have to hand out again is owed (or, held
		// by a persistent member, its state's flight), not a position
		// held back, so a member that never acknowledges one message holds
		// one offset, not every later delivery's.
		pos := g.queue.Position(progress)
		low := pos
		for _, r := range g.returned {
			low = min(low, r.Offset)
			owed[g] = append(owed[g], r.Offset)
		}
		for _, off := range g.lent {
			low = min(low, off)
			owed[g] = append(owed[g], off)
		}
		g.lent, g.walking = nil, false
		g.mu.Unlock()
		floor = min(floor, low)
		if st == nil {
			continue
		}
		if _, ok := st.GroupNext[g.key]; !ok {
			continue // subscribed after the state: its Subscribe record follows
		}
		// What members took from pos on: the logged deliveries the state
		// knows and the members' flights, but what the group hands out
		// again; what it owes below pos.
		taken, owes := map[uint64]bool{}, map[uint64]bool{}
		for off := range st.GroupTaken[g.key] {
			if off >= pos {
				taken[off] = true
			}
		}
		for _, off := range took[g] {
			if off >= pos {
				taken[off] = true
			}
		}
		for _, off := range owed[g] {
			delete(taken, off)
			if off < pos {
				owes[off] = true
			}
		}
		st.setGroup(g.key, pos, taken, owes)
	}
	return floor
}

// listLive returns the sessions and the shared groups the engine holds
// now, for a walk that visits them one at a time, each under its own
// lock, rather than under Engine.mu for the whole of it.
func (e *Engine) listLive() ([]*session, []*group) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.listLiveLocked()
}

// listLiveLocked is listLive with Engine.mu held.
func (e *Engine) listLiveLocked() ([]*session, []*group) {
	sessions := make([]*session, 0, len(e.sessions))
	for _, s := range e.sessions {
		sessions = append(sessions, s)
	}
	groups := make([]*group, 0, len(e.groups))
	for _, g := range e.groups {
		groups = append(groups, g)
	}
	return sessions, groups
}
