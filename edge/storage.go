package edge

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/edgemq/edgemq/qos"
	"github.com/edgemq/edgemq/wal"
)

// durableStorage is the log and the delivery engine on it, closed as one:
// the engine's goroutines first, the log last.
type durableStorage struct {
	engine *qos.Engine
	log    *wal.Log
	hook   *deliveryHook
}

// Close stops the engine and closes the log.
func (d *durableStorage) Close() error {
	return errors.Join(d.engine.Close(), d.log.Close())
}

// walConfig maps the storage section onto the log's configuration.
func walConfig(c StorageConfig) wal.Config {
	wc := wal.DefaultConfig()
	wc.Sync = wal.SyncPolicy(c.Sync)
	wc.SyncInterval = c.SyncInterval
	wc.SegmentSize = int64(c.SegmentSize)
	wc.MaxBytes = int64(c.MaxDiskBytes)
	return wc
}

// engineCursor is the engine's trim point in the log; oldCursor the one
// of the delivery code before it, removed so it does not hold the log.
const engineCursor, oldCursor = "engine", "store"

// openStorage opens the log, recovers the delivery engine from it
// (sessions, subscriptions, retained messages) and adds the hook that
// feeds it mochi's events. It runs in Start, before any listener accepts.
func (b *Broker) openStorage() (*durableStorage, error) {
	// Message expiry is the engine's [MQTT-3.3.2-5]; mochi's default
	// would force one day on every message it sees.
	b.srv.Options.Capabilities.MaximumMessageExpiryInterval = 0
	wc := walConfig(b.cfg.Storage)
	wc.Logger = b.root.With("component", "wal")
	wc.FS = b.logFS
	logDir, snapDir := filepath.Join(b.cfg.Storage.Dir, "log"), filepath.Join(b.cfg.Storage.Dir, "snapshots")
	for _, d := range []string{logDir, snapDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("edge: storage: %w", err)
		}
	}
	l, err := wal.Open(logDir, wc)
	if err != nil {
		return nil, fmt.Errorf("edge: open storage %s: %w", logDir, err)
	}
	if slices.Contains(l.Cursors(), oldCursor) {
		if err := l.DeleteCursor(oldCursor); err != nil {
			return nil, errors.Join(fmt.Errorf("edge: storage cursor: %w", err), l.Close())
		}
	}
	if err := b.reg.Register(newLogCollector(l)); err != nil {
		return nil, errors.Join(fmt.Errorf("edge: log metrics: %w", err), l.Close())
	}
	lg := b.root.With("component", "engine")
	cfg := qos.DefaultConfig(walLog{l})
	cfg.Snapshots = snapshotDir{dir: snapDir, lg: lg}
	cfg.Logger = lg
	cfg.CursorName = engineCursor
	cfg.MaxInflight = b.cfg.Limits.MaxInflight
	cfg.QueueLimit = engineQueueLimit
	cfg.QoS0Limit = b.cfg.Limits.MaxWritesPending
	cfg.CheckpointInterval = b.cfg.Storage.CheckpointInterval
	cfg.Admit = admission(l, int64(b.cfg.Storage.MaxDiskBytes), lg)
	e, err := qos.New(cfg)
	if err != nil {
		return nil, errors.Join(err, l.Close())
	}
	qos0 := func() uint64 { return e.DroppedQoS0() }
	b.metrics.dropped.engineQueueFull.Store(&qos0)
	if err := b.reg.Register(newEngineCollector(e)); err != nil {
		return nil, errors.Join(fmt.Errorf("edge: engine metrics: %w", err), e.Close(), l.Close())
	}
	h := &deliveryHook{srv: b.srv, e: e, lg: lg, clients: map[*mqtt.Client]*hookClient{},
		window: b.srv.Options.Capabilities.ReceiveMaximum,
		canRead: func(cl *mqtt.Client, topic string) bool {
			return b.auth.OnACLCheck(cl, topic, false)
		},
		anyOwner: b.cfg.Auth.CrossUserTakeover,
		sent:     &b.metrics.sent,
		notOwner: b.auth.refusedTakeover,
	}
	if err := b.addHook(h); err != nil {
		return nil, errors.Join(err, e.Close(), l.Close())
	}
	return &durableStorage{engine: e, log: l, hook: h}, nil
}

// admission refuses a new message once the log would pass its high
// watermark, a tenth of the budget below it, so that what the broker must
// still write to make progress (deliveries, acknowledgements, sessions,
// checkpoints) always has room: a full log must never stop subscribers
// from draining it. Refusals are logged once a minute while they repeat.
func admission(l *wal.Log, budget int64, lg *slog.Logger) func(int) error {
	if budget <= 0 {
		return nil
	}
	alarms := newLogThrottle(time.Minute)
	return func(n int) error {
		disk, queued := l.Usage()
		if disk+queued+int64(n) <= budget-budget/10 {
			return nil
		}
		alarms.warn(lg, "publishes refused: the log is at its high watermark", "disk_bytes", disk, "queued_bytes", queued,
			"budget_bytes", budget, "admit_below_bytes", budget-budget/10, "trimmed_below_offset", l.FirstOffset())
		return fmt.Errorf("%w: %w", qos.ErrFull, wal.ErrFull)
	}
}

// storageStopping tells the engine that the broker is shutting down: the
// connections about to be cut are not clients going away.
func (b *Broker) storageStopping() {
	if ds, ok := b.storage.(*durableStorage); ok {
		ds.engine.Stopping()
	}
}

// engineQueueLimit is how many messages a session's queue holds in RAM
// before it reads its backlog from the log instead.
const engineQueueLimit = 1024

// CheckStorage checks the log under c.Dir and returns what it found, one
// line each: records, segments, offsets, a torn tail, and every damaged
// place with its segment and position. It returns an error (matching
// wal.ErrCorrupt) if the log is damaged before its tail. With repair it
// also mends the log: a torn tail is cut, damaged records become holes
// (lost, and counted). Repair needs the broker stopped; a check may run
// beside it. A storage directory without a log yet is not an error.
func CheckStorage(c StorageConfig, repair bool, logger *slog.Logger) ([]string, error) {
	dir := filepath.Join(c.Dir, "log")
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return []string{fmt.Sprintf("%s: no log yet", dir)}, nil
	}
	var rep wal.Report
	var err error
	if repair {
		rep, err = wal.Repair(dir, logger)
	} else {
		rep, err = wal.Check(dir)
	}
	lines := []string{fmt.Sprintf("%s: %d records (%d holes) in %d segments, %d bytes, offsets %d..%d",
		dir, rep.Records, rep.Holes, rep.Segments, rep.Bytes, rep.FirstOffset, rep.LastOffset)}
	if d := rep.TornTail; d != nil {
		lines = append(lines, fmt.Sprintf("%s: torn tail at byte %d (offset %d, %d bytes): %s; the next start cuts it",
			d.Segment, d.Pos, d.Offset, d.Bytes, d.Reason))
	}
	for _, d := range rep.Damage {
		lines = append(lines, fmt.Sprintf("%s: damaged at byte %d (offset %d, %d bytes): %s", d.Segment, d.Pos, d.Offset, d.Bytes, d.Reason))
	}
	for _, r := range rep.Repaired {
		lines = append(lines, "repaired: "+r)
	}
	if rep.LostRecords > 0 {
		lines = append(lines, fmt.Sprintf("repair lost %d records", rep.LostRecords))
	}
	return lines, err
}
