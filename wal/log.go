package wal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Log is an open append log. All methods are safe for concurrent use.
//
// Lock order: writeMu, then qmu, then smu, then segment.mu; syncMu, then
// segment.mu. The cursor table's locks and retMu are never taken under
// these but writeMu.
type Log struct {
	dir  string
	cfg  Config
	lock *os.File // flock on dir/LOCK
	fs   FS
	log  *slog.Logger

	// smu guards the segment list and the durable state.
	smu  sync.RWMutex
	segs []*segment // by base; the last one is the tail
	// durable is the last durable offset: readers see up to it. Written
	// under smu; Resolved and LastOffset read it without.
	durable atomic.Uint64
	// syncedOff is the last offset an fsync is known to cover (with the
	// directory entries of its segments): the durable mark the cursor
	// table records. Under SyncAlways it is durable; under the other
	// policies it trails it.
	syncedOff atomic.Uint64
	// durableCh is closed (and replaced) when durable moves, a hole is
	// marked, the log fails or closes, but only once a waiter took it
	// (durableWatched, set under smu's read lock by durableWait): at a
	// durability event that no goroutine waits for (qos's engine is told
	// by NotifyDurable), no channel is made.
	durableCh      chan struct{}
	durableWatched atomic.Bool
	holes          []span // offsets whose append failed, since Open
	failed         error  // sticky: see ErrFailed
	closed         bool
	// troubled is set (under smu) once there are holes, a failure or a
	// close: until then Resolved answers from durable alone.
	troubled atomic.Bool

	// qmu guards the queue of appends waiting for the writer.
	qmu     sync.Mutex
	next    uint64 // next offset to hand out
	q       batch
	spare   batch
	qclosed bool
	// spaceCh is closed (and replaced) when the writer takes the queue,
	// once an appender waiting for room took it (spaceWatched).
	spaceCh      chan struct{}
	spaceWatched bool

	kick chan struct{} // capacity 1: "the queue is not empty"
	stop chan struct{}
	done chan struct{}

	// writeMu is held by whoever writes a batch: the writer goroutine, or
	// an appender that found it idle and writes its batch itself
	// (AppendAsyncLead). One batch at a time, in offset order.
	writeMu sync.Mutex

	// Writer state: only the holder of writeMu touches it.
	tail        *segment
	holeFrom    uint64 // offsets [holeFrom, holeTo] failed and still need
	holeTo      uint64 // hole entries on disk (holeFrom == 0: none)
	hbuf        []byte
	chunks      []chunk       // writeBatch's, reused
	concurrency int           // Append calls in the last batch and queued behind it
	lastFsync   atomic.Int64  // nanoseconds of the last segment fsync
	fastFsyncs  int           // batch fsyncs in a row under quietFsync (see quiet)
	idleFrom    time.Time     // when the writer ended its last batch
	idle        time.Duration // from then to the first record of the next batch, on average (sawGap)
	closeErr    error         // the final fsync's failure, for Close
	errLog      rateLimit     // for the writer's repeating errors

	// syncMu guards what waits for an fsync: the writer adds, syncFiles
	// (writer or, under SyncInterval, the sync goroutine) takes.
	syncMu sync.Mutex
	synced []*segment // segments with unsynced data (the tail included)
	// syncSpare is the list syncFiles took the last time, emptied, for
	// synced to take next (no list made per fsync); syncRun's holder's.
	syncSpare []*segment
	dirDirty  bool // a segment file was created since the last dir fsync
	// syncRun is held through a whole syncFiles, so that a Sync never
	// returns while an fsync that took its segments is still running.
	syncRun sync.Mutex

	retMu sync.Mutex // serialises retention passes

	cursors cursorTable

	// tailCache serves reads of the newest records without a pread.
	tailCache tailCache

	// notify is NotifyDurable's function (nil: none).
	notify atomic.Pointer[func()]

	stats counters
}

