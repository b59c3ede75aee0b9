package qos_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// retainedAfterRestart returns the payloads of the retained messages a new
// subscriber to filter gets.
func retainedAfterRestart(t *testing.T, h *harness, filter string) map[string]bool {
	t.Helper()
	sub := h.connect("probe", false)
	sub.subscribe(filter, 0)
	got := map[string]bool{}
	for _, p := range sub.conn.settle() {
		if p.Type == qos.PacketPublish {
			got[string(p.Message.Payload)] = true
		}
	}
	sub.cl.Disconnect(false, nil)
	return got
}

// TestCheckpointKeepsWhatTheOlderSnapshotNeeds: recovery falls back to
// the older of the two snapshots kept when the newest reads back damaged,
// and replays the log from its offset; the log must still hold that. A
// retained message set between the two snapshots, which no session
// position holds, is the state only that replay brings back.
func TestCheckpointKeepsWhatTheOlderSnapshotNeeds(t *testing.T) {
	h := newHarness(t, nil)
	pub := h.connect("pub", false)
	pub.cl.Publish(&qos.Message{Topic: "keep/a", QoS: 1, Retain: true, Payload: []byte("a")}, 1)
	pub.conn.waitFor(t, 1)
	h.e.WaitDispatched()
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	pub.cl.Publish(&qos.Message{Topic: "keep/b", QoS: 1, Retain: true, Payload: []byte("b")}, 2)
	pub.conn.waitFor(t, 1)
	for i := range 20 { // more records, so that the trim point has somewhere to go
		pub.publish("other", 1, uint16(3+i), "x")
	}
	pub.conn.waitFor(t, 20)
	h.e.WaitDispatched()
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	h.log.mu.Lock()
	first := h.log.first
	h.log.mu.Unlock()

	h.snaps.mu.Lock()
	newest := h.snaps.snaps[len(h.snaps.snaps)-1]
	newest[len(newest)/2] ^= 0xff // damaged
	h.snaps.mu.Unlock()
	h.crash()
	got := retainedAfterRestart(t, h, "keep/#")
	if !got["a"] || !got["b"] {
		t.Fatalf("retained messages after a restart from the older snapshot: %v, want a and b (the log was trimmed to %d)", got, first)
	}
}

// TestSnapshotAheadOfTheLogIsRemoved: a power cut under sync "interval"
// can leave a snapshot past the end of the log (the log's tail was lost).
// Recovery refuses it, and it must go: the offsets it passed are handed
// out again, and once the log grows past it, a later start would take it
// for valid, bringing back what the cut lost and skipping what came since.
func TestSnapshotAheadOfTheLogIsRemoved(t *testing.T) {
	h := newHarness(t, nil)
	holder := h.connect("holder", true) // its backlog keeps the log untrimmed
	holder.subscribe("t/#", 1)
	holder.cl.Disconnect(false, nil)
	pub := h.connect("pub", false)
	retained := func(topic string, pid uint16) {
		pub.cl.Publish(&qos.Message{Topic: topic, QoS: 1, Retain: true, Payload: []byte(topic)}, pid)
		pub.conn.waitFor(t, 1)
	}
	retained("t/kept", 1)
	kept := h.log.LastOffset()
	retained("t/lost", 2)
	h.e.WaitDispatched()
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	snap := h.log.LastOffset()

	// The power cut: the log keeps only what came up to t/kept.
	h.e.Crash()
	cut := newMemLog()
	h.log.mu.Lock()
	cut.recs, cut.first = slices.Clone(h.log.recs[:kept]), h.log.first
	h.log.mu.Unlock()
	h.log = cut
	h.start()
	pub = h.connect("pub", false)
	retained("t/new", 1)
	for i := 0; h.log.LastOffset() <= snap+1; i++ {
		pub.publish("filler", 1, uint16(2+i), "x")
		pub.conn.waitFor(t, 1)
	}
	h.crash()
	got := retainedAfterRestart(t, h, "t/#")
	if !got["t/kept"] || !got["t/new"] || got["t/lost"] {
		t.Fatalf("retained after the restarts: %v, want t/kept and t/new (snapshot at %d, log cut after %d)", got, snap, kept)
	}
}

// TestIdleEngineStopsCheckpointing: a checkpoint appends its own record,
// which must not count as something new: an idle broker would otherwise
// write a record, a snapshot and their fsyncs every interval, for ever
// (SD cards wear). After activity it takes one more snapshot (so that the
// older one kept no longer holds the busy period's records), then only
// trims.
func TestIdleEngineStopsCheckpointing(t *testing.T) {
	h := newHarness(t, func(c *qos.Config) { c.CheckpointInterval = 5 * time.Millisecond })
	pub := h.connect("pub", false)
	pub.publish("t", 1, 1, "x")
	pub.conn.waitFor(t, 1)
	for h.log.count(qos.KindCheckpoint) < 2 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // twenty intervals, or as many as a busy machine gives
	if n := h.log.count(qos.KindCheckpoint); n > 3 {
		t.Fatalf("%d checkpoint records after one publish, want at most 3 (the publish's, one more, and one racing it)", n)
	}
}

