package qos_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// memLog is an in-memory qos.Log: appends are durable at once, unless
// fail says otherwise; cursors trim it as a real log's retention would.
// crash is a kill -9 of the process around it.
type memLog struct {
	mu      sync.Mutex
	recs    [][]byte // offset-1; nil: a hole
	first   uint64
	notify  chan struct{}
	cursors map[string]*memCursor
	// fail, if set, is asked for every append: ErrFull refuses it (no
	// offsets), another error makes its offsets holes.
	fail   func(recs [][]byte) error
	failed map[uint64]error
	// waitFail, if set, is asked by WaitDurable first: an error is a wait
	// that ended before the record was durable (as a context's end), the
	// record itself is kept.
	waitFail func(off uint64) error
	closed   bool
	// hold, when not 0, is a slow fsync: records from that offset on are
	// not durable until release (WaitDurable waits, readers and
	// LastOffset stop below it).
	hold uint64
	// onNext, if set, is called (without the lock) before a reader's Next
	// returns the record at off: a test can hold the dispatcher there.
	// onScan is the same for the readers of a sender's backlog scan
	// (memReader.scan), which onNext does not see: a test can stop a scan
	// there without stopping the dispatcher.
	onNext, onScan func(off uint64)
	// onDurable is NotifyDurable's function, called without the lock
	// after every append (durable or failed at once) and release.
	onDurable func()
	// beforeAppend, if set, is called (without the lock) before every
	// append: a test can stop an appender there.
	beforeAppend func(recs [][]byte)
	// slow, when set (slowSync), makes appends durable only when a syncer
	// passes: one fsync of that long for everything appended before it
	// began (group commit). durable is the last offset it made durable.
	slow    bool
	durable uint64
	syncs   int // fsyncs the slow syncer made
	// epoch counts crashes: a hold's release from before one does
	// nothing. calls counts the onDurable calls running, which a crash
	// waits for.
	epoch uint64
	calls sync.WaitGroup
	// busy makes Idle false.
	busy bool
}

// crash is what a kill -9 does to the log: of the records not durable yet
// (a slow fsync's), the first keep were written and are read again by the
// next process (wal.Open makes them durable before any reader sees them),
// the rest were still in the writer's queue and are gone; no durability
// event of the old process comes after it (its NotifyDurable function is
// dropped, a release of a hold from before it does nothing). Called after
// the engine stopped and before a new one recovers.
func (l *memLog) crash(keep int) {
	l.mu.Lock()
	end := min(uint64(len(l.recs)), l.durableLocked()+uint64(max(keep, 0)))
	for end > 0 && l.recs[end-1] == nil && l.failed[end] != nil {
		end-- // a failed write at the tail is not on disk: the next process writes there
	}
	for off := end + 1; off <= uint64(len(l.recs)); off++ {
		delete(l.failed, off)
	}
	l.recs = l.recs[:end]
	l.hold = 0
	if l.slow {
		l.durable = end
	}
	l.epoch++
	l.onDurable = nil
	l.mu.Unlock()
	l.calls.Wait()
}

// acceptedNotDurable reports whether the log holds a message record with
// this payload and none of them is durable yet: an acknowledgement of the
// publish now came too early (qos guarantees an acknowledged publish is
// durable). A trimmed one was durable.
func (l *memLog) acceptedNotDurable(payload []byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	found := false
	for i, r := range l.recs {
		if qos.KindOf(r) != qos.KindMessage {
			continue
		}
		var m qos.Message
		if m.UnmarshalBinary(r) != nil || !bytes.Equal(m.Payload, payload) {
			continue
		}
		if uint64(i+1) <= l.durableLocked() {
			return false
		}
		found = true
	}
	return found
}

// notDurable returns how many records are not durable yet.
func (l *memLog) notDurable() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.recs) - int(l.durableLocked())
}

