package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// Log is what a bridge needs of the broker's log: the engine's qos.Log, and
// cursors it can place and remove (a new rule starts at the end of the log,
// a removed rule must stop holding the log back).
type Log interface {
	qos.Log
	// CursorFrom returns the named cursor, creating it at from if it does
	// not exist; an existing cursor keeps its position.
	CursorFrom(name string, from uint64) (qos.Cursor, error)
	// DeleteCursor removes a cursor durably; a missing one is no error.
	DeleteCursor(name string) error
	// Cursors lists the cursor names.
	Cursors() []string
}

// Local is what a bridge needs of the broker it runs in, for downlink rules.
type Local interface {
	// Publish appends ms to the broker's log in one append, without
	// waiting; wait returns nil once they are all durable (then local
	// subscribers get them), or the error that kept them from being so:
	// none of them is published, publish them again. They are durable
	// together or not at all, so a message published again never comes
	// after one that came later. An error from Publish itself means
	// nothing was appended. For QoS 2, a message whose (Origin,
	// OriginPacketID) was published and not yet released is a resend:
	// Publish appends nothing for it [MQTT-4.3.3-10].
	Publish(ms ...*qos.Message) (wait func(context.Context) error, err error)
	// Release durably ends the inbound QoS 2 exchange of (origin,
	// packetID): the upstream's PUBREL came [MQTT-4.3.3-12].
	Release(ctx context.Context, origin string, packetID uint16) error
}

// Options are what a bridge gets from the broker rather than its Config.
type Options struct {
	// Logger is narrowed with component=bridge and bridge=<name>. nil:
	// slog.Default().
	Logger *slog.Logger
	// DialWebSocket opens ws:// and wss:// upstreams (tc is nil for ws://);
	// the broker owns the WebSocket library. nil: such upstreams fail.
	DialWebSocket func(ctx context.Context, u *url.URL, tc *tls.Config) (net.Conn, error)
	// StateDir keeps what a bridge must remember across restarts besides
	// its cursors: the downlink filters it subscribed upstream, one file
	// per bridge (<name>.subscriptions), so that a removed rule's
	// subscription is removed from a resumed upstream session. Created
	// when needed. Empty: remembered in memory only (a restart forgets).
	StateDir string
}

// Status is what a bridge reports about itself: what is true now.
type Status struct {
	Name string
	// Connected is true while a connection is up and accepted by CONNACK.
	Connected bool
	// Upstream is the index in Config.Upstreams of the current (or last)
	// connection, -1 before the first.
	Upstream int
	// Since is when Connected last changed.
	Since time.Time
	// Reconnects counts connections made after the first.
	Reconnects uint64
	// Forwarded counts messages acknowledged by the upstream (QoS 1/2) or
	// written to it (QoS 0); Received counts downlink messages made durable
	// locally. Dropped counts messages not forwarded, by reason.
	Forwarded, Received uint64
	Dropped             map[string]uint64
	// BacklogRecords is the number of log records the slowest forward rule
	// has not passed yet: an upper bound of the messages it still has to
	// send (the log also holds other records and other topics).
	BacklogRecords uint64
	// BacklogMessages is the number of messages the slowest forward rule
	// still has to send: those of its topics, not brought down by this
	// bridge (counted every half second, as each record arrives).
	BacklogMessages uint64
	// BacklogBytes is the size of the log records the slowest rule holds
	// back (counted every half second).
	BacklogBytes int64
	// BacklogSeconds is the age of the oldest message a forward rule has not
	// had acknowledged, 0 when none waits.
	BacklogSeconds float64
	// LastError is the last connection failure, "" if none yet, and
	// LastErrorAt when it happened. ConnectFailures counts the connects
	// that failed (refused, unreachable, TLS, a refused SUBSCRIBE).
	LastError       string
	LastErrorAt     time.Time
	ConnectFailures uint64
}

// Drop reasons, the values of Status.Dropped's keys.
const (
	DropExpired   = "expired"           // the message's expiry passed [MQTT-3.3.2-5]
	DropMaxAge    = "max_backlog_age"   // older than Config.MaxBacklogAge
	DropMaxBytes  = "max_backlog_bytes" // the oldest, beyond Config.MaxBacklogBytes
	DropRefused   = "refused"           // the upstream's PUBACK/PUBREC had a failure code
	DropRetention = "retention"         // the log removed records before the bridge sent them
	DropBad       = "unreadable"        // a damaged record in the log
	DropLoop      = "loop"              // a downlink message the bridge itself forwarded
	DropNoRule    = "no_rule"           // a downlink message no downlink rule matches (a stale upstream subscription)
)

