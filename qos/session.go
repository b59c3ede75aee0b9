package qos

import (
	"cmp"
	"context"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
)

// session is one client's session. Its connection, while it has one, is
// conn; offline, its queue holds a position in the log and its flights
// wait for the next connection.
type session struct {
	id string
	// ref is the short id records name it by, once its Session record
	// has it; 0 before. Atomic: senders and read goroutines name the
	// session in records without its lock while a Connect sets it.
	ref   atomic.Uint64
	owner string // the user that created it
	n     uint64 // creation order, to group one message's matches
	queue *Queue
	conn  atomic.Pointer[connection]

	mu         sync.Mutex
	persistent bool
	ended      bool
	subs       map[string]*sub // by filter as subscribed (with any $share prefix)
	// shared counts the shared subscriptions in subs (putSub, deleteSub):
	// the sender's per-message looks for a group's work skip the walk of
	// subs when it is 0.
	shared     int
	flights    map[uint16]flight
	seq        uint64 // send order of flights
	nextPID    uint16
	inbound    map[uint16]uint64 // QoS 2 packet id awaiting PUBREL -> offset [MQTT-4.3.3]
	expiry     uint32            // seconds; math.MaxUint32 never
	expiresAt  int64             // offline: Unix second it ends; 0 never
	will       *Message
	willDelay  uint32
	willDue    int64   // offline: Unix second the will is published; 0 none
	retained   []Entry // retained messages due at a SUBSCRIBE, not yet sent
	lastGroups int     // round robin over the session's groups
}

// flight is one outbound QoS 1/2 message awaiting its acknowledgement.
type flight struct {
	offset   uint64
	seq      uint64
	qos      byte
	released bool // PUBREC came: only the PUBREL may be sent again [MQTT-4.3.3-5] [MQTT-4.3.3-6]
	retain   bool
	// atSubscribe: a retained message sent at a SUBSCRIBE (its Deliver
	// record does not move the session's position).
	atSubscribe bool
	ids         []int
	group       *group
	msg         *Message // nil after a restart: read from the log when resent
	// logged is where a persistent session's QoS 2 flight has the record
	// of its stage, which must be durable before the stage's packet is
	// written, the first time or again [MQTT-4.3.3]: its Deliver record
	// before the PUBLISH, its Release record (once released) before the
	// PUBREL, since the client forgets the packet id on PUBREL and takes
	// a PUBLISH resent after a restart that lost the record for a new
	// message (0: none to wait for, as for one recovered from the log).
	// unlogged says the record is not in the log (refused, or its write
	// failed), so the connection that writes the packet appends it first
	// (see logDeliverLocked, relog).
	logged   uint64
	unlogged bool
	// written says a shared group's QoS 2 flight had its PUBLISH written,
	// or about to be: its writer sets it, under the session's lock,
	// before it writes, and writes only a flight still the session's
	// (writePublish); a flight recovered from the log has it set, as its
	// PUBLISH may have been written before the restart. From then on the
	// message is its member's [MQTT-4.8.2-5]; before, a member whose
	// session ends with its connection gives it back when it goes.
	written bool
}

// givenBack reports whether f, a flight of a persistent session or not,
// goes back to its shared group when its member goes away: a QoS 1 flight
// [MQTT-4.8.2], and a QoS 2 one whose PUBLISH was never written, so that
// no client has it: one whose Deliver record is not in the log (the
// PUBLISH waits for it: awaitRecord), and a clean member's whose PUBLISH
// waited for its record (written). A QoS 2 one written stays the
// member's [MQTT-4.8.2-5], and so does a persistent member's logged one,
// which its next connection sends. Called with s.mu held.
func (f flight) givenBack(persistent bool) bool {
	return f.group != nil && (f.qos == 1 || (!f.released && (f.unlogged || (!persistent && !f.written))))
}

