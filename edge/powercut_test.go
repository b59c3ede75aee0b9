package edge_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/edgemq/edgemq/wal"
)

// TestSnapshotAheadOfLog is a power cut under storage.sync "interval" one
// level up from the log: the snapshot file is fsynced, the log's tail only
// written, so the cut can leave a snapshot whose offset is past the end of
// the log. Two halves:
//
//   - a checkpoint makes the log durable up to its offset before the
//     snapshot exists: the durable mark the log records (wal.Check's
//     DurableMark, which only an fsync moves) reaches the snapshot's offset
//     without any periodic fsync (sync_interval 1h);
//   - recovery from the state such a cut leaves (the snapshot kept, the
//     log cut back below its offset, as the durable image would be without
//     that fsync) refuses the snapshot and replays the log, so a message
//     published after the restart, at an offset the snapshot had passed,
//     still reaches the persistent subscriber.
func TestSnapshotAheadOfLog(t *testing.T) {
	cfg := testConfig(t)
	cfg.Storage.Sync = "interval"
	cfg.Storage.SyncInterval = time.Hour
	cfg.Storage.CheckpointInterval = 100 * time.Millisecond
	logDir, snapDir := filepath.Join(cfg.Storage.Dir, "log"), filepath.Join(cfg.Storage.Dir, "snapshots")
	tb := startBroker(t, cfg)
	ep := endpoint{network: "tcp", addr: tb.Addr("tcp").String()}
	s, _ := connectV5(t, dialNet(t, "tcp", ep.addr, nil), v5Opts{id: "ahead-sub", persistent: true})
	s.subscribe(t, "ahead/#", 1)
	_ = s.Disconnect(&paho.Disconnect{})
	p, _ := connectV5(t, dialNet(t, "tcp", ep.addr, nil), v5Opts{id: "ahead-pub"})
	for i := range 60 {
		if _, err := p.publish(t, "ahead/a", 1, false, []byte(fmt.Sprintf("a%d", i))); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	_ = p.Disconnect(&paho.Disconnect{})

	// A checkpoint past the publishes, and the log durable up to it.
	var snap uint64
	deadline := time.Now().Add(10 * time.Second)
	for {
		snap = newestSnapshot(t, snapDir)
		rep, _ := wal.Check(logDir) // may race a cursor table write: retry
		if snap > 60 && rep.DurableMark+1 >= snap {
			break
		}
		if time.Now().After(deadline) {
			if snap <= 60 {
				t.Fatalf("no checkpoint past the publishes (newest snapshot at %d)", snap)
			}
			t.Errorf("snapshot at offset %d, but the log is durable only up to %d: a power cut now leaves the snapshot ahead of the log", snap, rep.DurableMark)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := tb.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}

	// The state a power cut leaves when the log was not fsynced before the
	// snapshot was written: the log's durable image ends well below the
	// snapshot's offset (and so does its cursor table's).
	cut := snap - 40
	for _, name := range []string{"cursors.0", "cursors.1"} {
		os.Remove(filepath.Join(logDir, name))
	}
	cutLog(t, logDir, cut)

	// A new persistent session, messages for both, and a clean restart: a
	// broker that restarted from the snapshot skips the records at the
	// offsets the snapshot had passed (the session's creation among them),
	// in its state and in its next snapshots.
	tb = startBroker(t, cfg)
	// Refused, and gone: once the log grows past its offset again, a
	// later start would take it for valid.
	if _, err := os.Stat(filepath.Join(snapDir, fmt.Sprintf("snapshot-%020d.bin", snap))); err == nil {
		t.Errorf("the snapshot ahead of the log (offset %d) is still there after the restart", snap)
	}
	ep = endpoint{network: "tcp", addr: tb.Addr("tcp").String()}
	s2, _ := connectV5(t, dialNet(t, "tcp", ep.addr, nil), v5Opts{id: "ahead-sub2", persistent: true})
	s2.subscribe(t, "ahead/#", 1)
	_ = s2.Disconnect(&paho.Disconnect{})
	p, _ = connectV5(t, dialNet(t, "tcp", ep.addr, nil), v5Opts{id: "ahead-pub"})
	const n = 20
	for i := range n {
		if _, err := p.publish(t, "ahead/b", 1, false, []byte(fmt.Sprintf("b%d", i))); err != nil {
			t.Fatalf("publish after restart %d: %v", i, err)
		}
	}
	_ = p.Disconnect(&paho.Disconnect{})
	time.Sleep(300 * time.Millisecond) // a checkpoint or two
	ctx2, cancel2 := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel2()
	if err := tb.Shutdown(ctx2); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	tb = startBroker(t, cfg)
	ep = endpoint{network: "tcp", addr: tb.Addr("tcp").String()}
	for _, id := range []string{"ahead-sub", "ahead-sub2"} {
		c, ack := connectV5(t, dialNet(t, "tcp", ep.addr, nil), v5Opts{id: id, persistent: true})
		if !ack.SessionPresent {
			t.Errorf("%s: no session after the restarts (snapshot at %d, log cut at %d)", id, snap, cut)
			continue
		}
		got := map[string]bool{}
		timeout := time.After(10 * time.Second)
	recv:
		for len(got) < n {
			select {
			case m := <-c.msgs:
				if strings.HasPrefix(string(m.Payload), "b") {
					got[string(m.Payload)] = true
				}
			case <-timeout:
				t.Errorf("%s: %d of the %d messages published after the first restart arrived (snapshot at %d, log cut at %d)",
					id, len(got), n, snap, cut)
				break recv
			}
		}
	}
}

// newestSnapshot returns the offset of the newest snapshot file in dir, 0 if
// none.
func newestSnapshot(t *testing.T, dir string) uint64 {
	ents, _ := os.ReadDir(dir)
	var best uint64
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "snapshot-") || !strings.HasSuffix(name, ".bin") {
			continue
		}
		off, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "snapshot-"), ".bin"), 10, 64)
		if err == nil && off > best {
			best = off
		}
	}
	return best
}

// cutLog cuts the log in dir after offset last, as a power cut that kept
// only the records up to it would: segment files are runs of
// uvarint(length)+entry, the k-th entry of the file named N holding offset
// N+k.
func cutLog(t *testing.T, dir string, last uint64) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "[0-9]*"))
	sort.Strings(m)
	for _, path := range m {
		base, err := strconv.ParseUint(filepath.Base(path), 10, 64)
		if err != nil || len(filepath.Base(path)) != 20 {
			continue
		}
		if base > last {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		pos := 0
		for off := base; off <= last && pos < len(data); off++ {
			size, k := binary.Uvarint(data[pos:])
			pos += k + int(size)
		}
		if err := os.Truncate(path, int64(pos)); err != nil {
			t.Fatal(err)
		}
	}
	if l, err := wal.Open(dir, wal.Config{}); err != nil || l.LastOffset() != last {
		t.Fatalf("cut log: %v", err)
	} else {
		l.Close()
	}
}
