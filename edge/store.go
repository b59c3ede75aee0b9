package edge

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/qos"
	"github.com/edgemq/edgemq/wal"
)

// store is the mochi hook that keeps the durability contract (see doc.go):
// it logs every accepted QoS 1/2 message before mochi acknowledges it, and
// delivers QoS 1/2 messages itself, from the log, in place of mochi's
// in-RAM fan-out and offline queues.
//
// mochi remains the protocol engine: it parses packets, writes CONNACK and
// SUBACK, and answers PUBREL with PUBCOMP. OnPublish returns ErrRejectPacket
// for every QoS 1/2 message it logged, so mochi neither acknowledges nor
// fans it out: the connection's acker (store_ack.go) writes PUBACK or PUBREC
// once the record is durable, and the store delivers it. The dispatcher
// goroutine reads the log in order and offers each message to the queues of
// the sessions (and shared groups) it matches; one pump goroutine per
// connected session takes from its queues and writes to the client.
//
// Lock order: group.order (held by a pump taking from a shared group, see
// stepGroups), then store.mu, then session.mu, then group.scanMu, then a
// qos.Queue's.
type store struct {
	mqtt.HookBase
	srv     *mqtt.Server
	log     *wal.Log
	lg      *slog.Logger
	m       *storeMetrics
	canRead func(cl *mqtt.Client, topic string) bool // the read ACL
	// bridged reports whether a bridge forwards topic: such QoS 0 messages
	// are logged too. nil: no bridges. Set before the listeners start.
	bridged func(topic string) bool

	queueLimit  int   // RAM entries per queue before it scans the log
	budget      int64 // the log's disk budget in bytes, 0: none
	maxInflight int   // outbound window per client, before its Receive Maximum

	ctx    context.Context // the store's lifetime: cancelled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the dispatcher, the expiry loop and the pumps

	ackMu     sync.Mutex
	ackers    map[*mqtt.Client]*acker
	ackWindow int // acknowledgements one connection may have waiting

	mu       sync.Mutex
	sessions map[string]*session
	groups   map[string]*group
	inbound  map[string]map[uint16]uint64 // client -> QoS 2 packet id awaiting PUBREL -> offset

	stopping   atomic.Bool   // the broker is shutting down (Broker.Shutdown)
	dispatched atomic.Uint64 // the next offset the dispatcher looks at
	fannedOut  atomic.Uint64 // every offset below it has been offered everywhere

	// Checkpoints (store_checkpoint.go).
	cursor          *wal.Cursor
	snapDir         string
	checkpointEvery time.Duration
	shadow          *qos.State    // the dispatcher's: the state after every record it read
	snapshotAt      atomic.Uint64 // the offset of the newest snapshot on disk (0: none)
	checkpoints     chan pendingCheckpoint
	// failedCheckpoints counts the failures since the last success; only
	// the checkpointer (and close, after it stopped) touches it.
	failedCheckpoints int
	unsnapshotted     atomic.Bool   // the dispatcher read records no snapshot handed on holds
	checkpointStale   atomic.Bool   // the last checkpoint failed: the next is due at once
	alarms            *logThrottle  // repeating errors: one line a minute
	refusals          atomic.Uint64 // publishes refused since the last one taken
}

// session is a client's session as the store keeps it. While the client is
// connected, p is its pump; offline, only the queue's position, the
// subscriptions and the unacknowledged packet ids stay in RAM.
type session struct {
	id    string
	owner string // the username that created it (see authHook.OnConnect)
	queue *qos.Queue

	mu         sync.Mutex
	persistent bool
	subs       map[string]qos.Sub // by filter as subscribed
	inflight   map[uint16]*flight
	cl         *mqtt.Client // nil while offline
	p          *pump
	prevDone   chan struct{}   // closed when the last stopped pump has exited
	expiresAt  int64           // offline: Unix second the session ends (0: never)
	resumed    bool            // the current connection took over an existing session
	parked     *packets.Packet // an outbound inflight entry hidden from mochi during a SUBSCRIBE (see OnPacketRead)
	will       *qos.Message    // the current or last connection's will, nil: none
	willDelay  uint32          // seconds
	willDue    int64           // offline: Unix second the will is published (0: not pending)
}

// flight is one outbound QoS 1/2 message waiting for its acknowledgement.
type flight struct {
	offset   uint64
	qos      byte
	released bool   // PUBREC came: only PUBREL may be sent again
	group    string // the shared group it came through
	msg      *qos.Message
}

// group is a shared subscription group: one queue its members take from.
type group struct {
	// order is held by a member from taking an entry until its delivery
	// record is appended (see stepGroups); it comes before every other lock.
	order sync.Mutex
	// sending is 1 + the lowest offset a member may have taken and not yet
	// logged (0: none), for the trim point and the checkpoint's position.
	sending atomic.Uint64
	key     string // "$share/<name>/<filter>", as subscribed
	filter  string
	since   uint64
	queue   *qos.Queue
	scanMu  sync.Mutex // one member scans the log at a time
	// readFailures counts the tries of the record the scan stands at;
	// guarded by scanMu.
	readFailures int
	// returned holds QoS 1 entries a member took and could not finish (it
	// left, or its connection went first): members take them before the
	// queue. Guarded by scanMu.
	returned []qos.Entry
}

// pump delivers one connection's messages.
type pump struct {
	cl     *mqtt.Client
	window int
	wake   chan struct{} // capacity 1: a queue, a group or the window changed
	// readFailures counts the tries of the record the scan stands at.
	readFailures int
	stop         chan struct{}
	done         chan struct{}
}

func (p *pump) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// storeOptions configure a store.
type storeOptions struct {
	queueLimit  int
	maxInflight int
	ackWindow   int
	canRead     func(cl *mqtt.Client, topic string) bool
	cursor      *wal.Cursor // the store's retention cursor in the log
	snapDir     string      // where snapshots are written
	checkpoint  time.Duration
	budget      int64 // the log's disk budget, for admission
}

// newStore recovers the state in l into srv (sessions, subscriptions,
// retained messages) and returns the hook. Call start once srv serves.
func newStore(srv *mqtt.Server, l *wal.Log, lg *slog.Logger, m *storeMetrics, o storeOptions) (*store, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &store{
		srv: srv, log: l, lg: lg, m: m, canRead: o.canRead,
		queueLimit: max(o.queueLimit, 1), maxInflight: max(o.maxInflight, 1), budget: o.budget,
		ctx: ctx, cancel: cancel,
		sessions: map[string]*session{},
		groups:   map[string]*group{},
		inbound:  map[string]map[uint16]uint64{},
		ackers:   map[*mqtt.Client]*acker{}, ackWindow: max(o.ackWindow, 1),
		cursor: o.cursor, snapDir: o.snapDir, checkpointEvery: max(o.checkpoint, 100*time.Millisecond),
		checkpoints: make(chan pendingCheckpoint, 1),
		alarms:      newLogThrottle(time.Minute),
	}
	if s.canRead == nil {
		s.canRead = func(*mqtt.Client, string) bool { return true }
	}
	if err := s.recover(); err != nil {
		cancel()
		return nil, err
	}
	return s, nil
}

// ID names the hook.
func (s *store) ID() string { return "edge-store" }

// Provides lists the events the store handles.
func (s *store) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect,
		mqtt.OnPublish, mqtt.OnPacketRead, mqtt.OnPacketEncode,
		mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnClientExpired:
		return true
	}
	return false
}

// start runs the dispatcher from the end of the log (recover positioned
// it), the session expiry loop and the checkpointer.
func (s *store) start() {
	s.wg.Add(3)
	go s.dispatch()
	go s.expireLoop()
	go s.checkpointLoop()
}

