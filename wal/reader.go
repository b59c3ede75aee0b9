package wal

import (
	"context"
	"errors"
)

// Reader iterates over the log from an offset, oldest first, and waits for
// new records at the end. It skips holes. A Reader is not safe for
// concurrent use; any number of Readers may run at once.
type Reader struct {
	l    *Log
	next uint64
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
func (r *Reader) Seek(offset uint64) { r.next = offset }

// Next returns the next record, waiting until it is durable or ctx ends. It
// returns ErrTruncated if retention removed the next record (Seek to
// FirstOffset to go on), a *CorruptError for a damaged record (Seek past it
// to go on), ErrClosed when the log closes.
func (r *Reader) Next(ctx context.Context) (offset uint64, rec []byte, err error) {
	for {
		off := r.next
		rec, hole, err := r.l.read(off)
		switch {
		case err == nil:
			r.next++
			return off, rec, nil
		case hole:
			r.next++
			continue
		case errors.Is(err, ErrNotFound):
			if err := r.l.waitFor(ctx, off); err != nil {
				return 0, nil, err
			}
		default:
			return 0, nil, err
		}
	}
}

// waitFor blocks until offset is durable, the log closes or ctx ends.
func (l *Log) waitFor(ctx context.Context, offset uint64) error {
	for {
		l.smu.RLock()
		d, ch, closed := l.durable, l.durableCh, l.closed
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
