package wal

import (
	"context"
	"errors"
)

// Reader iterates over the log from an offset, oldest first, and waits for
// new records at the end. It skips holes. It reads about 4 KiB at a time
// and decodes the following records from memory. A Reader is not safe for
// concurrent use; any number of Readers may run at once.
type Reader struct {
	l    *Log
	next uint64
	w    window // w.pos is where the entry of wOff starts
	wOff uint64
}

// NewReader returns a Reader whose first record is at from (0: FirstOffset).
func (l *Log) NewReader(from uint64) *Reader {
	if from == 0 {
		from = l.FirstOffset()
	}
	return &Reader{l: l, next: from}
}

// Offset returns the offset Next reads next.
func (r *Reader) Offset() uint64 { return r.next }

// Seek makes Next read offset next.
func (r *Reader) Seek(offset uint64) { r.next, r.w = offset, window{} }

// Next returns the next record, waiting until it is durable or ctx ends. It
// returns ErrTruncated if retention removed the next record (Seek to
// FirstOffset to go on), a *CorruptError for a damaged record (Seek past it
// to go on), ErrClosed when the log closes. The record is the caller's.
func (r *Reader) Next(ctx context.Context) (offset uint64, rec []byte, err error) {
	for {
		off := r.next
		if off > r.l.durable.Load() {
			// Nothing durable to read yet: the common case of a reader
			// that keeps up, which readWindow would answer with an error
			// built for the purpose (an allocation per look).
			if err := r.l.waitFor(ctx, off); err != nil {
				return 0, nil, err
			}
			continue
		}
		// A new window also when the next record is past what was durable
		// when this one was read: the window may hold it written, not yet
		// durable.
		if r.w.buf == nil || r.wOff != off || r.w.pos >= len(r.w.buf) || off > r.w.durable || r.l.isClosed() {
			w, err := r.l.readWindow(off, r.w.buf)
			if errors.Is(err, ErrNotFound) {
				if err := r.l.waitFor(ctx, off); err != nil {
					return 0, nil, err
				}
				continue
			}
			if err != nil {
				r.w = window{} // its buffer may hold part of the failed read
				return 0, nil, err
			}
			r.w, r.wOff = w, off
		}
		rec, hole, n, err := r.l.decodeAt(r.w, off)
		if err != nil && !hole {
			r.w = window{}
			return 0, nil, err
		}
		r.w.pos += n
		r.wOff++
		r.next++
		if !hole {
			return off, rec, nil
		}
	}
}

func (l *Log) isClosed() bool {
	l.smu.RLock()
	defer l.smu.RUnlock()
	return l.closed
}

// waitFor blocks until offset is durable, the log closes or ctx ends.
func (l *Log) waitFor(ctx context.Context, offset uint64) error {
	for {
		l.smu.RLock()
		d, closed := l.durable.Load(), l.closed
		var ch chan struct{}
		if d < offset && !closed && ctx.Err() == nil {
			ch = l.durableWait() // only a wait takes it: a look makes no channel
		}
		l.smu.RUnlock()
		if d >= offset {
			return nil
		}
		if closed {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
