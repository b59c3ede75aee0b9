package bridge_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/edgemq/edgemq/internal/daemontest"
)

// TestOutageKillDrainMosquitto: an MQTT 5 bridge from the built edgemq to
// Mosquitto. The link goes down while devices publish, edgemq is killed
// with SIGKILL during the outage and restarted, devices publish more, then
// the link returns: every message arrives, oldest first (in order per
// topic), without any new traffic to trigger it. Prints the drain rate.
func TestOutageKillDrainMosquitto(t *testing.T) {
	up := startMosquitto(t, "")
	const live, during = 2000, 10000
	ta := newTally(live + 2*during)
	sub := client(t, "tcp://"+up.addr, "central-sub", true, ta.handle)
	subscribeAll(t, sub)
	p := newProxy(t, up.addr)
	d := daemontest.New(t, t.TempDir(), "info", fmt.Sprintf(`bridges:
  - name: central
    upstreams: [%q]
    protocol: "5"
    client_id: edge-1
    keepalive: 2s
    backoff_min: 20ms
    backoff_max: 200ms
    forward: [{filter: "t/#", qos: 1}]
`, proxyURL(p)))
	d.Start()
	dev := client(t, "tcp://"+d.Addr(), "device", true, nil)
	publishN(t, dev, 8, live, 0)
	waitForwarded(t, ta, live, 30*time.Second)

	p.Cut()
	publishN(t, dev, 8, during, live)
	d.Kill() // during the outage: the backlog is only in edgemq's log
	d.Start()
	dev = client(t, "tcp://"+d.Addr(), "device-2", true, nil)
	publishN(t, dev, 8, during, live+during)
	if u, _ := ta.counts(); u != live {
		t.Fatalf("upstream got %d messages during the outage, want %d", u, live)
	}
	restored := time.Now()
	p.Restore()
	ta.wait(t, 60*time.Second)
	el := time.Since(restored)
	_, dups := ta.counts()
	t.Logf("backlog of %d messages (across a SIGKILL) drained in %.2fs after the upstream returned: %.0f msg/s; %d duplicates",
		2*during, el.Seconds(), float64(2*during)/el.Seconds(), dups)
}