// close stops the dispatcher and every pump, waits for them, and writes a
// last checkpoint so the next start replays little. The log is closed by
// its owner, after.
func (s *store) close() {
	s.cancel()
	s.mu.Lock()
	for _, sess := range s.sessions {
		sess.mu.Lock()
		if sess.p != nil {
			sess.stopPump()
		}
		sess.mu.Unlock()
	}
	s.mu.Unlock()
	s.wg.Wait()
	// Nothing appends now: bring the shadow to the end and snapshot it.
	r := s.log.NewReader(s.dispatched.Load())
	for r.Offset() <= s.log.LastOffset() {
		off, rec, err := r.Next(context.Background())
		if err != nil {
			s.lg.Warn("last checkpoint skipped", "error", err)
			return
		}
		_ = s.shadow.Apply(off, rec)
	}
	s.fannedOut.Store(r.Offset())
	s.runCheckpoint(s.shadow, r.Offset())
}

// persistent reports whether cl's session outlives its connection
// [MQTT-3.1.2-23] [MQTT-3.1.2-6].
func persistent(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

func expiryOf(cl *mqtt.Client) uint32 {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval
	}
	if cl.Properties.Clean {
		return 0
	}
	return math.MaxUint32
}

// appendWait appends records and waits until they are durable. It does
// not depend on the store's lifetime: the log itself ends the wait if it
// closes.
func (s *store) appendWait(recs ...[]byte) (uint64, error) {
	off, err := s.log.Append(context.Background(), recs...)
	if err != nil {
		s.m.appendErrors.Inc()
	}
	return off, err
}

// appendAsync appends records without waiting for the fsync.
func (s *store) appendAsync(recs ...[]byte) (uint64, error) {
	off, err := s.log.AppendAsync(recs...)
	if err != nil {
		s.m.appendErrors.Inc()
	}
	return off, err
}

// OnSessionEstablish runs before mochi looks for an existing session and
// writes CONNACK: a clean start ends the old session here, and a
// persistent session is logged, durably, before its CONNACK.
func (s *store) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	if last, ok := s.establish(cl, pk); ok {
		if err := s.log.WaitDurable(s.ctx, last); err != nil {
			s.lg.Warn("session not logged: it may not survive a restart", "client", cl.ID, "error", err)
		}
	}
}

// establish attaches cl to its session (a new one on clean start) and
// returns the offset of the last record it appended, if any.
func (s *store) establish(cl *mqtt.Client, pk packets.Packet) (last uint64, logged bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	note := func(rec []byte) {
		off, err := s.appendAsync(rec)
		if err != nil {
			s.lg.Warn("session change not logged", "client", cl.ID, "error", err)
			return
		}
		last, logged = off, true
	}
	will, willDelay := takeWill(cl)
	sess := s.sessions[cl.ID]
	if pk.Connect.Clean { // [MQTT-3.1.2-4]
		if sess != nil {
			s.endSessionLocked(sess)
			sess = nil
		} else if s.inbound[cl.ID] != nil {
			delete(s.inbound, cl.ID)
			note(qos.EncodeEnd(cl.ID))
		}
	}
	resumed := sess != nil
	if sess == nil {
		sess = &session{id: cl.ID, owner: string(cl.Properties.Username), subs: map[string]qos.Sub{}, inflight: map[uint16]*flight{}}
		sess.queue = qos.NewQueue(s.dispatched.Load(), s.queueLimit)
		s.sessions[cl.ID] = sess
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	sess.resumed = resumed
	if sess.p != nil { // a takeover: the old connection's pump stops
		sess.stopPump()
		s.m.online.Dec()
	}
	if old := sess.cl; old != nil {
		// A takeover: mochi copies the old connection's inflight map to the
		// new one and writes it all again, around the log. The new pump
		// resends the session's messages itself (a QoS 2 one only once its
		// delivery record is durable), so mochi gets none of them to copy.
		for pid := range sess.inflight {
			old.State.Inflight.Delete(pid)
		}
	}
	sess.cl = cl
	sess.expiresAt = 0
	sess.persistent = persistent(cl)
	// A new connection cancels a pending will [MQTT-3.1.3-9]; its own will
	// replaces it.
	sess.will, sess.willDelay, sess.willDue = will, willDelay, 0
	if sess.persistent || will != nil {
		rec, _ := qos.Encode(&qos.Session{Client: cl.ID, ProtocolVersion: cl.Properties.ProtocolVersion,
			ExpiryInterval: expiryOf(cl), Will: will, WillDelay: willDelay, Username: sess.owner})
		note(rec)
	}
	// mochi's own copy of an offline session is dropped at its disconnect
	// (see OnDisconnect), so it cannot re-add the subscriptions: give the
	// client its subscription set back, as mochi's takeover would.
	for filter, sub := range sess.subs {
		cl.State.Subscriptions.Add(filter, subPacket(sub.Subscribe))
	}
	for pid := range s.inbound[cl.ID] {
		// A QoS 2 message acknowledged before a restart: mochi must know it
		// waits for PUBREL, or it answers the PUBREL with 0x92.
		cl.State.Inflight.Set(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Pubrec},
			PacketID:    pid,
			Created:     time.Now().Unix(),
		})
	}
	return last, logged
}

// takeWill takes cl's will away from mochi, which would publish it around
// the log (straight into its in-RAM fan-out), and returns it as the store
// publishes it: through the log, like any message [MQTT-3.1.2-8].
func takeWill(cl *mqtt.Client) (*qos.Message, uint32) {
	if atomic.LoadUint32(&cl.Properties.Will.Flag) == 0 {
		return nil, 0
	}
	w := cl.Properties.Will
	atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
	m := &qos.Message{Topic: w.TopicName, Payload: w.Payload, QoS: w.Qos, Retain: w.Retain, Will: true, Origin: cl.ID}
	for _, u := range w.User {
		m.User = append(m.User, qos.Property{Key: u.Key, Value: u.Val})
	}
	return m, w.WillDelayInterval
}

// publishWill logs a will as a message; the dispatcher delivers it. A
// retained will also replaces the topic's retained message.
func (s *store) publishWill(m *qos.Message) {
	m.Created = time.Now().UnixNano()
	rec, err := qos.Encode(m)
	if err == nil {
		_, err = s.appendAsync(rec)
	}
	if err != nil {
		s.lg.Warn("will not published: not logged", "client", m.Origin, "error", err)
		return
	}
	if m.Retain {
		s.srv.Topics.RetainMessage(retainedPacket(m))
	}
	s.m.wills.Inc()
}

// OnSessionEstablished starts the session's pump once CONNACK is out.
func (s *store) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	s.mu.Lock()
	sess := s.sessions[cl.ID]
	s.mu.Unlock()
	if sess == nil {
		return
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.cl != cl || sess.p != nil {
		return // taken over already
	}
	window := s.maxInflight
	if cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.ReceiveMaximum > 0 {
		window = min(window, int(cl.Properties.Props.ReceiveMaximum)) // [MQTT-3.3.4-9]
	}
	// The pump keeps the client's window; mochi's own send quota would
	// only make it call Inflight.NextImmediate after every packet, which
	// read-locks the inflight map twice (inflight.go:95-99) and deadlocks
	// against the pump's Inflight.Set. With a zero quota mochi never does.
	cl.State.Inflight.ResetSendQuota(0)
	p := &pump{cl: cl, window: window, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	sess.p = p
	s.m.online.Inc()
	s.wg.Add(1)
	go func(prev chan struct{}) {
		// One pump per session at a time: the last one may still be
		// giving back what it took (session.requeue).
		if prev != nil {
			<-prev
		}
		sess.queue.Resume(s.fannedOut.Load())
		s.run(sess, p)
	}(sess.prevDone)
}

// stopPump tells the pump to stop; it exits on its own (a blocked write
// ends at the write deadline). Called with sess.mu held.
func (sess *session) stopPump() {
	close(sess.p.stop)
	sess.prevDone = sess.p.done
	sess.p = nil
}

// OnPacketEncode marks a persistent session present in CONNACK: after a
// restart mochi does not know the sessions the log kept [MQTT-3.2.2-3].
func (s *store) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if t := pk.FixedHeader.Type; t == packets.Suback || t == packets.Unsuback {
		s.unpark(cl, pk.PacketID)
		return pk
	}
	if pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != 0 || pk.SessionPresent {
		return pk
	}
	s.mu.Lock()
	sess := s.sessions[cl.ID]
	s.mu.Unlock()
	if sess != nil {
		sess.mu.Lock()
		pk.SessionPresent = sess.cl == cl && sess.resumed
		sess.mu.Unlock()
	}
	return pk
}

