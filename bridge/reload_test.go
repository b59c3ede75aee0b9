package bridge_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/edge"
)

// TestReloadBridges: a reload (Broker.Reload, what SIGHUP calls) adds a bridge, changes a rule of another
// (whose unchanged rule keeps its cursor: the backlog it held arrives),
// refuses a broken config leaving the bridges as they were, and removes a
// bridge together with its cursors.
func TestReloadBridges(t *testing.T) {
	up := startMosquitto(t, "")
	ta := newTally(1000)
	sub := client(t, "tcp://"+up.addr, "central-sub", true, ta.handle)
	subscribeAll(t, sub)
	p := newProxy(t, up.addr)
	a := bridgeTo("a", proxyURL(p))
	a.Forward = append(a.Forward, edge.ForwardRule{Filter: "u/#", Remote: "{topic}", QoS: 1, Retain: "keep"})
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	cfg := edgeConfig(dir, nil)
	b := startEdgeReg(t, dir, []edge.BridgeConfig{a}, reg)
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
	publishN(t, dev, 4, 500, 0)
	waitForwarded(t, ta, 500, 20*time.Second)
	p.Cut()
	publishN(t, dev, 4, 500, 500) // the backlog of a's unchanged rule t/#

	bb := bridgeTo("b", "mqtt://"+up.addr)
	bb.Forward[0].Filter = "v/#"
	a.Forward[1].Remote = "changed/{topic}"
	cfg.Bridges = []edge.BridgeConfig{a, bb}
	if err := b.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if got := len(b.Bridges()); got != 2 {
		t.Fatalf("%d bridges after adding one, want 2", got)
	}
	bad := cfg
	bad.Bridges = append([]edge.BridgeConfig{}, cfg.Bridges...)
	bad.Bridges[1].Forward = []edge.ForwardRule{{Filter: "v/#", Remote: "{topic}", QoS: 3, Retain: "keep"}}
	err := b.Reload(bad)
	if err == nil || !strings.Contains(err.Error(), "bridges[1].forward[0].qos: must be 0, 1 or 2 (got 3)") {
		t.Fatalf("broken reload: %v, want the qos refused by its path", err)
	}
	if got := len(b.Bridges()); got != 2 {
		t.Fatalf("%d bridges after a refused reload, want the 2 running", got)
	}
	p.Restore()
	ta.wait(t, 30*time.Second) // t/# kept its cursor: its 500 waiting messages arrive

	cfg.Bridges = cfg.Bridges[:1]
	if err := b.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if s := b.Bridges(); len(s) != 1 || s[0].Name != "a" {
		t.Fatalf("bridges after removing b: %+v", s)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	cursors := 0
	for _, mf := range mfs {
		if mf.GetName() != "edgemq_log_cursor_lag_records" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "cursor" && strings.HasPrefix(l.GetValue(), "bridge/") {
					cursors++
					if strings.HasPrefix(l.GetValue(), "bridge/b/") {
						t.Errorf("cursor %s of the removed bridge is still there", l.GetValue())
					}
				}
			}
		}
	}
	if cursors != 2 {
		t.Errorf("%d bridge cursors, want a's two", cursors)
	}
}
