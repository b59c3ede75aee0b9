package qos

import (
	"fmt"
	"maps"
	"sync/atomic"
)

// Inflight is one outbound QoS 1/2 message a session holds under a packet id.
type Inflight struct {
	// Offset is where the message is in the log.
	Offset uint64
	// QoS is the delivery QoS.
	QoS byte
	// Released is true once the QoS 2 exchange reached PUBREL: the PUBLISH
	// must not be sent again, only the PUBREL [MQTT-4.3.3-5] [MQTT-4.3.3-6].
	Released bool
	// Retain is the RETAIN flag it was sent with, and is resent with.
	Retain bool
	// AtSubscribe marks a retained message sent at a SUBSCRIBE, and Msg
	// is that message (nil when not among the retained messages as the
	// Deliver record came): it outlives its record, which the log may
	// have trimmed, and once a newer retained message replaces it only
	// the flight has it, to resend after a restart [MQTT-4.4.0-1].
	AtSubscribe bool
	// Group is the shared subscription group the message came through.
	Group string
	// Msg is the message of a flight that is AtSubscribe (see there).
	Msg *Message
}

// Sub is a granted subscription and where in the log it starts: only
// messages logged after Since match it.
type Sub struct {
	Subscribe
	Since uint64
}

// SessionState is a session as the log knows it.
type SessionState struct {
	Session
	// Connected is true between its Session and Disconnect records.
	Connected bool
	// DisconnectedAt is when it went offline, Unix seconds.
	DisconnectedAt int64
	// Subs by filter as subscribed (with any $share prefix).
	Subs map[string]Sub
	// Inflight by packet id.
	Inflight map[uint16]Inflight
	// Next is the first log offset whose fan-out to this session is not yet
	// done: the session's backlog is every matching message from Next on.
	Next uint64
	// WillDue is when the pending will is published, Unix seconds; 0 while
	// connected or when no will waits. Session.Will is the will itself.
	WillDue int64

	// gen is the generation of the State that may change it in place
	// (State.gen); any other copies it first (see State.Clone).
	gen uint64
}

// Expired reports whether the session has outlived its expiry at now (Unix
// seconds). A connected session never expires.
func (s *SessionState) Expired(now int64) bool {
	if s.Connected || s.ExpiryInterval == 1<<32-1 {
		return false
	}
	return now >= s.DisconnectedAt+int64(s.ExpiryInterval)
}

// Retained is the retained message of one topic and where it was logged.
type Retained struct {
	Offset  uint64
	Message Message
}

// State is everything the broker must remember across a restart, rebuilt by
// applying the log's records in order. It is not safe for concurrent use;
// a State and its clones are safe to use each on its own goroutine.
type State struct {
	// Sessions by client id.
	Sessions map[string]*SessionState
	// Retained by topic.
	Retained map[string]Retained
	// Inbound holds QoS 2 publishes acknowledged with PUBREC whose PUBREL has
	// not arrived: client id -> packet id -> offset of the message. A
	// duplicate PUBLISH of one of them must not be delivered again [MQTT-4.3.3].
	Inbound map[string]map[uint16]uint64
	// GroupNext is, per shared group key ("$share/<group>/<filter>"),
	// where the group's backlog starts: every message of its filter from
	// there on is the group's to hand out but those in GroupTaken.
	GroupNext map[string]uint64
	// GroupTaken is, per shared group key, the offsets from GroupNext on
	// that a member took with a logged delivery (the member holds them, or
	// finished them) and did not give back: a persistent member's QoS 1/2
	// and a clean member's QoS 2 takes. A persistent member that goes (its
	// Disconnect or end) gives its QoS 1 ones back [MQTT-4.8.2]. It
	// grows by one offset per logged delivery of the group until a
	// checkpoint moves GroupNext past them (see GroupOwed).
	GroupTaken map[string]map[uint64]bool
	// GroupOwed is, per shared group key, the offsets below GroupNext the
	// group must hand out again: what a member gave back (its QoS 1
	// flights as it went [MQTT-4.8.2]) or, at a checkpoint, what the group
	// had lent and not seen taken with a logged delivery (what members
	// gave back, what a scan found and no member took, a clean member's
	// QoS 1 flights and unlogged QoS 2 ones, lost with it at a restart).
	// A member's logged take of one settles it. A checkpoint puts
	// GroupNext where the group's backlog stands, past what members hold,
	// so that GroupTaken holds no more than the takes since, and GroupOwed
	// no more than what is lent out and not finished.
	GroupOwed map[string]map[uint64]bool
	// GroupHandout is, per shared group key, the offset below which the
	// group may have handed out messages at QoS 0 (GroupHandout records):
	// recovery hands none of them out at QoS 0 again [MQTT-4.3.1].
	GroupHandout map[string]uint64

	// retainedAt maps a retained message's offset to its topic; it
	// follows Retained.
	retainedAt map[uint64]string
	// refs maps a session's Ref to its client id, for the records that
	// name it so; it follows Sessions (a snapshot holds it in them).
	refs map[uint64]string
	// gen marks the sessions st may change in place: those of the same
	// gen. A new State and its sessions are of gen 0; Clone gives the
	// clone and st new ones, so that neither changes a session they share.
	gen uint64
	// shared marks the GroupTaken sets st shares with a clone (or the
	// State it was cloned from): copied before st changes one.
	shared map[string]bool
}