// group is a shared subscription group: one queue its connected members
// take from, each message to one member [MQTT-4.8.2].
type group struct {
	key    string // "$share/<name>/<filter>"
	filter string
	since  uint64
	queue  *Queue
	sub    *sub // the group's entry in the index
	// subscribers counts the sessions, online or not, that hold the
	// subscription (under Engine.mu): the group ends with the last.
	subscribers int

	mu       sync.Mutex
	members  map[*session]*sub
	returned []Entry // QoS 1 messages a leaving member held unacknowledged: taken first
	scanning bool
	mark     uint64 // dispatcher's: the last offset offered
	// lent holds the offsets handed out (taken by a member, or found by
	// a member's scan) since a checkpoint's walk began, while walking
	// (see floor).
	lent    []uint64
	walking bool
	// skip is what members took of the backlog a recovery gave the group
	// (State.GroupTaken), for its scans to pass over; read only, dropped
	// once the scans are past skipTop.
	skip    map[uint64]bool
	skipTop uint64
	// zeroTop is where the group's last GroupHandout record, at offset
	// zeroRec, reaches: its QoS 0 hand-outs below it need no record more.
	// zeroBelow is, after a recovery, the offset below which the group may
	// have handed messages out at QoS 0 before: none goes out at QoS 0
	// again [MQTT-4.3.1].
	zeroTop, zeroRec, zeroBelow uint64
}

// lend notes that the message at off left the group for a member. Called
// with g.mu held.
func (g *group) lend(off uint64) {
	if g.walking {
		g.lent = append(g.lent, off)
	}
}

// ConnectInfo is what the engine needs from a CONNECT.
type ConnectInfo struct {
	// ClientID is the client identifier [MQTT-3.1.3-2].
	ClientID string
	// ProtocolVersion is 3, 4 or 5.
	ProtocolVersion byte
	// CleanStart discards an existing session [MQTT-3.1.2-4].
	CleanStart bool
	// ExpiryInterval is how long the session outlives the connection, in
	// seconds [MQTT-3.1.2-23]; 0 ends it with the connection (3.1.1 clean
	// session), math.MaxUint32 never (3.1.1 persistent session).
	ExpiryInterval uint32
	// ReceiveMaximum is the client's: the most QoS 1/2 deliveries it takes
	// unacknowledged [MQTT-3.3.4-9]. 0 means 65535.
	ReceiveMaximum uint16
	// TopicAliasMaximum is the client's: the highest outbound topic alias
	// it accepts; 0 none [MQTT-3.3.2-8].
	TopicAliasMaximum uint16
	// InboundMaximum is the Receive Maximum the server announced in
	// CONNACK: more unacknowledged QoS 1/2 publishes from the client get
	// DISCONNECT 0x93 [MQTT-3.3.4-8]. 0 means 65535.
	InboundMaximum uint16
	// Will is the will message [MQTT-3.1.2-7], WillDelay its delay.
	Will      *Message
	WillDelay uint32
	// Username is the user the connection authenticated as: a new
	// session's owner (see Engine.Owner). A session of another owner
	// refuses the connection (ErrNotOwner) unless AnyOwner is set.
	Username string
	// AnyOwner lets the connection take over a session of another user
	// (edge's auth.cross_user_takeover); the session keeps its owner
	// unless the connection starts clean.
	AnyOwner bool
	// CanRead is the read ACL, asked before every PUBLISH is written
	// (resends included). nil allows everything.
	CanRead func(topic string) bool
}

// Client is one connection's handle on its session: the owner (edge's
// hook) calls it from the connection's read goroutine, in packet order.
type Client struct {
	e *Engine
	c *connection
}

// Connect attaches conn to its session, creating, resuming or replacing
// it, and returns whether a session was present [MQTT-3.2.2-2]. A
// persistent session is durable before Connect returns: an error means
// CONNACK must refuse (0x80) [MQTT-3.2.2-6]; ErrNotOwner, a session of
// another user, 0x87. A connection holding the session already is closed
// with 0x8E [MQTT-3.1.4-3].
//
// The records are appended under Engine.mu and waited for outside it, so
// a storm of connections shares its fsyncs instead of queueing one fsync
// each. Meanwhile the session is the engine's, held for this connection
// (nothing is written to it before Established); a write that fails then
// takes a new session out again, as if it had never come.
func (e *Engine) Connect(conn Conn, info ConnectInfo) (*Client, bool, error) {
	c, present, w, err := e.connect(conn, info)
	if err != nil {
		return nil, false, err
	}
	if w.last > 0 {
		if err := e.log.WaitDurable(context.Background(), w.last); err != nil {
			if !e.connectFailed(c, w, err) {
				return nil, false, err
			}
		}
	}
	return &Client{e: e, c: c}, present, nil
}