// unpark gives mochi back the inflight entry OnPacketRead hid for the
// SUBSCRIBE or UNSUBSCRIBE with packet id pid.
func (s *store) unpark(cl *mqtt.Client, pid uint16) {
	sess := s.sessionOf(cl)
	if sess == nil {
		return
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.parked != nil && sess.parked.PacketID == pid {
		cl.State.Inflight.Set(*sess.parked)
		sess.parked = nil
	}
}

// OnDisconnect parks the session: its RAM queue is dropped, its backlog
// stays in the log. A session that ends with its connection is removed.
func (s *store) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Inline {
		return
	}
	s.stopAcker(cl)
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessions[cl.ID]
	if sess == nil {
		return
	}
	sess.mu.Lock()
	if sess.cl != cl { // taken over: the new connection owns the session
		sess.mu.Unlock()
		return
	}
	if sess.p != nil {
		sess.stopPump()
		s.m.online.Dec()
	}
	// A QoS 1 message a shared group gave this member, unacknowledged, goes
	// to another member [MQTT-4.8.2]; a QoS 2 one must stay with this
	// member [MQTT-4.8.2-4] [MQTT-4.8.2-5].
	var handBack []*flight
	for pid, f := range sess.inflight {
		if f.group != "" && f.qos == 1 {
			// Not logged as complete: should the broker stop before another
			// member takes it, this member still holds it after the restart
			// (at least once).
			handBack = append(handBack, f)
			delete(sess.inflight, pid)
			cl.State.Inflight.Delete(pid)
		}
	}
	now := time.Now().Unix()
	sess.cl = nil
	sess.expiresAt = 0
	expiry := expiryOf(cl)
	if expiry != math.MaxUint32 {
		sess.expiresAt = now + int64(expiry)
	}
	// The will goes when the connection ends without a normal DISCONNECT
	// (err is nil only for one), after its delay or when the session
	// ends, whichever comes first [MQTT-3.1.2-8] [MQTT-3.1.3-9].
	will, logged := sess.will, sess.persistent || sess.will != nil
	if err == nil {
		will = nil
	}
	sess.will, sess.willDue = nil, 0
	if will != nil && !expire {
		if delay := min(sess.willDelay, expiry); delay > 0 {
			sess.will, sess.willDue = will, now+int64(delay)
			will = nil
		}
	}
	if s.stopping.Load() {
		// The broker goes, not the client: a will is not published now, but
		// a delayed one stays pending, for after the restart, and goes if
		// the client is not back by then.
		will = nil
	}
	pending := sess.willDue > 0
	sess.mu.Unlock()
	slices.SortFunc(handBack, func(a, b *flight) int { return cmp.Compare(a.offset, b.offset) })
	for _, f := range handBack {
		s.returnToGroupLocked(sess, f.group, qos.Entry{Offset: f.offset, Msg: f.msg})
	}
	if will != nil {
		s.publishWill(will)
	}
	if expire {
		if logged || s.inbound[cl.ID] != nil {
			s.endSessionLocked(sess)
		} else {
			s.forgetLocked(sess)
		}
		return
	}
	sess.queue.Park(s.fannedOut.Load())
	rec, _ := qos.Encode(&qos.Disconnect{Client: cl.ID, At: now, ExpiryInterval: expiry, WillPending: pending})
	if _, err := s.appendAsync(rec); err != nil {
		s.lg.Warn("disconnect not logged", "client", cl.ID, "error", err)
	}
	// mochi keeps an offline client, with its write queue, for as long as
	// the session lives. The store keeps the session; mochi's copy goes.
	// Safe against a reconnect: OnSessionEstablish takes s.mu first.
	if cur, ok := s.srv.Clients.Get(cl.ID); ok && cur == cl {
		s.srv.Clients.Delete(cl.ID)
	}
}

// OnClientExpired is mochi's own expiry of a session it still holds.
func (s *store) OnClientExpired(cl *mqtt.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess := s.sessions[cl.ID]; sess != nil && sess.cl == nil {
		s.endSessionLocked(sess)
	}
}

// endSessionLocked removes a session for good, logged, publishing its
// pending will first. Called with s.mu held.
func (s *store) endSessionLocked(sess *session) {
	sess.mu.Lock()
	will := sess.will
	if sess.willDue == 0 {
		will = nil
	}
	sess.will, sess.willDue = nil, 0
	sess.mu.Unlock()
	if will != nil {
		s.publishWill(will)
	}
	if _, err := s.appendAsync(qos.EncodeEnd(sess.id)); err != nil {
		s.lg.Warn("session end not logged", "client", sess.id, "error", err)
	}
	delete(s.inbound, sess.id)
	s.forgetLocked(sess)
}

// forgetLocked removes a session from RAM and from mochi's topic index.
func (s *store) forgetLocked(sess *session) {
	sess.mu.Lock()
	if sess.p != nil {
		sess.stopPump()
		s.m.online.Dec()
	}
	subs := sess.subs
	sess.subs = map[string]qos.Sub{}
	sess.inflight = map[uint16]*flight{}
	sess.mu.Unlock()
	for filter := range subs {
		s.srv.Topics.Unsubscribe(filter, sess.id)
	}
	if s.sessions[sess.id] == sess {
		delete(s.sessions, sess.id)
	}
	for filter := range subs {
		s.dropGroupLocked(filter)
	}
}

// dropGroupLocked removes the shared group key once no session has it: a
// shared subscription lives as long as a session that holds it [MQTT-4.8.2],
// and a group nobody can take from must not hold the log (its position is
// part of the trim point). What it held is not delivered to anyone. Called
// with s.mu held.
func (s *store) dropGroupLocked(key string) {
	if s.groups[key] == nil {
		return
	}
	for _, m := range s.sessions {
		m.mu.Lock()
		_, member := m.subs[key]
		m.mu.Unlock()
		if member {
			return
		}
	}
	delete(s.groups, key)
}

// expireLoop ends offline sessions whose expiry has passed.
func (s *store) expireLoop() {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now().Unix()
		s.mu.Lock()
		for _, sess := range s.sessions {
			sess.mu.Lock()
			offline, at := sess.cl == nil, sess.expiresAt
			var will *qos.Message
			if offline && sess.willDue > 0 && now >= sess.willDue {
				will, sess.will, sess.willDue = sess.will, nil, 0
			}
			sess.mu.Unlock()
			if will != nil {
				s.publishWill(will)
			}
			if offline && at > 0 && now >= at { // [MQTT-3.1.2-23]
				s.endSessionLocked(sess)
				s.m.expired.Inc()
			}
		}
		s.mu.Unlock()
	}
}

