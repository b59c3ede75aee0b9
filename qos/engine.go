package qos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Errors the engine returns to the connection's owner.
var (
	// ErrReceiveMaximum is returned by Client.Publish when the client has
	// more unacknowledged QoS 1/2 publishes than the Receive Maximum it was
	// given [MQTT-3.3.4-8]. The engine has already closed the connection
	// with DISCONNECT 0x93; the caller drops the packet.
	ErrReceiveMaximum = errors.New("qos: receive maximum exceeded")

	// ErrGone is returned by the calls of a Client whose connection was
	// taken over by a newer one, or ended.
	ErrGone = errors.New("qos: connection no longer holds the session")

	// ErrDuplicate is returned by Client.Publish for a QoS 2 publish whose
	// packet id still awaits its PUBREL: PUBREC is written again, and the
	// message is not delivered again [MQTT-4.3.3-10].
	ErrDuplicate = errors.New("qos: duplicate of a QoS 2 publish awaiting PUBREL")

	// ErrNotOwner is returned by Engine.Connect when the client id's
	// session belongs to another user (ConnectInfo.Username) and the
	// connection may not take over another's session (AnyOwner): CONNACK
	// refuses (v5 0x87 Not authorized, 3.1.1 0x05), and the session and
	// any connection holding it stay as they were.
	ErrNotOwner = errors.New("qos: session belongs to another user")

	// ErrEngineClosed is returned by every call after Close.
	ErrEngineClosed = errors.New("qos: engine closed")
)

// Reason codes the engine writes [MQTT-2.4].
const (
	reasonUnspecified            = 0x80
	reasonImplementationSpecific = 0x83
	reasonSessionTakenOver       = 0x8E
	reasonPacketIDNotFound       = 0x92
	reasonReceiveMaxExceeded     = 0x93
	reasonQuotaExceeded          = 0x97
)