// DropReasons lists every drop reason, for metrics that show each from 0.
var DropReasons = []string{DropExpired, DropMaxAge, DropMaxBytes, DropRefused, DropRetention, DropBad, DropLoop, DropNoRule}

// Bridge is one bridge: a connection to one of its upstreams at a time,
// forward rules reading the log from their cursors, downlink rules
// publishing into the broker. Build it with New, run it with Start and
// Shutdown.
type Bridge struct {
	cfg    Config
	log    Log
	local  Local
	lg     *slog.Logger
	d      dialer
	origin string // the Origin of downlink messages: "$bridge/<name>"
	rules  []*rule

	forwarded, received, reconnects atomic.Uint64
	backlogBytes                    atomic.Int64
	backlogMessages                 atomic.Uint64

	// Repeating log lines, at most one a minute each.
	badRecords, noRule logThrottle

	subs *subscriptions // what this bridge may hold subscribed upstream

	// serving is held while a connection serves the rules; the
	// housekeeping trims backlogs only when it can take it.
	serving sync.Mutex

	mu        sync.Mutex // guards what follows
	dropped   map[string]uint64
	connected bool
	upstream  int
	since     time.Time
	lastErr   string
	lastErrAt time.Time
	// connectFailures counts failed connects (setError).
	connectFailures uint64
	// backlogLogged is when the backlog was last logged; backlogSaid is
	// set while the last line said there was one (reportBacklog).
	backlogLogged time.Time
	backlogSaid   bool
	// oldestMarks are, by rule, the oldest waiting message of each, as the
	// housekeeping goroutine's last count found them.
	oldestMarks []oldestMark

	cancel context.CancelFunc
	done   chan struct{}
}

// CursorPrefix starts the name of every bridge cursor in the log:
// "bridge/<name>/<rule key>".
const CursorPrefix = "bridge/"

// New validates cfg and opens the cursors of its forward rules: an
// existing cursor (the same rule before a restart or reload) keeps its
// position, a new one starts at the end of the log.
func New(cfg Config, l Log, local Local, o Options) (*Bridge, error) {
	return newBridge(cfg, l, local, o, newSubscriptions(o.StateDir))
}

func newBridge(cfg Config, l Log, local Local, o Options, subs *subscriptions) (*Bridge, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lg := o.Logger
	if lg == nil {
		lg = slog.Default()
	}
	b := &Bridge{
		cfg: cfg, log: l, local: local,
		lg:       lg.With("component", "bridge", "bridge", cfg.Name),
		d:        dialer{cfg: cfg, ws: o.DialWebSocket},
		origin:   cfg.origin(),
		dropped:  map[string]uint64{},
		upstream: -1,
		since:    time.Now(),
		subs:     subs,
	}
	for _, f := range cfg.Forward {
		name := cfg.cursorName(f)
		c, err := l.CursorFrom(name, l.LastOffset()+1)
		if err != nil {
			return nil, fmt.Errorf("bridge %s: cursor %s: %w", cfg.Name, name, err)
		}
		b.rules = append(b.rules, &rule{fwd: f, cursor: c, committed: c.Offset(), next: c.Offset()})
	}
	return b, nil
}

// Name returns the bridge's name.
func (b *Bridge) Name() string { return b.cfg.Name }

// Start runs the bridge until Shutdown: it connects, and reconnects after
// every failure with capped exponential backoff and full jitter.
func (b *Bridge) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel, b.done = cancel, make(chan struct{})
	go func() {
		defer close(b.done)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); b.housekeeping(ctx) }()
		b.run(ctx)
		wg.Wait()
	}()
}

