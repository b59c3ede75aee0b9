package wal

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// run is the writer goroutine, which writes segment files (and, while it
// is idle, an appender of AppendAsyncLead may write one batch in its
// place: writeMu makes them take turns). It takes everything queued at
// once, writes it with one write() per segment it touches, and (under
// SyncAlways) fsyncs once for the whole batch: while one fsync runs, the
// next batch queues up, so one fsync covers every appender that arrived
// meanwhile (group commit). Started by Open, stopped by Close.
func (l *Log) run() {
	defer close(l.done)
	var syncDone chan struct{}
	if l.cfg.Sync == SyncInterval {
		syncDone = make(chan struct{})
		go l.syncLoop(syncDone)
	}
	ret := time.NewTicker(l.cfg.RetentionCheck)
	defer ret.Stop()
	for {
		select {
		case <-l.kick:
			l.writeMu.Lock()
			l.flush()
			l.writeMu.Unlock()
		case <-ret.C:
			l.retain(0)
		case <-l.stop:
			l.writeMu.Lock()
			for l.flush() {
			}
			l.writeMu.Unlock()
			if syncDone != nil {
				<-syncDone
			}
			if err := l.failure(); err != nil {
				l.closeErr = err
			} else if err := l.syncFiles(); err != nil {
				l.stats.syncErrors.Add(1)
				l.closeErr = fmt.Errorf("wal: fsync at close: %w", err)
			}
			return
		}
	}
}

// syncLoop is the fsync goroutine of SyncInterval: it fsyncs what the writer
// wrote every SyncInterval, while the writer goes on writing, so appends
// never wait for these fsyncs. Started and waited for by run.
func (l *Log) syncLoop(done chan struct{}) {
	defer close(done)
	t := time.NewTicker(l.cfg.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if l.failure() != nil {
				continue
			}
			if err := l.syncFiles(); err != nil {
				l.stats.syncErrors.Add(1)
				l.fail(err)
			}
		case <-l.stop:
			return
		}
	}
}

// flush writes the queue. It reports whether there was anything to write.
// Called with writeMu held.
func (l *Log) flush() bool {
	l.qmu.Lock()
	if len(l.q.sizes) == 0 {
		l.qmu.Unlock()
		return false
	}
	defer func() { l.idleFrom = time.Now() }()
	if n := l.q.waiters; l.cfg.Sync == SyncAlways && l.concurrency >= 2 && n < l.concurrency && !l.closing() {
		l.qmu.Unlock()
		l.linger(l.concurrency)
		l.qmu.Lock()
	}
	b := l.q
	l.sawGap(b.at.Sub(l.idleFrom))
	l.q = l.spare
	l.q.reset()
	l.spare = batch{}
	l.wakeSpace()
	l.qmu.Unlock()

	l.writeBatch(&b)
	// writeBatch took the batch off the queued bytes before it told the
	// waiters: a consumer answering at the event (PUBACKs) and a publisher
	// appending again at once see the budget as it is.
	l.notifyDurable()
	b.reset()
	l.qmu.Lock()
	l.spare = b
	l.qmu.Unlock()
	return true
}

// linger keeps group commit from splitting the appenders in two groups that
// alternate: while group A's fsync runs, group B queues; when A is released,
// a writer that took B at once would fsync for half the appenders, with A
// queueing meanwhile, and so on. The writer knows how many Append calls
// were waiting at the last fsync (concurrency); when fewer are queued, it
// waits for the released ones to queue again, at most a quarter of the last
// fsync's time (and 1ms), so that one fsync covers everyone. A single
// appender never waits.
func (l *Log) linger(target int) {
	d := min(time.Duration(l.lastFsync.Load())/4, time.Millisecond)
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		l.qmu.Lock()
		n := l.q.waiters
		l.qmu.Unlock()
		if n >= target {
			return
		}
		select {
		case <-l.kick:
		case <-timer.C:
			return
		case <-l.stop:
			return
		}
	}
}

func (l *Log) closing() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

// chunk is a run of entries written to one segment in one write().
type chunk struct {
	s     *segment
	pos   int64
	sizes []uint32
}