// durableEvent calls onDurable, if set, without the lock; false if the
// log crashed since epoch.
func (l *memLog) durableEvent(epoch uint64) {
	l.mu.Lock()
	fn := l.onDurable
	if l.epoch != epoch || fn == nil {
		l.mu.Unlock()
		return
	}
	l.calls.Add(1)
	l.mu.Unlock()
	defer l.calls.Done()
	fn()
}

// slowSync makes every fsync of the log take d, with group commit, as a
// slow SD card does, until the test ends.
func (l *memLog) slowSync(t testing.TB, d time.Duration) {
	l.mu.Lock()
	l.slow, l.durable = true, uint64(len(l.recs))
	l.mu.Unlock()
	stop, done := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		for {
			l.mu.Lock()
			target, ch := uint64(len(l.recs)), l.notify
			idle := target == l.durable
			l.mu.Unlock()
			if idle { // wait for an append
				select {
				case <-ch:
					continue
				case <-stop:
					return
				}
			}
			select {
			case <-time.After(d):
			case <-stop:
				return
			}
			l.mu.Lock()
			l.durable = min(target, uint64(len(l.recs)))
			l.syncs++
			close(l.notify)
			l.notify = make(chan struct{})
			epoch := l.epoch
			l.mu.Unlock()
			l.durableEvent(epoch)
		}
	}()
}

// holdFrom makes the records from the next append on wait for release.
// It returns this hold's release, which does nothing once the log crashed
// (the fsync died with the process).
func (l *memLog) holdFrom() (release func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hold = uint64(len(l.recs)) + 1
	epoch := l.epoch
	return func() { l.releaseIn(epoch) }
}

// holdAtKind makes the first append whose first record is of kind k
// begin a slow fsync (holdFrom): that append's records and all after it
// wait for release. It replaces any beforeAppend.
func (l *memLog) holdAtKind(k qos.Kind) {
	var once sync.Once
	l.mu.Lock()
	defer l.mu.Unlock()
	l.beforeAppend = func(recs [][]byte) {
		if qos.KindOf(recs[0]) == k {
			once.Do(func() { l.holdFrom() })
		}
	}
}

// refuseKind makes the log refuse as full (qos.ErrFull) every append whose
// first record is of kind k, until the returned function is called. It
// replaces any fail.
func (l *memLog) refuseKind(k qos.Kind) (stop func()) {
	var full atomic.Bool
	full.Store(true)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fail = func(recs [][]byte) error {
		if full.Load() && qos.KindOf(recs[0]) == k {
			return qos.ErrFull
		}
		return nil
	}
	return func() { full.Store(false) }
}

// release makes the held records durable.
func (l *memLog) release() {
	l.mu.Lock()
	epoch := l.epoch
	l.mu.Unlock()
	l.releaseIn(epoch)
}

// releaseIn is release, unless the log crashed since epoch.
func (l *memLog) releaseIn(epoch uint64) {
	l.mu.Lock()
	if l.epoch != epoch {
		l.mu.Unlock()
		return
	}
	l.hold = 0
	close(l.notify)
	l.notify = make(chan struct{})
	l.mu.Unlock()
	l.durableEvent(epoch)
}

// Idle is false while busy is set: a log whose writer has appends queued,
// so that durability events leave the dispatching to the dispatcher
// goroutine.
func (l *memLog) Idle() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.busy
}

// setBusy sets busy (see Idle).
func (l *memLog) setBusy(b bool) {
	l.mu.Lock()
	l.busy = b
	l.mu.Unlock()
}

// NotifyDurable sets what the log calls at each durability event.
func (l *memLog) NotifyDurable(fn func()) {
	l.mu.Lock()
	l.onDurable = fn
	l.mu.Unlock()
}

// durableLocked is the newest durable offset. Called with mu held.
func (l *memLog) durableLocked() uint64 {
	if l.slow {
		return min(uint64(len(l.recs)), l.durable)
	}
	if l.hold > 0 {
		return min(uint64(len(l.recs)), l.hold-1)
	}
	return uint64(len(l.recs))
}