// connectWait is what Connect waits for once the lock is released: the
// last record it appended (0: none), and what a failed write undoes.
type connectWait struct {
	last    uint64
	resumed bool   // the session was durable already: it goes on
	prevRef uint64 // a resumed session's Ref before this connection
}

// connectFailed undoes what Connect did for c when its records did not
// become durable, and reports whether the connection goes on: a session
// resumed does (its new will and expiry may not survive a restart), a new
// one is taken out again, unless a newer connection took it over
// meanwhile (then that one's own records stand for it).
func (e *Engine) connectFailed(c *connection, w connectWait, err error) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := c.s
	if w.resumed {
		e.stats.recordFailures.Add(1)
		e.lg.Warn("resumed session not logged: its new will and expiry may not survive a restart", "client", s.id, "error", err)
		if s.conn.Load() == c {
			s.ref.Store(w.prevRef) // its records name it as the log knows it
		}
		return true
	}
	s.mu.Lock()
	ours := s.conn.Load() == c && !s.ended
	s.mu.Unlock()
	if ours {
		e.endSessionLocked(s, false)
	}
	return false
}

// connect is Connect's part under Engine.mu: it appends the records and
// changes the sessions, without waiting for the records.
func (e *Engine) connect(conn Conn, info ConnectInfo) (*connection, bool, connectWait, error) {
	if info.ReceiveMaximum == 0 {
		info.ReceiveMaximum = math.MaxUint16
	}
	if info.InboundMaximum == 0 {
		info.InboundMaximum = math.MaxUint16
	}
	persistent := info.ExpiryInterval > 0
	var rec []byte
	var w connectWait
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ctx.Err() != nil {
		return nil, false, w, ErrEngineClosed
	}
	old := e.sessions[info.ClientID]
	if old != nil && old.owner != info.Username && !info.AnyOwner {
		// Checked under the lock that creates the session: two users
		// racing for a new client id cannot both get it.
		return nil, false, w, ErrNotOwner
	}
	owner := info.Username
	resumed := old != nil && !info.CleanStart && old.persistent
	if resumed {
		owner = old.owner
	}
	// The short id the session's records name it by: a new session's is
	// new; a session resumed keeps its own, or gets one if it has none
	// (its records so far, from before Refs, name it by client id).
	var ref uint64
	if resumed && old.ref.Load() != 0 {
		ref = old.ref.Load()
	} else if persistent {
		e.lastRef++
		ref = e.lastRef
	}
	if persistent {
		var err error
		rec, err = Encode(&Session{Client: info.ClientID, Ref: ref, ProtocolVersion: info.ProtocolVersion,
			ExpiryInterval: info.ExpiryInterval, Will: info.Will, WillDelay: info.WillDelay, Username: owner})
		if err != nil {
			return nil, false, w, err
		}
	}
	var recs [][]byte
	if old != nil && (info.CleanStart || !old.persistent) {
		if old.persistent {
			recs = append(recs, EncodeEnd(ClientRef{Client: old.id, Ref: old.ref.Load()}))
		} else {
			e.endClean(old)
		}
		// The session ends: a will still due (its connection taken over
		// now, or offline within its delay) is published now, as when a
		// session expires (MQTT 5 §3.1.2.5) [MQTT-3.1.2-8].
		old.mu.Lock()
		will := old.will
		old.will, old.willDue = nil, 0
		old.mu.Unlock()
		e.endSessionLocked(old, true)
		if will != nil {
			e.publishAsync(will)
		}
		old = nil
	}
	if persistent {
		recs = append(recs, rec)
	} else if old != nil && old.persistent {
		// Resumed with an expiry of 0: it ends with this connection
		// [MQTT-3.1.2-23], which logs nothing more of it, so the log
		// forgets it now (a restart would bring it back otherwise).
		recs = append(recs, EncodeEnd(ClientRef{Client: old.id, Ref: old.ref.Load()}))
	}
	logged := len(recs) > 0
	w.resumed = old != nil && old.persistent
	if logged {
		// A new session (and the end of the one it replaces) is durable
		// before CONNACK says so [MQTT-3.2.2-6]: Connect waits for it. A
		// session resumed is durable already: on a full log it goes on
		// with what the log holds (its new will and expiry may not
		// survive a restart), since refusing it would keep its backlog
		// from draining.
		off, err := e.log.AppendAsync(recs...)
		switch {
		case err == nil:
			w.last = off + uint64(len(recs)) - 1
		case !w.resumed:
			return nil, false, w, err
		default:
			logged = false
			e.stats.recordFailures.Add(1)
			e.lg.Warn("resumed session not logged: its new will and expiry may not survive a restart", "client", info.ClientID, "error", err)
		}
	}
	present := old != nil
	s := old
	if s == nil {
		s = e.newSessionLocked(info.ClientID, e.dispatched.Load())
		s.queue.CatchUp(e.dispatched.Load) // nothing to read: offers from now on
	}
	c := &connection{e: e, s: s, conn: conn, info: info, held: true}
	c.sender = func() {
		defer e.wg.Done()
		c.run()
	}
	c.window = min(int(info.ReceiveMaximum), e.cfg.MaxInflight)
	s.mu.Lock()
	if prev := s.conn.Load(); prev != nil {
		prev.gone = true
		prev.giveBackLocked()
		go prev.conn.Close(reasonSessionTakenOver) // it may be blocked in a write
		if s.will != nil && s.willDelay == 0 {
			e.publishAsync(s.will) // the old connection ended [MQTT-3.1.2-8]
		}
	}
	s.persistent = persistent
	w.prevRef = s.ref.Load()
	if logged {
		// Its Session record maps ref: later records may name it so. A
		// session the log just ended (resumed with an expiry of 0) has
		// no Ref there any more: its records name its client id again.
		var r uint64
		if persistent {
			r = ref
		}
		s.ref.Store(r)
	}
	s.owner = owner
	s.expiry = info.ExpiryInterval
	s.expiresAt, s.willDue = 0, 0
	s.will, s.willDelay = info.Will, info.WillDelay
	for pid := range s.flights {
		c.resend = append(c.resend, pid)
	}
	for pid := range s.inbound {
		if c.carried == nil {
			c.carried = map[uint16]bool{}
		}
		c.carried[pid] = true
	}
	slices.SortFunc(c.resend, func(a, b uint16) int { return cmp.Compare(s.flights[a].seq, s.flights[b].seq) })
	s.conn.Store(c)
	s.mu.Unlock()
	s.queue.Resume(e.fannedOut.Load())
	for _, sb := range s.subs {
		if sb.g != nil {
			sb.g.mu.Lock()
			sb.g.members[s] = sb
			sb.g.mu.Unlock()
		}
	}
	return c, present, w, nil
}

