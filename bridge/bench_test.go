package bridge_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// BenchmarkBridge runs edgemq's bridge and Mosquitto's own bridge side by
// side in one run, each from an edge broker to a Mosquitto upstream, QoS 1,
// 256 messages in flight, a 3.1.1 link, the same publisher (one paho client,
// 512 publishes in flight). Per round and broker:
//
//   - live: n messages published with the link up, from the first publish
//     to the last arrival upstream;
//   - drain: n messages published while the link is cut; from the first
//     arrival after the link returns to the last (the reconnect delay, a
//     policy, is left out);
//   - lost: 10,000 messages published while the link is cut, the edge
//     broker killed with SIGKILL and restarted, the link restored: how many
//     never arrive (Mosquitto with persistence on, as configured for a
//     bridge that should keep its queue).
//
// It reports the medians of the rounds and the ratios edgemq/Mosquitto.
// edgemq runs with sync: always (every acknowledged message fsynced);
// Mosquitto keeps its queue in memory. Run:
//
//	go test ./bridge -run '^$' -bench BenchmarkBridge -benchtime 1x
//
// BRIDGE_BENCH_MESSAGES (default 100000) and BRIDGE_BENCH_ROUNDS (3) change
// the size.
func BenchmarkBridge(b *testing.B) {
	n, rounds := envInt("BRIDGE_BENCH_MESSAGES", 100_000), envInt("BRIDGE_BENCH_ROUNDS", 3)
	type result struct{ live, drain, lost []float64 }
	res := map[string]*result{"edgemq": {}, "mosquitto": {}}
	for range b.N {
		for r := 0; r < rounds; r++ {
			for _, impl := range []string{"edgemq", "mosquitto"} {
				live, drain, lost := bridgeRound(b, impl, n)
				x := res[impl]
				x.live, x.drain, x.lost = append(x.live, live), append(x.drain, drain), append(x.lost, float64(lost))
				b.Logf("round %d %s: live %.0f msg/s, drain %.0f msg/s, lost after SIGKILL %d", r, impl, live, drain, lost)
			}
		}
	}
	e, m := res["edgemq"], res["mosquitto"]
	b.ReportMetric(median(e.live), "edgemq-live-msg/s")
	b.ReportMetric(median(m.live), "mosquitto-live-msg/s")
	b.ReportMetric(median(e.live)/median(m.live), "live-ratio")
	b.ReportMetric(median(e.drain), "edgemq-drain-msg/s")
	b.ReportMetric(median(m.drain), "mosquitto-drain-msg/s")
	b.ReportMetric(median(e.drain)/median(m.drain), "drain-ratio")
	b.ReportMetric(median(e.lost), "edgemq-lost")
	b.ReportMetric(median(m.lost), "mosquitto-lost")
}

// edgeUnderTest is the edge broker of a round: edgemq or Mosquitto.
type edgeUnderTest struct {
	addr  string
	kill  func()
	start func()
}

// bridgeRound runs one broker's round on a fresh upstream and edge.
func bridgeRound(b *testing.B, impl string, n int) (live, drain float64, lost int) {
	const killN = 10_000
	up := startMosquitto(b, "")
	ta := newTally(2*n + killN)
	sub := client(b, "tcp://"+up.addr, "central-sub-"+impl, true, ta.handle)
	subscribeAll(b, sub)
	p := newProxy(b, up.addr)
	var e edgeUnderTest
	switch impl {
	case "edgemq":
		d := newDaemon(b, b.TempDir(), fmt.Sprintf(`bridges:
  - name: central
    upstreams: [%q]
    client_id: edge-1
    keepalive: 5s
    max_inflight: 256
    backoff_min: 1s
    backoff_max: 1s
    forward: [{filter: "t/#", qos: 1}]
`, p.url()))
		d.start()
		e = edgeUnderTest{addr: d.addr, kill: d.kill, start: d.start}
	default:
		dir := b.TempDir()
		m := startMosquitto(b, fmt.Sprintf(`persistence true
persistence_location %s/
autosave_interval 1800
max_inflight_messages 256
connection central
address %s
topic t/# out 1
cleansession false
clientid mosq-edge
bridge_protocol_version mqttv311
restart_timeout 1
keepalive_interval 5
try_private false
`, filepath.Clean(dir), p.ln.Addr().String()))
		e = edgeUnderTest{addr: m.addr, kill: m.kill, start: func() { m.start(b) }}
	}
	dev := client(b, "tcp://"+e.addr, "device", true, nil)
	time.Sleep(500 * time.Millisecond) // both bridges connected

	start := time.Now()
	publishN(b, dev, 16, n, 0)
	waitForwarded(b, ta, n, 120*time.Second)
	live = float64(n) / time.Since(start).Seconds()

	p.cut()
	publishN(b, dev, 16, n, n)
	p.restore()
	waitForwarded(b, ta, n+1, 60*time.Second)
	first := time.Now()
	waitForwarded(b, ta, 2*n, 120*time.Second)
	drain = float64(n-1) / time.Since(first).Seconds()

	p.cut()
	publishN(b, dev, 16, killN, 2*n)
	dev.Disconnect(0)
	e.kill()
	e.start()
	p.restore()
	// Give the restarted broker time to reconnect and drain (the drain rate
	// measured above takes well under this).
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if u, _ := ta.counts(); u == 2*n+killN {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	u, _ := ta.counts()
	return live, drain, 2*n + killN - u
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