// Shutdown disconnects, commits how far each rule got, and returns when the
// bridge's goroutines are gone or ctx ends.
func (b *Bridge) Shutdown(ctx context.Context) error {
	if b.cancel == nil {
		return nil
	}
	b.cancel()
	select {
	case <-b.done:
		return b.commit()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Wants reports whether a forward rule takes topic: the broker logs such a
// QoS 0 publish, which it would otherwise only deliver from memory, so that
// the bridge can forward it.
func (b *Bridge) Wants(topic string) bool {
	for _, r := range b.rules {
		if qos.Match(r.fwd.Filter, topic) {
			return true
		}
	}
	return false
}

// run connects, serves and reconnects until ctx ends. The upstreams are
// tried in order; after a failure the next one is tried, after a connection
// that ended the same one first. The backoff grows with every failure and
// starts again only after a connection that lasted a keepalive, so an
// upstream that accepts and drops at once (a client id another gateway
// takes over) is not hammered either.
func (b *Bridge) run(ctx context.Context) {
	idx, failures, first := 0, 0, true
	down := newOutage(time.Now())
	for ctx.Err() == nil {
		addr := b.cfg.Upstreams[idx]
		up, err := b.connect(ctx, addr)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			b.setError(idx, err)
			down.failed(b.lg, time.Now(), idx, addr, err)
			idx = (idx + 1) % len(b.cfg.Upstreams)
			failures++
			if !sleep(ctx, b.backoff(failures)) {
				return
			}
			continue
		}
		if !first {
			b.reconnects.Add(1)
		}
		first = false
		b.setConnected(idx)
		connected := time.Now()
		b.lg.Info("bridge: connected", "upstream", idx, "address", addr, "window", up.window(),
			"down_for", connected.Sub(down.since).Round(time.Millisecond), "failed_attempts", down.attempts, "last_error", down.lastErr)
		err = b.serve(ctx, up, idx)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		s := b.Status()
		b.lg.Warn("bridge: link down", "upstream", idx, "address", addr, "error", err,
			"connected_for", now.Sub(connected).Round(time.Millisecond),
			"backlog_messages", s.BacklogMessages, "backlog_bytes", s.BacklogBytes, "backlog_seconds", s.BacklogSeconds)
		b.mu.Lock()
		b.backlogLogged, b.backlogSaid = now, s.BacklogRecords > 0 // the line above said it
		b.mu.Unlock()
		down = newOutage(now)
		if err != nil {
			down.lastErr = err.Error()
		}
		if now.Sub(connected) >= b.cfg.Keepalive {
			failures = 0
		}
		failures++
		if !sleep(ctx, b.backoff(failures)) {
			return
		}
	}
}

// outage is what run knows of the time since the link was last up. The
// first connect failure of each upstream is logged at Warn, the others at
// most once a minute (with how many there were; Debug in between), so that
// a long outage with a short backoff does not flood the log. (Error texts
// differ from one attempt to the next, by the local port if nothing else:
// a new text is no reason for a new line.)
type outage struct {
	since    time.Time
	attempts int
	lastErr  string
	said     map[int]bool // upstreams whose failure was logged at Warn
	throttle logThrottle
}

func newOutage(since time.Time) *outage { return &outage{since: since, said: map[int]bool{}} }

// failed logs one failed connect.
func (o *outage) failed(lg *slog.Logger, now time.Time, idx int, addr string, err error) {
	o.attempts++
	o.lastErr = err.Error()
	attrs := []any{"upstream", idx, "address", addr, "error", err, "failed_attempts", o.attempts, "down_for", now.Sub(o.since).Round(time.Millisecond)}
	if !o.said[idx] {
		o.said[idx] = true
		lg.Warn("bridge: connect failed", attrs...)
		return
	}
	if n, ok := o.throttle.allow(now); ok && n > 1 {
		lg.Warn("bridge: still cannot connect", append(attrs, "failures_since_last_report", n)...)
		return
	}
	lg.Debug("bridge: connect failed", attrs...)
}

// backoff is the wait before attempt n (from 1): uniformly random below
// min(BackoffMax, BackoffMin * 2^(n-1)) ("full jitter"), so that a fleet of
// gateways does not reconnect in step.
func (b *Bridge) backoff(n int) time.Duration {
	ceil := b.cfg.BackoffMin
	for i := 1; i < n && ceil < b.cfg.BackoffMax; i++ {
		ceil *= 2
	}
	ceil = min(ceil, b.cfg.BackoffMax)
	return rand.N(ceil) + time.Millisecond
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// connect dials one upstream in the configured protocol and makes the
// downlink subscriptions.
func (b *Bridge) connect(ctx context.Context, addr string) (uplink, error) {
	if b.cfg.TLS.InsecureSkipVerify {
		b.lg.Warn("bridge: tls.insecure_skip_verify is set: the upstream's certificate is not checked, anyone on the path can read and change the traffic")
	}
	in := newDownlinkIn(ctx, b)
	var up subscriber
	var err error
	if b.cfg.Protocol == "5" {
		up, err = dialV5(ctx, b.d, addr, in)
	} else {
		up, err = dialV311(ctx, b.d, addr, in)
	}
	if err == nil {
		if err = b.subscribe(ctx, up); err != nil {
			up.close()
		}
	}
	if err != nil {
		in.stop()
		return nil, err
	}
	return &withInbound{uplink: up, in: in}, nil
}

// subscriber is an uplink that also makes and removes downlink
// subscriptions.
type subscriber interface {
	uplink
	// sessionPresent is the CONNACK's Session Present flag: the upstream
	// resumed a session, with the subscriptions it held [MQTT-3.2.2-2].
	sessionPresent() bool
	subscribe(ctx context.Context, rules []Downlink) error
	unsubscribe(ctx context.Context, filters []string) error
}

// subscribe makes the downlink rules' subscriptions on a new connection
// and removes the ones the bridge made before and no longer wants: a
// resumed upstream session keeps them (a rule removed while edgemq was
// down, or by a reload) and would go on sending on them. What the bridge
// may hold is remembered durably (Options.StateDir) before it subscribes,
// and forgotten only once the upstream confirmed the UNSUBSCRIBE. A failed
// UNSUBSCRIBE, or a failed write of the record (a full disk), is logged
// and tried again on the next connection; what comes on a subscription
// that stayed is dropped, counted no_rule.
func (b *Bridge) subscribe(ctx context.Context, up subscriber) error {
	var want []string
	for _, r := range b.cfg.Downlink {
		want = append(want, r.Filter)
	}
	held, err := b.subs.get(b.cfg.Name)
	if err != nil {
		b.lg.Warn("bridge: the record of the downlink subscriptions is unreadable; subscriptions of removed rules may stay upstream", "error", err)
	}
	var stale []string
	if up.sessionPresent() { // else the upstream holds no subscription of ours
		for _, f := range held {
			if !slices.Contains(want, f) {
				stale = append(stale, f)
			}
		}
	}
	if err := b.subs.set(b.cfg.Name, append(want, stale...)); err != nil {
		// Not worth a link: at worst a rule removed later is not
		// unsubscribed after a restart (its messages are counted no_rule).
		b.lg.Warn("bridge: could not record the downlink subscriptions; a rule removed later may stay subscribed upstream until this succeeds", "error", err)
	}
	if len(want) > 0 {
		if err := up.subscribe(ctx, b.cfg.Downlink); err != nil {
			return err
		}
	}
	if len(stale) == 0 {
		return nil
	}
	if err := up.unsubscribe(ctx, stale); err != nil {
		b.lg.Warn("bridge: removing the upstream subscriptions of removed downlink rules failed; trying again on the next connection", "filters", stale, "error", err)
		return nil
	}
	b.lg.Info("bridge: removed the upstream subscriptions of removed downlink rules", "filters", stale)
	if err := b.subs.set(b.cfg.Name, want); err != nil {
		b.lg.Warn("bridge: could not record the removed subscriptions; they are removed again on the next connection", "error", err)
	}
	return nil
}

// withInbound stops the downlink handler's retries when the link closes.
type withInbound struct {
	uplink
	in *downlinkIn
}

func (w *withInbound) close() {
	w.in.stop()
	w.uplink.close()
}

// serve runs the forward rules over one connection until it is lost or ctx
// ends, then leaves every rule at its acknowledged position.
func (b *Bridge) serve(ctx context.Context, up uplink, idx int) error {
	b.serving.Lock()
	defer b.serving.Unlock()
	cctx, cancel := context.WithCancel(ctx)
	sem := make(chan struct{}, up.window())
	gens := make([]uint64, len(b.rules))
	for i, r := range b.rules {
		gens[i] = r.restart()
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		b.forward(cctx, up, b.rules, gens, sem)
	}()
	select {
	case <-up.lost():
	case <-ctx.Done():
	}
	// At once, and in one step with its cause: the state says what is
	// true now.
	var cause error
	if ctx.Err() == nil {
		cause = up.cause()
	}
	b.setDown(idx, cause)
	cancel()
	wg.Wait()
	up.close()
	err := up.cause()
	if err := b.commit(); err != nil {
		b.lg.Error("bridge: cursor commit failed", "error", err)
	}
	return err
}

func (b *Bridge) setConnected(idx int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.connected, b.upstream, b.since = true, idx, time.Now()
}

// setDown marks the link lost, with its cause (nil: none to report).
func (b *Bridge) setDown(idx int, cause error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.connected, b.upstream, b.since = false, idx, time.Now()
	if cause != nil {
		b.lastErr, b.lastErrAt = cause.Error(), b.since
	}
}

func (b *Bridge) setError(idx int, err error) {
	if err == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.upstream, b.lastErr, b.lastErrAt = idx, err.Error(), time.Now()
	b.connectFailures++
}

func (b *Bridge) drop(reason string, n uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dropped[reason] += n
}

// Status returns the bridge's state now.
func (b *Bridge) Status() Status {
	b.mu.Lock()
	s := Status{
		Name: b.cfg.Name, Connected: b.connected, Upstream: b.upstream, Since: b.since,
		LastError: b.lastErr, LastErrorAt: b.lastErrAt, ConnectFailures: b.connectFailures,
		Dropped: make(map[string]uint64, len(b.dropped)),
	}
	for k, v := range b.dropped {
		s.Dropped[k] = v
	}
	oldest := b.oldestMarks
	b.mu.Unlock()
	s.Reconnects, s.Forwarded, s.Received = b.reconnects.Load(), b.forwarded.Load(), b.received.Load()
	s.BacklogBytes, s.BacklogMessages = b.backlogBytes.Load(), b.backlogMessages.Load()
	next := b.log.LastOffset() + 1
	now := time.Now()
	for i, r := range b.rules {
		low, created := r.oldest()
		if next > low {
			s.BacklogRecords = max(s.BacklogRecords, next-low)
		}
		if created == 0 && next > low {
			// Nothing in flight: the oldest of the rule's messages the
			// last count found, if the rule has not passed it since.
			var m oldestMark
			if i < len(oldest) {
				m = oldest[i]
			}
			switch {
			case m.found && m.created != 0 && m.off >= low:
				created = m.created
			case m.counted && !m.found: // none of the rule's waited then
			default:
				created = b.createdAt(low, next)
			}
		}
		if created > 0 {
			s.BacklogSeconds = max(s.BacklogSeconds, now.Sub(time.Unix(0, created)).Seconds())
		}
	}
	return s
}

// oldestMark is the oldest message of a rule that the backlog count found
// (storeBacklog): Status takes its age while nothing is in flight.
type oldestMark struct {
	counted bool   // the rule's backlog was counted
	found   bool   // and held a message of the rule, at off
	off     uint64 // accepted at created (0: its record could not be read)
	created int64
}

// createdAt returns when the first message at or after off (below next) was
// accepted, looking at a few records only; 0 if none is found. It may be
// another rule's message, so older than the rule's own: Status uses it
// only until the backlog was counted.
func (b *Bridge) createdAt(off, next uint64) int64 {
	for i := 0; i < 64 && off < next; i, off = i+1, off+1 {
		rec, err := b.log.Read(off)
		if err != nil || qos.KindOf(rec) != qos.KindMessage {
			continue
		}
		var m qos.Message
		if m.UnmarshalBinary(rec) == nil {
			return m.Created
		}
	}
	return 0
}

// origin is the Origin of the messages the bridge brings down, which its
// forward rules never send back (a loop).
func (c Config) origin() string { return "$bridge/" + c.Name }

// cursorName is the cursor of a forward rule: the bridge's name and a key
// of everything that decides what the rule sends, so that a changed rule
// starts a new cursor and an unchanged one keeps its place.
func (c Config) cursorName(f Forward) string {
	h := uint64(14695981039346656037) // FNV-1a
	for _, s := range []string{f.Filter, f.StripPrefix, f.Remote, strconv.Itoa(f.QoS), f.Retain} {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint64(s[i])) * 1099511628211
		}
		h = (h ^ 0xff) * 1099511628211
	}
	return fmt.Sprintf("%s%s/%016x", CursorPrefix, c.Name, h)
}

