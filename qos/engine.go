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

	// ErrEngineClosed is returned by every call after Close.
	ErrEngineClosed = errors.New("qos: engine closed")
)

// Reason codes the engine writes [MQTT-2.4].
const (
	reasonUnspecified        = 0x80
	reasonSessionTakenOver   = 0x8E
	reasonPacketIDNotFound   = 0x92
	reasonReceiveMaxExceeded = 0x93
	reasonQuotaExceeded      = 0x97
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
// offers a message and takes no session lock meanwhile.
type Engine struct {
	cfg    Config
	log    Log
	lg     *slog.Logger
	cursor Cursor

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // dispatcher, timers, checkpointer and senders
	runMu  sync.RWMutex   // guards closed against wg.Add
	closed bool

	idx index

	mu        sync.Mutex
	sessions  map[string]*session
	groups    map[string]*group // by "$share/<group>/<filter>"
	retained  map[string]Retained
	timers    timerHeap
	timerWake chan struct{} // capacity 1

	dispatched atomic.Uint64 // the next offset the dispatcher reads
	fannedOut  atomic.Uint64 // every offset below it was offered everywhere
	shadowMu   sync.Mutex
	shadow     *State    // the state after every record the dispatcher read
	shadowNext uint64    // the offset shadow stands for; both under shadowMu
	lastCheck  time.Time // dispatcher's: the last checkpoint handed over
	checks     chan pendingCheckpoint
	sessionN   atomic.Uint64

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
		timerWake: make(chan struct{}, 1),
		checks:    make(chan pendingCheckpoint, 1),
	}
	if err := e.recover(); err != nil {
		cancel()
		return nil, err
	}
	return e, nil
}

// Start runs the dispatcher, the session timers and the checkpointer.
func (e *Engine) Start() {
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
	e.wg.Wait()
	if e.cfg.Snapshots == nil {
		return nil
	}
	return e.checkpoint(e.shadowCopy())
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

// Publish appends m (a will, a bridge's downlink message, a message of the
// broker itself) and returns its offset once it is durable; the dispatcher
// then delivers it like any other.
func (e *Engine) Publish(ctx context.Context, m *Message) (uint64, error) {
	rec, err := m.MarshalBinary()
	if err != nil {
		return 0, err
	}
	if e.cfg.Admit != nil {
		if err := e.cfg.Admit(len(rec)); err != nil {
			return 0, err
		}
	}
	off, err := e.log.AppendAsync(rec)
	if err != nil {
		return 0, err
	}
	return off, e.log.WaitDurable(ctx, off)
}

// publishAsync appends a message the engine publishes by itself (a will).
func (e *Engine) publishAsync(m *Message) {
	rec, err := m.MarshalBinary()
	if err == nil {
		_, err = e.log.AppendAsync(rec)
	}
	if err != nil {
		e.lg.Error("will not published", "client", m.Origin, "error", err)
	}
}

// appendRecord appends a record of the engine's own bookkeeping without
// waiting; a failure is logged and counted (what it recorded is also in
// the next checkpoint, which takes the live state).
func (e *Engine) appendRecord(rec []byte) uint64 {
	off, err := e.log.AppendAsync(rec)
	if err != nil {
		e.stats.recordFailures.Add(1)
		e.lg.Warn("delivery record not logged", "kind", KindOf(rec), "error", err)
		return 0
	}
	return off
}

// appendWait appends records and waits until they are durable.
func (e *Engine) appendWait(recs ...[]byte) error {
	off, err := e.log.AppendAsync(recs...)
	if err != nil {
		return err
	}
	return e.log.WaitDurable(e.ctx, off+uint64(len(recs))-1)
}

func (e *Engine) now() int64 { return e.cfg.Now().Unix() }

// counters are the engine's figures (see Stats).
type counters struct {
	published, delivered, acked            atomic.Uint64
	dropTooLarge, dropQoS0, dropExpired    atomic.Uint64
	dropDenied, dropUnreadable, redelivers atomic.Uint64
	recordFailures, refused, checkpoints   atomic.Uint64
	checkpointFailures                     atomic.Uint64
}

// Stats are the engine's counters since New, for metrics.
type Stats struct {
	// Published counts accepted publishes from clients; Delivered the
	// PUBLISH packets written (resends included); Redelivered the resends.
	Published, Delivered, Redelivered uint64
	// Dropped by reason: larger than the client's Maximum Packet Size,
	// QoS 0 over QoS0Limit, expired [MQTT-3.3.2-5], refused by the read
	// ACL, unreadable in the log.
	DroppedTooLarge, DroppedQoS0, DroppedExpired, DroppedDenied, DroppedUnreadable uint64
	// Refused counts publishes refused (admission, append failure).
	Refused uint64
	// RecordFailures counts bookkeeping records the log did not take.
	RecordFailures uint64
	// Checkpoints and CheckpointFailures count snapshots written and failed.
	Checkpoints, CheckpointFailures uint64
	// Sessions and Connected are the sessions held and those online.
	Sessions, Connected int
}

// Stats returns the engine's figures.
func (e *Engine) Stats() Stats {
	c := &e.stats
	st := Stats{
		Published: c.published.Load(), Delivered: c.delivered.Load(), Redelivered: c.redelivers.Load(),
		DroppedTooLarge: c.dropTooLarge.Load(), DroppedQoS0: c.dropQoS0.Load(), DroppedExpired: c.dropExpired.Load(),
		DroppedDenied: c.dropDenied.Load(), DroppedUnreadable: c.dropUnreadable.Load(),
		Refused: c.refused.Load(), RecordFailures: c.recordFailures.Load(),
		Checkpoints: c.checkpoints.Load(), CheckpointFailures: c.checkpointFailures.Load(),
	}
	e.mu.Lock()
	st.Sessions = len(e.sessions)
	for _, s := range e.sessions {
		if s.conn.Load() != nil {
			st.Connected++
		}
	}
	e.mu.Unlock()
	return st
}