// writeBatch writes b (after any holes left by a failed batch), makes it
// durable under the policy, and publishes it to readers and waiters (the
// caller then calls NotifyDurable's function). On any failure it puts the
// files back as they were before the batch and turns the batch's offsets
// into holes.
func (l *Log) writeBatch(b *batch) {
	// The batch leaves the queued bytes once it counts on disk, before
	// publish tells the waiters: counted twice, an appender woken by it
	// would find the budget fuller than it is. A batch given up leaves them
	// when writeBatch returns, after markHoles told its waiters (an error).
	queued := int64(len(b.buf))
	defer func() { l.stats.queued.Add(-queued) }()
	buf, sizes, first := b.buf, b.sizes, b.first
	if err := l.failure(); err != nil {
		// Queued before the log failed: writing behind the half record
		// would bury it. These offsets are holes too.
		l.markHoles(first, first+uint64(len(sizes))-1, err)
		return
	}
	if l.holeFrom != 0 {
		hb := l.hbuf[:0]
		hs := make([]uint32, 0, int(l.holeTo-l.holeFrom+1)+len(sizes))
		for off := l.holeFrom; off <= l.holeTo; off++ {
			hb = appendEntry(hb, off, kindHole, nil)
			hs = append(hs, uint32(entrySize(0)))
		}
		hb = append(hb, buf...)
		hs = append(hs, sizes...)
		l.hbuf = hb
		buf, sizes, first = hb, hs, l.holeFrom
	}
	last := first + uint64(len(sizes)) - 1
	start := time.Now()
	prevTail := l.tail
	var created []*segment
	chunks := l.chunks[:0]
	defer func() {
		clear(chunks) // no segment kept alive by the spare
		l.chunks = chunks[:0]
	}()
	// Start a new segment at the batch boundary rather than splitting the
	// batch, so that the finished segment was already fsynced by the
	// batches before (under SyncAlways) and the roll costs no extra fsync
	// there.
	if t := l.tail; t.size.Load() > 0 && t.size.Load()+int64(len(buf)) > l.cfg.SegmentSize && int64(len(buf)) <= l.cfg.SegmentSize {
		if err := l.roll(first); err != nil {
			l.rollback(prevTail, created, first, last, fmt.Errorf("create segment: %w", err))
			return
		}
		created = append(created, l.tail)
	}
	quiet := l.quiet(len(sizes), len(buf))
	pos := 0
	for i := 0; i < len(sizes); {
		t := l.tail
		room := l.cfg.SegmentSize - t.size.Load()
		n, nb := 0, 0
		for i+n < len(sizes) && int64(nb+int(sizes[i+n])) <= room {
			nb += int(sizes[i+n])
			n++
		}
		if n == 0 && t.size.Load() == 0 {
			n, nb = 1, int(sizes[i]) // cannot happen with MaxRecordSize; never loop
		}
		if n == 0 {
			if err := l.roll(first + uint64(i)); err != nil {
				l.rollback(prevTail, created, first, last, fmt.Errorf("create segment: %w", err))
				return
			}
			created = append(created, l.tail)
			continue
		}
		at := t.size.Load()
		done, err := false, error(nil)
		if quiet {
			done, err = pwriteHolding(t.f, buf[pos:pos+nb], at)
		}
		if !done {
			_, err = t.f.WriteAt(buf[pos:pos+nb], at)
		}
		if err != nil {
			l.stats.writeErrors.Add(1)
			l.rollback(prevTail, created, first, last, fmt.Errorf("write segment %s: %w", t.name, err))
			return
		}
		l.tailCache.add(t, at, buf[pos:pos+nb])
		t.size.Store(at + int64(nb))
		l.stats.diskBytes.Add(int64(nb))
		l.markDirty(t)
		chunks = append(chunks, chunk{s: t, pos: at, sizes: sizes[i : i+n]})
		pos += nb
		i += n
	}
	l.stats.queued.Add(-queued)
	queued = 0
	if l.cfg.Sync == SyncAlways {
		err := l.syncFilesHold(quiet && l.stats.queued.Load() == 0)
		if err == nil && time.Duration(l.lastFsync.Load()) < quietFsync {
			l.fastFsyncs++
		} else {
			l.fastFsyncs = 0
		}
		if err != nil {
			l.stats.syncErrors.Add(1)
			l.rollback(prevTail, created, first, last, err)
			return
		}
		l.syncedOff.Store(last)
	}
	l.publish(chunks, prevTail, last, len(b.sizes), len(b.buf))
	l.qmu.Lock()
	l.concurrency = b.waiters + l.q.waiters
	l.qmu.Unlock()
	if l.tail != prevTail {
		l.stats.roll.observe(time.Since(start))
	}
}

// The writer is quiet (see quiet) when the batches' first records came,
// on average over about quietSpan batches (sawGap), at least as long after
// the previous batch ended as the last fsync took, the batch is at most
// quietRecords and quietBytes, and the last quietAfter fsyncs each took
// less than quietFsync (a variable for the tests, which cannot count on a
// fast disk).
const (
	quietRecords = 4
	quietBytes   = 16 << 10
	quietAfter   = 8
	quietSpan    = 8
)

