package bridge_test

import (
	"fmt"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
	"github.com/edgemq/edgemq/internal/disktest"
)

// TestDownlinkOrderAfterFailedWrite: downlink commands whose write to the
// log fails (the disk fills up after the append was accepted) are stored
// again and reach local subscribers in the order they came, before a
// command that came after them once the disk had room again.
func TestDownlinkOrderAfterFailedWrite(t *testing.T) {
	for _, protocol := range []string{"3.1.1", "5"} {
		t.Run(protocol, func(t *testing.T) {
			disk := disktest.Tmpfs(t, 8<<20)
			up := startMosquitto(t, "")
			bc := bridgeTo("central", "mqtt://"+up.addr)
			bc.Protocol = protocol
			bc.Forward = nil
			bc.Downlink = []edge.DownlinkRule{{Filter: "cmd/#", Local: "{topic}", QoS: 1}}
			cfg := edgeConfig(disk, []edge.BridgeConfig{bc})
			cfg.Storage.MaxDiskBytes = 0 // the disk itself is the limit: the write fails, not the admission
			cfg.Storage.SegmentSize = 256 << 10
			reg := prometheus.NewRegistry()
			b := runEdge(t, cfg, reg)
			got := make(chan string, 100)
			local := client(t, "tcp://"+b.Addr("tcp").String(), "actuator", true, func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() })
			if tok := local.Subscribe("cmd/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
			cloud := client(t, "tcp://"+up.addr, "cloud", true, nil)
			waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.Connected })
			downlinkThrough(t, cloud, got, "cmd/probe")

			free := disktest.Fill(t, disk)
			big := make([]byte, 100<<10)
			const n = 5
			for i := range n {
				cloud.Publish(fmt.Sprintf("cmd/%d", i), 1, false, big).WaitTimeout(5 * time.Second)
			}
			deadline := time.Now().Add(10 * time.Second)
			for gauge(t, reg, "edgemq_log_write_errors_total") == 0 {
				if time.Now().After(deadline) {
					t.Fatal("no write failed: the disk was not full")
				}
				time.Sleep(5 * time.Millisecond)
			}
			free()
			cloud.Publish("cmd/after", 1, false, "x").WaitTimeout(5 * time.Second)
			var order []string
			for len(order) < n+1 {
				select {
				case tp := <-got:
					if tp != "cmd/probe" {
						order = append(order, tp)
					}
				case <-time.After(20 * time.Second):
					t.Fatalf("after the disk had room again, only %v came down", order)
				}
			}
			for i, tp := range order {
				want := fmt.Sprintf("cmd/%d", i)
				if i == n {
					want = "cmd/after"
				}
				if tp != want {
					t.Fatalf("local order %v, want cmd/0..cmd/%d then cmd/after", order, n-1)
				}
			}
		})
	}
}

// gauge returns the value of an unlabelled metric.
func gauge(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
