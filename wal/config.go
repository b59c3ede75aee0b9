package wal

import (
	"fmt"
	"log/slog"
	"time"
)

// SyncPolicy says when an append counts as durable.
type SyncPolicy string

const (
	// SyncAlways: an append is durable once an fsync covering it returned.
	// One fsync covers every record queued while the previous one ran (group
	// commit), so throughput grows with the number of concurrent appenders.
	SyncAlways SyncPolicy = "always"
	// SyncInterval: an append is durable once written to the operating
	// system; the log fsyncs every Config.SyncInterval. kill -9 loses
	// nothing; a power cut loses at most the last interval.
	SyncInterval SyncPolicy = "interval"
	// SyncNever: like SyncInterval without the periodic fsync (the log still
	// fsyncs on Close and on Sync). A power cut can tear any segment (Check
	// finds it, Repair mends it). For tests and throwaway data.
	SyncNever SyncPolicy = "never"
)

// FullPolicy says what an append does when Config.MaxBytes is reached and no
// segment can be removed without losing records a cursor still needs.
type FullPolicy string

const (
	// FullRefuse: the append fails with ErrFull. The caller refuses, retries
	// later or drops, as it sees fit.
	FullRefuse FullPolicy = "refuse"
	// FullDropOldest: the oldest segments are removed even though a cursor
	// still needs them, until the append fits. The lost records are counted
	// in Stats (DroppedRecords) and logged at Warn; lagging cursors move to
	// the new first offset.
	FullDropOldest FullPolicy = "drop-oldest"
)

// Config configures a Log. Start from DefaultConfig.
type Config struct {
	// Sync is the durability policy. Default: SyncAlways.
	Sync SyncPolicy
	// SyncInterval is the fsync period under SyncInterval. Default: 50ms.
	// Longer means more data lost on a power cut.
	SyncInterval time.Duration
	// SegmentSize is the size in bytes at which the log starts a new segment
	// file. Retention removes whole segments, so it is also the granularity
	// of retention; Open reads the last segment in full, so it bounds Open's
	// time. Default: 16 MiB. Minimum 4 KiB.
	SegmentSize int64
	// MaxRecordSize is the largest record accepted, in bytes. Default and
	// maximum: SegmentSize minus the framing.
	MaxRecordSize int
	// MaxBytes is the disk budget of the log (segment files), in bytes. When
	// an append would go over it, the log first removes segments no cursor
	// needs, then applies OnFull. 0: no budget beyond the disk itself.
	MaxBytes int64
	// OnFull is what happens when MaxBytes is reached. Default: FullRefuse.
	OnFull FullPolicy
	// MaxAge removes segments whose newest record is older than this, even
	// if a cursor still needs them (counted as dropped in Stats). 0: no age
	// limit.
	MaxAge time.Duration
	// QueueBytes bounds the appends waiting for the writer, in bytes: above
	// it, Append and AppendAsync block until the writer catches up. Default:
	// 4 MiB. It also bounds one write() call.
	QueueBytes int
	// RetentionCheck is how often the writer applies retention (cursors,
	// MaxAge) when nothing else triggers it. Default: 1s.
	RetentionCheck time.Duration
	// Logger receives repairs (Warn), I/O failures (Error) and retention
	// (Info). The log adds no "component" attribute: narrow it yourself.
	// Default: slog.Default().
	Logger *slog.Logger
	// FS is the file-system seam, for fault injection in tests. The zero FS
	// is the operating system.
	FS FS
}

// DefaultConfig returns the defaults: sync always, 16 MiB segments, no budget,
// no age limit.
func DefaultConfig() Config {
	return Config{
		Sync:           SyncAlways,
		SyncInterval:   50 * time.Millisecond,
		SegmentSize:    16 << 20,
		OnFull:         FullRefuse,
		QueueBytes:     4 << 20,
		RetentionCheck: time.Second,
	}
}

// Validate reports the first invalid field, as "field: reason (got X)".
// Zero values are valid and mean the default.
func (c Config) Validate() error {
	switch c.Sync {
	case "", SyncAlways, SyncInterval, SyncNever:
	default:
		return fmt.Errorf("sync: must be always, interval or never (got %q)", c.Sync)
	}
	if c.SyncInterval < 0 {
		return fmt.Errorf("sync_interval: must not be negative (got %s)", c.SyncInterval)
	}
	if c.SegmentSize != 0 && (c.SegmentSize < 4<<10 || c.SegmentSize > maxFrame) {
		return fmt.Errorf("segment_size: must be between 4KiB and 1GiB (got %d)", c.SegmentSize)
	}
	if c.MaxRecordSize < 0 {
		return fmt.Errorf("max_record_size: must not be negative (got %d)", c.MaxRecordSize)
	}
	if c.MaxBytes < 0 {
		return fmt.Errorf("max_bytes: must not be negative (got %d)", c.MaxBytes)
	}
	if seg := c.SegmentSize; c.MaxBytes > 0 {
		if seg == 0 {
			seg = DefaultConfig().SegmentSize
		}
		if c.MaxBytes < 2*seg {
			return fmt.Errorf("max_bytes: must be at least twice segment_size (got %d, segment_size %d)", c.MaxBytes, seg)
		}
	}
	switch c.OnFull {
	case "", FullRefuse, FullDropOldest:
	default:
		return fmt.Errorf("on_full: must be refuse or drop-oldest (got %q)", c.OnFull)
	}
	if c.MaxAge < 0 {
		return fmt.Errorf("max_age: must not be negative (got %s)", c.MaxAge)
	}
	if c.QueueBytes < 0 {
		return fmt.Errorf("queue_bytes: must not be negative (got %d)", c.QueueBytes)
	}
	if c.RetentionCheck < 0 {
		return fmt.Errorf("retention_check: must not be negative (got %s)", c.RetentionCheck)
	}
	return nil
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Sync == "" {
		c.Sync = d.Sync
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = d.SyncInterval
	}
	if c.SegmentSize == 0 {
		c.SegmentSize = d.SegmentSize
	}
	maxRec := int(c.SegmentSize) - entrySize(0) - 5 // room for a 5-byte uvarint
	if c.MaxRecordSize == 0 || c.MaxRecordSize > maxRec {
		c.MaxRecordSize = maxRec
	}
	if c.OnFull == "" {
		c.OnFull = d.OnFull
	}
	if c.QueueBytes == 0 {
		c.QueueBytes = d.QueueBytes
	}
	if c.RetentionCheck == 0 {
		c.RetentionCheck = d.RetentionCheck
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.FS = c.FS.withDefaults()
	return c
}
