package qos_test

import (
	"slices"
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