// stateGens hands out State generations (State.gen): 0 is every new
// State's.
var stateGens atomic.Uint64

// NewState returns an empty State.
func NewState() *State {
	return &State{
		Sessions:     map[string]*SessionState{},
		Retained:     map[string]Retained{},
		Inbound:      map[string]map[uint16]uint64{},
		GroupNext:    map[string]uint64{},
		GroupTaken:   map[string]map[uint64]bool{},
		GroupOwed:    map[string]map[uint64]bool{},
		GroupHandout: map[string]uint64{},
		retainedAt:   map[uint64]string{},
		refs:         map[uint64]string{},
	}
}

// client returns the client id a record names: its Ref's session, or its
// Client for a record that names none. A Ref no session has gives "": the
// session ended (records about it that follow its end are ignored).
func (st *State) client(client string, ref uint64) string {
	if ref == 0 {
		return client
	}
	return st.refs[ref]
}

// session returns the session a record names, or nil, as st's own to
// change (own).
func (st *State) session(client string, ref uint64) *SessionState {
	id := st.client(client, ref)
	if id == "" {
		return nil
	}
	return st.own(id)
}

// own returns the session of id (nil: none) as st's own to change: one it
// shares with a clone (or the State it was cloned from) is copied first.
func (st *State) own(id string) *SessionState {
	s := st.Sessions[id]
	if s == nil || s.gen == st.gen {
		return s
	}
	c := *s
	c.Subs, c.Inflight, c.gen = maps.Clone(s.Subs), maps.Clone(s.Inflight), st.gen
	st.Sessions[id] = &c
	return &c
}

// live brings the session of id, which must exist, up to what the engine
// knows and its records do not say yet (a checkpoint's step 1): its
// backlog starts at next at the latest, and it holds the flights
// inflight (some of their Deliver or Complete records may not be durable
// yet). Only Next and Inflight change, so a session st shares is copied
// without its Subs, which stay shared (the copy is not st's own either).
func (st *State) live(id string, next uint64, inflight map[uint16]Inflight) {
	s := st.Sessions[id]
	if s.gen != st.gen {
		c := *s
		s = &c
		st.Sessions[id] = s
	}
	s.Next = max(s.Next, next)
	s.Inflight = inflight
}

// NextRef returns a Ref no session in st has: one above the highest.
func (st *State) NextRef() uint64 {
	var top uint64
	for ref := range st.refs {
		top = max(top, ref)
	}
	return top + 1
}