// Config configures an Engine. Start from DefaultConfig.
type Config struct {
	// Log is where everything durable goes. Required.
	Log Log
	// Snapshots keeps checkpoints; nil: none (every start replays the log
	// from its first record, and the log is never trimmed by the engine).
	Snapshots Snapshots
	// Logger receives recovery (Info), failures (Error) and per-message
	// events (Debug). Default: slog.Default().
	Logger *slog.Logger
	// CursorName is the engine's trim point in the log. Default "engine".
	CursorName string
	// MaxInflight caps the outbound QoS 1/2 window of every connection,
	// below the client's Receive Maximum. Default 128.
	MaxInflight int
	// QueueLimit is the number of messages a session keeps in RAM before
	// it reads its backlog from the log. Default 1024.
	QueueLimit int
	// QoS0Limit bounds the QoS 0 messages that wait for one connection;
	// beyond it they are dropped (counted) [MQTT-4.3.1]. Default 256.
	QoS0Limit int
	// CheckpointInterval is how often the state is snapshotted and the log
	// trimmed. Default 10s.
	CheckpointInterval time.Duration
	// Admit, if set, is asked before each publish is appended; an error
	// refuses it (MQTT 5: PUBACK/PUBREC with 0x97; 3.1.1: the connection
	// is closed). Edge uses it for the disk budget.
	Admit func(size int) error
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// DefaultConfig returns the defaults for log l.
func DefaultConfig(l Log) Config {
	return Config{
		Log: l, CursorName: "engine", MaxInflight: 128, QueueLimit: 1024, QoS0Limit: 256,
		CheckpointInterval: 10 * time.Second, Now: time.Now,
	}
}

// Engine is the delivery engine: it owns sessions and their expiry,
// subscriptions (its own topic index), outbound packet ids and QoS 1/2
// flights, shared groups, the dispatcher, recovery and checkpoints.
//
// Lock order: Engine.mu, then index.mu, then session.mu, then group.mu,
// then a Queue's. The dispatcher holds index.mu for reading while it
// matches a message and takes no session lock meanwhile; it offers the
// message after it let go. The
// checkpointer's snaps.mu comes before Engine.mu; its walk (floor) holds
// one lock at a time. Nothing may hold one session's lock and wait for
// another's.
type Engine struct {
	cfg    Config
	log    Log
	lg     *slog.Logger
	cursor Cursor

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // dispatcher, timers, checkpointer, senders, will waits
	runMu  sync.RWMutex   // guards closed against wg.Add
	closed bool

	idx index

	mu        sync.Mutex
	sessions  map[string]*session
	groups    map[string]*group // by "$share/<group>/<filter>"
	retained  map[string]Retained
	logQoS0   func(topic string) bool
	lastRef   uint64 // the last session Ref given (see Session.Ref)
	timers    timerHeap
	timerWake chan struct{} // capacity 1

	// external holds the QoS 2 publishes of non-clients awaiting Release,
	// origin -> packet id -> offset. extMu is held from a publish's
	// duplicate check through its append to its entry here, so two copies
	// of one message never both append; it is taken under no other lock.
	extMu    sync.Mutex
	external map[string]map[uint16]uint64

	disp       dispatcher    // who dispatches, and how far (dispatch.go)
	dispatched atomic.Uint64 // the next offset the dispatcher reads
	fannedOut  atomic.Uint64 // every offset below it was offered everywhere
	// fanned is closed and replaced (under fanMu) when fannedOut moves
	// while fanWaiters > 0: it wakes the SUBSCRIBEs in waitFannedOut.
	fanMu      sync.Mutex
	fanned     chan struct{}
	fanWaiters atomic.Int32
	shadowMu   sync.Mutex
	shadow     *State // the state after every record the dispatcher read
	shadowNext uint64 // the offset shadow stands for; both under shadowMu
	// shadowLive is the offset after the last record the dispatcher read
	// that was not a checkpoint record: the state is the same at any
	// offset from it to shadowNext.
	shadowLive atomic.Uint64
	snaps      snapshotsKept
	sessionN   atomic.Uint64
	stopping   atomic.Bool

	// durMu guards durWait: the connections whose only work is an
	// acknowledgement whose record is not durable yet; the durability
	// event that makes it durable (or failed) starts their senders
	// (durableMoved).
	durMu   sync.Mutex
	durWait []*connection

	stats counters
}

// New recovers the engine's state from cfg.Snapshots and cfg.Log and
// returns it, not yet running: call Start.
func New(cfg Config) (*Engine, error) {
	def := DefaultConfig(cfg.Log)
	if cfg.Log == nil {
		return nil, errors.New("qos: Config.Log is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CursorName == "" {
		cfg.CursorName = def.CursorName
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = def.MaxInflight
	}
	cfg.MaxInflight = min(cfg.MaxInflight, math.MaxUint16)
	if cfg.QueueLimit <= 0 {
		cfg.QueueLimit = def.QueueLimit
	}
	if cfg.QoS0Limit <= 0 {
		cfg.QoS0Limit = def.QoS0Limit
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = def.CheckpointInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cur, err := cfg.Log.Cursor(cfg.CursorName)
	if err != nil {
		return nil, fmt.Errorf("qos: cursor %q: %w", cfg.CursorName, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		cfg: cfg, log: cfg.Log, lg: cfg.Logger, cursor: cur,
		ctx: ctx, cancel: cancel,
		sessions: map[string]*session{}, groups: map[string]*group{}, retained: map[string]Retained{},
		external:  map[string]map[uint16]uint64{},
		timerWake: make(chan struct{}, 1),
		fanned:    make(chan struct{}),
	}
	e.disp.wake = make(chan struct{}, 1)
	if err := e.recover(); err != nil {
		cancel()
		return nil, err
	}
	return e, nil
}

// Start runs the dispatcher, the session timers and the checkpointer.
func (e *Engine) Start() {
	e.disp.r = e.log.NewReader(e.dispatched.Load())
	e.log.NotifyDurable(e.durableMoved)
	e.wg.Add(3)
	go e.dispatch()
	go e.timerLoop()
	go e.checkpointLoop()
}

// Close stops the engine: the dispatcher, the timers and every sender, and
// writes a last checkpoint so the next start replays little. Connections
// should be gone first (their Disconnect called); the log is closed by its
// owner, after.
func (e *Engine) Close() error {
	e.runMu.Lock()
	if e.closed {
		e.runMu.Unlock()
		return nil
	}
	e.closed = true
	e.runMu.Unlock()
	e.cancel()
	e.stopDispatch()
	e.wg.Wait()
	if e.cfg.Snapshots == nil {
		return nil
	}
	return e.checkpoint(e.shadowCopy())
}

// durableMoved is the log's durability event (Log.NotifyDurable), on the
// log's goroutine: the connections whose awaited record it resolved
// (awaitDurable) get their acknowledgements written here when they are
// few and the socket takes them at once (ackNow), or their senders
// started. Those whose record is in a later batch (appended during this
// one's fsync) stay for a later event: a sender started now would only
// wait for it. The work is a check per waiting connection, an atomic load
// while the log has had no failure, and a write or a sender per resolved
// one. It takes no lock but durMu and, to start a sender, none the log
// holds. First the records made durable are dispatched, here while the
// log is quiet, or by the dispatcher goroutine, which this wakes
// (dispatchQuiet): woken first, it fans out on another P, under load,
// while this goroutine writes the acknowledgements.
func (e *Engine) durableMoved() {
	e.dispatchQuiet()
	e.durMu.Lock()
	var w []*connection
	keep := e.durWait[:0]
	for _, c := range e.durWait {
		if !e.resolved(c.awaitOff) {
			keep = append(keep, c)
			continue
		}
		c.awaiting = false
		w = append(w, c)
	}
	clear(e.durWait[len(keep):])
	e.durWait = keep
	e.durMu.Unlock()
	for _, c := range w {
		if len(w) <= ackNowConns {
			c.ackNow()
		} else {
			c.start()
		}
	}
}

// ackNowConns is the most connections whose acknowledgements the log's
// goroutine writes itself at one durability event (ackNow): beyond, their
// senders write them, in parallel, and the log goes back to its fsyncs.
const ackNowConns = 2

// awaitDurable makes c's sender start at the log's next durability event
// rather than now: its only work is an acknowledgement of the record at
// off, which is not durable yet, and a sender started now would only wait
// for it (a goroutine started, parked and woken per message). It checks
// again once registered: the event may have come in between.
func (e *Engine) awaitDurable(c *connection, off uint64) {
	e.durMu.Lock()
	c.awaitOff = off // the first acknowledgement's now (an earlier one was written)
	if !c.awaiting {
		c.awaiting = true
		e.durWait = append(e.durWait, c)
	}
	e.durMu.Unlock()
	if e.resolved(off) {
		c.start()
	}
}

// resolved reports whether the record at off is durable or failed:
// WaitDurable would not wait for it.
func (e *Engine) resolved(off uint64) bool { return e.log.Resolved(off) }

// startSender starts c's sender (c.sender) as a goroutine the engine
// waits for; false once the engine is closing. It allocates nothing: the
// goroutine's function is the connection's, made once (connect), where a
// closure per start cost two allocations (the method value and the
// goroutine's wrapper), and a busy connection starts its sender often.
func (e *Engine) startSender(c *connection) bool {
	e.runMu.RLock()
	defer e.runMu.RUnlock()
	if e.closed {
		return false
	}
	e.wg.Add(1)
	go c.sender()
	return true
}

// goSender starts f as a goroutine the engine waits for; false once the
// engine is closing.
func (e *Engine) goSender(f func()) bool {
	e.runMu.RLock()
	defer e.runMu.RUnlock()
	if e.closed {
		return false
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		f()
	}()
	return true
}

// LogQoS0 sets which QoS 0 topics are logged too (a bridge forwards
// them); the others go straight to the connections they match. Call it
// before Start.
func (e *Engine) LogQoS0(f func(topic string) bool) { e.logQoS0 = f }

// loggedQoS0 reports whether a QoS 0 message must go through the log: a
// retained one (the retained state survives a restart) or one a bridge
// forwards.
func (e *Engine) loggedQoS0(m *Message) bool {
	return m.Retain || (e.logQoS0 != nil && e.logQoS0(m.Topic))
}

// Publish publishes m for a source that is not a client connection (a
// bridge's downlink, the broker itself). QoS 1/2 and logged QoS 0 are
// appended and Publish returns once they are durable; the dispatcher then
// delivers them. Other QoS 0 messages are delivered at once. A QoS 2
// message whose Origin and OriginPacketID await Release is a duplicate:
// ErrDuplicate once the first one is durable, nothing appended
// [MQTT-4.3.3-10]. That holds for a retry after Publish returned an error
// too: if the first append is still in the log, the retry waits for it.
// Publish is PublishAsync and its wait.
func (e *Engine) Publish(ctx context.Context, m *Message) error {
	wait, err := e.PublishAsync(m)
	if err != nil {
		return err
	}
	return wait(ctx)
}

// PublishAsync is Publish without the wait for durability, for one message
// or several: it appends them and returns at once, so that a source with
// many messages (a bridge's downlink) can append a window of them under
// one fsync. The messages it appends go in one append (Log.AppendAsync
// with all their records), so they become durable together or not at all:
// a write that fails takes none of them to local subscribers, and one that
// is published again does not come after a later one. wait returns nil
// once every message is durable; ErrDuplicate when, besides, one of them
// was a QoS 2 resend whose first copy is durable (nothing appended for
// it); or the error that kept them from the log (then none of the ones
// appended is published: publish them again). An error from PublishAsync
// itself means nothing was appended. QoS 0 messages the log need not keep
// are delivered at once, ahead of the others.
func (e *Engine) PublishAsync(ms ...*Message) (wait func(ctx context.Context) error, err error) {
	var fresh []*Message
	var dups []func(context.Context) error
	type exchange struct {
		origin string
		id     uint16
	}
	var batch map[exchange]bool // the QoS 2 exchanges fresh begins
	// The duplicate checks, the append and the exchanges' entries are one
	// step: a copy that came meanwhile would be appended too.
	e.extMu.Lock()
	defer e.extMu.Unlock()
	for _, m := range ms {
		if m.Created == 0 {
			m.Created = e.cfg.Now().UnixNano()
		}
		if e.publishDirect(m) {
			continue
		}
		if m.QoS == 2 && m.Origin != "" {
			off, dup := e.external[m.Origin][m.OriginPacketID]
			if dup && e.failedAppend(off) {
				// A retry after a failed write: the message again, in
				// its place among the others.
				e.forgetExternalLocked(m.Origin, m.OriginPacketID, off)
				dup = false
			}
			if dup {
				dups = append(dups, e.resend(m, off))
				continue
			}
			x := exchange{m.Origin, m.OriginPacketID}
			if batch[x] { // a resend of one appended with it
				dups = append(dups, func(context.Context) error {
					e.stats.duplicates.Add(1)
					return ErrDuplicate
				})
				continue
			}
			if batch == nil {
				batch = map[exchange]bool{}
			}
			batch[x] = true
		}
		fresh = append(fresh, m)
	}
	var first uint64
	if len(fresh) > 0 {
		if first, err = e.appendMessages(fresh, true, false); err != nil {
			return nil, err
		}
	}
	for i, m := range fresh {
		if m.QoS == 2 && m.Origin != "" {
			// Known from the append on, not from its durability: a retry
			// after a failed wait is this message again, not a second one.
			if e.external[m.Origin] == nil {
				e.external[m.Origin] = map[uint16]uint64{}
			}
			e.external[m.Origin][m.OriginPacketID] = first + uint64(i)
		}
	}
	return func(ctx context.Context) error {
		if len(fresh) > 0 {
			// One append: its last record durable means all of them are.
			if err := e.log.WaitDurable(ctx, first+uint64(len(fresh))-1); err != nil {
				return err
			}
			e.stats.published.Add(uint64(len(fresh)))
		}
		var dupErr error
		for _, w := range dups {
			if err := w(ctx); errors.Is(err, ErrDuplicate) {
				dupErr = err
			} else if err != nil {
				return err
			}
		}
		return dupErr
	}, nil
}

// failedAppend reports whether the append of the record at off is known to
// have failed (its write or fsync), without waiting.
func (e *Engine) failedAppend(off uint64) bool {
	err := e.log.WaitDurable(doneCtx, off)
	return err != nil && !errors.Is(err, context.Canceled)
}

// doneCtx is a context that is already over: a wait with it only looks.
var doneCtx = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// resend is the wait of a QoS 2 message whose first copy was appended at
// off and not yet released: ErrDuplicate once that copy is durable. If
// that append failed after all, the message is not in the log: it is
// published now, on its own.
func (e *Engine) resend(m *Message, off uint64) func(context.Context) error {
	return func(ctx context.Context) error {
		err := e.log.WaitDurable(ctx, off)
		if err == nil {
			e.stats.duplicates.Add(1)
			return ErrDuplicate
		}
		if ctx.Err() != nil {
			return err
		}
		e.forgetExternal(m.Origin, m.OriginPacketID, off)
		return e.Publish(ctx, m)
	}
}

// forgetExternal ends origin's QoS 2 exchange on id if it is still the
// one at offset off.
func (e *Engine) forgetExternal(origin string, id uint16, off uint64) {
	e.extMu.Lock()
	defer e.extMu.Unlock()
	e.forgetExternalLocked(origin, id, off)
}

// forgetExternalLocked is forgetExternal with extMu held.
func (e *Engine) forgetExternalLocked(origin string, id uint16, off uint64) {
	if e.external[origin][id] != off {
		return
	}
	delete(e.external[origin], id)
	if len(e.external[origin]) == 0 {
		delete(e.external, origin)
	}
}

// publishDirect delivers m at once if it is a QoS 0 message the log need
// not keep, and reports whether it did; otherwise m goes through the log.
func (e *Engine) publishDirect(m *Message) bool {
	if m.QoS != 0 || e.loggedQoS0(m) {
		return false
	}
	e.stats.published.Add(1)
	kept := *m // the connections' queues keep it; the caller keeps m
	e.fanoutQoS0(&kept)
	return true
}

// appendMessage appends m's record without waiting, after asking admission
// (Config.Admit) when admit is set, and counts a refusal: Refused, and
// RefusedFull when it was for want of room. Every message enters the log
// here or in appendMessages: client publishes, Engine.Publish and wills.
func (e *Engine) appendMessage(m *Message, admit bool) (uint64, error) {
	one := [1]*Message{m}
	return e.appendMessages(one[:], admit, false)
}

// appendMessages is appendMessage for several messages in one append (they
// are durable together or not at all); admission is asked once, for all
// their bytes. It returns the offset of the first; the others follow.
//
// With lead, the caller holds none of the engine's locks, and the log may
// write the records on its goroutine (Log.AppendAsyncLead).
func (e *Engine) appendMessages(ms []*Message, admit, lead bool) (uint64, error) {
	rb := recBufs.Get().(*recBuf)
	defer rb.put()
	b, ends := rb.b[:0], rb.ends[:0]
	var err error
	for _, m := range ms {
		if b, err = m.AppendBinary(b); err != nil {
			break
		}
		ends = append(ends, len(b))
	}
	rb.b, rb.ends = b, ends
	if err == nil && admit && e.cfg.Admit != nil {
		err = e.cfg.Admit(len(b))
	}
	var off uint64
	if err == nil {
		start := 0
		for _, end := range ends {
			rb.recs = append(rb.recs, b[start:end])
			start = end
		}
		if lead {
			off, err = e.log.AppendAsyncLead(rb.recs...)
		} else {
			off, err = e.log.AppendAsync(rb.recs...)
		}
	}
	if err != nil {
		e.stats.refused.Add(uint64(len(ms)))
		if errors.Is(err, ErrFull) {
			e.stats.refusedFull.Add(uint64(len(ms)))
		}
		return 0, err
	}
	return off, nil
}

// recBuf is appendMessages' scratch: the records' encodings, one after
// the other (ends: where each ends), which the log copies into its queue
// (AppendAsync), and the list of them it is passed, which would otherwise
// be allocated per call.
type recBuf struct {
	b    []byte
	ends []int
	recs [][]byte
}

// recBufs holds recBufs between appends.
var recBufs = sync.Pool{New: func() any { return new(recBuf) }}

// maxPooledRec bounds the encoding a pooled recBuf keeps: one grown by a
// large message is let go.
const maxPooledRec = 64 << 10

func (rb *recBuf) put() {
	clear(rb.recs)
	rb.recs = rb.recs[:0]
	if cap(rb.b) > maxPooledRec {
		rb.b = nil
	}
	recBufs.Put(rb)
}

// Release ends a QoS 2 exchange Publish began for origin's packet id,
// durably, so that a restart does not take the next message on that id
// for a duplicate.
func (e *Engine) Release(ctx context.Context, origin string, id uint16) error {
	e.extMu.Lock()
	pending, ok := e.external[origin][id]
	e.extMu.Unlock()
	if !ok {
		return nil
	}
	off, err := e.logRef(KindInboundRelease, PacketRef{Client: origin, PacketID: id})
	if err != nil {
		return err
	}
	if err := e.log.WaitDurable(ctx, off); err != nil {
		return err
	}
	e.forgetExternal(origin, id, pending)
	return nil
}

// publishAsync appends a message the engine publishes by itself (a will),
// without admission: no client waits to hear a refusal. A failure, of the
// append or of its write, is counted as a refused publish.
func (e *Engine) publishAsync(m *Message) {
	now := e.cfg.Now()
	if m.Expiry > 0 && m.Created > 0 {
		// A will's Message Expiry Interval is "sent as the Publication
		// Expiry Interval when the Server publishes the Will Message"
		// (MQTT 5 §3.1.3.2.4): it counts from now, not from the CONNECT
		// that carried it (Created), nor from the disconnect its Will
		// Delay counted from [MQTT-3.1.3-9].
		m.Expiry += now.Unix() - time.Unix(0, m.Created).Unix()
	}
	m.Created = now.UnixNano()
	off, err := e.appendMessage(m, false)
	if err != nil {
		e.lg.Error("will not published", "client", m.Origin, "error", err)
		return
	}
	// Counted once durable: a write that fails after the append loses it
	// too. Wills are rare; a goroutine each is cheap, and the engine waits
	// for it.
	e.goSender(func() {
		err := e.log.WaitDurable(e.ctx, off)
		switch {
		case err == nil:
			e.stats.wills.Add(1)
		case e.ctx.Err() == nil:
			e.stats.refused.Add(1)
			e.lg.Error("will not published", "client", m.Origin, "error", err)
		}
	})
}

// appendRecord appends a record of the engine's own bookkeeping without
// waiting; a failure is logged and counted (what it recorded is also in
// the next checkpoint, which takes the live state).
func (e *Engine) appendRecord(rec []byte) uint64 {
	off, err := e.appendOne(rec)
	if err != nil {
		e.stats.recordFailures.Add(1)
		e.lg.Warn("delivery record not logged", "kind", KindOf(rec), "error", err)
		return 0
	}
	return off
}

// appendRef is appendRecord of the reference record k of r, encoded into
// a pooled buffer (the log copies it): a flight's end costs no allocation.
func (e *Engine) appendRef(k Kind, r PacketRef) uint64 {
	rb := recBufs.Get().(*recBuf)
	defer rb.put()
	rb.b = appendRef(rb.b[:0], k, r)
	return e.appendRecord(rb.b)
}

// logRef is Log.AppendAsync of the reference record k of r, encoded into
// a pooled buffer.
func (e *Engine) logRef(k Kind, r PacketRef) (uint64, error) {
	rb := recBufs.Get().(*recBuf)
	defer rb.put()
	rb.b = appendRef(rb.b[:0], k, r)
	rb.recs = append(rb.recs, rb.b)
	return e.log.AppendAsync(rb.recs...)
}

// appendOne is Log.AppendAsync of one record, through a pooled list of
// records: the list an interface's variadic call is passed escapes, an
// allocation per record.
func (e *Engine) appendOne(rec []byte) (uint64, error) {
	rb := recBufs.Get().(*recBuf)
	defer rb.put()
	rb.recs = append(rb.recs, rec)
	return e.log.AppendAsync(rb.recs...)
}

// appendWait appends records and waits until they are durable. It does
// not depend on the engine's lifetime (the last checkpoint uses it after
// Close began): the log itself ends the wait if it closes.
func (e *Engine) appendWait(recs ...[]byte) error {
	off, err := e.log.AppendAsync(recs...)
	if err != nil {
		return err
	}
	return e.log.WaitDurable(context.Background(), off+uint64(len(recs))-1)
}

// waitFannedOut waits until the dispatcher has offered every record
// below end, or the engine stops.
func (e *Engine) waitFannedOut(end uint64) {
	for e.fannedOut.Load() < end && e.ctx.Err() == nil {
		e.fanWaiters.Add(1)
		e.fanMu.Lock()
		ch := e.fanned
		e.fanMu.Unlock()
		if e.fannedOut.Load() < end {
			select {
			case <-ch:
			case <-e.ctx.Done():
			}
		}
		e.fanWaiters.Add(-1)
	}
}

// fannedOutTo moves fannedOut to next and wakes waitFannedOut's waiters,
// if any: the dispatcher, after each record.
func (e *Engine) fannedOutTo(next uint64) {
	e.fannedOut.Store(next)
	if e.fanWaiters.Load() > 0 {
		e.fanMu.Lock()
		close(e.fanned)
		e.fanned = make(chan struct{})
		e.fanMu.Unlock()
	}
}

// now is the engine's clock in whole seconds, truncated.
func (e *Engine) now() int64 { return e.cfg.Now().Unix() }

// nowUp is the clock rounded up to a whole second: what an interval
// (Will Delay, Session Expiry) counts from. Timers are due at whole
// seconds, so an interval counted from now, truncated, would end up to
// a second early; counted from nowUp it ends up to a second late, never
// early [MQTT-3.1.3-9] [MQTT-3.1.2-23].
func (e *Engine) nowUp() int64 {
	t := e.cfg.Now()
	if t.Nanosecond() > 0 {
		return t.Unix() + 1
	}
	return t.Unix()
}

// counters are the engine's figures (see Stats).
type counters struct {
	published, acked, dispatched           atomic.Uint64
	delivered                              [3]atomic.Uint64 // by delivery QoS
	dropTooLarge, dropQoS0, dropExpired    atomic.Uint64
	dropAtMostOnce                         atomic.Uint64
	dropDenied, dropUnreadable, redelivers atomic.Uint64
	recordFailures, refused, checkpoints   atomic.Uint64
	checkpointFailures, refusedFull        atomic.Uint64
	duplicates, wills, expired             atomic.Uint64
	lastCheckpoint                         atomic.Int64 // Unix nanoseconds
}

// Stats are the engine's counters since New, for metrics.
type Stats struct {
	// Published counts the publishes accepted from clients and through
	// Engine.Publish, QoS 0 included (wills are Wills); Delivered the
	// PUBLISH packets written (resends included), DeliveredQoS by QoS;
	// Redelivered the resends.
	Published, Delivered, Redelivered uint64
	DeliveredQoS                      [3]uint64
	// Dispatched counts logged messages the dispatcher matched; Acked the
	// deliveries acknowledged (PUBACK, PUBCOMP).
	Dispatched, Acked uint64
	// Dropped by reason: larger than the client's Maximum Packet Size,
	// QoS 0 over QoS0Limit, expired [MQTT-3.3.2-5], refused by the read
	// ACL, unreadable in the log.
	DroppedTooLarge, DroppedQoS0, DroppedExpired, DroppedDenied, DroppedUnreadable uint64
	// DroppedAtMostOnce counts a shared group's QoS 0 hand-outs not made
	// so as to stay at most once [MQTT-4.3.1]: of a message the group may
	// have handed out at QoS 0 before a restart, or whose GroupHandout
	// record the log did not take.
	DroppedAtMostOnce uint64
	// Refused counts publishes refused (wills the log did not take
	// included), RefusedFull those of them refused for want of room
	// (admission, ErrFull).
	Refused, RefusedFull uint64
	// Duplicates counts inbound QoS 2 publishes received again before
	// their PUBREL: acknowledged again, not delivered again.
	Duplicates uint64
	// Wills counts wills published (durable in the log); Expired sessions
	// ended by their expiry.
	Wills, Expired uint64
	// LastCheckpoint is when the last checkpoint succeeded (zero: none).
	LastCheckpoint time.Time
	// RecordFailures counts bookkeeping records the log did not take.
	RecordFailures uint64
	// Checkpoints and CheckpointFailures count snapshots written and failed.
	Checkpoints, CheckpointFailures uint64
	// Sessions and Connected are the sessions held and those online;
	// Subscriptions theirs, shared ones included; Inflight the QoS 1/2
	// deliveries sent and not acknowledged; Retained the retained messages.
	Sessions, Connected, Subscriptions, Inflight, Retained int
	// Queued is what sessions and shared groups wait for, summed: in RAM,
	// or for a queue reading its backlog from the log, the records it has
	// still to read (an upper bound); QueuedMax the longest one.
	Queued, QueuedMax uint64
	// OldestQueued is when the oldest message some queue waits for was
	// accepted (zero: none waits).
	OldestQueued time.Time
}

// DroppedQoS0 is Stats().DroppedQoS0 without the rest.
func (e *Engine) DroppedQoS0() uint64 { return e.stats.dropQoS0.Load() }

// Stats returns the engine's figures.
func (e *Engine) Stats() Stats {
	c := &e.stats
	st := Stats{
		Published: c.published.Load(), Redelivered: c.redelivers.Load(),
		Dispatched: c.dispatched.Load(), Acked: c.acked.Load(),
		DroppedTooLarge: c.dropTooLarge.Load(), DroppedQoS0: c.dropQoS0.Load(), DroppedExpired: c.dropExpired.Load(),
		DroppedDenied: c.dropDenied.Load(), DroppedUnreadable: c.dropUnreadable.Load(),
		DroppedAtMostOnce: c.dropAtMostOnce.Load(),
		Refused:           c.refused.Load(), RefusedFull: c.refusedFull.Load(), RecordFailures: c.recordFailures.Load(),
		Duplicates: c.duplicates.Load(), Wills: c.wills.Load(), Expired: c.expired.Load(),
		Checkpoints: c.checkpoints.Load(), CheckpointFailures: c.checkpointFailures.Load(),
	}
	for q := range c.delivered {
		st.DeliveredQoS[q] = c.delivered[q].Load()
		st.Delivered += st.DeliveredQoS[q]
	}
	if t := c.lastCheckpoint.Load(); t > 0 {
		st.LastCheckpoint = time.Unix(0, t)
	}
	progress := e.fannedOut.Load()
	var oldest uint64
	note := func(q *Queue) {
		n, pos := uint64(q.Len()), q.Position(progress)
		if n == 0 && pos < progress {
			n = progress - pos
		}
		st.Queued += n
		st.QueuedMax = max(st.QueuedMax, n)
		if n > 0 && (oldest == 0 || pos < oldest) {
			oldest = pos
		}
	}
	e.mu.Lock()
	st.Retained = len(e.retained)
	e.mu.Unlock()
	// Each session under its own lock, as a checkpoint's walk: a scrape
	// holds no CONNECT up for the walk of every session.
	sessions, groups := e.listLive()
	st.Sessions = len(sessions)
	for _, s := range sessions {
		if s.conn.Load() != nil {
			st.Connected++
		}
		s.mu.Lock()
		st.Subscriptions += len(s.subs)
		st.Inflight += len(s.flights)
		s.mu.Unlock()
		note(s.queue)
	}
	for _, g := range groups {
		note(g.queue)
	}
	if created, ok := e.createdFrom(oldest); ok {
		st.OldestQueued = time.Unix(0, created)
	}
	return st
}

// createdFrom returns when the first QoS 1/2 message at or after from was
// accepted (Unix nanoseconds), reading a few records of the log.
func (e *Engine) createdFrom(from uint64) (int64, bool) {
	if from == 0 {
		return 0, false
	}
	from = max(from, e.log.FirstOffset())
	for off := from; off < from+64 && off <= e.log.LastOffset(); off++ {
		rec, err := e.log.Read(off)
		if err != nil || KindOf(rec) != KindMessage {
			continue
		}
		var m Message
		if m.UnmarshalBinary(rec) == nil && (m.QoS > 0 || m.Will) {
			return m.Created, true
		}
	}
	return 0, false
}