// OnPublish makes a QoS 1/2 message durable before mochi acknowledges it,
// and takes its delivery over from mochi.
func (s *store) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	q := pk.FixedHeader.Qos
	if q == 0 {
		// mochi delivers it; the log keeps the retained state, and what a
		// bridge forwards.
		if pk.FixedHeader.Retain || (s.bridged != nil && s.bridged(pk.TopicName)) {
			rec, _ := qos.Encode(messageOf(cl, pk))
			if _, err := s.appendAsync(rec); err != nil {
				s.lg.Warn("QoS 0 message not logged", "topic_len", len(pk.TopicName), "error", err)
			}
		}
		return pk, nil
	}
	if q == 2 {
		s.mu.Lock()
		orig, dup := s.inbound[cl.ID][pk.PacketID]
		s.mu.Unlock()
		if dup && pk.FixedHeader.Dup { // PUBREC again, once the first is durable; deliver nothing [MQTT-4.3.3-9]
			s.m.duplicates.Inc()
			s.ackerOf(cl).enqueue(orig, ackPacket(pk))
			return pk, packets.ErrRejectPacket
		}
	}
	msg := messageOf(cl, pk)
	rec, err := qos.Encode(msg)
	if err != nil {
		return pk, refusePublish(cl, pk, packets.ErrMalformedPacket)
	}
	if !s.admit(len(rec)) {
		s.refuse(wal.ErrFull)
		return pk, refuseStored(cl, pk, wal.ErrFull)
	}
	s.accepted()
	a := s.ackerOf(cl)
	off, err := s.appendAsync(rec)
	if err != nil {
		s.refuse(err)
		return pk, refuseStored(cl, pk, err)
	}
	if q == 2 {
		s.mu.Lock()
		if s.inbound[cl.ID] == nil {
			s.inbound[cl.ID] = map[uint16]uint64{}
		}
		s.inbound[cl.ID][pk.PacketID] = off
		s.mu.Unlock()
	}
	if pk.FixedHeader.Retain {
		// mochi skips retaining an ignored message: keep it in its index,
		// from which new subscribers get it [MQTT-3.3.1-5].
		s.srv.Topics.RetainMessage(pk.Copy(false))
	}
	// The acker writes PUBACK or PUBREC once the message is durable; mochi
	// neither acknowledges nor delivers it.
	a.enqueue(off, ackPacket(pk))
	return pk, packets.ErrRejectPacket
}

// ackPacket is the acknowledgement of an inbound QoS 1 or 2 PUBLISH.
func ackPacket(pk packets.Packet) packets.Packet {
	typ := byte(packets.Puback)
	if pk.FixedHeader.Qos == 2 {
		typ = packets.Pubrec
	}
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: pk.PacketID}
}

// admit decides whether a new message of n bytes may go into the log. New
// messages stop at the high watermark, a tenth of the budget below it, so
// that what the broker must still write to make progress (deliveries,
// acknowledgements, sessions, checkpoints) always has room: a full log
// must never stop subscribers from draining it.
func (s *store) admit(n int) bool {
	if s.budget <= 0 {
		return true
	}
	disk, queued := s.log.Usage()
	return disk+queued+int64(n) <= s.budget-s.budget/10
}

// refuse counts a publish the log did not take, and logs it once a minute
// while refusals repeat, with the reason: the budget's figures and what
// holds the log's trim point (the log shrinks only when that moves), or the
// log's error.
func (s *store) refuse(err error) {
	reason := refuseReason(err)
	s.m.refused.WithLabelValues(reason).Inc()
	s.refusals.Add(1)
	const msg = "publishes refused: not logged"
	ok, suppressed := s.alarms.allow(msg)
	if !ok {
		return
	}
	disk, queued := s.log.Usage()
	floor, holder := s.floor(s.log.LastOffset()+1, nil)
	s.lg.Warn(msg, "reason", reason, "error", err, "disk_bytes", disk, "queued_bytes", queued,
		"budget_bytes", s.budget, "admit_below_bytes", s.budget-s.budget/10,
		"trimmed_below_offset", s.cursor.Offset(), "needed_from_offset", floor, "held_by", holder,
		"suppressed", suppressed)
}

// accepted notes a publish admitted to the log after refusals (once a
// minute: on a full disk admission and failure alternate).
func (s *store) accepted() {
	if s.refusals.Load() == 0 {
		return
	}
	if n := s.refusals.Swap(0); n > 0 {
		s.alarms.log(s.lg, slog.LevelInfo, "publishes admitted again", "refused_before", n)
	}
}

// refuseStored answers a publish the log could not take.
func refuseStored(cl *mqtt.Client, pk packets.Packet, err error) error {
	code := packets.ErrImplementationSpecificError
	if errors.Is(err, wal.ErrFull) {
		code = packets.ErrQuotaExceeded
	}
	if cl.Properties.ProtocolVersion < 5 {
		// MQTT 3.1.1 has no refusal: no acknowledgement, and the client
		// sends it again when it reconnects [MQTT-4.4.0-1].
		return packets.ErrRejectPacket
	}
	return refusePublish(cl, pk, code)
}

func refuseReason(err error) string {
	if errors.Is(err, wal.ErrFull) {
		return "storage_full"
	}
	return "storage_error"
}

// messageOf builds the log record of an inbound PUBLISH.
func messageOf(cl *mqtt.Client, pk packets.Packet) *qos.Message {
	m := &qos.Message{
		Topic:             pk.TopicName,
		Payload:           pk.Payload,
		QoS:               pk.FixedHeader.Qos,
		Retain:            pk.FixedHeader.Retain,
		Origin:            cl.ID,
		OriginPacketID:    pk.PacketID,
		Created:           time.Now().UnixNano(),
		Expiry:            pk.Expiry,
		PayloadFormat:     pk.Properties.PayloadFormat,
		PayloadFormatFlag: pk.Properties.PayloadFormatFlag,
		ContentType:       pk.Properties.ContentType,
		ResponseTopic:     pk.Properties.ResponseTopic,
		CorrelationData:   pk.Properties.CorrelationData,
	}
	for _, u := range pk.Properties.User {
		m.User = append(m.User, qos.Property{Key: u.Key, Value: u.Val})
	}
	return m
}

// OnPacketRead takes the acknowledgements of outbound messages, and the
// PUBREL of inbound QoS 2 ones, before mochi answers them: the state change
// is logged first, so no PUBREL or PUBCOMP goes out before it is durable.
func (s *store) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubcomp:
		s.complete(cl, pk.PacketID, pk.FixedHeader.Type)
	case packets.Pubrec:
		return s.received(cl, pk), nil
	case packets.Pubrel:
		s.mu.Lock()
		_, ok := s.inbound[cl.ID][pk.PacketID]
		if ok {
			delete(s.inbound[cl.ID], pk.PacketID)
			if len(s.inbound[cl.ID]) == 0 {
				delete(s.inbound, cl.ID)
			}
		}
		s.mu.Unlock()
		if ok {
			// Not waited for: if it is lost, the packet id still looks taken
			// after a restart, but only a PUBLISH with DUP set counts as a
			// duplicate, and a client reusing the id for a new message sends
			// DUP 0 [MQTT-3.3.1-1] (see OnPublish).
			if _, err := s.appendAsync(qos.EncodeRef(qos.KindInboundRelease, qos.PacketRef{Client: cl.ID, PacketID: pk.PacketID})); err != nil {
				s.lg.Warn("pubrel not logged", "client", cl.ID, "error", err)
			}
		}
	case packets.Subscribe, packets.Unsubscribe:
		// mochi refuses a SUBSCRIBE or UNSUBSCRIBE whose packet id it holds
		// in its inflight map (SUBACK 0x91), but the ids of the messages
		// the server sends are its own, apart from the client's [MQTT-2.2.1].
		// Hide such an entry from mochi until the SUBACK is written.
		if in, ok := cl.State.Inflight.Get(pk.PacketID); ok && in.FixedHeader.Type != packets.Pubrec {
			if sess := s.sessionOf(cl); sess != nil {
				sess.mu.Lock()
				if sess.cl == cl && sess.parked == nil {
					sess.parked = &in
					cl.State.Inflight.Delete(pk.PacketID)
				}
				sess.mu.Unlock()
			}
		}
	case packets.Publish:
		if pk.FixedHeader.Qos == 2 {
			// mochi answers a PUBLISH on a packet id that waits for PUBREL
			// with PUBREC 0x91. The spec wants a duplicate acknowledged and
			// not delivered again [MQTT-4.3.3-9], and a new message (DUP 0:
			// the client got its PUBCOMP, the broker lost the PUBREL's
			// record) taken. Let it through to OnPublish, which tells them
			// apart.
			if in, ok := cl.State.Inflight.Get(pk.PacketID); ok && in.FixedHeader.Type == packets.Pubrec {
				s.mu.Lock()
				_, ours := s.inbound[cl.ID][pk.PacketID]
				s.mu.Unlock()
				if ours {
					cl.State.Inflight.Delete(pk.PacketID)
				}
			}
		}
	}
	return pk, nil
}

