package bridge_test

import (
	"fmt"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
	"github.com/edgemq/edgemq/internal/disktest"
)

// TestFullDiskDownlinkKeepsLink: on a full local disk a downlink message
// cannot be made durable, so the bridge holds it unacknowledged and tries
// again. Meanwhile the link stays up and the forward side goes on: the
// backlog in the log reaches the upstream, and no reconnect happens (with
// paho's ordered delivery the waiting message must not hold up the
// upstream's PUBACKs and PINGRESPs). Once there is room the command comes
// down.
func TestFullDiskDownlinkKeepsLink(t *testing.T) {
	for _, protocol := range []string{"3.1.1", "5"} {
		t.Run(protocol, func(t *testing.T) {
			disk := disktest.Tmpfs(t, 8<<20)
			up := startMosquitto(t, "")
			const n = 500
			ta := newTally(n)
			sub := client(t, "tcp://"+up.addr, "central-sub", true, ta.handle)
			subscribeAll(t, sub)
			p := newProxy(t, up.addr)
			p.Cut()
			bc := bridgeTo("central", proxyURL(p))
			bc.Protocol = protocol
			bc.Downlink = []edge.DownlinkRule{{Filter: "cmd/#", Local: "{topic}", QoS: 1}}
			cfg := edgeConfig(disk, []edge.BridgeConfig{bc})
			cfg.Storage.MaxDiskBytes = 0 // the disk itself is the limit
			cfg.Storage.SegmentSize = 256 << 10
			b := runEdge(t, cfg, nil)
			got := make(chan string, 10)
			local := client(t, "tcp://"+b.Addr("tcp").String(), "actuator", true, func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() })
			if tok := local.Subscribe("cmd/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
			dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
			publishN(t, dev, 4, n, 0) // the backlog, in the log

			free := disktest.Fill(t, disk)
			cloud := client(t, "tcp://"+up.addr, "cloud", true, nil)
			p.Restore()
			// Commands wait for the bridge's subscription; the first ones
			// hit the full disk and wait unacknowledged.
			for i := 0; ; i++ {
				if s := status(t, b, "central"); s.Connected {
					break
				}
				if i > 2000 {
					t.Fatal("the bridge did not connect")
				}
				time.Sleep(10 * time.Millisecond)
			}
			// Large enough that the log's segment has no room left for the
			// last of them.
			big := make([]byte, 100<<10)
			for i := range 5 {
				cloud.Publish(fmt.Sprintf("cmd/%d", i), 1, false, big).WaitTimeout(5 * time.Second)
			}
			waitForwarded(t, ta, n, 20*time.Second)
			time.Sleep(2 * bc.Keepalive) // longer than the half-open watchdog's 1.5 keepalives
			s := status(t, b, "central")
			if !s.Connected || s.Reconnects != 0 {
				t.Errorf("link on a full disk: connected %v, %d reconnects (%s); want it up throughout", s.Connected, s.Reconnects, s.LastError)
			}
			if s.Received == 5 {
				t.Fatal("every downlink message was stored: the disk was not full")
			}
			t.Logf("%d of 5 commands stored before the disk was full", s.Received)
			free()
			seen := map[string]bool{}
			deadline := time.After(20 * time.Second)
			for len(seen) < 5 {
				select {
				case tp := <-got:
					seen[tp] = true
				case <-deadline:
					t.Fatalf("after the disk had room again, %d of 5 commands came down: %v", len(seen), seen)
				}
			}
			if d := status(t, b, "central").Dropped; d[bridge.DropNoRule] != 0 {
				t.Errorf("dropped %v", d)
			}
		})
	}
}