// Established tells the engine that CONNACK is written: the connection's
// sender may write from now on (resends first) [MQTT-3.2.0-1].
func (cl *Client) Established() {
	s := cl.c.s
	s.mu.Lock()
	cl.c.held = false
	s.mu.Unlock()
	cl.c.kick()
}

// newSessionLocked creates a session whose backlog starts at next.
func (e *Engine) newSessionLocked(id string, next uint64) *session {
	s := &session{
		id: id, n: e.sessionN.Add(1),
		queue:   NewQueue(next, e.cfg.QueueLimit),
		subs:    map[string]*sub{},
		flights: map[uint16]flight{},
		inbound: map[uint16]uint64{},
	}
	e.sessions[id] = s
	return s
}

// endClean logs the end of clean session s if the log knows anything of
// it: the QoS 2 exchanges its messages' records began and no PUBREL
// ended, which the state would otherwise keep for ever (and give to the
// next session of its client id after a restart).
func (e *Engine) endClean(s *session) {
	s.mu.Lock()
	pending := len(s.inbound) > 0
	s.mu.Unlock()
	if pending {
		e.appendRecord(EncodeEnd(ClientRef{Client: s.id}))
	}
}

// endSessionLocked removes s with its subscriptions; its connection, if
// any, is closed when taken is set. Its wills are the caller's.
func (e *Engine) endSessionLocked(s *session, taken bool) {
	delete(e.sessions, s.id)
	s.mu.Lock()
	s.ended = true
	subs := slices.Collect(maps.Values(s.subs))
	returned := s.returnFlightsLocked(e, func(flight) bool { return true })
	c := s.conn.Swap(nil)
	if c != nil {
		c.gone = true
	}
	s.mu.Unlock()
	if c != nil && taken {
		go c.conn.Close(reasonSessionTakenOver)
	}
	for _, sb := range subs {
		e.unsubscribeLocked(s, sb)
	}
	kickGroups(returned)
}

