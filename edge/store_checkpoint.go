package edge

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// Checkpoints bound replay and let the log be trimmed. The dispatcher keeps
// a shadow qos.State, applying every record it reads; every
// checkpointInterval it hands a copy to the checkpointer, which
//
//  1. moves each session's position in the copy up to where its runtime
//     queue stands (the copy only knows deliveries, the queue also knows
//     what did not match);
//  2. appends a checkpoint record, waits for it and makes the log durable
//     up to it (Log.Sync: under sync "interval" the append returns before
//     any fsync), so every record the snapshot covers, and every delivery
//     record the positions rely on, survives whatever the snapshot
//     survives: a power cut must never leave a snapshot past the end of
//     the log;
//  3. writes the snapshot file (temp file, fsync, rename, directory fsync)
//     and removes older ones;
//  4. commits the log cursor "store" to the lowest offset anything still
//     needs: the snapshot's offset, each queue's position, each unreleased
//     message a session holds. Retention may then remove whole segments
//     below it.
//
// Between checkpoints the checkpointer also trims (see trim): positions
// move and consumers end without a record, and the trim point must follow
// them even when nothing else is written.
//
// On start, recover loads the newest snapshot that reads back whole and
// whose offset the log reaches, and replays the log from its offset.

// cursorName is the store's log cursor.
const cursorName = "store"

const snapshotPrefix, snapshotSuffix = "snapshot-", ".bin"

// snapshotName names the snapshot of the state before offset; the fixed
// width keeps names in offset order.
func snapshotName(offset uint64) string {
	return fmt.Sprintf("%s%020d%s", snapshotPrefix, offset, snapshotSuffix)
}

// snapshots lists the snapshot files in dir, newest first.
func snapshots(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var offs []uint64
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, snapshotPrefix) || !strings.HasSuffix(name, snapshotSuffix) {
			continue
		}
		off, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, snapshotPrefix), snapshotSuffix), 10, 64)
		if err == nil {
			offs = append(offs, off)
		}
	}
	slices.Sort(offs)
	slices.Reverse(offs)
	return offs, nil
}

// loadSnapshot returns the newest snapshot in dir that reads back whole and
// covers no record past last, the log's last offset, or an empty state at
// offset 0 if there is none. Damaged ones are logged and skipped: an older
// one and a longer replay give the same state. One past the end of the log
// is refused too: the log lost records the snapshot covers (a power cut, or
// a snapshot written by a version that did not make the log durable
// first), and the offsets it passed are being handed out again. It also
// removes the temporary files of snapshots a crash left half written.
func (s *store) loadSnapshot(last uint64) (*qos.State, uint64) {
	tmps, _ := filepath.Glob(filepath.Join(s.snapDir, "."+snapshotPrefix+"*.tmp-*"))
	for _, tmp := range tmps {
		_ = os.Remove(tmp)
	}
	offs, err := snapshots(s.snapDir)
	if err != nil {
		s.lg.Error("snapshots unreadable: replaying the whole log", "dir", s.snapDir, "error", err)
	}
	for _, off := range offs {
		if off > last+1 {
			s.lg.Error("snapshot ahead of the log (the log lost its tail: a power cut under sync interval?): trying an older one",
				"snapshot_offset", off, "last_offset", last)
			continue
		}
		path := filepath.Join(s.snapDir, snapshotName(off))
		f, err := os.Open(path)
		if err != nil {
			s.lg.Error("snapshot unreadable", "file", path, "error", err)
			continue
		}
		st, at, err := qos.ReadSnapshot(f)
		f.Close()
		if err != nil {
			s.lg.Error("snapshot damaged: trying an older one", "file", path, "error", err)
			continue
		}
		return st, at
	}
	return qos.NewState(), 0
}

// checkpointLoop writes the snapshots the dispatcher hands it, and trims
// the log every interval in between.
func (s *store) checkpointLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.checkpointEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case c := <-s.checkpoints:
			s.runCheckpoint(c.st, c.offset)
		case <-t.C:
			s.trim()
			if !s.unsnapshotted.Load() && !s.checkpointStale.Load() && len(s.checkpoints) == 0 {
				s.m.checkpointLast.Set(float64(time.Now().UnixNano()) / 1e9) // nothing new: the snapshot is current
			}
		}
	}
}

// runCheckpoint writes a checkpoint and counts it. A failure is an alarm:
// without checkpoints the log is never trimmed, so it is counted in
// edgemq_storage_checkpoint_failures_total and logged at Error (once a
// minute while it repeats), the next checkpoint is due at once (traffic or
// not), and the first success after it is logged too.
func (s *store) runCheckpoint(st *qos.State, offset uint64) {
	err := s.checkpoint(st, offset)
	s.checkpointStale.Store(err != nil)
	if err != nil {
		s.m.checkpointFailures.Inc()
		s.failedCheckpoints++
		s.alarms.log(s.lg, slog.LevelError, "checkpoint failed: the log is not trimmed and replay grows until one succeeds",
			"offset", offset, "failures", s.failedCheckpoints, "error", err)
		return
	}
	if s.failedCheckpoints > 0 {
		s.lg.Info("checkpoint succeeded again", "offset", offset, "failures_before", s.failedCheckpoints)
		s.failedCheckpoints = 0
	}
	s.m.checkpoints.Inc()
	s.m.checkpointLast.Set(float64(time.Now().UnixNano()) / 1e9)
}