// Apply applies the record logged at offset. Records must be applied in log
// order. A record that refers to state that does not exist (a delivery for
// an ended session) is ignored: the state is what survives, not an audit.
func (st *State) Apply(offset uint64, rec []byte) error {
	k, v, err := Decode(rec)
	if err != nil {
		return fmt.Errorf("offset %d: %w", offset, err)
	}
	st.ApplyDecoded(offset, k, v)
	return nil
}

// ApplyDecoded is Apply for a record its caller already decoded with
// Decode (the dispatcher needs the message itself too). The body must not
// be changed afterwards: the State may keep it (a retained message).
func (st *State) ApplyDecoded(offset uint64, k Kind, v any) {
	switch r := v.(type) {
	case *Message:
		if r.Will {
			if s := st.own(r.Origin); s != nil {
				s.Will, s.WillDue = nil, 0 // published
			}
		}
		if r.QoS == 2 && r.Origin != "" && !r.Will {
			in := st.Inbound[r.Origin]
			if in == nil {
				in = map[uint16]uint64{}
				st.Inbound[r.Origin] = in
			}
			in[r.OriginPacketID] = offset
		}
		if r.Retain {
			if old, ok := st.Retained[r.Topic]; ok {
				delete(st.retainedAt, old.Offset)
			}
			if len(r.Payload) == 0 {
				delete(st.Retained, r.Topic) // [MQTT-3.3.1-6]
			} else {
				st.Retained[r.Topic] = Retained{Offset: offset, Message: *r}
				st.retainedAt[offset] = r.Topic
			}
		}
	case *Session:
		s := st.own(r.Client)
		if s == nil {
			s = &SessionState{Subs: map[string]Sub{}, Inflight: map[uint16]Inflight{}, Next: offset + 1, gen: st.gen}
			st.Sessions[r.Client] = s
			// QoS 2 exchanges of the client id are a clean session's that
			// ended (logs from before its end was logged, or a crash): a
			// new session starts without them [MQTT-3.1.2-4].
			delete(st.Inbound, r.Client)
		}
		if s.Ref != 0 && s.Ref != r.Ref {
			delete(st.refs, s.Ref)
		}
		if r.Ref != 0 {
			st.refs[r.Ref] = r.Client
		}
		s.Session = *r
		s.Connected = true
		s.WillDue = 0 // a new connection cancels a pending will [MQTT-3.1.3-9]
	case *Disconnect:
		if s := st.session(r.Client, r.Ref); s != nil {
			st.giveBack(s)
			s.Connected = false
			s.DisconnectedAt = r.At
			s.ExpiryInterval = r.ExpiryInterval
			if r.WillPending && s.Will != nil {
				s.WillDue = r.At + int64(min(s.WillDelay, r.ExpiryInterval))
			} else {
				s.Will, s.WillDue = nil, 0
			}
		}
	case *ClientRef:
		id := st.client(r.Client, r.Ref)
		if s := st.Sessions[id]; s != nil {
			st.giveBack(s)
			delete(st.Sessions, id)
			delete(st.refs, s.Ref)
			for filter := range s.Subs {
				st.dropGroup(filter)
			}
		}
		delete(st.Inbound, id)
	case *Subscribe:
		if s := st.session(r.Client, r.Ref); s != nil {
			since := offset
			if old, ok := s.Subs[r.Filter]; ok {
				since = old.Since // a repeated subscription keeps its start [MQTT-3.8.4-3]
			}
			s.Subs[r.Filter] = Sub{Subscribe: *r, Since: since}
			if g, _ := SplitShared(r.Filter); g != "" {
				if _, ok := st.GroupNext[r.Filter]; !ok {
					st.GroupNext[r.Filter] = offset + 1
				}
			}
		}
	case *Unsubscribe:
		if s := st.session(r.Client, r.Ref); s != nil {
			delete(s.Subs, r.Filter)
			st.dropGroup(r.Filter)
		}
	case *Deliver:
		s := st.session(r.Client, r.Ref)
		if s == nil && r.Ref == 0 && r.Group != "" && r.QoS == 2 {
			// A clean member's QoS 2 take: the message is its own, also
			// once its session ended with its connection [MQTT-4.8.2-5].
			st.took(r.Group, r.Offset)
		}
		if s != nil {
			if r.Group != "" {
				st.took(r.Group, r.Offset)
			}
			if r.QoS > 0 { // a QoS 0 delivery only moves the position
				in := Inflight{Offset: r.Offset, QoS: r.QoS, Retain: r.Retain, Group: r.Group, AtSubscribe: r.AtSubscribe}
				if r.AtSubscribe {
					in.Msg = st.retainedMessage(r.Offset)
				}
				s.Inflight[r.PacketID] = in
			}
			if r.Group == "" && !r.AtSubscribe {
				s.Next = max(s.Next, r.Offset+1)
			}
		}
	case *GroupReturn:
		st.returnTaken(r.Group, r.Offset)
	case *GroupHandout:
		if _, ok := st.GroupNext[r.Group]; ok {
			st.GroupHandout[r.Group] = max(st.GroupHandout[r.Group], r.Below)
		}
	case *PacketRef:
		switch k {
		case KindInboundRelease:
			id := st.client(r.Client, r.Ref)
			delete(st.Inbound[id], r.PacketID)
			if len(st.Inbound[id]) == 0 {
				delete(st.Inbound, id)
			}
		case KindRelease:
			if s := st.session(r.Client, r.Ref); s != nil {
				if in, ok := s.Inflight[r.PacketID]; ok {
					in.Released = true
					s.Inflight[r.PacketID] = in
				}
			}
		case KindComplete:
			if s := st.session(r.Client, r.Ref); s != nil {
				delete(s.Inflight, r.PacketID)
			}
		}
	}
}