// returnFlightsLocked takes the flights leaving picks out of s, and gives
// the QoS 1 ones of shared groups back to their groups, for another
// member [MQTT-4.8.2] (a member going away keeps its QoS 2 ones, or they
// end with its session [MQTT-4.8.2-5], but those whose PUBLISH was never
// written, see givenBack; one whose Deliver record was logged gets a
// GroupReturn record). Each goes from s to its group under both their
// locks, in one step: a checkpoint's walk sees it in one place or the
// other. It returns the groups to kick (kickGroups) once s.mu is
// released. Called with s.mu held.
func (s *session) returnFlightsLocked(e *Engine, leaving func(flight) bool) []*group {
	var gs []*group
	for pid, f := range s.flights {
		if !leaving(f) {
			continue
		}
		delete(s.flights, pid)
		if !f.givenBack(s.persistent) {
			continue
		}
		if f.qos == 2 && f.logged > 0 && !f.unlogged {
			// Its Deliver record is in the log: a replay would keep the
			// message taken. The record giving it back precedes any
			// other member's take of it, which comes after it in g.
			e.appendRecord(EncodeGroupReturn(GroupReturn{Group: f.group.key, Offset: f.offset}))
		}
		f.group.mu.Lock()
		f.group.returned = append(f.group.returned, Entry{Offset: f.offset, Msg: f.msg})
		f.group.mu.Unlock()
		if !slices.Contains(gs, f.group) {
			gs = append(gs, f.group)
		}
	}
	return gs
}

// kickGroups starts the senders of the groups' connected members, for
// the messages returned to them.
func kickGroups(gs []*group) {
	for _, g := range gs {
		g.kickMembers(nil)
	}
}

// Disconnect ends the connection: a clean session ends with it, a
// persistent one stays offline until its expiry. willPending is true when
// the connection ended without a normal DISCONNECT (or with 0x04): the
// will is published after its delay [MQTT-3.1.2-8] [MQTT-3.14.4-3].
// expiry, if not nil, is the Session Expiry Interval a v5 DISCONNECT set
// [MQTT-3.14.2-1].
func (cl *Client) Disconnect(willPending bool, expiry *uint32) {
	e, c, s := cl.e, cl.c, cl.c.s
	e.mu.Lock()
	defer e.mu.Unlock()
	s.mu.Lock()
	if s.conn.Load() != c {
		c.gone = true
		s.mu.Unlock()
		return // taken over: the session is someone else's now
	}
	c.gone = true
	s.conn.Store(nil)
	if expiry != nil && s.expiry > 0 {
		s.expiry = *expiry
	}
	now, at := e.now(), e.nowUp()
	will := s.will
	if !willPending {
		will, s.will = nil, nil
	}
	stopping := e.stopping.Load()
	if will != nil && stopping && min(s.willDelay, s.expiry) == 0 {
		// The broker going is not the client going: an immediate will is
		// not published then; a delayed one stays pending across the
		// restart [MQTT-3.1.2-8].
		will, s.will = nil, nil
	}
	persistent := s.persistent && s.expiry > 0
	if persistent {
		if s.expiry != math.MaxUint32 {
			s.expiresAt = at + int64(s.expiry)
		}
		if will != nil {
			s.willDue = now // no delay: published below
			if d := min(s.willDelay, s.expiry); d > 0 {
				s.willDue = at + int64(d)
			}
		}
		e.appendRecord(EncodeDisconnect(Disconnect{Client: s.id, Ref: s.ref.Load(), At: at, ExpiryInterval: s.expiry, WillPending: will != nil}))
	}
	// No Complete record: should the broker stop before another member
	// takes one, the log still gives it to this one (unless a checkpoint
	// came since: see doc.go).
	returned := s.returnFlightsLocked(e, func(f flight) bool { return f.givenBack(s.persistent) })
	// Retained messages of a SUBSCRIBE not yet sent wait for the next
	// connection of a persistent session (not across a restart).
	if !persistent {
		s.retained = nil
	}
	c.giveBackLocked()
	s.mu.Unlock()
	for _, sb := range s.subs {
		if sb.g != nil {
			sb.g.mu.Lock()
			delete(sb.g.members, s)
			sb.g.mu.Unlock()
		}
	}
	kickGroups(returned)
	if !persistent {
		if s.persistent {
			e.appendRecord(EncodeEnd(ClientRef{Client: s.id, Ref: s.ref.Load()}))
		} else {
			e.endClean(s)
		}
		e.endSessionLocked(s, false)
		if will != nil {
			e.publishAsync(will)
		}
		return
	}
	s.queue.Park(e.fannedOut.Load())
	if will != nil && s.willDue <= now {
		s.will, s.willDue = nil, 0
		e.publishAsync(will)
	} else if will != nil {
		e.pushTimerLocked(s.willDue, s, true)
	}
	if s.expiresAt > 0 {
		e.pushTimerLocked(s.expiresAt, s, false)
	}
}