func newMemLog() *memLog {
	return &memLog{first: 1, notify: make(chan struct{}), cursors: map[string]*memCursor{}, failed: map[uint64]error{}}
}

var _ qos.Log = (*memLog)(nil)

func (l *memLog) AppendAsync(recs ...[]byte) (uint64, error) {
	l.mu.Lock()
	epoch := l.epoch
	l.mu.Unlock()
	off, err := l.appendAsync(recs)
	if err == nil && off+uint64(len(recs))-1 <= l.LastOffset() {
		// Durable (or failed) at once: no slow fsync, no hold. A
		// waitFail does not make it less so: the event comes, as every
		// durable record's does.
		l.durableEvent(epoch)
	}
	return off, err
}

// AppendAsyncLead is AppendAsync: the fake's durability event already
// comes on the appender's goroutine when the records are durable at once.
func (l *memLog) AppendAsyncLead(recs ...[]byte) (uint64, error) { return l.AppendAsync(recs...) }

func (l *memLog) appendAsync(recs [][]byte) (uint64, error) {
	l.mu.Lock()
	before := l.beforeAppend
	l.mu.Unlock()
	if before != nil {
		before(recs)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, qos.ErrLogClosed
	}
	var ferr error
	if l.fail != nil {
		ferr = l.fail(recs)
		if errors.Is(ferr, qos.ErrFull) {
			return 0, ferr
		}
	}
	first := uint64(len(l.recs)) + 1
	for _, r := range recs {
		if ferr != nil {
			l.failed[uint64(len(l.recs))+1] = ferr
			l.recs = append(l.recs, nil)
			continue
		}
		l.recs = append(l.recs, bytes.Clone(r))
	}
	close(l.notify)
	l.notify = make(chan struct{})
	return first, nil
}

func (l *memLog) WaitDurable(ctx context.Context, off uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if off == 0 || off > uint64(len(l.recs)) {
		return qos.ErrHole
	}
	if l.waitFail != nil {
		if err := l.waitFail(off); err != nil {
			return err
		}
	}
	for off > l.durableLocked() {
		ch := l.notify
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			l.mu.Lock()
			return ctx.Err()
		}
		l.mu.Lock()
	}
	return l.failed[off]
}

// Resolved is WaitDurable's answer with a context already done.
func (l *memLog) Resolved(off uint64) bool {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return !errors.Is(l.WaitDurable(ctx, off), context.Canceled)
}

func (l *memLog) Read(off uint64) ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		return nil, qos.ErrLogClosed
	case off < l.first:
		return nil, qos.ErrTrimmed
	case off == 0 || off > uint64(len(l.recs)) || l.recs[off-1] == nil:
		return nil, qos.ErrHole
	}
	return bytes.Clone(l.recs[off-1]), nil
}

func (l *memLog) NewReader(from uint64) qos.LogReader {
	if from == 0 {
		from = l.FirstOffset()
	}
	return &memReader{l: l, off: from, scan: calledFrom("qos.(*connection).scanReader")}
}

// calledFrom reports whether fn (package-qualified, as the runtime names
// it) is on the caller's stack.
func calledFrom(fn string) bool {
	pc := make([]uintptr, 32)
	frames := runtime.CallersFrames(pc[:runtime.Callers(2, pc)])
	for {
		f, more := frames.Next()
		if strings.HasSuffix(f.Function, "/"+fn) {
			return true
		}
		if !more {
			return false
		}
	}
}

// Sync does nothing: every append is durable at once.
func (l *memLog) Sync(context.Context) error { return nil }

func (l *memLog) FirstOffset() uint64 { l.mu.Lock(); defer l.mu.Unlock(); return l.first }
func (l *memLog) LastOffset() uint64  { l.mu.Lock(); defer l.mu.Unlock(); return l.durableLocked() }

func (l *memLog) Cursor(name string) (qos.Cursor, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.cursors[name]
	if c == nil {
		c = &memCursor{l: l, off: l.first}
		l.cursors[name] = c
	}
	return c, nil
}

