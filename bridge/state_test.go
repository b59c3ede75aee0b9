package bridge_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
)

// lines returns the log lines with msg="<msg>".
func (l *lockedBuffer) lines(msg string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		if strings.Contains(line, fmt.Sprintf("msg=%q", msg)) {
			out = append(out, line)
		}
	}
	return out
}

// TestStateTruthful: every edgemq_bridge_* metric the issue names, and the
// log, say what is true through a connection, traffic both ways, an
// outage with a backlog and the reconnect, against Mosquitto over real
// sockets.
func TestStateTruthful(t *testing.T) {
	up := startMosquitto(t, "")
	ta := newTally(150)
	subscribeAll(t, client(t, "tcp://"+up.addr, "central-sub", true, ta.handle))
	p := newProxy(t, up.addr)
	bc := bridgeTo("central", proxyURL(p))
	bc.Downlink = []edge.DownlinkRule{{Filter: "cmd/#", Local: "{topic}", QoS: 1}}
	reg := prometheus.NewRegistry()
	started := time.Now()
	b, logBuf := startEdgeLog(t, t.TempDir(), []edge.BridgeConfig{bc}, reg)
	m := func(name string) float64 { t.Helper(); return metric(t, reg, name) }
	waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.Connected })
	if m("edgemq_bridge_connected") != 1 || m("edgemq_bridge_upstream") != 0 || m("edgemq_bridge_reconnects_total") != 0 {
		t.Errorf("connected: connected %v upstream %v reconnects %v, want 1 0 0",
			m("edgemq_bridge_connected"), m("edgemq_bridge_upstream"), m("edgemq_bridge_reconnects_total"))
	}
	if m("edgemq_bridge_connect_failures_total") != 0 || m("edgemq_bridge_last_error_timestamp_seconds") != 0 {
		t.Errorf("connect failures %v, last error at %v before any failure, want 0 0",
			m("edgemq_bridge_connect_failures_total"), m("edgemq_bridge_last_error_timestamp_seconds"))
	}
	since := m("edgemq_bridge_state_since_timestamp_seconds")
	if s := float64(started.UnixNano()) / 1e9; since < s || since > s+10 {
		t.Errorf("state since %v, want the connect, after %v", since, s)
	}

	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
	publishN(t, dev, 4, 100, 0)
	waitForwarded(t, ta, 100, 20*time.Second)
	waitStatus(t, b, "central", 5*time.Second, func(s bridge.Status) bool { return s.Forwarded == 100 && s.BacklogRecords == 0 })
	got := localTopics(t, b, "actuator")
	cloud := client(t, "tcp://"+up.addr, "cloud", true, nil)
	downlinkThrough(t, cloud, got, "cmd/1")
	// Counted once its wait for durability returns, which may be after the
	// local subscriber got it (the log's durability event can deliver it
	// before the downlink's wait wakes).
	waitStatus(t, b, "central", 5*time.Second, func(s bridge.Status) bool { return s.Received >= 1 })
	if f, r := m("edgemq_bridge_forwarded_messages_total"), m("edgemq_bridge_received_messages_total"); f != 100 || r < 1 {
		t.Errorf("forwarded %v received %v, want 100 and at least 1", f, r)
	}
	waitStatus(t, b, "central", 5*time.Second, func(s bridge.Status) bool { return s.BacklogMessages == 0 && s.BacklogBytes == 0 })
	if m("edgemq_bridge_backlog_records") != 0 || m("edgemq_bridge_backlog_messages") != 0 || m("edgemq_bridge_backlog_seconds") != 0 {
		t.Errorf("backlog %v records, %v messages, %vs with nothing waiting",
			m("edgemq_bridge_backlog_records"), m("edgemq_bridge_backlog_messages"), m("edgemq_bridge_backlog_seconds"))
	}

	cut := time.Now()
	p.Cut()
	s := waitStatus(t, b, "central", 3*bc.Keepalive, func(s bridge.Status) bool { return !s.Connected })
	for i := range 30 { // logged, older than the rule's, and no rule's
		if tok := dev.Publish("other/"+strconv.Itoa(i), 1, false, "x"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	others := time.Now()
	time.Sleep(1500 * time.Millisecond)
	rules := time.Now()
	publishN(t, dev, 4, 50, 100)
	time.Sleep(1500 * time.Millisecond) // an outage of a few reconnect attempts, a backlog 1.5 s old
	if m("edgemq_bridge_connected") != 0 || m("edgemq_bridge_state_since_timestamp_seconds") < float64(cut.UnixNano())/1e9 {
		t.Errorf("after the cut: connected %v since %v, want 0 since the cut", m("edgemq_bridge_connected"), m("edgemq_bridge_state_since_timestamp_seconds"))
	}
	if r, msgs := m("edgemq_bridge_backlog_records"), m("edgemq_bridge_backlog_messages"); r < 80 || msgs != 50 {
		t.Errorf("backlog %v records, %v messages during the outage; want at least the 80 published, and the rule's 50", r, msgs)
	}
	if by, sec := m("edgemq_bridge_backlog_bytes"), m("edgemq_bridge_backlog_seconds"); by < 50*20 || sec < 1 || sec > time.Since(rules).Seconds() {
		t.Errorf("backlog %v bytes, %vs old; want at least 1000 bytes and the age of the rule's oldest message, %.1fs, not the other topic's, %.1fs",
			by, sec, time.Since(rules).Seconds(), time.Since(others).Seconds())
	}
	if s = status(t, b, "central"); s.LastError == "" {
		t.Error("no last error after the cut")
	}
	if f, at := m("edgemq_bridge_connect_failures_total"), m("edgemq_bridge_last_error_timestamp_seconds"); f < 2 || f != float64(s.ConnectFailures) || at < float64(cut.UnixNano())/1e9 {
		t.Errorf("connect failures %v (status %d), last error at %v; want a few in a two-second outage, the last after the cut", f, s.ConnectFailures, at)
	}
	// The log: the link went down, with how long it was up and the
	// backlog; the failed attempts are not one Warn line each.
	if l := logBuf.lines("bridge: link down"); len(l) != 1 || !strings.Contains(l[0], "connected_for=") || !strings.Contains(l[0], "upstream=0") {
		t.Errorf("link down lines: %q, want one with upstream and connected_for", l)
	}
	if l := logBuf.lines("bridge: connect failed"); len(l) > 1 {
		t.Errorf("%d connect failed lines at Warn in a two-second outage, want at most one (then once a minute):\n%s", len(l), strings.Join(l, "\n"))
	}

	p.Restore()
	ta.wait(t, 20*time.Second)
	waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool {
		return s.Forwarded == 150 && s.BacklogRecords == 0 && s.BacklogMessages == 0
	})
	if m("edgemq_bridge_connected") != 1 || m("edgemq_bridge_reconnects_total") != 1 || m("edgemq_bridge_backlog_seconds") != 0 {
		t.Errorf("after the restore: connected %v reconnects %v backlog %vs, want 1 1 0",
			m("edgemq_bridge_connected"), m("edgemq_bridge_reconnects_total"), m("edgemq_bridge_backlog_seconds"))
	}
	l := logBuf.lines("bridge: connected")
	if len(l) != 2 || !strings.Contains(l[1], "down_for=") || strings.Contains(l[1], "failed_attempts=0") || strings.Contains(l[1], `last_error=""`) {
		t.Errorf("connected lines: %q; want a second one with down_for, the failed attempts and the last error", l)
	}
	for _, reason := range bridge.DropReasons {
		if v := dropped(t, reg, reason); v != 0 {
			t.Errorf("dropped{reason=%q} = %v, want 0", reason, v)
		}
	}
}

// dropped returns edgemq_bridge_dropped_messages_total{bridge="central",reason}.
func dropped(t testing.TB, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "edgemq_bridge_dropped_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["bridge"] == "central" && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no edgemq_bridge_dropped_messages_total{reason=%q}", reason)
	return 0
}

// startEdgeLog is startEdgeReg with the broker's log (Info and up) kept for
// the test to read.
func startEdgeLog(t testing.TB, dir string, bridges []edge.BridgeConfig, reg *prometheus.Registry) (*edge.Broker, *lockedBuffer) {
	t.Helper()
	logBuf := &lockedBuffer{}
	b, err := edge.New(edgeConfig(dir, bridges), edge.Options{
		Logger:   slog.New(slog.NewTextHandler(logBuf, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Registry: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopEdge(t, b) })
	return b, logBuf
}