// Subscribe adds the subscriptions (a repeated filter replaces the old one
// and keeps its start [MQTT-3.8.4-3]). For a persistent session they are
// durable when it returns; an error means SUBACK must carry a failure code
// (0x80) for every one [MQTT-3.9.3], and the subscriptions are as they
// were. Retained messages matching them are queued per their Retain
// Handling [MQTT-3.3.1-9..11] and flow, within the client's window, once
// Suback is called.
//
// The subscriptions enter the index before their records are appended,
// both under Engine.mu, so every PUBLISH appended after the SUBSCRIBE's
// records matches them; the wait for the records is outside the lock, so
// the SUBSCRIBEs of many connections share their fsyncs. Records that
// cannot be appended, or whose write fails, take them out again (a
// repeated filter gets its old subscription back), and queue no retained
// message.
func (cl *Client) Subscribe(subs []Subscribe) error {
	e, c, s := cl.e, cl.c, cl.c.s
	if len(subs) == 0 {
		s.mu.Lock()
		c.holdRet++ // Suback follows all the same
		s.mu.Unlock()
		return nil
	}
	// Every publish acknowledged before this SUBSCRIBE (durable, so at or
	// below LastOffset) is fanned out first: the retained messages copied
	// below are then those it left, and none of them comes once more as
	// a live message (RETAIN 0), or at all with Retain Handling 2
	// [MQTT-3.3.1-9] [MQTT-3.3.1-11]. The dispatcher is behind by a few
	// records at most, unless a backlog is being read after a restart.
	e.waitFannedOut(e.log.LastOffset() + 1)
	e.mu.Lock()
	if s.conn.Load() != cl.c {
		e.mu.Unlock()
		return ErrGone
	}
	var recs [][]byte
	if s.persistent {
		recs = make([][]byte, 0, len(subs))
		for i := range subs {
			subs[i].Client, subs[i].Ref = s.id, s.ref.Load()
			rec, err := Encode(&subs[i])
			if err != nil {
				e.mu.Unlock()
				return err
			}
			recs = append(recs, rec)
		}
	}
	// The retained messages are copied as the subscriptions enter the
	// index, so that each later one comes once, live; a persistent
	// session's are queued once its records are durable.
	added := e.subscribeLocked(s, subs)
	if len(recs) == 0 {
		s.mu.Lock()
		c.holdRet++ // the retained messages wait for the SUBACK: held first
		s.mu.Unlock()
		e.queueRetained(s, added)
		e.mu.Unlock()
		return nil
	}
	off, err := e.log.AppendAsync(recs...)
	if err != nil {
		e.unsubscribeAddedLocked(s, added)
		e.mu.Unlock()
		return err
	}
	s.mu.Lock()
	c.holdRet++
	s.mu.Unlock()
	e.mu.Unlock()
	err = e.log.WaitDurable(context.Background(), off+uint64(len(recs))-1)
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		e.unsubscribeAddedLocked(s, added)
		return err
	}
	e.queueRetained(s, added)
	return nil
}

// added is a subscription Subscribe added, the one it replaced (nil:
// none), and the retained messages it gets.
type added struct {
	sb, old  *sub
	retained []Entry
}