// batch is a run of encoded entries with consecutive offsets.
type batch struct {
	buf     []byte
	sizes   []uint32  // size of each entry in buf
	first   uint64    // offset of the first entry
	waiters int       // Append calls (not AppendAsync) with records here
	at      time.Time // when its first record was queued
}

func (b *batch) reset() {
	b.buf, b.sizes, b.first, b.waiters, b.at = b.buf[:0], b.sizes[:0], 0, 0, time.Time{}
}

// span is a range of failed offsets and why they failed.
type span struct {
	from, to uint64
	err      error
}

// Open opens (or creates) the log in dir. It cuts a torn tail off the last
// segment, with a Warn log naming what was cut, but never at or below the
// durable mark: damage there, or damage followed by valid records, fails
// Open with a *CorruptError (Repair mends it). Damage in older segments is
// left alone and reported when read (see Check and Repair). Open reads only
// the last segment, so its time does not grow with the log; it writes that
// segment's records after the durable mark again and fsyncs them, and
// fsyncs the directory, before anything reads them.
func Open(dir string, cfg Config) (*Log, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("wal: config: %w", err)
	}
	cfg = cfg.withDefaults()
	l := &Log{
		dir:       dir,
		cfg:       cfg,
		fs:        cfg.FS,
		log:       cfg.Logger,
		durableCh: make(chan struct{}),
		spaceCh:   make(chan struct{}),
		kick:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	l.stats.init()
	if err := l.fs.mkdirDurable(dir); err != nil {
		return nil, fmt.Errorf("wal: create %s: %w", dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	l.lock = lock
	curs, err := l.cursors.read(l)
	if err == nil {
		err = l.load()
	}
	if err == nil {
		// The tail's name, the cursor table's, and whatever else the
		// previous process created and a crash left unsynced.
		if derr := l.fs.syncDir(l.dir); derr != nil {
			err = fmt.Errorf("wal: sync %s: %w", l.dir, derr)
		}
	}
	if err != nil {
		l.cursors.closeFiles()
		l.closeFiles()
		return nil, err
	}
	l.syncedOff.Store(l.durable.Load())
	l.cursors.load(l, curs)
	go l.run()
	return l, nil
}

// load reads the directory, repairs the tail and sets the offsets.
func (l *Log) load() error {
	ents, err := l.fs.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("wal: read %s: %w", l.dir, err)
	}
	for _, e := range ents {
		base, ok := parseSegmentName(e.Name())
		if !ok || e.IsDir() {
			continue
		}
		s := newSegment(l.dir, base)
		if info, err := e.Info(); err == nil {
			s.size.Store(info.Size())
			s.mtime.Store(info.ModTime().UnixNano())
		}
		l.segs = append(l.segs, s)
	}
	sort.Slice(l.segs, func(i, j int) bool { return l.segs[i].base < l.segs[j].base })
	if len(l.segs) == 0 {
		s := newSegment(l.dir, 1)
		f, err := l.fs.OpenFile(s.path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o640)
		if err != nil {
			return fmt.Errorf("wal: create segment: %w", err)
		}
		s.f = f
		s.loaded = true
		s.mtime.Store(time.Now().UnixNano())
		l.segs = []*segment{s}
		if m := l.cursors.mark; m > 0 {
			return &CorruptError{Segment: s.name, Offset: 1,
				Reason: fmt.Sprintf("no segment file, but offsets up to %d were durable", m)}
		}
	} else {
		for i := 0; i < len(l.segs)-1; i++ {
			l.segs[i].count.Store(l.segs[i+1].base - l.segs[i].base)
		}
		if err := l.loadTail(l.segs[len(l.segs)-1]); err != nil {
			return err
		}
	}
	l.tail = l.segs[len(l.segs)-1]
	l.durable.Store(l.tail.base + l.tail.count.Load() - 1)
	l.next = l.durable.Load() + 1
	l.stats.segments.Store(int64(len(l.segs)))
	var total int64
	for _, s := range l.segs {
		total += s.size.Load()
	}
	l.stats.diskBytes.Store(total)
	return nil
}

// loadTail reads the last segment whole, checks every record and cuts a
// torn tail. It never cuts at or below the durable mark the cursor table
// holds: damage there fails Open.
func (l *Log) loadTail(s *segment) error {
	f, err := l.fs.OpenFile(s.path, os.O_RDWR, 0o640)
	if err != nil {
		return fmt.Errorf("wal: open segment %s: %w", s.name, err)
	}
	s.f = f
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("wal: stat segment %s: %w", s.name, err)
	}
	data := make([]byte, info.Size())
	if _, err := f.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("wal: read segment %s: %w", s.name, err)
	}
	mark := l.cursors.mark
	x, corrupt := scanTail(data, s, mark)
	if corrupt != nil {
		return corrupt
	}
	end := int(x.end)
	if end < len(data) {
		l.log.Warn("wal: cut a torn tail", "segment", s.name, "pos", end,
			"bytes", len(data)-end, "last_offset", s.base+x.n-1)
		if err := f.Truncate(int64(end)); err != nil {
			return fmt.Errorf("wal: cut torn tail of %s: %w", s.name, err)
		}
		l.stats.tornBytes.Add(int64(len(data) - end))
	}
	// What the previous process wrote after the mark may be only in the
	// page cache, and from now on it is visible to readers, so make it
	// durable first. An fsync is not enough: after an earlier fsync failed,
	// the kernel may hold those pages clean and never write them; writing
	// them again makes them dirty.
	from := 0
	if rel := mark + 1 - min(mark+1, s.base); rel >= x.n {
		from = end
	} else if rel > 0 {
		startRel, start, _ := x.window(rel)
		from = int(start)
		for r := startRel; r < rel; r++ {
			n, _ := entryLen(data[from:], len(data)-from)
			from += n
		}
	}
	if from < end {
		if _, err := f.WriteAt(data[from:end], int64(from)); err != nil {
			return fmt.Errorf("wal: rewrite segment %s: %w", s.name, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("wal: sync segment %s: %w", s.name, err)
	}
	s.ix, s.loaded = x, true
	s.count.Store(x.n)
	s.size.Store(int64(end))
	return nil
}

// Close writes and syncs everything queued, stops the writer and closes the
// files. Appends still waiting when Close returns got their final answer.
func (l *Log) Close() error {
	l.qmu.Lock()
	if l.qclosed {
		l.qmu.Unlock()
		return ErrClosed
	}
	l.qclosed = true
	l.wakeSpace()
	l.qmu.Unlock()
	close(l.stop)
	<-l.done

	l.smu.Lock()
	l.closed = true
	l.troubled.Store(true)
	l.wakeDurable()
	l.smu.Unlock()
	err := l.closeErr
	if err == nil && l.failure() == nil {
		l.syncedOff.Store(l.LastOffset()) // the final fsync covered everything
	}
	if cerr := l.cursors.close(l); err == nil {
		err = cerr
	}
	if cerr := l.closeFiles(); err == nil {
		err = cerr
	}
	return err
}

func (l *Log) closeFiles() error {
	var first error
	if l.lock != nil {
		l.lock.Close() // releases the flock
		l.lock = nil
	}
	for _, s := range l.segs {
		s.mu.Lock()
		if s.f != nil {
			if err := s.f.Close(); err != nil && first == nil {
				first = fmt.Errorf("wal: close segment %s: %w", s.name, err)
			}
			s.f = nil
		}
		s.mu.Unlock()
	}
	return first
}

// Append queues the records, waits until they are durable under the sync
// policy, and returns the offset of the first one; the others follow it
// consecutively. Offsets grow monotonically and are never reused, not even
// after a failed append. On error nothing was acknowledged: with ErrFull,
// ErrTooLarge or ErrClosed the records got no offset; with an I/O error the
// offsets are holes (Read returns ErrNotFound). If ctx ends first, Append
// returns ctx.Err() and the records may still become durable.
func (l *Log) Append(ctx context.Context, recs ...[]byte) (first uint64, err error) {
	if len(recs) == 0 {
		return 0, nil
	}
	start := time.Now()
	first, err = l.enqueue(ctx, recs, false)
	if err != nil {
		return 0, err
	}
	if err := l.wait(ctx, first, first+uint64(len(recs))-1); err != nil {
		return 0, err
	}
	l.stats.appendWait.observe(time.Since(start))
	return first, nil
}

// AppendAsync queues the records and returns the offset of the first one
// without waiting for them to be durable; WaitDurable waits. The records of
// one call go into one batch: they become durable together, or all become
// holes. It blocks only while the queue is over Config.QueueBytes. The
// records are copied.
func (l *Log) AppendAsync(recs ...[]byte) (first uint64, err error) {
	if len(recs) == 0 {
		return 0, nil
	}
	return l.enqueue(nil, recs, false)
}

// AppendAsyncLead is AppendAsync for a caller that can take the writer's
// place: when no batch is being written and the log is quiet (under
// SyncAlways only: a low rate on a fast disk, see quiet), the caller
// writes and fsyncs the queue, its records and any queued before them, on
// its own goroutine, and calls NotifyDurable's function there, before it
// returns: its records are then durable or failed. Otherwise it is
// AppendAsync, and the writer goroutine writes them. It saves the hand-off
// to the writer goroutine and back that an append at a low rate costs
// (the scheduler's wake-ups, another thread on a second core). The caller
// must hold no lock that NotifyDurable's function takes, and be one that
// may spend an fsync's time (with a quiet log, under 2 ms).
func (l *Log) AppendAsyncLead(recs ...[]byte) (first uint64, err error) {
	if len(recs) == 0 {
		return 0, nil
	}
	return l.enqueue(nil, recs, true)
}

// WaitDurable waits until offset is durable under the sync policy. It
// returns the append's error if offset failed, ErrNotFound for an offset
// never handed out, and ctx.Err() if ctx ends first; with a ctx already
// done it does not wait: ctx.Err() then means "not durable yet".
func (l *Log) WaitDurable(ctx context.Context, offset uint64) error {
	// While no append ever failed (troubled, set before a later batch
	// moves the mark past a hole), everything up to the durable mark is
	// durable: no lock (qos's engine asks this per acknowledgement, on
	// the writer's goroutine).
	if offset != 0 && offset <= l.durable.Load() && !l.troubled.Load() {
		return nil
	}
	l.qmu.Lock()
	next := l.next
	l.qmu.Unlock()
	if offset == 0 || offset >= next {
		return fmt.Errorf("offset %d: %w", offset, ErrNotFound)
	}
	return l.wait(ctx, offset, offset)
}

// Resolved reports, without waiting and, while the log has had no failed
// append, without a lock, whether WaitDurable(offset) would return at
// once: offset (one AppendAsync handed out) is durable, or failed, or the
// log failed or closed. It is for a caller that polls for each record
// whether to wait for it (qos's engine, per publish).
func (l *Log) Resolved(offset uint64) bool {
	if offset <= l.durable.Load() {
		return true
	}
	if !l.troubled.Load() {
		return false
	}
	l.smu.RLock()
	defer l.smu.RUnlock()
	return offset <= l.durable.Load() || l.holeErr(offset, offset) != nil || l.failed != nil || l.closed
}

// Idle reports, with an atomic load, whether no append waits for the
// writer: every record appended so far is written (durable once its
// batch's fsync returns) or failed. At a durability event
// (NotifyDurable) it says whether anything was queued behind the batch
// just made durable: a consumer that does more work on the writer's
// goroutine while it is true delays no batch but its own next one.
func (l *Log) Idle() bool { return l.stats.queued.Load() == 0 }

// enqueue queues recs and has them written: by the caller itself when lead
// and the writer is idle and the log quiet (lead), or else by the writer
// goroutine, which it kicks.
func (l *Log) enqueue(ctx context.Context, recs [][]byte, lead bool) (uint64, error) {
	total := 0
	for _, r := range recs {
		if len(r) > l.cfg.MaxRecordSize {
			return 0, fmt.Errorf("%w: %d bytes (max %d)", ErrTooLarge, len(r), l.cfg.MaxRecordSize)
		}
		total += entrySize(len(r))
	}
	if err := l.admit(int64(total)); err != nil {
		return 0, err
	}
	l.qmu.Lock()
	for {
		if l.qclosed {
			l.qmu.Unlock()
			return 0, ErrClosed
		}
		if len(l.q.buf) == 0 || len(l.q.buf)+total <= l.cfg.QueueBytes {
			break
		}
		ch := l.spaceCh
		l.spaceWatched = true
		l.qmu.Unlock()
		if ctx == nil {
			<-ch
		} else {
			select {
			case <-ch:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		l.qmu.Lock()
	}
	if err := l.failure(); err != nil {
		l.qmu.Unlock()
		return 0, err
	}
	first := l.next
	if len(l.q.sizes) == 0 {
		l.q.first, l.q.at = first, time.Now()
	}
	for i, r := range recs {
		l.q.buf = appendEntry(l.q.buf, first+uint64(i), kindRecord, r)
		l.q.sizes = append(l.q.sizes, uint32(entrySize(len(r))))
	}
	l.next += uint64(len(recs))
	if ctx != nil {
		l.q.waiters++
	}
	l.stats.queued.Add(int64(total))
	l.qmu.Unlock()
	if lead && l.lead() {
		return first, nil
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
	return first, nil
}

// lead writes the queue on the caller's goroutine when no batch is being
// written (writeMu is free) and the log is quiet, as the writer goroutine
// would have: the same flush, so the same bytes in the same order, the
// same fsync, holes and rollback. It reports whether the queue needs the
// writer no more (it wrote it, or a writer took it meanwhile). Not when
// the writer would linger for more appenders (concurrency) or Close has
// begun: the writer does those.
func (l *Log) lead() bool {
	if l.cfg.Sync != SyncAlways || !l.writeMu.TryLock() {
		return false
	}
	defer l.writeMu.Unlock()
	l.qmu.Lock()
	records, bytes := len(l.q.sizes), len(l.q.buf)
	l.qmu.Unlock()
	if records == 0 {
		return true
	}
	if l.concurrency >= 2 || l.closing() || !l.quiet(records, bytes) {
		return false
	}
	l.flush()
	l.stats.led.Add(1)
	return true
}

func (l *Log) failure() error {
	l.smu.RLock()
	defer l.smu.RUnlock()
	return l.failed
}

// wait blocks until [first, last] is durable or failed.
func (l *Log) wait(ctx context.Context, first, last uint64) error {
	for {
		l.smu.RLock()
		d, closed, failed := l.durable.Load(), l.closed, l.failed
		herr := l.holeErr(first, last)
		var ch chan struct{}
		if herr == nil && d < last && failed == nil && !closed && (ctx == nil || ctx.Err() == nil) {
			ch = l.durableWait() // only a wait takes it: a look makes no channel
		}
		l.smu.RUnlock()
		switch {
		case herr != nil:
			return herr
		case d >= last:
			return nil
		case failed != nil:
			return failed
		case closed:
			return ErrClosed
		}
		if ctx == nil {
			<-ch
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// durableWait returns the channel the next durability event closes, and
// has that event close it. Called with smu held (read or write): the
// event's wakeDurable, under smu's write lock, sees the mark.
func (l *Log) durableWait() chan struct{} {
	l.durableWatched.Store(true)
	return l.durableCh
}

// wakeDurable wakes every goroutine waiting in durableWait's channel.
// Called with smu held for writing.
func (l *Log) wakeDurable() {
	if l.durableWatched.Swap(false) {
		close(l.durableCh)
		l.durableCh = make(chan struct{})
	}
}

// wakeSpace wakes every appender waiting for room in the queue. Called
// with qmu held.
func (l *Log) wakeSpace() {
	if l.spaceWatched {
		l.spaceWatched = false
		close(l.spaceCh)
		l.spaceCh = make(chan struct{})
	}
}

// holeErr returns the error of a failed append overlapping [first, last].
// Called with smu held.
func (l *Log) holeErr(first, last uint64) error {
	for i := len(l.holes) - 1; i >= 0; i-- {
		h := l.holes[i]
		if h.from <= last && first <= h.to {
			return h.err
		}
	}
	return nil
}

// NotifyDurable sets fn, which the log calls each time appended records
// became durable or failed (after WaitDurable stops waiting for them, and
// once they no longer count in Stats.QueuedBytes), and when the log fails: a consumer can then start what waits for them
// instead of keeping a goroutine blocked in WaitDurable. fn runs on the
// log's writer goroutine (or its sync goroutine, or inside an
// AppendAsyncLead that wrote the batch itself), so it must not block:
// every fsync waits for it. nil removes it.
func (l *Log) NotifyDurable(fn func()) {
	if fn == nil {
		l.notify.Store(nil)
		return
	}
	l.notify.Store(&fn)
}

// notifyDurable calls NotifyDurable's function, if any.
func (l *Log) notifyDurable() {
	if fn := l.notify.Load(); fn != nil {
		(*fn)()
	}
}

// FirstOffset returns the offset of the oldest record still in the log. The
// log is empty when FirstOffset() == LastOffset()+1; a new log has
// FirstOffset 1 and LastOffset 0. Offset 0 is never a record.
func (l *Log) FirstOffset() uint64 {
	l.smu.RLock()
	defer l.smu.RUnlock()
	return l.segs[0].base
}

// NextOffset returns the offset the next append will get. Offsets from
// LastOffset()+1 to NextOffset()-1 are queued or being written: not yet
// durable, not yet readable.
func (l *Log) NextOffset() uint64 {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	return l.next
}

// LastOffset returns the offset of the newest durable record (0 if none was
// ever written). Readers see exactly the records up to it.
func (l *Log) LastOffset() uint64 {
	return l.durable.Load()
}

// Read returns a copy of the record at offset. Errors: ErrTruncated below
// FirstOffset, ErrNotFound above LastOffset, ErrHole (which also matches
// ErrNotFound) at the offset of a failed append, a *CorruptError
// (ErrCorrupt) if the record fails its checksum, ErrClosed.
func (l *Log) Read(offset uint64) ([]byte, error) {
	rec, _, err := l.read(offset)
	return rec, err
}

// read returns the record at offset, or hole=true for a failed offset.
func (l *Log) read(offset uint64) (rec []byte, hole bool, err error) {
	w, err := l.readWindow(offset, nil)
	if err != nil {
		return nil, false, err
	}
	rec, hole, _, err = l.decodeAt(w, offset)
	return rec, hole, err
}

// window holds the records read around one offset: the bytes between two
// index points (about 4 KiB), and pos, where the wanted entry starts.
type window struct {
	seg   *segment
	start int64 // file position of buf[0]
	buf   []byte
	pos   int
	// durable is the durable offset when the window was read: the window
	// may hold records after it, written but not yet durable, which a
	// reader must not return.
	durable uint64
}

// readWindow reads the window holding offset, into buf's room when it
// has enough (a reader's previous window: records leave it as copies).
func (l *Log) readWindow(offset uint64, buf []byte) (window, error) {
	l.smu.RLock()
	if l.closed {
		l.smu.RUnlock()
		return window{}, ErrClosed
	}
	if offset > l.durable.Load() || offset == 0 {
		l.smu.RUnlock()
		return window{}, fmt.Errorf("offset %d: %w", offset, ErrNotFound)
	}
	if offset < l.segs[0].base {
		l.smu.RUnlock()
		return window{}, fmt.Errorf("offset %d: %w", offset, ErrTruncated)
	}
	durable := l.durable.Load()
	i, _ := slices.BinarySearchFunc(l.segs, offset, func(s *segment, off uint64) int {
		if s.base > off {
			return 1
		}
		if s.base < off {
			return -1
		}
		return 0
	})
	if i == len(l.segs) || l.segs[i].base != offset {
		i--
	}
	s := l.segs[i]
	l.smu.RUnlock()

	x, f, err := l.segmentIndex(s)
	k := offset - s.base
	if k >= x.n {
		if err == nil {
			err = &CorruptError{Segment: s.name, Pos: x.end, Offset: offset, Reason: "segment ends before the record"}
		}
		return window{}, err
	}
	startRel, start, end := x.window(k)
	if size := int(end - start); cap(buf) >= size {
		buf = buf[:size]
	} else {
		buf = make([]byte, size)
	}
	if l.tailCache.readAt(s, buf, start) {
		l.stats.cachedReads.Add(1)
	} else if _, err := f.ReadAt(buf, start); err != nil {
		if l.FirstOffset() > offset {
			return window{}, fmt.Errorf("offset %d: %w", offset, ErrTruncated)
		}
		if errors.Is(err, os.ErrClosed) {
			return window{}, ErrClosed // Close ran meanwhile
		}
		if errors.Is(err, io.EOF) {
			return window{}, &CorruptError{Segment: s.name, Pos: start, Offset: offset, Reason: "segment file shorter than its index"}
		}
		return window{}, fmt.Errorf("read segment %s: %w", s.name, err)
	}
	pos := 0
	for r := startRel; r < k; r++ {
		n, err := entryLen(buf[pos:], len(buf)-pos)
		if err != nil {
			return window{}, &CorruptError{Segment: s.name, Pos: start + int64(pos), Offset: s.base + r, Reason: err.Error()}
		}
		pos += n
	}
	return window{seg: s, start: start, buf: buf, pos: pos, durable: durable}, nil
}

// decodeAt decodes the entry of offset at w.pos. It returns a copy of the
// payload (so that a kept record does not pin the window) and the entry's
// size.
func (l *Log) decodeAt(w window, offset uint64) (rec []byte, hole bool, n int, err error) {
	kind, payload, n, err := decodeEntry(offset, w.buf[w.pos:])
	if err != nil {
		l.stats.corrupt.Add(1)
		return nil, false, 0, &CorruptError{Segment: w.seg.name, Pos: w.start + int64(w.pos), Offset: offset, Reason: err.Error()}
	}
	if kind == kindHole {
		return nil, true, n, fmt.Errorf("offset %d: %w", offset, ErrHole)
	}
	return append([]byte(nil), payload...), false, n, nil
}

// segmentIndex returns a snapshot of s's index and its file, loading them
// for an older segment.
func (l *Log) segmentIndex(s *segment) (index, File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return index{}, nil, ErrTruncated
	}
	if s.loaded {
		return s.ix, s.f, s.ixErr
	}
	if s.f == nil {
		f, err := l.fs.OpenFile(s.path, os.O_RDONLY, 0)
		if err != nil {
			return index{}, nil, fmt.Errorf("open segment %s: %w", s.name, err)
		}
		s.f = f
	}
	info, err := s.f.Stat()
	if err != nil {
		return index{}, nil, fmt.Errorf("stat segment %s: %w", s.name, err)
	}
	x, err := buildIndex(s.f, s, info.Size())
	var ce *CorruptError
	if err != nil && !errors.As(err, &ce) {
		return index{}, nil, err
	}
	s.ix, s.ixErr, s.loaded = x, err, true
	return x, s.f, err
}

// Dir returns the log's directory.
func (l *Log) Dir() string { return l.dir }

// Sync makes every record acknowledged before the call, and the cursor
// table, durable: it returns after an fsync covering them. Under SyncAlways
// acknowledged records already are, and only the cursor table may need
// one. A checkpoint that refers to an offset calls it before writing
// anything that depends on the log holding that offset.
func (l *Log) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := l.failure(); err != nil {
		return err
	}
	if l.cfg.Sync != SyncAlways {
		if err := l.syncFiles(); err != nil {
			err = ioError("sync", err)
			l.fail(err)
			return err
		}
	}
	return l.cursors.flush(l, l.cursors.gen.Load(), true)
}
