package edge

import (
	"context"
	"errors"
	"fmt"

	"github.com/edgemq/edgemq/qos"
	"github.com/edgemq/edgemq/wal"
)

// walLog gives the engine its qos.Log over the write-ahead log: the same
// calls, with wal's errors carried as the qos sentinels that mean the same.
type walLog struct{ w *wal.Log }

var _ qos.Log = walLog{}

// AppendAsync queues records without waiting for them to be durable.
func (l walLog) AppendAsync(recs ...[]byte) (uint64, error) {
	off, err := l.w.AppendAsync(recs...)
	return off, walError(err)
}

// AppendAsyncLead is AppendAsync that may write the records on the
// caller's goroutine while the log is quiet.
func (l walLog) AppendAsyncLead(recs ...[]byte) (uint64, error) {
	off, err := l.w.AppendAsyncLead(recs...)
	return off, walError(err)
}

// WaitDurable waits until offset is durable.
func (l walLog) WaitDurable(ctx context.Context, offset uint64) error {
	return walError(l.w.WaitDurable(ctx, offset))
}

// Resolved reports whether WaitDurable would return at once.
func (l walLog) Resolved(offset uint64) bool { return l.w.Resolved(offset) }

// NotifyDurable sets what the log calls at each durability event.
func (l walLog) NotifyDurable(fn func()) { l.w.NotifyDurable(fn) }

// Idle reports whether nothing appended waits for the log's writer.
func (l walLog) Idle() bool { return l.w.Idle() }

// Read returns the record at offset.
func (l walLog) Read(offset uint64) ([]byte, error) {
	rec, err := l.w.Read(offset)
	return rec, walError(err)
}

// NewReader returns a reader from offset.
func (l walLog) NewReader(from uint64) qos.LogReader { return walReader{l.w.NewReader(from)} }

// FirstOffset is the oldest record in the log.
func (l walLog) FirstOffset() uint64 { return l.w.FirstOffset() }

// LastOffset is the newest durable record.
func (l walLog) LastOffset() uint64 { return l.w.LastOffset() }

// Sync makes everything appended durable.
func (l walLog) Sync(ctx context.Context) error { return walError(l.w.Sync(ctx)) }

// Cursor returns the named cursor.
func (l walLog) Cursor(name string) (qos.Cursor, error) {
	c, err := l.w.Cursor(name)
	if err != nil {
		return nil, walError(err)
	}
	return c, nil
}

// walReader is a wal.Reader as a qos.LogReader.
type walReader struct{ r *wal.Reader }

// Next returns the next durable record.
func (r walReader) Next(ctx context.Context) (uint64, []byte, error) {
	off, rec, err := r.r.Next(ctx)
	return off, rec, walError(err)
}

// Offset is where Next reads next.
func (r walReader) Offset() uint64 { return r.r.Offset() }

// Seek moves the reader.
func (r walReader) Seek(offset uint64) { r.r.Seek(offset) }

// walError wraps a wal error with the qos sentinel of the same meaning;
// other errors (a damaged record, I/O) pass unchanged.
func walError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, wal.ErrNotFound):
		return fmt.Errorf("%w: %w", qos.ErrHole, err)
	case errors.Is(err, wal.ErrTruncated):
		return fmt.Errorf("%w: %w", qos.ErrTrimmed, err)
	case errors.Is(err, wal.ErrFull):
		return fmt.Errorf("%w: %w", qos.ErrFull, err)
	case errors.Is(err, wal.ErrClosed):
		return fmt.Errorf("%w: %w", qos.ErrLogClosed, err)
	}
	return err
}
