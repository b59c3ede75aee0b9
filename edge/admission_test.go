package edge_test

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/edge"
)

// TestBudgetRecoversWhenConsumerLeaves: a clean subscriber that never reads
// holds the log until the disk budget refuses publishes (0x97). Once it is
// gone, publishing resumes within seconds, though nothing else happens: its
// end writes no record, and a refused publish writes none either. The same
// for the last member of a shared group: the group goes with it.
func TestBudgetRecoversWhenConsumerLeaves(t *testing.T) {
	for _, filter := range []string{"bulk/#", "$share/g/bulk/#"} {
		t.Run(filter, func(t *testing.T) { budgetRecovers(t, filter) })
	}
}

func budgetRecovers(t *testing.T, filter string) {
	r := newRestartable(t, func(c *edge.Config) {
		c.Storage.SegmentSize = 64 << 10
		c.Storage.MaxDiskBytes = 512 << 10
		c.Storage.CheckpointInterval = 200 * time.Millisecond
	})
	sub := dialRaw(t, r.ep().addr, 5)
	sub.connectWith("stuck", true, 0, func(pk *packets.Packet) { pk.Properties.ReceiveMaximum = 10 })
	sub.subscribe(1, filter, 1)
	if pk, err := sub.read(5 * time.Second); err != nil || pk.FixedHeader.Type != 9 {
		t.Fatalf("suback: %v", err)
	}
	// It reads nothing more.
	p, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "bulk-pub"})
	body := make([]byte, 4096)
	accepted := 0
	for {
		resp, err := p.publish(t, "bulk/t", 1, false, body)
		if err != nil && resp == nil {
			t.Fatalf("publish %d: %v", accepted, err)
		}
		if resp.ReasonCode == 0x97 {
			break
		}
		if accepted++; accepted > 1000 {
			t.Fatal("the budget never filled")
		}
	}
	t.Logf("refused after %d accepted", accepted)
	time.Sleep(time.Second) // checkpoints come and go: still refused
	if resp, _ := p.publish(t, "bulk/t", 1, false, body); resp == nil || resp.ReasonCode != 0x97 {
		t.Fatalf("a publish was accepted while the subscriber held the log: %+v", resp)
	}
	_ = sub.c.Close()
	eventually(t, "publishing to resume after the subscriber left", func() bool {
		resp, err := p.publish(t, "bulk/t", 1, false, body)
		if err == nil && resp.ReasonCode == 0 {
			return true
		}
		time.Sleep(100 * time.Millisecond)
		return false
	})
}
