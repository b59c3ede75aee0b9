package edge

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/edgemq/edgemq/wal"
)

// durableStorage is the log and the store hook on it, closed as one: the
// store's goroutines first, the log last.
type durableStorage struct {
	store *store
	log   *wal.Log
}

// Close stops the store and closes the log.
func (d *durableStorage) Close() error {
	d.store.close()
	return d.log.Close()
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

// openStorage opens the log, replays it into the broker (sessions,
// subscriptions, retained messages) and adds the store hook. It runs in
// Start, before any listener accepts.
func (b *Broker) openStorage() (*durableStorage, error) {
	// The store tracks its outbound messages in mochi's inflight map only
	// for mochi's acknowledgement handling; mochi must not expire them on
	// its own (its default forces a one-day expiry), or it could hand out
	// their packet ids again. Message expiry is the store's [MQTT-3.3.2-5].
	b.srv.Options.Capabilities.MaximumMessageExpiryInterval = 0
	wc := walConfig(b.cfg.Storage)
	wc.Logger = b.root.With("component", "wal")
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
	cursor, err := l.Cursor(cursorName)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("edge: storage cursor: %w", err), l.Close())
	}
	if err := b.reg.Register(newLogCollector(l)); err != nil {
		return nil, errors.Join(fmt.Errorf("edge: log metrics: %w", err), l.Close())
	}
	m, err := newStoreMetrics(b.reg)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("edge: store metrics: %w", err), l.Close())
	}
	s, err := newStore(b.srv, l, b.root.With("component", "store"), m, storeOptions{
		queueLimit:  storeQueueLimit,
		maxInflight: b.cfg.Limits.MaxInflight,
		ackWindow:   b.cfg.Limits.ReceiveMaximum,
		canRead: func(cl *mqtt.Client, topic string) bool {
			return b.auth.OnACLCheck(cl, topic, false)
		},
		cursor:     cursor,
		snapDir:    snapDir,
		checkpoint: b.cfg.Storage.CheckpointInterval,
		budget:     int64(b.cfg.Storage.MaxDiskBytes),
	})
	if err != nil {
		return nil, errors.Join(err, l.Close())
	}
	if err := b.reg.Register(newSessionCollector(s)); err != nil {
		s.close()
		return nil, errors.Join(fmt.Errorf("edge: session metrics: %w", err), l.Close())
	}
	if err := b.srv.AddHook(s, nil); err != nil {
		s.close()
		return nil, errors.Join(fmt.Errorf("edge: add hook %s: %w", s.ID(), err), l.Close())
	}
	return &durableStorage{store: s, log: l}, nil
}

// storageStopping tells the store that the broker is shutting down: the
// connections about to be cut are not clients going away.
func (b *Broker) storageStopping() {
	if ds, ok := b.storage.(*durableStorage); ok {
		ds.store.stopping.Store(true)
	}
}

// storeQueueLimit is how many messages a session's queue holds in RAM
// before it reads its backlog from the log instead.
const storeQueueLimit = 1024

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
