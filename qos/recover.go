package qos

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"time"
)

// recover loads the newest snapshot that reads back whole, replays the log
// after it, and rebuilds the sessions (subscriptions, positions, flights,
// inbound QoS 2 state, wills), the shared groups and the retained
// messages. A session that was connected when the broker stopped lost its
// connection then: it is offline from now, and its will is due.
func (e *Engine) recover() error {
	started := time.Now()
	st, from := NewState(), uint64(0)
	first, last := e.log.FirstOffset(), e.log.LastOffset()
	if e.cfg.Snapshots != nil {
		err := e.cfg.Snapshots.Load(func(r io.Reader) error {
			s, at, err := ReadSnapshot(r)
			if err != nil {
				e.lg.Error("snapshot unreadable: trying an older one", "error", err)
				return err
			}
			if at > last+1 {
				// The log lost records the snapshot covers (a power cut
				// under sync interval, or a snapshot of a version that did
				// not sync the log first), and their offsets are being
				// handed out again.
				e.lg.Error("snapshot ahead of the log (the log lost its tail: a power cut under sync interval?): trying an older one",
					"snapshot_offset", at, "last_offset", last)
				return fmt.Errorf("%w: snapshot at %d, the log's last offset %d", ErrSnapshotAhead, at, last)
			}
			st, from = s, at
			return nil
		})
		if err != nil {
			e.lg.Error("no snapshot reads back: replaying the whole log", "error", err)
		}
	}
	// The older snapshot kept is not known yet; the previous process held
	// the cursor below it, so the cursor stands in for it until this one
	// saves a snapshot.
	e.snaps.newest, e.snaps.older = from, min(from, e.cursor.Offset())
	if from < first {
		if from > 0 || first > 1 {
			e.lg.Error("the log no longer holds what the snapshot needs: replaying what is left",
				"snapshot_offset", from, "first_offset", first)
		}
		from = first
	}
	r := e.log.NewReader(from)
	records := 0
	for r.Offset() <= last {
		off, rec, err := r.Next(context.Background())
		if err != nil {
			return fmt.Errorf("qos: replay the log at offset %d: %w", r.Offset(), err)
		}
		if err := st.Apply(off, rec); err != nil {
			e.lg.Error("replay: record skipped", "offset", off, "error", err)
			continue
		}
		records++
	}
	next := r.Offset()
	e.dispatched.Store(next)
	e.fannedOut.Store(next)

	e.lastRef = st.NextRef() - 1
	now := e.now()
	// A session connected when the broker stopped lost its connection
	// then, and one that expired ends: either gives its QoS 1 flights of
	// shared groups back to their groups, as it does going away while the
	// broker runs (the Disconnect or end record appended below says so to
	// a later replay).
	for id, ss := range st.Sessions {
		if ss.Connected || ss.Expired(now) {
			st.giveBack(st.own(id))
		}
	}
	var wills []*Message
	for _, id := range slices.Sorted(maps.Keys(st.Sessions)) {
		ss := st.Sessions[id]
		if ss.Connected {
			at := e.nowUp() // intervals count from here, never early
			ss.Connected, ss.DisconnectedAt = false, at
			if ss.Will != nil {
				ss.WillDue = now
				if d := min(ss.WillDelay, ss.ExpiryInterval); d > 0 {
					ss.WillDue = at + int64(d)
				}
			}
			e.appendRecord(EncodeDisconnect(Disconnect{Client: id, Ref: ss.Ref, At: at, ExpiryInterval: ss.ExpiryInterval, WillPending: ss.Will != nil}))
		}
		if ss.Will != nil && ss.WillDue > 0 && (ss.Expired(now) || ss.WillDue <= now) {
			wills = append(wills, ss.Will)
			ss.Will, ss.WillDue = nil, 0
		}
		if ss.Expired(now) {
			e.appendRecord(EncodeEnd(ClientRef{Client: id, Ref: ss.Ref}))
			continue
		}
		s := e.newSessionLocked(id, max(ss.Next, first))
		s.persistent = true
		s.ref.Store(ss.Ref)
		s.owner = ss.Username
		s.expiry = ss.ExpiryInterval
		if ss.ExpiryInterval != math.MaxUint32 {
			s.expiresAt = ss.DisconnectedAt + int64(ss.ExpiryInterval)
			e.pushTimerLocked(s.expiresAt, s, false)
		}
		if ss.Will != nil && ss.WillDue > 0 {
			s.will, s.willDelay, s.willDue = ss.Will, ss.WillDelay, ss.WillDue
			e.pushTimerLocked(s.willDue, s, true)
		}
		for _, filter := range slices.Sorted(maps.Keys(ss.Subs)) {
			sr := ss.Subs[filter]
			sb := &sub{Subscribe: sr.Subscribe, since: sr.Since, s: s}
			if sr.Identifier > 0 {
				sb.ids = []int{sr.Identifier}
			}
			s.putSub(filter, sb)
			name, inner := SplitShared(filter)
			if name == "" {
				e.idx.add(filter, sb)
				continue
			}
			g := e.groups[filter]
			if g == nil {
				gnext, ok := st.GroupNext[filter]
				if !ok {
					gnext = sr.Since + 1
				}
				g = &group{key: filter, filter: inner, since: sr.Since,
					queue: NewQueue(max(gnext, first), e.cfg.QueueLimit), members: map[*session]*sub{}}
				g.sub = &sub{g: g, since: sr.Since}
				e.groups[filter] = g
				e.idx.add(inner, g.sub)
			}
			g.since = min(g.since, sr.Since)
			g.subscribers++
			sb.g = g
		}
		pids := slices.SortedFunc(maps.Keys(ss.Inflight), func(a, b uint16) int {
			return cmp.Compare(ss.Inflight[a].Offset, ss.Inflight[b].Offset)
		})
		for _, pid := range pids {
			in := ss.Inflight[pid]
			s.seq++
			f := flight{offset: in.Offset, seq: s.seq, qos: in.QoS, released: in.Released, retain: in.Retain,
				atSubscribe: in.AtSubscribe, msg: in.Msg}
			if in.Group != "" {
				// Its PUBLISH may have been written before the restart:
				// a QoS 2 one is its member's from then on, also if the
				// session now ends with its connection [MQTT-4.8.2-5]
				// (givenBack).
				f.group, f.written = e.groups[in.Group], true
			}
			s.flights[pid] = f
			s.nextPID = max(s.nextPID, pid)
		}
		maps.Copy(s.inbound, st.Inbound[id])
	}
	for key, g := range e.groups {
		// What members took of the group's backlog, for its scans to pass
		// over: a copy, as st goes on as the dispatcher's.
		if t := st.GroupTaken[key]; len(t) > 0 {
			g.skip = maps.Clone(t)
			g.skipTop = slices.Max(slices.Collect(maps.Keys(t)))
		}
		// What it may have handed out at QoS 0 goes out at QoS 0 no more;
		// from the log's end on nothing went out yet.
		g.zeroBelow = min(st.GroupHandout[key], next)
		// What the group owes below its backlog goes out first, as what
		// members gave back does.
		for _, off := range slices.Sorted(maps.Keys(st.GroupOwed[key])) {
			m, err := e.readMessage(off)
			if err != nil {
				e.stats.dropUnreadable.Add(1)
				e.lg.Error("shared group's message unreadable: not handed out again", "group", key, "offset", off, "error", err)
				continue
			}
			g.returned = append(g.returned, Entry{Offset: off, Msg: m})
		}
	}
	for _, w := range wills { // due while the broker was down
		e.publishAsync(w)
	}
	for origin, in := range st.Inbound {
		if e.sessions[origin] == nil { // a bridge's, say: no session of it
			e.external[origin] = maps.Clone(in)
		}
	}
	for topic, rt := range st.Retained {
		e.retained[topic] = rt
	}
	e.shadow, e.shadowNext = st, next
	e.shadowLive.Store(next)
	e.lg.Info("log replayed", "records", records, "from_offset", from, "last_offset", last,
		"sessions", len(e.sessions), "retained", len(e.retained), "seconds", time.Since(started).Seconds())
	return nil
}