var quietFsync = 2 * time.Millisecond

// sawGap takes d, the time from the end of a batch to the first record of
// the next, into idle: the mean over about the last quietSpan batches,
// each gap counted as at most quietFsync (else a long quiet spell would
// keep the mean high through the first batches of the load that ends it).
// One batch that comes at once after another at a low rate (two publishes
// close together: a third of the batches at 1,000 msg/s from a generator
// whose timer woke late) says nothing about load, and with GOMAXPROCS=1
// the ordinary calls it then made (sysmon woken, the P taken away during
// the fsync, another thread started and the P handed back) were most of
// sysmon's work at that rate; a run of them is load.
func (l *Log) sawGap(d time.Duration) {
	l.idle += (min(max(d, 0), quietFsync) - l.idle) / quietSpan
}

// quiet reports whether the writer writes a batch of this many records
// and bytes,
// and then (when nothing was queued behind it meanwhile) fsyncs it, as
// raw system calls that keep its P (pwriteHolding, fsyncHolding) rather
// than through the runtime's blocking system call. Only under SyncAlways.
//
// The trade. A blocking system call wakes sysmon when the process was
// idle, which then polls every 20 us until every P is idle again, and
// when no other P is idle (GOMAXPROCS=1, the single-core gateway) it takes
// the call's P away after 20 us, starts another thread to run it, and the
// writer waits for a P to come back when the fsync returns. At 1,000
// msg/s this cost more CPU than the kernel's fsync itself (about 50 us
// against 46 per fsync on the benchmark's disk). Holding the P costs
// nothing of that, but nothing else runs on it meanwhile (with one P,
// nothing at all: no read loop reads the next publishes, no timer fires),
// and a garbage collection that stops the world waits for the fsync to
// end. So the writer holds only while the log is quiet: nothing was
// appended for at least an fsync's time after the previous batches, on
// average (the log is idle half the time or more), the batch is small,
// and the disk has been fast,
// so the P is held about as long as the previous fsyncs took, under 2 ms,
// when there is little else to run (the next publish's append waits for
// this fsync anyway). Under load the next batch's first record comes at
// once, and the batch is large, so the writer hands the P off as usual
// and the read loops fill the next batch during the fsync (group
// commit); holding there would make reading and fsyncing take turns (on
// one P, where the read loops run only while the writer waits, the time
// the writer waited says nothing: the appends' own time does). On a slow disk (an SD
// card's 10-100 ms fsync) it never holds. One fsync that turns slow while
// held (the disk gave no warning) holds the P for its whole time, and
// turns holding off until quietAfter fast ones came again.
func (l *Log) quiet(records, bytes int) bool {
	return l.cfg.Sync == SyncAlways && l.fastFsyncs >= quietAfter && records <= quietRecords &&
		bytes <= quietBytes && l.idle >= time.Duration(l.lastFsync.Load())
}