// pendingCheckpoint is a copy of the shadow state after every record below
// offset.
type pendingCheckpoint struct {
	st     *qos.State
	offset uint64
}

// checkpoint runs the steps in the comment at the top of this file.
func (s *store) checkpoint(st *qos.State, offset uint64) error {
	started := time.Now()
	floor, _ := s.floor(offset, st)
	// Every delivery record the positions above rely on was appended before
	// this one; once it is durable, they are.
	if _, err := s.appendWait(qos.EncodeCheckpoint(offset)); err != nil {
		return fmt.Errorf("checkpoint record: %w", err)
	}
	if err := s.log.Sync(context.Background()); err != nil { // also the one at shutdown
		return fmt.Errorf("sync the log: %w", err)
	}
	if err := writeFileAtomic(s.snapDir, snapshotName(offset), func(f *os.File) error {
		return qos.WriteSnapshot(f, st, offset)
	}); err != nil {
		return err
	}
	s.snapshotAt.Store(offset)
	if offs, err := snapshots(s.snapDir); err == nil {
		for _, old := range offs[min(len(offs), 2):] { // keep the newest two
			_ = os.Remove(filepath.Join(s.snapDir, snapshotName(old)))
		}
	}
	if err := s.cursor.Commit(floor); err != nil {
		return fmt.Errorf("commit cursor at %d: %w", floor, err)
	}
	s.lg.Debug("checkpoint", "offset", offset, "floor", floor, "sessions", len(st.Sessions), "seconds", time.Since(started).Seconds())
	return nil
}

// floor returns the lowest offset below upTo that the broker still needs,
// and what holds it there: a session's or a shared group's position, a
// message a session holds unacknowledged (not yet released), or one a
// leaving member gave back to its group. With st, it
// also moves the positions in st up to where the queues stand (st only
// knows deliveries; a queue also knows what did not match).
func (s *store) floor(upTo uint64, st *qos.State) (uint64, string) {
	progress := s.fannedOut.Load()
	floor, holder := upTo, "the newest snapshot"
	hold := func(off uint64, what func() string) {
		if off < floor {
			floor, holder = off, what()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, sess := range s.sessions {
		pos := sess.queue.Position(progress)
		sess.mu.Lock()
		for _, f := range sess.inflight {
			if !f.released {
				hold(f.offset, func() string { return "an unacknowledged message of session " + id })
			}
		}
		persistent := sess.persistent
		sess.mu.Unlock()
		hold(pos, func() string { return "the position of session " + id })
		if st != nil && persistent {
			if ss := st.Sessions[id]; ss != nil {
				ss.Next = max(ss.Next, pos)
			}
		}
	}
	for key, g := range s.groups {
		pos := g.queue.Position(progress)
		if taken := g.sending.Load(); taken > 0 {
			pos = min(pos, taken-1) // a member took it and has not logged it yet
		}
		hold(pos, func() string { return "the position of shared group " + key })
		g.scanMu.Lock()
		for _, e := range g.returned {
			hold(e.Offset, func() string { return "a message given back to shared group " + key })
		}
		g.scanMu.Unlock()
		if st != nil {
			st.GroupNext[key] = max(st.GroupNext[key], pos)
		}
	}
	return floor, holder
}

// trim commits the store's cursor up to what is still needed below the
// newest snapshot, without writing one. A consumer's position moves, and a
// consumer ends, without a record for the dispatcher to see (a clean
// session's deliveries and its end are not logged), and a refused publish
// writes nothing: the checkpointer runs this every interval, so that the
// log is trimmed, and admission lets publishes in again, whatever else
// happens. It needs no room on disk but the cursor table's.
func (s *store) trim() {
	floor, _ := s.floor(s.snapshotAt.Load(), nil)
	if floor <= s.cursor.Offset() {
		return
	}
	// The delivery records the positions rely on were appended before now:
	// once the writer is past them they are durable (or failed, and then
	// they are not records).
	if next := s.log.NextOffset(); next > 1 {
		_ = s.log.WaitDurable(s.ctx, next-1)
	}
	if s.ctx.Err() != nil {
		return
	}
	if err := s.cursor.Commit(floor); err != nil {
		s.alarms.log(s.lg, slog.LevelError, "log not trimmed: cursor commit failed", "offset", floor, "error", err)
	}
}

// writeFileAtomic writes dir/name through a temporary file, fsyncs it,
// renames it into place and fsyncs the directory.
func writeFileAtomic(dir, name string, write func(*os.File) error) error {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := write(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