// TestCheckpointKeepsGroupScanFinds: what a shared group's backlog scan
// found for a member and the member has not taken yet (its window is
// full) is the group's still: a checkpoint must hold the group's position
// below it, or a crash after the checkpoint loses it for every member.
// The position moved past the finds with the scan, and only the trim
// point counted them.
func TestCheckpointKeepsGroupScanFinds(t *testing.T) {
	h := newHarness(t, func(c *qos.Config) { c.QueueLimit = 4 })
	a := h.connect("a", true, func(i *qos.ConnectInfo) { i.ReceiveMaximum = 1 })
	a.subscribe("$share/g/s/#", 1)
	src := h.connect("src", false)
	const n = 40
	for i := range n {
		src.publish("s/t", 1, uint16(i+1), fmt.Sprint(i))
	}
	src.conn.waitFor(t, n)
	h.e.WaitDispatched()
	seen := map[string]bool{}
	// Acknowledge until the group's queue overflowed into the log and a
	// scan found the rest: then hold one unacknowledged, the finds wait.
	for len(seen) < 10 {
		got := a.conn.waitFor(t, 1)
		for _, m := range a.ackAll(got) {
			seen[string(m.Payload)] = true
		}
	}
	a.conn.waitFor(t, 1) // the next one, not acknowledged
	h.e.WaitDispatched()
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	h.crash()
	a.reconnect()
	if got := receiveAll(a, seen, n); got < n {
		t.Fatalf("a got %d of %d after the crash", got, n)
	}
}

// receiveAll acknowledges what c is sent, noting each payload in seen,
// until seen holds n or nothing comes for a second; it returns len(seen).
func receiveAll(c *client, seen map[string]bool, n int) int {
	for quiet := time.Now(); len(seen) < n && time.Since(quiet) < time.Second; {
		got := c.conn.take()
		if len(got) == 0 {
			time.Sleep(time.Millisecond)
			continue
		}
		quiet = time.Now()
		for _, m := range c.ackAll(got) {
			seen[string(m.Payload)] = true
		}
	}
	return len(seen)
}

// TestCheckpointFloorSeesGroupFindsMove: a checkpoint's walk of the
// sessions and of the shared groups must see one state: a group's backlog
// scan that ends between the two walks moved the group's position past
// its finds after the walk passed the member that holds them, so neither
// counted them, the checkpoint held the group's position above them and
// a crash lost them. Here the walk is held at another session's lock (its
// PUBREC's Release record is appended under it) while the scan ends; a
// walk that passed the scanning member first (map order, so the test
// tries several times) used to lose what the scan found.
func TestCheckpointFloorSeesGroupFindsMove(t *testing.T) {
	for round := range 8 {
		checkpointDuringGroupScan(t, round)
	}
}

func checkpointDuringGroupScan(t *testing.T, round int) {
	h := newHarness(t, func(c *qos.Config) { c.QueueLimit = 4 })
	b := h.connect("b", true)
	b.subscribe("b", 2)
	a := h.connect("a", true, func(i *qos.ConnectInfo) { i.ReceiveMaximum = 1 })
	a.subscribe("$share/g/s/#", 1)
	src := h.connect("src", false)
	src.publish("b", 2, 100, "b")
	held := b.conn.waitFor(t, 1)[0] // b's QoS 2 flight, PUBREC held back
	const n = 40
	for i := range n {
		src.publish("s/t", 1, uint16(i+1), fmt.Sprint(i))
	}
	src.conn.waitFor(t, n+1)
	h.e.WaitDispatched()

	// a takes the group's queue in RAM, then scans the log for the rest:
	// its first read stops until released.
	scanning, scanGo := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.log.mu.Lock()
	h.log.onRead = func(uint64) {
		once.Do(func() { close(scanning); <-scanGo })
	}
	h.log.mu.Unlock()
	seen := map[string]bool{}
	for waiting := true; waiting; {
		select {
		case <-scanning:
			waiting = false
		default:
			for _, m := range a.ackAll(a.conn.take()) {
				seen[string(m.Payload)] = true
			}
			time.Sleep(time.Millisecond)
		}
	}
	// b's PUBREC appends its Release record under b's lock: held there.
	appending, appendGo := make(chan struct{}), make(chan struct{})
	h.log.mu.Lock()
	h.log.beforeAppend = func(recs [][]byte) {
		if qos.KindOf(recs[0]) == qos.KindRelease {
			close(appending)
			<-appendGo
		}
	}
	h.log.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); b.cl.Pubrec(held.PacketID, 0) }()
	<-appending
	var cerr error
	go func() { defer wg.Done(); cerr = h.e.Checkpoint() }()
	time.Sleep(20 * time.Millisecond) // the walk reaches b's lock
	close(scanGo)
	// The scan ends and a takes its first find, unless the walk holds a's
	// lock (then both wait for the walk).
	deadline := time.Now().Add(200 * time.Millisecond)
	for a.conn.written() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(appendGo)
	wg.Wait()
	if cerr != nil {
		t.Fatal(cerr)
	}
	h.log.mu.Lock()
	h.log.onRead, h.log.beforeAppend = nil, nil
	h.log.mu.Unlock()
	for _, m := range a.ackAll(a.conn.take()) {
		seen[string(m.Payload)] = true
	}
	h.crash()
	a.reconnect()
	if got := receiveAll(a, seen, n); got < n {
		t.Fatalf("round %d: a got %d of %d after the crash", round, got, n)
	}
}