// owner returns the username that created the session of client id, and
// whether there is one.
func (s *store) owner(id string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess := s.sessions[id]; sess != nil {
		return sess.owner, true
	}
	return "", false
}

// sessionOf returns the session of cl's client id, which cl may no longer
// own (callers that care compare session.cl).
func (s *store) sessionOf(cl *mqtt.Client) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[cl.ID]
}

// complete frees an outbound packet id on PUBACK or PUBCOMP.
func (s *store) complete(cl *mqtt.Client, pid uint16, typ byte) {
	sess := s.sessionOf(cl)
	if sess == nil {
		return
	}
	sess.mu.Lock()
	f := sess.inflight[pid]
	if f == nil || (typ == packets.Puback) != (f.qos == 1) {
		sess.mu.Unlock()
		return
	}
	delete(sess.inflight, pid)
	logIt := sess.persistent || f.group != ""
	p := sess.p
	sess.mu.Unlock()
	if logIt {
		if _, err := s.appendAsync(qos.EncodeRef(qos.KindComplete, qos.PacketRef{Client: cl.ID, PacketID: pid})); err != nil {
			s.lg.Warn("completion not logged", "client", cl.ID, "error", err)
		}
	}
	s.m.acked.Inc()
	if p != nil {
		p.signal()
	}
}

// received moves an outbound QoS 2 message to the PUBREL stage. For a
// logged delivery the stage is logged and the PUBREL leaves only once that
// record is durable [MQTT-4.3.3-5]: the store's acker writes it, and mochi
// gets the PUBREC as a no-op (a PUBACK for packet id 0, which it ignores),
// because it would answer the PUBREC at once. A PUBREC with an error code
// ends the exchange [MQTT-4.3.3-4]; mochi handles that one.
func (s *store) received(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	sess := s.sessionOf(cl)
	if sess == nil {
		return pk
	}
	sess.mu.Lock()
	f := sess.inflight[pk.PacketID]
	if f == nil || f.qos != 2 || f.released {
		sess.mu.Unlock()
		return pk
	}
	logIt := sess.persistent || f.group != ""
	if pk.ReasonCode >= 0x80 {
		sess.mu.Unlock()
		s.complete(cl, pk.PacketID, packets.Pubcomp)
		return pk
	}
	f.released = true
	f.msg = nil // only the PUBREL is sent again: the message may go
	sess.mu.Unlock()
	if !logIt {
		return pk
	}
	off, err := s.appendAsync(qos.EncodeRef(qos.KindRelease, qos.PacketRef{Client: cl.ID, PacketID: pk.PacketID}))
	if err != nil {
		// Without its record a restart would send the PUBLISH again: send
		// no PUBREL now; the reconnect resends it from the flight.
		s.lg.Warn("pubrec not logged: pubrel held back", "client", cl.ID, "error", err)
	} else {
		s.ackerOf(cl).enqueue(off, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: pk.PacketID})
	}
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}} // a no-op for mochi
}

// OnSubscribed logs the granted subscriptions, durably before SUBACK, and
// gives them their start in the log. Refused filters are not kept.
func (s *store) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline {
		return
	}
	if last, wait := s.subscribe(cl, pk, codes); wait {
		if err := s.log.WaitDurable(s.ctx, last); err != nil {
			s.lg.Warn("subscription not logged: it may not survive a restart", "client", cl.ID, "error", err)
		}
	}
}

// subscribe records the granted filters of pk. The locks are held across
// the append, so the dispatcher, which takes them to match, cannot see a
// message logged after a subscription before the subscription has its start.
func (s *store) subscribe(cl *mqtt.Client, pk packets.Packet, codes []byte) (last uint64, wait bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessions[cl.ID]
	if sess == nil {
		return 0, false
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	var recs [][]byte
	var subs []qos.Subscribe
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] >= 0x80 {
			continue
		}
		sub := qos.Subscribe{Client: cl.ID, Filter: f.Filter, QoS: min(f.Qos, codes[i]), NoLocal: f.NoLocal,
			RetainAsPublished: f.RetainAsPublished, RetainHandling: f.RetainHandling, Identifier: f.Identifier}
		rec, err := qos.Encode(&sub)
		if err != nil {
			continue
		}
		recs, subs = append(recs, rec), append(subs, sub)
	}
	if len(recs) == 0 {
		return 0, false
	}
	first, err := s.appendAsync(recs...)
	if err != nil {
		s.lg.Warn("subscription not logged: it may not survive a restart", "client", cl.ID, "error", err)
		first = s.dispatched.Load()
	}
	for i, sub := range subs {
		since := first + uint64(i)
		if old, ok := sess.subs[sub.Filter]; ok {
			// A repeated subscription replaces the old one's options, not its
			// start: what the session was owed stays owed [MQTT-3.8.4-3].
			since = old.Since
		}
		sess.subs[sub.Filter] = qos.Sub{Subscribe: sub, Since: since}
		if g, inner := qos.SplitShared(sub.Filter); g != "" && s.groups[sub.Filter] == nil {
			s.groups[sub.Filter] = &group{key: sub.Filter, filter: inner, since: since, queue: qos.NewQueue(since+1, s.queueLimit)}
		}
	}
	if sess.p != nil {
		sess.p.signal()
	}
	return first + uint64(len(recs)) - 1, err == nil && sess.persistent
}

// OnUnsubscribed logs removed subscriptions, durably before UNSUBACK. mochi
// also calls it when it clears a clean session's subscriptions; that
// session's end is logged instead.
func (s *store) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	sess := s.sessionOf(cl)
	if sess == nil {
		return
	}
	sess.mu.Lock()
	if sess.cl != cl {
		sess.mu.Unlock()
		return
	}
	var recs [][]byte
	for _, f := range pk.Filters {
		if _, ok := sess.subs[f.Filter]; !ok {
			continue
		}
		delete(sess.subs, f.Filter)
		rec, _ := qos.Encode(&qos.Unsubscribe{Client: cl.ID, Filter: f.Filter})
		recs = append(recs, rec)
	}
	persistent := sess.persistent
	sess.mu.Unlock()
	s.mu.Lock()
	for _, f := range pk.Filters {
		s.dropGroupLocked(f.Filter)
	}
	s.mu.Unlock()
	if len(recs) > 0 && persistent {
		if _, err := s.appendWait(recs...); err != nil {
			s.lg.Warn("unsubscribe not logged", "client", cl.ID, "error", err)
		}
	}
}