// roll starts a new tail segment whose first offset is base. It first
// fsyncs the old tail if it has unsynced data (under SyncAlways only when a
// batch larger than the room left spans both; under SyncInterval what was
// written since the last tick): a segment's successor must never have a
// durable name while the segment itself can still be torn, or a power cut
// would leave records missing in the middle of the log. An fsync that
// fails there under SyncInterval loses acknowledged records: the log fails
// (ErrFailed). SyncNever promises nothing for a power cut and does not
// stall its writer for a whole segment's fsync.
func (l *Log) roll(base uint64) error {
	// Not only when the old tail is marked unsynced: the sync goroutine may
	// have taken it off the list and still be in its fsync (syncFiles waits
	// for that one). With nothing to fsync it costs nothing.
	if l.cfg.Sync != SyncNever {
		if err := l.syncFiles(); err != nil {
			l.stats.syncErrors.Add(1)
			if l.cfg.Sync != SyncAlways {
				l.fail(err)
			}
			return err
		}
	}
	s := newSegment(l.dir, base)
	f, err := l.fs.OpenFile(s.path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	s.f = f
	s.loaded = true
	s.mtime.Store(time.Now().UnixNano())
	l.smu.Lock()
	l.segs = append(l.segs, s)
	l.smu.Unlock()
	l.tail = s
	l.syncMu.Lock()
	l.dirDirty = true
	// Under SyncNever the list only empties at Close: forget what retention
	// removed meanwhile.
	l.synced = slices.DeleteFunc(l.synced, func(x *segment) bool {
		x.mu.Lock()
		defer x.mu.Unlock()
		return x.removed
	})
	l.syncMu.Unlock()
	l.stats.segments.Add(1)
	return nil
}

// fail stops the log taking appends after an fsync failed under a policy
// that acknowledged the data before it: the kernel may have dropped the
// pages it could not write and report success to a retry, so nothing
// written since the last good fsync can be trusted to be on disk. Open
// writes the tail again (see loadTail).
func (l *Log) fail(cause error) {
	l.smu.Lock()
	first := l.failed == nil
	if first {
		l.failed = fmt.Errorf("%w: %w", ErrFailed, cause)
		l.troubled.Store(true)
		l.wakeDurable()
	}
	l.smu.Unlock()
	if first {
		l.notifyDurable()
		l.log.Error("wal: fsync failed; records written since the last good fsync may not be on disk; the log takes no more appends until reopened", "err", cause)
	}
}

// markDirty records that s has data to fsync.
func (l *Log) markDirty(s *segment) {
	s.mu.Lock()
	dirty := s.unsynced
	s.unsynced = true
	s.mu.Unlock()
	if !dirty {
		l.syncMu.Lock()
		l.synced = append(l.synced, s)
		l.syncMu.Unlock()
	}
}

// syncFiles fsyncs every segment with unsynced data, then the directory if
// a segment was created, and moves syncedOff up to what was published when
// it began. The writer calls it (SyncAlways, a roll, Close), or the sync
// goroutine and Sync (the other policies) while the writer writes: a
// segment is marked clean before its fsync, so a write during the fsync
// marks it again. A segment whose fsync failed is marked again too, but
// under the policies that acknowledge before the fsync a retry is not to be
// trusted: the log fails (see fail), and syncFiles refuses from then on.
func (l *Log) syncFiles() error { return l.syncFilesHold(false) }

// syncFilesHold is syncFiles; with hold, the fsyncs keep the caller's P
// (fsyncHolding). Only the writer passes true, when quiet.
func (l *Log) syncFilesHold(hold bool) error {
	l.syncRun.Lock()
	defer l.syncRun.Unlock()
	if err := l.failure(); err != nil {
		// A retried fsync would report success for pages it never wrote,
		// and a caller would take that for durable (a roll, a Sync).
		return err
	}
	upto := l.LastOffset()
	l.syncMu.Lock()
	list, dir := l.synced, l.dirDirty
	l.synced, l.dirDirty = l.syncSpare[:0], false
	l.syncMu.Unlock()
	defer func() {
		clear(list)
		l.syncSpare = list[:0]
	}()
	var err error
	for _, s := range list {
		s.mu.Lock()
		f, removed := s.f, s.removed
		s.unsynced = false
		s.mu.Unlock()
		if removed {
			continue
		}
		start := time.Now()
		done, serr := false, error(nil)
		if hold {
			done, serr = fsyncHolding(f)
		}
		if done {
			l.stats.heldFsyncs.Add(1)
		} else {
			serr = f.Sync()
		}
		if serr != nil {
			s.mu.Lock()
			removed = s.removed // retention closed it meanwhile
			s.mu.Unlock()
			if !removed {
				if err == nil {
					err = fmt.Errorf("fsync segment %s: %w", s.name, serr)
				}
				l.markDirty(s)
			}
			continue
		}
		d := time.Since(start)
		l.stats.fsyncs.Add(1)
		l.lastFsync.Store(int64(d))
		l.stats.fsyncLatency.observe(d)
	}
	if dir && err == nil {
		if derr := l.fs.syncDir(l.dir); derr != nil {
			err = fmt.Errorf("fsync %s: %w", l.dir, derr)
		}
	}
	if dir && err != nil {
		l.syncMu.Lock()
		l.dirDirty = true
		l.syncMu.Unlock()
	}
	if err != nil && l.cfg.Sync != SyncAlways {
		// Before syncRun is released: no other caller may see this fsync
		// as if it had worked.
		l.fail(err)
	}
	if err == nil && upto > l.syncedOff.Load() {
		l.syncedOff.Store(upto)
	}
	return err
}

// publish makes a written batch visible: it extends the segment indexes and
// moves the durable offset, which wakes the waiters.
func (l *Log) publish(chunks []chunk, prevTail *segment, last uint64, records, bytes int) {
	now := time.Now().UnixNano()
	for _, c := range chunks {
		c.s.mu.Lock()
		for _, sz := range c.sizes {
			c.s.ix.add(int(sz))
		}
		c.s.count.Store(c.s.ix.n)
		c.s.mu.Unlock()
		c.s.mtime.Store(now)
	}
	l.smu.Lock()
	l.durable.Store(last)
	l.wakeDurable()
	l.smu.Unlock()
	l.holeFrom, l.holeTo = 0, 0
	l.stats.appends.Add(uint64(records))
	l.stats.appendBytes.Add(uint64(bytes))
	l.stats.batches.Add(1)
	l.stats.groupSize.observeValue(float64(records))
	if prevTail != l.tail {
		l.retain(0) // a segment was completed: maybe one can go
	}
}

// rollback undoes a failed batch: it removes the segments the batch created
// (and fsyncs the directory), cuts the old tail back to its last durable
// record, and records the
// batch's offsets as holes (written as hole entries before the next batch,
// so offsets stay consecutive in the files and are never reused). If the
// files cannot be put back, the log fails: see ErrFailed.
func (l *Log) rollback(prevTail *segment, created []*segment, first, last uint64, cause error) {
	cause = ioError("append", cause)
	if n, ok := l.errLog.allow(time.Now()); ok {
		l.log.Error("wal: append failed; offsets left as holes", "first", first, "last", last,
			"err", cause, "similar_errors_not_logged", n)
	}
	var fatal error
	for i := len(created) - 1; i >= 0; i-- {
		s := created[i]
		l.smu.Lock()
		l.segs = slices.DeleteFunc(l.segs, func(x *segment) bool { return x == s })
		l.smu.Unlock()
		l.syncMu.Lock()
		l.synced = slices.DeleteFunc(l.synced, func(x *segment) bool { return x == s })
		l.syncMu.Unlock()
		l.stats.segments.Add(-1)
		l.stats.diskBytes.Add(-s.size.Load())
		s.mu.Lock()
		s.removed = true
		if s.f != nil {
			s.f.Close()
			s.f = nil
		}
		s.mu.Unlock()
		if err := l.fs.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) && fatal == nil {
			fatal = fmt.Errorf("remove segment %s: %w", s.name, err)
		}
	}
	l.tail = prevTail
	prevTail.mu.Lock()
	end := prevTail.ix.end
	prevTail.mu.Unlock()
	l.tailCache.cut(prevTail, end)
	if len(created) > 0 && fatal == nil {
		// The unlinks must be durable before the cut below can reach the
		// disk: a power cut that kept a created segment's name and the cut
		// of the old tail would leave a segment that ends records early in
		// the middle of the log. Without that fsync the old tail stays as
		// it is (the log fails; Open takes what it holds).
		if err := l.fs.syncDir(l.dir); err != nil {
			fatal = fmt.Errorf("sync %s after removing the segments of a failed batch: %w", l.dir, err)
		}
	}
	// Always truncate (a failed write may have written part of its data
	// beyond what size counts), unless a created segment may still follow
	// the old tail on disk.
	if fatal == nil {
		if err := prevTail.f.Truncate(end); err != nil {
			fatal = fmt.Errorf("truncate segment %s: %w", prevTail.name, err)
		}
		// The cut must be durable before a successor is created, as the
		// segment's data is (roll fsyncs what is marked).
		l.markDirty(prevTail)
	}
	l.stats.diskBytes.Add(end - prevTail.size.Load())
	prevTail.size.Store(end)
	if fatal != nil {
		l.smu.Lock()
		if l.failed == nil {
			l.failed = fmt.Errorf("%w: %w (after %w)", ErrFailed, fatal, cause)
			l.troubled.Store(true)
		}
		l.smu.Unlock()
		l.log.Error("wal: cannot undo a failed write; the log takes no more appends until reopened", "err", fatal)
	}
	l.markHoles(first, last, cause)
}

// markHoles records [first, last] as failed offsets, to be written as hole
// entries before the next batch, and wakes their waiters.
func (l *Log) markHoles(first, last uint64, cause error) {
	if l.holeFrom == 0 {
		l.holeFrom = first
	}
	l.holeTo = last
	l.smu.Lock()
	if n := len(l.holes); n > 0 && l.holes[n-1].to+1 >= first {
		l.holes[n-1].to = last
		l.holes[n-1].err = cause
	} else {
		l.holes = append(l.holes, span{from: first, to: last, err: cause})
	}
	l.troubled.Store(true)
	l.wakeDurable()
	l.smu.Unlock()
}

// rateLimit lets one log line through per second and counts the others, so
// that a full disk under load does not flood the log. Holder of writeMu only.
type rateLimit struct {
	last       time.Time
	suppressed int
}

// allow reports whether to log now, and how many were suppressed since the
// last line.
func (r *rateLimit) allow(now time.Time) (int, bool) {
	if now.Sub(r.last) < time.Second {
		r.suppressed++
		return 0, false
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return n, true
}
