package wal

import (
	"errors"
	"fmt"
	"syscall"
)

var (
	// ErrClosed is returned by every call on a Log after Close, and by appends
	// that were still queued when Close began and could not be written.
	ErrClosed = errors.New("wal: log closed")

	// ErrCorrupt means a record failed its checksum, or its framing is broken,
	// somewhere other than the torn tail that Open repairs by itself. The
	// concrete error is a *CorruptError naming the segment and position; run
	// Check to see all of it and Repair to cut it out. Nothing is returned as
	// data from a corrupt record.
	ErrCorrupt = errors.New("wal: corrupt record")

	// ErrFull is returned by Append and AppendAsync when the record would not
	// fit in Config.MaxBytes (after removing every segment no cursor needs), or
	// when the disk itself is full. In the second case errors.Is(err,
	// syscall.ENOSPC) is also true. Nothing already written is affected.
	// Refused by the budget, the records got no offset; failed on a full
	// disk, their offsets became holes. The caller decides whether to refuse,
	// retry later or drop: appends work again as soon as there is room. A
	// cursor Commit on a full disk fails with ErrFull too.
	ErrFull = errors.New("wal: log full")

	// ErrNotFound is returned by Read for an offset that was never written:
	// beyond LastOffset, or an offset whose append failed (a hole: offsets
	// are never reused, so a failed append leaves one).
	ErrNotFound = errors.New("wal: record not found")

	// ErrHole is returned by Read for an offset whose append failed (on a
	// full disk, an I/O error): it never held a record and never will, so a
	// reader goes past it at once. It matches ErrNotFound too.
	ErrHole = fmt.Errorf("wal: offset of a failed append: %w", ErrNotFound)

	// ErrTruncated is returned by Read and Reader.Next for an offset below
	// FirstOffset: retention removed the segment that held it.
	ErrTruncated = errors.New("wal: record removed by retention")

	// ErrTooLarge is returned when one record is larger than Config.SegmentSize
	// allows (see Config.MaxRecordSize).
	ErrTooLarge = errors.New("wal: record too large")

	// ErrFailed is returned by every append, and by Sync, once the log
	// could not put a segment file back into a known state after a failed
	// write (the truncate that undoes a partial write failed too: appending
	// more behind a half record would bury it in the middle of the log), or
	// once an fsync failed under SyncInterval or SyncNever (records were
	// acknowledged before it, and a retried fsync cannot be trusted to write
	// them). The log stops taking appends; reads still work. Close and Open
	// the log again: Open cuts the half record off and writes the unconfirmed
	// tail again.
	ErrFailed = errors.New("wal: log failed; reopen it")

	// ErrCursor is returned for an invalid cursor name or position.
	ErrCursor = errors.New("wal: invalid cursor")
)

// CorruptError describes damage found in a segment file. It matches ErrCorrupt
// with errors.Is.
type CorruptError struct {
	// Segment is the segment file's name (20 digits: its first offset).
	Segment string
	// Pos is the byte position in the segment file where the damage starts.
	Pos int64
	// Offset is the log offset of the first damaged record.
	Offset uint64
	// Reason says what is wrong ("checksum mismatch", "truncated entry", ...).
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("wal: corrupt record at offset %d (segment %s, byte %d): %s",
		e.Offset, e.Segment, e.Pos, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// ioError wraps a failed file operation once; a full disk also matches
// ErrFull.
func ioError(what string, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("wal: %s: %w: %w", what, ErrFull, err)
	}
	return fmt.Errorf("wal: %s: %w", what, err)
}
