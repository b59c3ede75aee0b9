package edge_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/edgemq/edgemq/edge"
	"github.com/edgemq/edgemq/internal/disktest"
)

// TestFullDiskHoles: publishes refused on a full disk leave holes in the
// log (offsets a failed append took). An offline persistent session gets
// every acknowledged message at once when it comes back, before and after
// a restart: a hole is not a record that might become readable, so no scan
// waits on it.
func TestFullDiskHoles(t *testing.T) {
	disk := disktest.Tmpfs(t, 4<<20)
	r := newRestartable(t, func(c *edge.Config) {
		c.Storage.Dir = disk
		c.Storage.MaxDiskBytes = 0 // the disk itself is the limit
		c.Storage.SegmentSize = 256 << 10
	})
	for _, id := range []string{"hole-a", "hole-b"} {
		s, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: id, persistent: true})
		s.subscribe(t, "hole/#", 1)
		_ = s.Disconnect(&paho.Disconnect{})
		<-doneOrTimeout(s.Done())
	}
	p, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "hole-pub"})
	var acked []string
	publish := func(name string, want byte) {
		t.Helper()
		resp, err := p.publish(t, "hole/t", 1, false, []byte(name))
		if err != nil && resp == nil {
			t.Fatalf("publish %s: %v", name, err)
		}
		switch {
		case resp.ReasonCode == 0:
			acked = append(acked, name)
		case resp.ReasonCode != want:
			t.Fatalf("publish %s: reason %#x, want %#x", name, resp.ReasonCode, want)
		}
	}
	publish("before", 0)
	free := disktest.Fill(t, disk)
	refused := 0
	for i := range 300 {
		n := len(acked)
		publish(fmt.Sprint("full-", i), 0x83)
		if len(acked) == n {
			refused++
		}
	}
	if refused < 200 {
		t.Fatalf("only %d of 300 publishes refused on a full disk", refused)
	}
	free()
	for i := range 50 {
		publish(fmt.Sprint("after-", i), 0)
	}
	t.Logf("%d publishes refused on the full disk, %d acknowledged", refused, len(acked))

	check := func(id string) {
		t.Helper()
		s, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: id, persistent: true})
		for i, m := range s.receive(t, len(acked)) {
			if string(m.Payload) != acked[i] {
				t.Fatalf("%s: message %d is %q, want %q", id, i, m.Payload, acked[i])
			}
		}
		// A live message is not held behind anything.
		if _, err := p.publish(t, "hole/t", 1, false, []byte("live-"+id)); err != nil {
			t.Fatal(err)
		}
		if m := s.receive(t, 1)[0]; !strings.HasPrefix(string(m.Payload), "live-") {
			t.Fatalf("%s: live message %q", id, m.Payload)
		}
		acked = append(acked, "live-"+id)
	}
	check("hole-a")
	r.restart()
	p, _ = connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "hole-pub"})
	check("hole-b")
}

// TestResendAfterFullDisk: a QoS 2 message a subscriber holds unacknowledged
// is resent when it reconnects, after its delivery record is durable. On a
// full disk that record waits for room; the connection then gets it, and
// every later message, as soon as there is room again.
func TestResendAfterFullDisk(t *testing.T) {
	disk := disktest.Tmpfs(t, 4<<20)
	cfg := testConfig(t)
	cfg.Storage.Dir = disk
	cfg.Storage.MaxDiskBytes = 0
	cfg.Storage.SegmentSize = 256 << 10
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	id := "rs-" + strings.Repeat("x", 200) // its delivery records are larger than what is left
	sub := dialRaw(t, addr, 5)
	sub.connect(id, false, 0)
	sub.subscribe(1, "rs/#", 2)
	if _, err := sub.read(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	p, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "rs-pub"})
	if _, err := p.publish(t, "rs/t", 2, false, []byte("one")); err != nil {
		t.Fatal(err)
	}
	sub.readPublishes(1, 5*time.Second) // and no PUBREC
	free := disktest.Fill(t, disk)
	for _, n := range []int{4096, 512, 64, 1} { // the log's last page too
		for i := 0; ; i++ {
			resp, err := p.publish(t, "f", 1, false, make([]byte, n))
			if err != nil || resp.ReasonCode != 0 {
				break
			}
		}
	}
	again := dialRaw(t, addr, 5) // takes the session over: the resend needs a record
	if ack := again.connect(id, false, 0); !ack.SessionPresent {
		t.Fatal("session not present")
	}
	time.Sleep(500 * time.Millisecond)
	free()
	if _, err := p.publish(t, "rs/t", 2, false, []byte("two")); err != nil {
		t.Fatal(err)
	}
	got := again.readPublishes(2, 10*time.Second)
	if string(got[0].Payload) != "one" || !got[0].FixedHeader.Dup || string(got[1].Payload) != "two" {
		t.Fatalf("after the full disk: %q dup=%v, %q", got[0].Payload, got[0].FixedHeader.Dup, got[1].Payload)
	}
}

// TestCheckpointRetriedAfterFullDisk: a checkpoint that fails on a full disk
// is tried again every interval, with no new traffic to prompt it, and the
// last-success figure of an idle broker stays current.
func TestCheckpointRetriedAfterFullDisk(t *testing.T) {
	disk := disktest.Tmpfs(t, 4<<20)
	cfg := testConfig(t)
	cfg.Storage.Dir = disk
	cfg.Storage.MaxDiskBytes = 0
	cfg.Storage.CheckpointInterval = time.Second
	tb := startBroker(t, cfg)
	p, _ := connectV5(t, dialNet(t, "tcp", tb.Addr("tcp").String(), nil), v5Opts{id: "cp-pub"})
	if _, err := p.publish(t, "cp/r", 1, true, make([]byte, 8<<10)); err != nil {
		t.Fatal(err)
	}
	free := disktest.Fill(t, disk)
	eventually(t, "a checkpoint to fail on the full disk", func() bool {
		return tb.metric(t, "edgemq_storage_checkpoint_failures_total") > 0
	})
	free()
	freed := float64(time.Now().Unix())
	eventually(t, "a checkpoint to succeed again with no new traffic", func() bool {
		return tb.metric(t, "edgemq_storage_checkpoint_last_success_timestamp_seconds") >= freed
	})
	failures := tb.metric(t, "edgemq_storage_checkpoint_failures_total")
	time.Sleep(2500 * time.Millisecond) // idle: nothing new to checkpoint
	if v := tb.metric(t, "edgemq_storage_checkpoint_last_success_timestamp_seconds"); v < freed+2 {
		t.Errorf("last success %v on an idle broker, want at least %v", v, freed+2)
	}
	if v := tb.metric(t, "edgemq_storage_checkpoint_failures_total"); v != failures {
		t.Errorf("failures went from %v to %v with room on the disk", failures, v)
	}
}