// subPacket is the mochi form of a logged subscription.
func subPacket(s qos.Subscribe) packets.Subscription {
	return packets.Subscription{
		Filter: s.Filter, Qos: s.QoS, NoLocal: s.NoLocal, RetainAsPublished: s.RetainAsPublished,
		RetainHandling: s.RetainHandling, Identifier: s.Identifier,
	}
}

// dispatch reads the log in order and offers each QoS 1/2 message to the
// queues it matches.
func (s *store) dispatch() {
	defer s.wg.Done()
	r := s.log.NewReader(s.dispatched.Load())
	// Checkpoints are taken every checkpointEvery while records come, and
	// when the log goes idle with changes not yet in a snapshot: the
	// reader's deadline (one timer per interval, not per record) wakes the
	// dispatcher then.
	// A checkpoint that failed is due again as if records had come.
	lastCheckpoint := time.Now()
	idle, stopIdle := s.idleContext()
	defer func() { stopIdle() }()
	due := func() bool { return s.unsnapshotted.Load() || s.checkpointStale.Load() }
	checkpoint := func() {
		select {
		case s.checkpoints <- pendingCheckpoint{st: s.shadow.Clone(), offset: s.dispatched.Load()}:
			lastCheckpoint = time.Now()
			s.unsnapshotted.Store(false)
		default: // the last one is still being written
		}
	}
	for {
		off, rec, err := r.Next(idle)
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			if errors.Is(err, context.DeadlineExceeded) {
				stopIdle()
				idle, stopIdle = s.idleContext()
				if due() {
					checkpoint()
				}
				continue
			}
			s.lg.Error("dispatcher: log read failed", "offset", s.dispatched.Load(), "error", err)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(time.Second):
			}
			r = s.log.NewReader(max(s.dispatched.Load(), s.log.FirstOffset()))
			continue
		}
		// Progress moves before the offers: a pump that has scanned up to
		// it may switch to taking offers (qos.Queue.CatchUp), and must not
		// do so while this record is being offered.
		s.dispatched.Store(off + 1)
		// One decode serves the fan-out and the shadow state.
		kind, v, err := qos.Decode(rec)
		if err != nil {
			s.lg.Error("dispatcher: record not understood", "offset", off, "error", err)
		} else if m, ok := v.(*qos.Message); ok && (m.QoS > 0 || m.Will) {
			s.fanout(off, m)
		}
		s.fannedOut.Store(off + 1)
		if err == nil {
			s.shadow.ApplyDecoded(off, kind, v)
		}
		// A checkpoint's own record is no reason for another checkpoint.
		if kind != qos.KindCheckpoint {
			s.unsnapshotted.Store(true)
		}
		if due() && time.Since(lastCheckpoint) >= s.checkpointEvery {
			checkpoint()
		}
	}
}

// idleContext is the dispatcher's read deadline: one checkpoint interval.
func (s *store) idleContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.ctx, s.checkpointEvery)
}

// fanout offers the message at off to every matching session and group.
func (s *store) fanout(off uint64, m *qos.Message) {
	subs := s.srv.Topics.Subscribers(m.Topic)
	e := qos.Entry{Offset: off, Msg: m}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range subs.Subscriptions {
		sess := s.sessions[id]
		if sess == nil || !sess.queue.Interested(off) {
			continue
		}
		sess.mu.Lock()
		_, ok := sess.match(off, m)
		p := sess.p
		sess.mu.Unlock()
		if ok && sess.queue.Offer(e) && p != nil {
			p.signal()
		}
	}
	for key, members := range subs.Shared {
		g := s.groups[key]
		if g == nil || off <= g.since {
			continue
		}
		g.queue.Offer(e)
		for id := range members {
			if sess := s.sessions[id]; sess != nil {
				sess.mu.Lock()
				if sess.p != nil {
					sess.p.signal()
				}
				sess.mu.Unlock()
			}
		}
	}
	s.m.dispatched.Inc()
}

// match returns the delivery options for a message logged at off from the
// session's own (not shared) subscriptions: the highest QoS of those that
// match, all their identifiers [MQTT-3.3.4-3], and whether any matches.
// Called with sess.mu held.
func (sess *session) match(off uint64, m *qos.Message) (delivery, bool) {
	var d delivery
	found := false
	for filter, sub := range sess.subs {
		if sub.Since >= off {
			continue
		}
		if g, _ := qos.SplitShared(filter); g != "" {
			continue
		}
		if !qos.Match(filter, m.Topic) {
			continue
		}
		if sub.NoLocal && m.Origin == sess.id { // [MQTT-3.8.3-3]
			continue
		}
		if !found || sub.QoS > d.qos {
			d.qos = sub.QoS
		}
		d.rap = d.rap || sub.RetainAsPublished
		if sub.Identifier > 0 {
			d.ids = append(d.ids, sub.Identifier)
		}
		found = true
	}
	return d, found
}

// pumpSafetyNet is how long an idle pump sleeps without a signal.
const pumpSafetyNet = 5 * time.Second

// delivery is how one message goes to one session.
type delivery struct {
	qos   byte
	rap   bool
	ids   []int
	group string
}

// run is a pump: it resends what the session holds unacknowledged, then
// delivers its queues in order, as fast as the client's window allows.
func (s *store) run(sess *session, p *pump) {
	defer s.wg.Done()
	defer close(p.done)
	if !s.resend(sess, p) {
		return
	}
	for {
		select {
		case <-p.stop:
			return
		case <-s.ctx.Done():
			return
		default:
		}
		if !s.hasWindow(sess, p) {
			if !s.wait(sess, p) {
				return
			}
			continue
		}
		progressed, ok := s.step(sess, p)
		if !ok {
			return
		}
		if !progressed && !s.wait(sess, p) {
			return
		}
	}
}

// wait blocks until something may have changed for the pump. The timer is
// a safety net only: every change signals. It is long, so that idle
// connections cost no CPU.
func (s *store) wait(sess *session, p *pump) bool {
	t := time.NewTimer(pumpSafetyNet)
	defer t.Stop()
	select {
	case <-p.stop:
		return false
	case <-s.ctx.Done():
		return false
	case <-p.wake:
	case <-sess.queue.Wake():
	case <-t.C:
	}
	return true
}

func (s *store) hasWindow(sess *session, p *pump) bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return len(sess.inflight) < p.window
}

// step delivers at most one message: from the session's RAM queue, else
// one record of its log scan, else from one of its shared groups. It
// reports whether it did anything, and false for ok when the connection
// is gone.
func (s *store) step(sess *session, p *pump) (progressed, ok bool) {
	if e, found := sess.queue.Pop(); found {
		return true, s.deliverOwn(sess, p, e)
	}
	if from, scanning := sess.queue.Scan(); scanning {
		if from >= s.dispatched.Load() {
			// Caught up: take offers from now on. Or the dispatcher moved on
			// meanwhile, and there is more to scan: either way, go on.
			sess.queue.CatchUp(s.dispatched.Load)
			return true, true
		}
		e, err := s.readEntry(from)
		if err != nil {
			if !s.skipUnreadable(&p.readFailures, from, err) {
				return true, true // try it again
			}
			sess.queue.Scanned(from)
			return true, true
		}
		p.readFailures = 0
		ok := true
		if e.Msg != nil {
			ok = s.deliverOwn(sess, p, e)
		}
		sess.queue.Scanned(from)
		return true, ok
	}
	return s.stepGroups(sess, p)
}

