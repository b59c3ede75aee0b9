package edge

import (
	"context"
	"fmt"
	"maps"
	"math"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/qos"
)

// recover replays the log into a qos.State and rebuilds from it what the
// broker needs: sessions with their subscriptions (in mochi's topic index
// too), positions and unacknowledged packet ids; shared groups; retained
// messages; inbound QoS 2 messages waiting for PUBREL. A session that was
// connected when the broker stopped is offline from now on. It runs before
// the listeners start.
func (s *store) recover() error {
	started := time.Now()
	first, last := s.log.FirstOffset(), s.log.LastOffset()
	st, from := s.loadSnapshot(last)
	s.snapshotAt.Store(from)
	if from < first {
		if from > 0 || first > 1 {
			s.lg.Error("the log no longer holds what the snapshot needs: replaying what is left",
				"snapshot_offset", from, "first_offset", first)
		}
		from = first
	}
	r := s.log.NewReader(from)
	var records int
	for r.Offset() <= last {
		off, rec, err := r.Next(context.Background())
		if err != nil {
			return fmt.Errorf("edge: replay the log at offset %d: %w (edgemq check -c FILE reports the damage, edgemq check -repair mends it)", r.Offset(), err)
		}
		if err := st.Apply(off, rec); err != nil {
			// A record this version cannot read: say so, keep the rest.
			s.lg.Error("replay: record skipped", "offset", off, "error", err)
			continue
		}
		records++
	}

	now := time.Now().Unix()
	var ended []string
	var wills []*qos.Message
	for id, ss := range st.Sessions {
		if ss.Connected { // it was online when the broker stopped: it lost its connection
			ss.Connected, ss.DisconnectedAt = false, now
			if ss.Will != nil {
				ss.WillDue = now + int64(min(ss.WillDelay, ss.ExpiryInterval))
			}
			rec, _ := qos.Encode(&qos.Disconnect{Client: id, At: now, ExpiryInterval: ss.ExpiryInterval, WillPending: ss.Will != nil})
			if _, err := s.log.AppendAsync(rec); err != nil {
				s.lg.Warn("replay: lost connection not logged", "client", id, "error", err)
			}
		}
		if ss.Will != nil && ss.WillDue > 0 && (ss.Expired(now) || ss.WillDue <= now) {
			w := *ss.Will
			wills = append(wills, &w)
			ss.Will, ss.WillDue = nil, 0
		}
		if ss.Expired(now) {
			ended = append(ended, id)
			continue
		}
		sess := &session{
			id:         id,
			owner:      ss.Username,
			persistent: true,
			subs:       maps.Clone(ss.Subs), // the shadow state keeps its own
			inflight:   make(map[uint16]*flight, len(ss.Inflight)),
			queue:      qos.NewQueue(max(ss.Next, first), s.queueLimit),
		}
		if ss.ExpiryInterval != math.MaxUint32 {
			sess.expiresAt = ss.DisconnectedAt + int64(ss.ExpiryInterval)
		}
		if ss.Will != nil && ss.WillDue > 0 {
			w := *ss.Will
			sess.will, sess.willDelay, sess.willDue = &w, ss.WillDelay, ss.WillDue
		}
		for pid, in := range ss.Inflight {
			sess.inflight[pid] = &flight{offset: in.Offset, qos: in.QoS, released: in.Released, group: in.Group}
		}
		for filter, sub := range ss.Subs {
			s.srv.Topics.Subscribe(id, subPacket(sub.Subscribe))
			if g, inner := qos.SplitShared(filter); g != "" && s.groups[filter] == nil {
				next, ok := st.GroupNext[filter]
				if !ok {
					next = sub.Since + 1
				}
				s.groups[filter] = &group{key: filter, filter: inner, queue: qos.NewQueue(max(next, first), s.queueLimit)}
			}
		}
		s.sessions[id] = sess
	}
	for _, w := range wills { // due while the broker was down
		s.publishWill(w)
	}
	for _, id := range ended {
		if _, err := s.log.AppendAsync(qos.EncodeEnd(id)); err != nil {
			s.lg.Warn("replay: expired session end not logged", "client", id, "error", err)
		}
	}
	for _, r := range st.Retained {
		s.srv.Topics.RetainMessage(retainedPacket(&r.Message))
	}
	for id, in := range st.Inbound {
		s.inbound[id] = maps.Clone(in)
	}
	s.shadow = st
	s.dispatched.Store(r.Offset())
	s.fannedOut.Store(r.Offset())
	s.lg.Info("log replayed", "records", records, "from_offset", from, "last_offset", last,
		"sessions", len(s.sessions), "expired_sessions", len(ended), "retained", len(st.Retained),
		"seconds", time.Since(started).Seconds())
	return nil
}

// retainedPacket is the mochi form of a logged retained message.
func retainedPacket(m *qos.Message) packets.Packet {
	pk := publishPacket(m, m.QoS, delivery{rap: true}, 5)
	pk.FixedHeader.Retain = true
	return pk
}
