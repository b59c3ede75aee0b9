package wal

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// Retention removes whole segment files from the front of the log, never
// copying data (tidwall/wal's TruncateFront rewrites the surviving part of
// a segment). A segment goes when:
//   - cursors exist and every cursor is past its last record;
//   - its newest record is older than Config.MaxAge (even if a cursor still
//     needs it: the loss is counted and logged);
//   - an append needs room under Config.MaxBytes and OnFull is
//     FullDropOldest (same accounting).
//
// The tail is never removed. A removed segment with unsynced data is simply
// not fsynced any more: its records are no longer needed. With no
// cursors and no limits the log keeps everything.
//
// Segments go oldest first, and the directory is fsynced after each unlink:
// a power cut must never keep the unlink of a segment while losing that of
// an older one, or the older one would seem to hold the offsets of the
// missing ones. An unlink lost by a power cut only brings back the oldest
// segments, whole (every segment but the tail is fsynced before its
// successor exists), which the next pass removes again. One directory fsync
// per removed segment is cheap next to the segment's own writes.

// retain runs a retention pass; need > 0 asks for that many bytes of room
// under MaxBytes. It returns whether the room is there.
func (l *Log) retain(need int64) bool {
	l.retMu.Lock()
	defer l.retMu.Unlock()
	fits := func() bool {
		return l.cfg.MaxBytes == 0 || l.usage()+need <= l.cfg.MaxBytes
	}
	now := time.Now()
	for {
		s, next, ok := l.oldest()
		if !ok {
			break
		}
		min, haveCursors, err := l.cursors.retainFrom(l)
		if err != nil {
			l.log.Error("wal: retention skipped: cursor table not durable", "err", err)
			break
		}
		consumed := haveCursors && min >= next
		old := l.cfg.MaxAge > 0 && now.Sub(time.Unix(0, s.mtime.Load())) > l.cfg.MaxAge
		force := need > 0 && !fits() && l.cfg.OnFull == FullDropOldest
		if !consumed && !old && !force {
			break
		}
		reason := "consumed"
		if !consumed {
			reason = "max_age"
			if !old {
				reason = "max_bytes"
			}
		}
		if err := l.removeFront(s, next, reason); err != nil {
			l.log.Error("wal: retention failed", "segment", s.name, "err", err)
			break
		}
	}
	return fits()
}

// oldest returns the first segment if it may be removed (not the tail) and
// the offset after its last record.
func (l *Log) oldest() (*segment, uint64, bool) {
	l.smu.RLock()
	defer l.smu.RUnlock()
	if len(l.segs) < 2 {
		return nil, 0, false
	}
	if l.segs[1].base > l.durable.Load()+1 {
		return nil, 0, false // the writer is still filling the segment's successor
	}
	return l.segs[0], l.segs[1].base, true
}

// removeFront removes segment s, the first one, whose records end before next.
func (l *Log) removeFront(s *segment, next uint64, reason string) error {
	l.smu.RLock()
	first := len(l.segs) >= 2 && l.segs[0] == s
	l.smu.RUnlock()
	if !first {
		return nil
	}
	lost, _ := l.cursors.advance(next)
	if lost > 0 {
		// The cursors' new positions must be durable before the records
		// they skip are gone: abort the removal if they are not (the
		// cursors stay moved in memory; the segment stays on disk).
		if err := l.cursors.flush(l, l.cursors.changed(), l.cfg.Sync != SyncNever); err != nil {
			return fmt.Errorf("cursor table: %w", err)
		}
		l.stats.dropped.Add(lost)
		l.log.Warn("wal: removed records a cursor still needed", "segment", s.name,
			"reason", reason, "records", lost, "first_offset", next)
	} else {
		l.log.Info("wal: removed segment", "segment", s.name, "reason", reason, "first_offset", next)
	}
	l.smu.Lock()
	l.segs = l.segs[1:] // retMu keeps s first
	l.holes = slices.DeleteFunc(l.holes, func(h span) bool { return h.to < next })
	l.smu.Unlock()
	s.mu.Lock()
	s.removed = true
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	s.ix = index{}
	s.mu.Unlock()
	l.stats.segments.Add(-1)
	l.stats.diskBytes.Add(-s.size.Load())
	l.stats.removedSegments.Add(1)
	// The file goes last: if removing it fails, the log no longer uses it
	// and the next Open sees an older first segment, which is harmless.
	if err := l.fs.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", s.name, err)
	}
	if err := l.fs.syncDir(l.dir); err != nil {
		// The next removal must not overtake this one: stop the pass.
		return fmt.Errorf("sync %s after removing %s: %w", l.dir, s.name, err)
	}
	return nil
}

// admit checks the disk budget for n more bytes, removing segments first if
// that makes room.
func (l *Log) admit(n int64) error {
	if l.cfg.MaxBytes == 0 {
		return nil
	}
	if l.usage()+n <= l.cfg.MaxBytes {
		return nil
	}
	if l.retain(n) {
		return nil
	}
	l.stats.fullRefusals.Add(1)
	return fmt.Errorf("%w: budget of %d bytes reached (%d on disk, %d queued)",
		ErrFull, l.cfg.MaxBytes, l.stats.diskBytes.Load(), l.stats.queued.Load())
}