// readEntry reads the record at off; Msg is nil for a record that is not a
// QoS 1/2 message.
func (s *store) readEntry(off uint64) (qos.Entry, error) {
	rec, err := s.log.Read(off)
	if err != nil {
		return qos.Entry{Offset: off}, err
	}
	if qos.KindOf(rec) != qos.KindMessage {
		return qos.Entry{Offset: off}, nil
	}
	m := new(qos.Message)
	if err := m.UnmarshalBinary(rec); err != nil {
		return qos.Entry{Offset: off}, err
	}
	if m.QoS == 0 && !m.Will {
		return qos.Entry{Offset: off}, nil // mochi delivered it
	}
	return qos.Entry{Offset: off, Msg: m}, nil
}

// deliverOwn delivers an entry of the session's own queue if the session
// still matches it.
func (s *store) deliverOwn(sess *session, p *pump, e qos.Entry) bool {
	sess.mu.Lock()
	d, ok := sess.match(e.Offset, e.Msg)
	sess.mu.Unlock()
	if !ok {
		return true
	}
	return s.send(sess, p, e, d)
}

// stepGroups takes one message from a shared group the session belongs to.
func (s *store) stepGroups(sess *session, p *pump) (progressed, ok bool) {
	sess.mu.Lock()
	var keys []string
	var subs []qos.Sub
	for filter, sub := range sess.subs {
		if g, _ := qos.SplitShared(filter); g != "" {
			keys, subs = append(keys, filter), append(subs, sub)
		}
	}
	sess.mu.Unlock()
	for i, key := range keys {
		s.mu.Lock()
		g := s.groups[key]
		s.mu.Unlock()
		if g == nil {
			continue
		}
		// A group's deliveries are logged in the order they are taken:
		// replay puts the group's position after the last one logged, so a
		// crash between one member's take and its record, while another
		// member's later record is durable, would skip the first message.
		g.order.Lock()
		g.sending.Store(g.queue.Position(s.fannedOut.Load()) + 1) // the entry about to be taken is at or above it
		e, found := s.takeGroup(g)
		if !found {
			g.sending.Store(0)
			g.order.Unlock()
			continue
		}
		g.sending.Store(e.Offset + 1)
		ok := true
		if e.Msg != nil && qos.Match(g.filter, e.Msg.Topic) {
			d := delivery{qos: subs[i].QoS, rap: subs[i].RetainAsPublished, group: key}
			if subs[i].Identifier > 0 {
				d.ids = []int{subs[i].Identifier}
			}
			ok = s.send(sess, p, e, d)
		}
		g.sending.Store(0)
		g.order.Unlock()
		return true, ok
	}
	return false, true
}

// takeGroup takes the next entry of a group: from its RAM queue, or one
// record of its scan (Msg nil when the record is not for the group).
func (s *store) takeGroup(g *group) (qos.Entry, bool) {
	g.scanMu.Lock()
	if len(g.returned) > 0 {
		e := g.returned[0]
		g.returned = g.returned[1:]
		g.scanMu.Unlock()
		if e.Msg == nil { // a flight recovered from the log carries no message
			if r, err := s.readEntry(e.Offset); err == nil {
				e = r
			}
		}
		return e, true
	}
	g.scanMu.Unlock()
	if e, ok := g.queue.Pop(); ok {
		return e, true
	}
	g.scanMu.Lock()
	defer g.scanMu.Unlock()
	from, scanning := g.queue.Scan()
	if !scanning {
		return qos.Entry{}, false
	}
	if from >= s.dispatched.Load() {
		g.queue.CatchUp(s.dispatched.Load)
		return qos.Entry{}, false
	}
	e, err := s.readEntry(from)
	if err != nil && !s.skipUnreadable(&g.readFailures, from, err) {
		return qos.Entry{}, false // try it again
	}
	g.readFailures = 0
	g.queue.Scanned(from)
	return e, true
}

// skipUnreadable decides what a scan does with a record it cannot read: a
// hole (the offset of a failed append: it never held a record) is skipped
// at once and silently, and a record retention removed at once; any other
// error is tried again (a read may fail for a moment) and skipped, counted
// and logged as lost, only after maxReadFailures tries. failures counts
// the tries.
func (s *store) skipUnreadable(failures *int, off uint64, err error) bool {
	if errors.Is(err, wal.ErrHole) {
		*failures = 0
		return true
	}
	if errors.Is(err, wal.ErrTruncated) {
		s.m.dropped.WithLabelValues("log_trimmed").Inc()
		s.lg.Warn("scan: record removed by retention", "offset", off)
		return true
	}
	*failures++
	if *failures < maxReadFailures {
		time.Sleep(readRetry)
		return false
	}
	*failures = 0
	s.m.dropped.WithLabelValues("log_unreadable").Inc()
	s.lg.Error("scan: record unreadable, skipped", "offset", off, "error", err)
	return true
}

// A scan tries an unreadable record maxReadFailures times, readRetry apart.
const (
	maxReadFailures = 20
	readRetry       = 50 * time.Millisecond
)

// send writes one message to the client: QoS 0 as is; QoS 1/2 under a new
// packet id, logged for a persistent session (QoS 2: durably, before the
// PUBLISH is written). It returns false when the connection is gone.
func (s *store) send(sess *session, p *pump, e qos.Entry, d delivery) bool {
	m := e.Msg
	now := time.Now()
	if m.Expiry > 0 && m.Expiry <= now.Unix() { // [MQTT-3.3.2-5]
		s.m.dropped.WithLabelValues("expired").Inc()
		return true
	}
	if !s.canRead(p.cl, m.Topic) {
		s.m.dropped.WithLabelValues("acl").Inc()
		return true
	}
	out := publishPacket(m, min(m.QoS, d.qos), d, p.cl.Properties.ProtocolVersion)
	if out.FixedHeader.Qos == 0 {
		sess.mu.Lock()
		logIt := sess.persistent || d.group != ""
		sess.mu.Unlock()
		if logIt { // only the position moves: at most once, even after a restart
			rec, _ := qos.Encode(&qos.Deliver{Client: sess.id, Offset: e.Offset, Group: d.group})
			if off, err := s.appendAsync(rec); err == nil {
				return s.handOver(p, off, out)
			}
		}
		return s.write(sess, p, out)
	}
	pid, err := s.nextPacketID(sess, p.cl)
	if err != nil {
		s.m.dropped.WithLabelValues("packet_ids").Inc()
		return true
	}
	out.PacketID = uint16(pid)
	f := &flight{offset: e.Offset, qos: out.FixedHeader.Qos, group: d.group, msg: m}
	sess.mu.Lock()
	if sess.p != p { // the connection went before the message was its
		sess.mu.Unlock()
		s.requeue(sess, e, d.group)
		return false
	}
	sess.inflight[out.PacketID] = f
	logIt := sess.persistent || d.group != ""
	sess.mu.Unlock()
	tracked := out
	tracked.Expiry = 0 // mochi must not drop it from its map on its own
	p.cl.State.Inflight.Set(tracked)
	if logIt {
		rec, _ := qos.Encode(&qos.Deliver{Client: sess.id, PacketID: out.PacketID, Offset: e.Offset, QoS: out.FixedHeader.Qos, Group: d.group})
		off, err := s.appendAsync(rec)
		if err != nil && out.FixedHeader.Qos == 2 {
			// Without its record the PUBLISH could be sent twice after a
			// restart: it waits until the log takes the record.
			var ok bool
			if off, ok = s.appendUntil(p, rec); !ok {
				return false // the reconnect resends it
			}
			err = nil
		}
		if err == nil {
			return s.handOver(p, off, out)
		}
	}
	return s.write(sess, p, out)
}

// handOver gives a logged delivery to the connection's acker, which writes
// it once its record is durable (a QoS 2 PUBLISH must not leave before),
// while the pump goes on with the next message. All of a logged session's
// deliveries take this path, so they leave in log order whatever their QoS.
func (s *store) handOver(p *pump, off uint64, out packets.Packet) bool {
	s.ackerOf(p.cl).enqueue(off, out)
	s.m.delivered.WithLabelValues(qosLabel(out.FixedHeader.Qos)).Inc()
	return true
}

