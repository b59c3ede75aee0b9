package edge_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/edgemq/edgemq/edge"
)

// TestCheckpointWithRetained: with a retained message present (as nearly
// every deployment has), checkpoints succeed, the log is trimmed, and a
// small disk budget takes many times its size in messages nobody keeps; the
// retained message survives the restart though its record was trimmed.
func TestCheckpointWithRetained(t *testing.T) {
	r := newRestartable(t, func(c *edge.Config) {
		c.Storage.SegmentSize = 64 << 10
		c.Storage.MaxDiskBytes = 256 << 10
		c.Storage.CheckpointInterval = 200 * time.Millisecond
	})
	p, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "ret-pub"})
	if resp, err := p.publish(t, "r/1", 1, true, []byte("keep")); err != nil || resp.ReasonCode != 0 {
		t.Fatalf("retained publish: %v %+v", err, resp)
	}
	body := make([]byte, 1024)
	for i := range 1024 { // 1 MiB: four times the budget
		eventually(t, fmt.Sprintf("publish %d to be accepted (the log is not trimmed)", i), func() bool {
			resp, err := p.publish(t, "bulk/t", 1, false, body)
			return err == nil && resp.ReasonCode == 0
		})
	}
	if v := r.tb.metric(t, "edgemq_storage_checkpoint_failures_total"); v != 0 {
		t.Errorf("edgemq_storage_checkpoint_failures_total = %v", v)
	}
	if v := r.tb.metric(t, "edgemq_storage_checkpoint_last_success_timestamp_seconds"); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("edgemq_storage_checkpoint_last_success_timestamp_seconds = %v", v)
	}
	if v := r.tb.metric(t, "edgemq_log_removed_segments_total"); v < 1 {
		t.Errorf("edgemq_log_removed_segments_total = %v: the log was never trimmed", v)
	}
	r.restart()
	s, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "ret-sub"})
	s.subscribe(t, "r/#", 1)
	if m := s.receive(t, 1)[0]; string(m.Payload) != "keep" || !m.Retain {
		t.Fatalf("retained after restart: %q retain=%v", m.Payload, m.Retain)
	}
}

// TestUnreadableSnapshotFallsBack: a snapshot this build cannot read (an
// unknown version, garbage, a damaged one) is skipped: the broker starts
// from an older one or the whole log, with the sessions and retained
// messages the log holds.
func TestUnreadableSnapshotFallsBack(t *testing.T) {
	r := newRestartable(t, nil)
	s, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "snap-sub", persistent: true})
	s.subscribe(t, "snap/#", 1)
	_ = s.Disconnect(&paho.Disconnect{})
	<-doneOrTimeout(s.Done())
	p, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "snap-pub"})
	if _, err := p.publish(t, "snap/r", 1, true, []byte("kept")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := r.tb.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(r.cfg.Storage.Dir, "snapshots")
	names, _ := filepath.Glob(filepath.Join(dir, "snapshot-*.bin"))
	if len(names) == 0 {
		t.Fatal("no snapshot written at shutdown")
	}
	for i, name := range names { // every snapshot unreadable, each in its own way
		junk := [][]byte{[]byte("EDGESNP\x09 a future version"), []byte("EDGESNP\x01gob garbage that is not gob at all.."), {}}[i%3]
		if err := os.WriteFile(name, junk, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	r.tb = startBroker(t, r.cfg)
	s, ack := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "snap-sub", persistent: true})
	if !ack.SessionPresent {
		t.Fatal("session lost with its snapshot")
	}
	if m := s.receive(t, 1)[0]; string(m.Payload) != "kept" {
		t.Fatalf("backlog: %q", m.Payload)
	}
	c, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "snap-new"})
	c.subscribe(t, "snap/#", 1)
	if m := c.receive(t, 1)[0]; string(m.Payload) != "kept" || !m.Retain {
		t.Fatalf("retained: %q retain=%v", m.Payload, m.Retain)
	}
}
