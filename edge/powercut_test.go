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
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/edge"
	"github.com/edgemq/edgemq/wal"
)

// TestSnapshotAheadOfLog is a power cut under storage.sync "interval"
// one level up from the log: the snapshot file is fsynced, the log's tail
// only written, so without the fsync of the log a checkpoint runs first
// (TestPowerCutAfterCheckpoint checks that one through the log's
// file-system seam) the cut would leave a snapshot whose offset is past
// the end of the log. A snapshot of an older version can still be in that
// state, so this test builds it by hand (the snapshot kept, the log cut
// back below its offset, as the durable image would be without that
// fsync): recovery refuses the snapshot, removes it and replays the log,
// so a message published after the restart, at an offset the snapshot had
// passed, still reaches the persistent subscriber.
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

	var snap uint64 // a checkpoint past the publishes
	for deadline := time.Now().Add(10 * time.Second); snap <= 60; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint past the publishes (newest snapshot at %d)", snap)
		}
		snap = newestSnapshot(t, snapDir)
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

// TestPowerCutAfterCheckpoint is a power cut under storage.sync "interval"
// driven through the log's file-system seam (Options.LogFS): the log's
// files keep only what an fsync wrote, its directory only the names a
// directory fsync made durable, the moment a checkpoint's snapshot
// exists. The broker restarted from that state must find the log reaching
// the snapshot's offset (a checkpoint makes the log durable up to it
// before writing the snapshot) and lose no acknowledged message that the
// snapshot covers. (TestSnapshotAheadOfLog builds by hand the state this
// would leave without that fsync, to test that recovery refuses it.)
func TestPowerCutAfterCheckpoint(t *testing.T) {
	cfg := testConfig(t)
	cfg.Storage.Sync = "interval"
	cfg.Storage.SyncInterval = time.Hour // only checkpoints fsync
	cfg.Storage.CheckpointInterval = 100 * time.Millisecond
	logDir, snapDir := filepath.Join(cfg.Storage.Dir, "log"), filepath.Join(cfg.Storage.Dir, "snapshots")
	disk := newPowerCutFS()
	b, err := edge.New(cfg, edge.Options{Logger: testLogger(t), Registry: prometheus.NewRegistry(), LogFS: disk.fs()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr := b.Addr("tcp").String()
	s, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "cut-sub", persistent: true})
	s.subscribe(t, "cut/#", 1)
	_ = s.Disconnect(&paho.Disconnect{})
	p, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "cut-pub"})
	const n = 60
	for i := range n {
		if _, err := p.publish(t, "cut/a", 1, false, []byte(fmt.Sprintf("m%d", i))); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	_ = p.Disconnect(&paho.Disconnect{})
	var snap uint64
	for deadline := time.Now().Add(10 * time.Second); snap <= n; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint past the publishes (newest snapshot at %d)", snap)
		}
		snap = newestSnapshot(t, snapDir)
	}
	cut := disk.cut(snapDir) // the power cut, now
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	cut.apply(t, logDir, snapDir)

	if l, err := wal.Open(logDir, wal.Config{}); err != nil {
		t.Fatalf("open the log after the cut: %v", err)
	} else {
		last := l.LastOffset()
		l.Close()
		if last+1 < snap {
			t.Fatalf("after the cut the log ends at %d, below the snapshot's offset %d: the snapshot is ahead of the log", last, snap)
		}
	}
	tb := startBroker(t, cfg)
	c, ack := connectV5(t, dialNet(t, "tcp", tb.Addr("tcp").String(), nil), v5Opts{id: "cut-sub", persistent: true})
	if !ack.SessionPresent {
		t.Fatal("no session after the power cut")
	}
	got := map[string]bool{}
	timeout := time.After(10 * time.Second)
	for len(got) < n {
		select {
		case m := <-c.msgs:
			got[string(m.Payload)] = true
		case <-timeout:
			t.Fatalf("%d of the %d messages the snapshot covers arrived after the power cut", len(got), n)
		}
	}
}

// powerCutFS is the log's file system on the real disk, remembering what
// a power cut would keep: each file's content at its last fsync, and each
// directory's names at its last fsync.
type powerCutFS struct {
	mu    sync.Mutex
	data  map[string][]byte          // path: content at the last fsync
	names map[string]map[string]bool // directory: names at the last fsync
}

func newPowerCutFS() *powerCutFS {
	return &powerCutFS{data: map[string][]byte{}, names: map[string]map[string]bool{}}
}

func (p *powerCutFS) fs() wal.FS {
	return wal.FS{OpenFile: func(name string, flag int, perm os.FileMode) (wal.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		return &powerCutFile{File: f, p: p}, nil
	}}
}

type powerCutFile struct {
	*os.File
	p *powerCutFS
}

// Sync fsyncs and records what the disk then holds: what the file held
// (or the directory named) before the fsync began; a write racing the
// fsync may or may not be on the disk, so it does not count. Holding p.mu
// through it keeps the record and the cut in order.
func (f *powerCutFile) Sync() error {
	f.p.mu.Lock()
	defer f.p.mu.Unlock()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	var names map[string]bool
	var data []byte
	if info.IsDir() {
		ents, err := os.ReadDir(f.Name())
		if err != nil {
			return err
		}
		names = map[string]bool{}
		for _, e := range ents {
			names[e.Name()] = true
		}
	} else if data, err = os.ReadFile(f.Name()); err != nil {
		return err
	}
	if err := f.File.Sync(); err != nil {
		return err
	}
	if names != nil {
		f.p.names[filepath.Clean(f.Name())] = names
	} else {
		f.p.data[filepath.Clean(f.Name())] = data
	}
	return nil
}

// powerCut is the durable state at one moment.
type powerCut struct {
	data  map[string][]byte
	names map[string]map[string]bool
	snaps map[string][]byte // the snapshot files (written with the os package, fsynced)
}

// cut takes the state a power cut now leaves.
func (p *powerCutFS) cut(snapDir string) powerCut {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := powerCut{data: map[string][]byte{}, names: map[string]map[string]bool{}, snaps: map[string][]byte{}}
	for k, v := range p.data {
		c.data[k] = v
	}
	for k, v := range p.names {
		c.names[k] = v
	}
	ents, _ := os.ReadDir(snapDir)
	for _, e := range ents {
		if data, err := os.ReadFile(filepath.Join(snapDir, e.Name())); err == nil {
			c.snaps[e.Name()] = data
		}
	}
	return c
}

// apply puts the log's directory and the snapshots back as the cut left
// them: only durable names, each with its content at its last fsync.
func (c powerCut) apply(t *testing.T, logDir, snapDir string) {
	t.Helper()
	ents, err := os.ReadDir(logDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != "LOCK" {
			if err := os.Remove(filepath.Join(logDir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name := range c.names[filepath.Clean(logDir)] {
		if name == "LOCK" {
			continue
		}
		path := filepath.Join(logDir, name)
		if err := os.WriteFile(path, c.data[path], 0o640); err != nil { // never fsynced: empty
			t.Fatal(err)
		}
	}
	ents, _ = os.ReadDir(snapDir)
	for _, e := range ents {
		os.Remove(filepath.Join(snapDir, e.Name()))
	}
	for name, data := range c.snaps {
		if err := os.WriteFile(filepath.Join(snapDir, name), data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
}