// nextPacketID takes a free outbound packet id: free in mochi's map and in
// the session's, which differ while an entry is parked (OnPacketRead).
func (s *store) nextPacketID(sess *session, cl *mqtt.Client) (uint32, error) {
	for range 8 {
		pid, err := cl.NextPacketID()
		if err != nil {
			return 0, err
		}
		sess.mu.Lock()
		_, taken := sess.inflight[uint16(pid)]
		if sess.parked != nil && sess.parked.PacketID == uint16(pid) {
			taken = true
		}
		sess.mu.Unlock()
		if !taken {
			return pid, nil
		}
	}
	return 0, packets.ErrQuotaExceeded
}

// requeue gives an entry the pump took back to the queue it came from.
func (s *store) requeue(sess *session, e qos.Entry, group string) {
	if group == "" {
		sess.queue.Requeue(e)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.returnToGroupLocked(sess, group, e)
}

// returnToGroupLocked gives an entry back to a shared group for another
// member to take, and wakes them. Not to the queue itself: in scan mode
// that would scan again what other members took. Called with s.mu held,
// not sess.mu.
func (s *store) returnToGroupLocked(sess *session, group string, e qos.Entry) {
	g := s.groups[group]
	if g == nil {
		return
	}
	g.scanMu.Lock()
	g.returned = append(g.returned, e)
	g.scanMu.Unlock()
	// Another member may take it now: wake the connected ones.
	for _, m := range s.sessions {
		if m == sess {
			continue
		}
		m.mu.Lock()
		if _, member := m.subs[group]; member && m.p != nil {
			m.p.signal()
		}
		m.mu.Unlock()
	}
}

// write writes a packet; a failed write ends the pump (the connection is
// closing: the write deadline cut it, or the peer left).
func (s *store) write(sess *session, p *pump, out packets.Packet) bool {
	err := p.cl.WritePacket(out)
	if errors.Is(err, packets.ErrPacketTooLarge) { // [MQTT-3.1.2-25]
		s.m.dropped.WithLabelValues("too_large").Inc()
		if out.FixedHeader.Qos > 0 {
			s.complete(p.cl, out.PacketID, ackType(out.FixedHeader.Qos))
			p.cl.State.Inflight.Delete(out.PacketID)
		}
		return true
	}
	if err != nil {
		return false
	}
	s.m.delivered.WithLabelValues(qosLabel(out.FixedHeader.Qos)).Inc()
	return true
}

func ackType(q byte) byte {
	if q == 1 {
		return packets.Puback
	}
	return packets.Pubcomp
}

func qosLabel(q byte) string { return string('0' + q) }

// resend sends again, in log order, what the session holds unacknowledged:
// PUBLISH with DUP, or PUBREL for a released QoS 2 message [MQTT-4.4.0-1].
func (s *store) resend(sess *session, p *pump) bool {
	sess.mu.Lock()
	type pending struct {
		pid uint16
		f   *flight
	}
	var list []pending
	for pid, f := range sess.inflight {
		list = append(list, pending{pid, f})
	}
	sess.mu.Unlock()
	slices.SortFunc(list, func(a, b pending) int { return cmp.Compare(a.f.offset, b.f.offset) })
	for _, it := range list {
		if _, ok := p.cl.State.Inflight.Get(it.pid); ok {
			continue // mochi's takeover resent it already
		}
		var out packets.Packet
		if it.f.released {
			out = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: it.pid}
		} else {
			m := it.f.msg
			if m == nil {
				e, err := s.readEntry(it.f.offset)
				if err == nil && e.Msg == nil {
					err = errors.New("not a message record")
				}
				if err != nil {
					if errors.Is(err, wal.ErrTruncated) || errors.Is(err, qos.ErrBadRecord) {
						s.lg.Warn("resend: message gone from the log", "client", sess.id, "offset", it.f.offset, "error", err)
						s.m.dropped.WithLabelValues("log_trimmed").Inc()
						s.complete(p.cl, it.pid, ackType(it.f.qos))
					} else {
						// Kept: the next connection tries again.
						s.lg.Warn("resend: message unreadable for now", "client", sess.id, "offset", it.f.offset, "error", err)
					}
					continue
				}
				m = e.Msg
				sess.mu.Lock()
				it.f.msg = m
				sess.mu.Unlock()
			}
			if !s.canRead(p.cl, m.Topic) {
				// This connection may not read it (another user took the
				// session over, or the ACL changed): not sent, and not
				// completed either, so it stays owed to the session.
				continue
			}
			sess.mu.Lock()
			var d delivery
			if sub, ok := sess.subs[it.f.group]; ok && it.f.group != "" {
				d = delivery{qos: sub.QoS, rap: sub.RetainAsPublished, group: it.f.group}
			} else {
				d, _ = sess.match(it.f.offset, m)
			}
			sess.mu.Unlock()
			out = publishPacket(m, it.f.qos, d, p.cl.Properties.ProtocolVersion)
			out.PacketID = it.pid
			out.FixedHeader.Dup = true // [MQTT-3.3.1-1]
			if it.f.qos == 2 && logIt(sess, it.f.group) {
				// Its first PUBLISH may have gone out with its delivery
				// record still unwritten (send held it back): the record
				// must be durable before this one goes.
				rec, _ := qos.Encode(&qos.Deliver{Client: sess.id, PacketID: it.pid, Offset: it.f.offset, QoS: 2, Group: it.f.group})
				if _, ok := s.appendUntil(p, rec); !ok {
					return false
				}
			}
		}
		tracked := out
		tracked.Expiry = 0
		p.cl.State.Inflight.Set(tracked)
		if err := p.cl.WritePacket(out); err != nil {
			return false
		}
	}
	return true
}

// appendUntil appends rec and waits until it is durable, trying again every
// second while the log refuses it (a full disk), so that the pump outlives
// the episode; it returns the record's offset, or false when the pump is
// stopped first.
func (s *store) appendUntil(p *pump, rec []byte) (uint64, bool) {
	for {
		off, err := s.appendWait(rec)
		if err == nil {
			return off, true
		}
		s.alarms.log(s.lg, slog.LevelWarn, "delivery waits: its record is not logged", "client", p.cl.ID, "error", err)
		select {
		case <-p.stop:
			return 0, false
		case <-s.ctx.Done():
			return 0, false
		case <-time.After(time.Second):
		}
	}
}

// logIt reports whether deliveries to sess through group are logged: a
// persistent session's always, and every shared group's, because the
// group's position in the log is made of them.
func logIt(sess *session, group string) bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.persistent || group != ""
}

// publishPacket builds the PUBLISH of a logged message at QoS q.
func publishPacket(m *qos.Message, q byte, d delivery, version byte) packets.Packet {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: q},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		Origin:      m.Origin,
		Created:     m.Created / int64(time.Second),
		Expiry:      m.Expiry,
		Properties: packets.Properties{
			PayloadFormat:     m.PayloadFormat,
			PayloadFormatFlag: m.PayloadFormatFlag,
			ContentType:       m.ContentType,
			ResponseTopic:     m.ResponseTopic,
			CorrelationData:   m.CorrelationData,
		},
	}
	// Live delivery clears RETAIN unless the v5 subscription asked for
	// Retain As Published [MQTT-3.3.1-12] [MQTT-3.3.1-13].
	pk.FixedHeader.Retain = m.Retain && d.rap && version == 5
	for _, u := range m.User {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: u.Key, Val: u.Value})
	}
	if len(d.ids) > 0 {
		pk.Properties.SubscriptionIdentifier = append([]int(nil), d.ids...)
	}
	return pk
}