// Set is the broker's bridges: it starts, reloads and stops them, and
// answers Wants for all of them.
type Set struct {
	log   Log
	local Local
	o     Options

	mu      sync.Mutex // serialises Apply and Shutdown
	bridges map[string]*Bridge
	cfgs    map[string]Config
	list    atomic.Pointer[[]*Bridge] // for Wants and Status, without the lock
	subs    *subscriptions            // shared by the bridges, kept across their restarts
}

// NewSet returns an empty Set over the broker's log.
func NewSet(l Log, local Local, o Options) *Set {
	s := &Set{log: l, local: local, o: o, bridges: map[string]*Bridge{}, cfgs: map[string]Config{}, subs: newSubscriptions(o.StateDir)}
	s.list.Store(&[]*Bridge{})
	return s
}

// Apply makes the running bridges those of cfgs: it starts new ones, stops
// removed ones, restarts changed ones (a rule that did not change keeps its
// cursor), and removes the cursors of rules that no longer exist and what
// removed bridges remembered of their subscriptions. It checks
// every config first: on an error nothing changes.
func (s *Set) Apply(ctx context.Context, cfgs []Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := map[string]bool{}
	var errs []error
	for i, c := range cfgs {
		if err := c.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("bridges[%d]: %w", i, err))
		}
		if names[c.Name] {
			errs = append(errs, &FieldError{Path: fmt.Sprintf("bridges[%d].name", i), Reason: fmt.Sprintf("already used (got %q)", c.Name)})
		}
		names[c.Name] = true
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var stopErrs []error
	keep := map[string]bool{}
	next := map[string]*Bridge{}
	for _, c := range cfgs {
		for _, f := range c.Forward {
			keep[c.cursorName(f)] = true
		}
		if old, ok := s.bridges[c.Name]; ok && equalConfig(s.cfgs[c.Name], c) {
			next[c.Name] = old
			continue
		}
		if old, ok := s.bridges[c.Name]; ok {
			stopErrs = append(stopErrs, old.Shutdown(ctx))
		}
		b, err := newBridge(c, s.log, s.local, s.o, s.subs)
		if err != nil {
			stopErrs = append(stopErrs, err)
			continue
		}
		b.Start()
		next[c.Name] = b
	}
	for name, old := range s.bridges {
		if _, ok := next[name]; !ok {
			stopErrs = append(stopErrs, old.Shutdown(ctx))
		}
	}
	for _, name := range s.log.Cursors() {
		if len(name) > len(CursorPrefix) && name[:len(CursorPrefix)] == CursorPrefix && !keep[name] {
			stopErrs = append(stopErrs, s.log.DeleteCursor(name))
		}
	}
	stopErrs = append(stopErrs, s.subs.remove(names))
	s.bridges = next
	s.cfgs = map[string]Config{}
	list := make([]*Bridge, 0, len(next))
	for _, c := range cfgs {
		s.cfgs[c.Name] = c
		list = append(list, next[c.Name])
	}
	s.list.Store(&list)
	return errors.Join(stopErrs...)
}