// count returns the records of kind k in the log.
func (l *memLog) count(k qos.Kind) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if qos.KindOf(r) == k {
			n++
		}
	}
	return n
}

type memCursor struct {
	l   *memLog
	off uint64
}

func (c *memCursor) Offset() uint64 { c.l.mu.Lock(); defer c.l.mu.Unlock(); return c.off }

// Commit moves the cursor (not below the first offset, as wal's) and
// trims the log below the oldest cursor.
func (c *memCursor) Commit(next uint64) error {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if next > uint64(len(l.recs))+1 {
		return fmt.Errorf("cursor %d beyond the log", next)
	}
	c.off = max(next, l.first)
	low := next
	for _, o := range l.cursors {
		low = min(low, o.off)
	}
	for ; l.first < low; l.first++ {
		l.recs[l.first-1] = nil
	}
	return nil
}

type memReader struct {
	l    *memLog
	off  uint64
	scan bool // a sender's backlog scan's (onScan), not the dispatcher's or recovery's (onNext)
}

func (r *memReader) Offset() uint64  { return r.off }
func (r *memReader) Seek(off uint64) { r.off = off }

func (r *memReader) Next(ctx context.Context) (uint64, []byte, error) {
	l := r.l
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return 0, nil, qos.ErrLogClosed
		}
		if r.off < l.first {
			l.mu.Unlock()
			return 0, nil, qos.ErrTrimmed
		}
		if r.off <= l.durableLocked() {
			off, rec := r.off, l.recs[r.off-1]
			r.off++
			onNext := l.onNext
			if r.scan {
				onNext = l.onScan
			}
			l.mu.Unlock()
			if rec == nil {
				continue
			}
			if onNext != nil {
				onNext(off)
			}
			return off, bytes.Clone(rec), nil
		}
		ch := l.notify
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}
}

// memSnaps keeps snapshots in memory.
type memSnaps struct {
	mu    sync.Mutex
	snaps [][]byte
}

func (m *memSnaps) Save(_ uint64, write func(io.Writer) error) error {
	var b bytes.Buffer
	if err := write(&b); err != nil {
		return err
	}
	m.mu.Lock()
	m.snaps = append(m.snaps, b.Bytes())
	m.mu.Unlock()
	return nil
}

func (m *memSnaps) Load(read func(io.Reader) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var err error
	for i := len(m.snaps) - 1; i >= 0; i-- {
		if err = read(bytes.NewReader(m.snaps[i])); err == nil {
			return nil
		}
		if errors.Is(err, qos.ErrSnapshotAhead) {
			m.snaps = slices.Delete(m.snaps, i, i+1)
		}
	}
	return err
}

// fakeConn records what the engine writes; the test plays the client. It
// keeps written packets until Flush (or Close), as edge's connection does,
// so a packet the engine forgets to flush never reaches the test.
type fakeConn struct {
	mu      sync.Mutex
	pkts    []qos.Packet
	kept    []qos.Packet
	closed  bool
	reason  byte
	maxSize int // payloads above it are ErrTooLarge; 0: none
	fail    bool
	notify  chan struct{}
	// onFlush, if set, is called (without the lock) with the packets each
	// Flush wrote, on the engine's goroutine that flushed: the client
	// answers at once, before the engine goes on.
	onFlush func([]qos.Packet)
	// slow makes FlushNow take nothing (a socket that would block), busy
	// makes WriteNow refuse (another write holds the connection).
	slow, busy bool
	// flaky makes WriteNow refuse, and FlushNow write only a part of what
	// was kept, at random, each with this chance (a socket that is full
	// at times, a write another goroutine holds): the model test's.
	flaky float64
}

func newFakeConn() *fakeConn { return &fakeConn{notify: make(chan struct{}, 1)} }

func (c *fakeConn) Write(p *qos.Packet) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.fail {
		return io.ErrClosedPipe
	}
	if c.maxSize > 0 && p.Message != nil && len(p.Message.Payload) > c.maxSize {
		return qos.ErrTooLarge
	}
	c.kept = append(c.kept, *p)
	return nil
}