// subscribeLocked adds the subscriptions to s, the index and their
// groups. A repeated filter's new subscription takes the old one's place
// in one step: in the index, or among its group's members (the group and
// its backlog stay).
func (e *Engine) subscribeLocked(s *session, subs []Subscribe) []added {
	since := e.dispatched.Load()
	out := make([]added, 0, len(subs))
	for _, sr := range subs {
		sr.Client, sr.Ref = s.id, s.ref.Load()
		s.mu.Lock()
		old := s.subs[sr.Filter]
		s.mu.Unlock()
		start := since
		if old != nil {
			start = old.since
		}
		nb := &sub{Subscribe: sr, since: start, s: s}
		if sr.Identifier > 0 {
			nb.ids = []int{sr.Identifier}
		}
		if name, inner := SplitShared(sr.Filter); name != "" {
			g := e.groups[sr.Filter]
			if g == nil {
				g = &group{key: sr.Filter, filter: inner, since: start,
					queue: NewQueue(since, e.cfg.QueueLimit), members: map[*session]*sub{}}
				g.queue.CatchUp(e.dispatched.Load)
				g.sub = &sub{g: g, since: start}
				e.groups[sr.Filter] = g
				e.idx.add(inner, g.sub)
			}
			nb.g = g
			if old == nil {
				g.subscribers++
			}
		}
		e.swapSubLocked(s, old, nb)
		out = append(out, added{sb: nb, old: old, retained: e.retainedForLocked(nb, old == nil)})
	}
	return out
}

// swapSubLocked puts sb in old's place (old nil: adds it) in s, the index
// or its group's members.
func (e *Engine) swapSubLocked(s *session, old, sb *sub) {
	s.mu.Lock()
	s.putSub(sb.Filter, sb)
	connected := s.conn.Load() != nil
	s.mu.Unlock()
	if g := sb.g; g != nil {
		g.mu.Lock()
		if _, in := g.members[s]; in || connected {
			g.members[s] = sb
		}
		g.mu.Unlock()
		return
	}
	if old != nil {
		e.idx.replace(sb.Filter, old, sb)
	} else {
		e.idx.add(sb.Filter, sb)
	}
}

// unsubscribeAddedLocked undoes subscribeLocked, for the subscriptions
// still as it left them.
func (e *Engine) unsubscribeAddedLocked(s *session, subs []added) {
	for _, a := range subs {
		s.mu.Lock()
		same := s.subs[a.sb.Filter] == a.sb
		s.mu.Unlock()
		switch {
		case !same:
		case a.old == nil:
			e.unsubscribeLocked(s, a.sb)
		default:
			e.swapSubLocked(s, a.sb, a.old)
		}
	}
}

// retainedForLocked returns the retained messages a new subscription gets
// [MQTT-3.3.1-9]: none for a shared subscription [MQTT-4.8.2] (none are
// sent to shared subscriptions), with Retain Handling 1 only for a new
// subscription (fresh), with 2 never [MQTT-3.3.1-10] [MQTT-3.3.1-11].
func (e *Engine) retainedForLocked(sb *sub, fresh bool) []Entry {
	sr := sb.Subscribe
	if sb.g != nil || !(sr.RetainHandling == 0 || (sr.RetainHandling == 1 && fresh)) {
		return nil
	}
	var out []Entry
	for _, r := range e.retained {
		if !Match(sr.Filter, r.Message.Topic) {
			continue
		}
		m := &r.Message
		out = append(out, Entry{Offset: r.Offset, Msg: m, QoS: min(m.QoS, sr.QoS), Retain: true, IDs: sb.ids, atSubscribe: true})
	}
	return out
}

// queueRetained queues for s the retained messages of its new
// subscriptions that are still in place (a takeover's SUBSCRIBE may have
// replaced one meanwhile).
func (e *Engine) queueRetained(s *session, subs []added) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range subs {
		if len(a.retained) > 0 && s.subs[a.sb.Filter] == a.sb {
			s.retained = append(s.retained, a.retained...)
		}
	}
}

// Suback tells the engine the SUBACK of the last Subscribe is written:
// the retained messages it found may follow it. The hold is the
// connection's: one taken over before its SUBACK holds nothing of the
// next one's.
func (cl *Client) Suback() {
	c, s := cl.c, cl.c.s
	s.mu.Lock()
	c.holdRet = max(c.holdRet-1, 0)
	s.mu.Unlock()
	c.kick()
}

// Holds returns how many subscriptions the session holds and, per filter
// (as subscribed, with any $share prefix), whether it holds that one: what
// a quota on subscriptions counts, those a session kept across a restart
// or a takeover included.
func (cl *Client) Holds(filters []string) (n int, held []bool) {
	s := cl.c.s
	held = make([]bool, len(filters))
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range filters {
		held[i] = s.subs[f] != nil
	}
	return len(s.subs), held
}