// retainedMessage returns the retained message logged at off, or nil.
func (st *State) retainedMessage(off uint64) *Message {
	topic, ok := st.retainedAt[off]
	if !ok {
		return nil
	}
	m := st.Retained[topic].Message
	return &m
}

// took notes that a member took the message at off from group key with a
// logged delivery. One below the group's position is not the group's any
// more, but when it was owed: then it is settled.
func (st *State) took(key string, off uint64) {
	next, ok := st.GroupNext[key]
	switch {
	case !ok:
	case off < next:
		if o := st.GroupOwed[key]; o[off] {
			delete(o, off)
			if len(o) == 0 {
				delete(st.GroupOwed, key)
			}
		}
	default:
		st.taken(key)[off] = true
	}
}

// giveBack gives s's QoS 1 flights of shared groups back to their groups,
// as a member going away does (session.returnFlightsLocked): the group
// hands them out again, and s no longer holds them. Its QoS 2 ones stay
// its own [MQTT-4.8.2]. s must be st's own.
func (st *State) giveBack(s *SessionState) {
	for pid, in := range s.Inflight {
		if in.Group == "" || in.QoS != 1 {
			continue
		}
		delete(s.Inflight, pid)
		st.returnTaken(in.Group, in.Offset)
	}
}

// returnTaken gives the message at off, which a member of group key took,
// back to the group: owed below the group's position (a checkpoint moved
// it past what members held), no longer taken at or above it.
func (st *State) returnTaken(key string, off uint64) {
	next, ok := st.GroupNext[key]
	switch {
	case !ok:
	case off < next:
		o := st.GroupOwed[key]
		if o == nil {
			o = map[uint64]bool{}
			st.GroupOwed[key] = o
		}
		o[off] = true
	case st.GroupTaken[key][off]:
		delete(st.taken(key), off)
	}
}

// taken returns the GroupTaken set of key as st's own to change.
func (st *State) taken(key string) map[uint64]bool {
	t := st.GroupTaken[key]
	switch {
	case t == nil:
		t = map[uint64]bool{}
		st.GroupTaken[key] = t
	case st.shared[key]:
		t = maps.Clone(t)
		st.GroupTaken[key] = t
		delete(st.shared, key)
	}
	return t
}