func (c *fakeConn) Flush() error {
	c.mu.Lock()
	if c.closed || c.fail {
		c.kept = nil
		c.mu.Unlock()
		return io.ErrClosedPipe
	}
	out := slices.Clone(c.kept)
	c.flushLocked()
	on := c.onFlush
	c.mu.Unlock()
	if on != nil && len(out) > 0 {
		on(out)
	}
	return nil
}

// WriteNow is Write, unless busy.
func (c *fakeConn) WriteNow(p *qos.Packet) (bool, error) {
	c.mu.Lock()
	busy := c.busy || (c.flaky > 0 && rand.Float64() < c.flaky)
	c.mu.Unlock()
	if busy {
		return false, nil
	}
	return true, c.Write(p)
}

// FlushNow is Flush, unless slow: then it takes nothing.
func (c *fakeConn) FlushNow() (bool, error) {
	c.mu.Lock()
	if c.slow && !c.closed && !c.fail {
		empty := len(c.kept) == 0
		c.mu.Unlock()
		return empty, nil
	}
	if c.flaky > 0 && !c.closed && !c.fail && len(c.kept) > 0 && rand.Float64() < c.flaky {
		n := rand.IntN(len(c.kept)) // a part, in order; the rest stays kept
		c.pkts = append(c.pkts, c.kept[:n]...)
		c.kept = append(c.kept[:0], c.kept[n:]...)
		c.mu.Unlock()
		return false, nil
	}
	c.mu.Unlock()
	if err := c.Flush(); err != nil {
		return false, err
	}
	return true, nil
}

func (c *fakeConn) flushLocked() {
	if len(c.kept) == 0 {
		return
	}
	c.pkts = append(c.pkts, c.kept...)
	c.kept = c.kept[:0]
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// Close writes what was kept, then closes.
func (c *fakeConn) Close(reason byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.flushLocked()
		c.closed, c.reason = true, reason
	}
}

// written returns how many packets were written and not taken yet.
func (c *fakeConn) written() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pkts)
}

// take returns and forgets the packets written so far.
func (c *fakeConn) take() []qos.Packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pkts
	c.pkts = nil
	return p
}

// waitFor waits until the connection has n packets written (or fails the
// test after a long while: a missing packet is a bug, not slowness).
func (c *fakeConn) waitFor(t testing.TB, n int) []qos.Packet {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		got := len(c.pkts)
		c.mu.Unlock()
		if got >= n {
			return c.take()
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited for %d packets, got %d: %+v", n, got, c.take())
		}
		select {
		case <-c.notify:
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// settle waits until the engine has written everything it is going to:
// nothing new for a while.
func (c *fakeConn) settle() []qos.Packet {
	var all []qos.Packet
	quiet := 0
	for quiet < 5 {
		time.Sleep(5 * time.Millisecond)
		p := c.take()
		if len(p) == 0 {
			quiet++
			continue
		}
		quiet = 0
		all = append(all, p...)
	}
	return all
}

// closedWith returns whether the engine closed the connection, and the
// reason, waiting up to wait for it (the engine closes asynchronously).
func (c *fakeConn) closedWith(wait time.Duration) (bool, byte) {
	deadline := time.Now().Add(wait)
	for {
		c.mu.Lock()
		closed, reason := c.closed, c.reason
		c.mu.Unlock()
		if closed || time.Now().After(deadline) {
			return closed, reason
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// size returns the bytes of the records of kind k in the log, and how many
// there are.
func (l *memLog) size(k qos.Kind) (bytes, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		if qos.KindOf(r) == k {
			bytes += len(r)
			n++
		}
	}
	return bytes, n
}

// last returns the last record of kind k in the log, or nil.
func (l *memLog) last(k qos.Kind) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.recs) - 1; i >= 0; i-- {
		if qos.KindOf(l.recs[i]) == k {
			return l.recs[i]
		}
	}
	return nil
}