// equalConfig reports whether two configs of a bridge are the same.
func equalConfig(a, b Config) bool {
	return fmt.Sprintf("%#v", a) == fmt.Sprintf("%#v", b)
}

// Wants reports whether any bridge's forward rule takes topic (see
// Bridge.Wants). Safe for concurrent use; it takes no lock.
func (s *Set) Wants(topic string) bool {
	for _, b := range *s.list.Load() {
		if b.Wants(topic) {
			return true
		}
	}
	return false
}

// Status returns every bridge's status, sorted by name.
func (s *Set) Status() []Status {
	list := *s.list.Load()
	out := make([]Status, 0, len(list))
	for _, b := range list {
		out = append(out, b.Status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Shutdown stops every bridge.
func (s *Set) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, b := range s.bridges {
		errs = append(errs, b.Shutdown(ctx))
	}
	s.bridges = map[string]*Bridge{}
	s.list.Store(&[]*Bridge{})
	return errors.Join(errs...)
}

// backlogReportAge is how old the oldest waiting message of a connected
// bridge must be for its backlog to be worth a log line: below it the link
// keeps up (what waits is in flight).
const backlogReportAge = 10 * time.Second

// reportBacklog logs the backlog at most once a minute while it is worth
// saying (the link is down and something waits, or the oldest waiting
// message is older than backlogReportAge), and once when it is no longer
// (caught up). Called by the housekeeping goroutine after each count.
func (b *Bridge) reportBacklog(now time.Time) {
	s := b.Status()
	worth := s.BacklogRecords > 0 && (!s.Connected || s.BacklogSeconds >= backlogReportAge.Seconds())
	b.mu.Lock()
	defer b.mu.Unlock()
	attrs := []any{"connected", s.Connected, "backlog_messages", s.BacklogMessages, "backlog_bytes", s.BacklogBytes, "backlog_seconds", s.BacklogSeconds}
	switch {
	case worth && now.Sub(b.backlogLogged) >= logThrottleEvery:
		b.lg.Info("bridge: backlog", attrs...)
		b.backlogLogged, b.backlogSaid = now, true
	case !worth && b.backlogSaid:
		b.lg.Info("bridge: backlog caught up", attrs...)
		b.backlogLogged, b.backlogSaid = now, false
	}
}