// Unsubscribe removes subscriptions by filter; for a persistent session
// the removal is durable when it returns (an error means UNSUBACK must
// carry 0x80, and the subscriptions stay). The records are appended under
// Engine.mu and waited for outside it; the subscriptions are deleted once
// they are durable, and take no new message from then on [MQTT-3.10.4-2].
// existed says, per filter, whether the session held it: the UNSUBACK's
// 0x00 or 0x11 No subscription existed [MQTT-3.11.3-1].
func (cl *Client) Unsubscribe(filters []string) (existed []bool, err error) {
	e, s := cl.e, cl.c.s
	e.mu.Lock()
	if s.conn.Load() != cl.c {
		e.mu.Unlock()
		return nil, ErrGone
	}
	gone := make([]*sub, 0, len(filters))
	existed = make([]bool, len(filters))
	s.mu.Lock()
	for i, f := range filters {
		// One UNSUBSCRIBE is a sequence of them [MQTT-3.10.4-6]: a filter
		// given twice existed for its first only.
		if sb := s.subs[f]; sb != nil && !slices.Contains(filters[:i], f) {
			gone = append(gone, sb)
			existed[i] = true
		}
	}
	s.mu.Unlock()
	if s.persistent && len(filters) > 0 {
		recs := make([][]byte, 0, len(filters))
		for _, f := range filters {
			recs = append(recs, EncodeUnsubscribe(Unsubscribe{Client: s.id, Ref: s.ref.Load(), Filter: f}))
		}
		off, err := e.log.AppendAsync(recs...)
		if err != nil {
			e.mu.Unlock()
			return nil, err
		}
		e.mu.Unlock()
		if err := e.log.WaitDurable(context.Background(), off+uint64(len(recs))-1); err != nil {
			return nil, err
		}
		e.mu.Lock()
	}
	defer e.mu.Unlock()
	for _, sb := range gone {
		s.mu.Lock()
		same := s.subs[sb.Filter] == sb // not subscribed again meanwhile
		s.mu.Unlock()
		if same {
			e.unsubscribeLocked(s, sb)
		}
	}
	return existed, nil
}

// unsubscribeLocked takes sb out of s, the index and its group.
func (e *Engine) unsubscribeLocked(s *session, sb *sub) {
	s.mu.Lock()
	held := s.subs[sb.Filter] == sb
	if held {
		s.deleteSub(sb.Filter)
	}
	s.mu.Unlock()
	if sb.g == nil {
		e.idx.remove(sb.Filter, sb)
		return
	}
	g := sb.g
	g.mu.Lock()
	delete(g.members, s)
	g.mu.Unlock()
	if held {
		g.subscribers--
	}
	// The group stays while any session, online or not, subscribes to it.
	if g.subscribers > 0 {
		return
	}
	delete(e.groups, g.key)
	e.idx.remove(g.filter, g.sub)
}

// kickMembers starts the senders of the group's connected members but
// except.
func (g *group) kickMembers(except *session) {
	g.mu.Lock()
	ms := slices.Collect(maps.Keys(g.members))
	g.mu.Unlock()
	for _, m := range ms {
		if m == except {
			continue
		}
		if c := m.conn.Load(); c != nil {
			c.kick()
		}
	}
}

// giveBackLocked returns what a scan found for c and c did not take to
// where it came from: they are all of one queue, in log order, so the
// session's own queue scans again from the first; a group's go back to
// the group. Called with s.mu held, once c is gone.
func (c *connection) giveBackLocked() {
	for i, sc := range c.scanned {
		if sc.g != nil {
			sc.g.mu.Lock()
			sc.g.returned = append(sc.g.returned, sc.Entry)
			sc.g.mu.Unlock()
		} else if i == 0 {
			c.s.queue.Requeue(sc.Entry)
		}
	}
	c.scanned = nil
}

// Owner returns the user that created the session of client id, and
// whether there is one: a persistent session belongs to its creator.
func (e *Engine) Owner(id string) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s := e.sessions[id]; s != nil {
		return s.owner, true
	}
	return "", false
}

// Stopping tells the engine the broker is shutting down: the connections
// about to end are not clients going away, so their wills wait.
func (e *Engine) Stopping() { e.stopping.Store(true) }