// setGroup puts group key's backlog at next, but taken, with owed below
// it (st keeps both): what a checkpoint knows of it from the live group.
func (st *State) setGroup(key string, next uint64, taken, owed map[uint64]bool) {
	st.GroupNext[key] = next
	delete(st.shared, key)
	if len(taken) == 0 {
		delete(st.GroupTaken, key)
	} else {
		st.GroupTaken[key] = taken
	}
	if len(owed) == 0 {
		delete(st.GroupOwed, key)
	} else {
		st.GroupOwed[key] = owed
	}
}

// settleGroups brings the groups of st, the dispatcher's state, to where
// a checkpoint put them in cp (a clone of st, older, brought up to the
// live groups): a group's position moves up to cp's, since the live one
// never goes back, and what st holds taken below it goes; its GroupOwed
// is cp's, which the checkpoint took from the live group (a checkpoint
// reads only the live group's). So the state the dispatcher keeps holds
// what the snapshot does, not one offset per delivery for ever. cp is the
// state after the records below offset: a group whose position in st is
// past it ended and was subscribed again since (its Subscribe record
// follows offset), another group, which cp knows nothing of.
func (st *State) settleGroups(cp *State, offset uint64) {
	for key, next := range cp.GroupNext {
		cur, ok := st.GroupNext[key]
		if !ok || next <= cur || cur > offset {
			continue
		}
		st.GroupNext[key] = next
		if len(st.GroupTaken[key]) > 0 {
			t := st.taken(key)
			for off := range t {
				if off < next {
					delete(t, off)
				}
			}
			if len(t) == 0 {
				delete(st.GroupTaken, key)
				delete(st.shared, key)
			}
		}
		if o := cp.GroupOwed[key]; len(o) > 0 {
			st.GroupOwed[key] = maps.Clone(o)
		} else {
			delete(st.GroupOwed, key)
		}
	}
}

// dropGroup forgets a shared group's position once no session has the
// subscription: the group ended with its last member [MQTT-4.8.2], and one
// subscribed later starts afresh.
func (st *State) dropGroup(key string) {
	if _, ok := st.GroupNext[key]; !ok {
		return
	}
	for _, s := range st.Sessions {
		if _, ok := s.Subs[key]; ok {
			return
		}
	}
	delete(st.GroupNext, key)
	delete(st.GroupTaken, key)
	delete(st.GroupOwed, key)
	delete(st.GroupHandout, key)
	delete(st.shared, key)
}

// Clone returns a copy of st that changes independently of it through
// Apply. The two share their sessions (a copy of the session list, not of
// the sessions): whichever Applies a record to a shared session copies it
// first. So Clone costs a copy of the lists, not of every session's
// subscriptions and flights, and it changes st too (which sessions st may
// change in place): call it as Apply would be called. Change a session
// of either only through Apply.
func (st *State) Clone() *State {
	c := &State{
		Sessions: maps.Clone(st.Sessions), Retained: maps.Clone(st.Retained),
		Inbound:   make(map[string]map[uint16]uint64, len(st.Inbound)),
		GroupNext: maps.Clone(st.GroupNext), GroupTaken: maps.Clone(st.GroupTaken),
		GroupHandout: maps.Clone(st.GroupHandout), retainedAt: maps.Clone(st.retainedAt),
		refs: maps.Clone(st.refs), gen: stateGens.Add(1),
	}
	st.gen = stateGens.Add(1)
	// Both share every GroupTaken set now.
	st.shared = make(map[string]bool, len(st.GroupTaken))
	for key := range st.GroupTaken {
		st.shared[key] = true
	}
	c.shared = maps.Clone(st.shared)
	for id, in := range st.Inbound {
		c.Inbound[id] = maps.Clone(in)
	}
	c.GroupOwed = make(map[string]map[uint64]bool, len(st.GroupOwed))
	for key, o := range st.GroupOwed { // what was lent out: a few
		c.GroupOwed[key] = maps.Clone(o)
	}
	return c
}
