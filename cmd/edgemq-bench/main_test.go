package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startPlainMochi builds and starts the baseline broker as a subprocess on
// loopback ports and stops it when the test ends.
func startPlainMochi(t *testing.T) (tcpAddr, wsAddr string, pid int) {
	return startBuilt(t, "./cmd/edgemq-bench/plainmochi", mochiSpec)
}

// startBuilt builds pkg, starts it under the spec on loopback ports and stops
// it when the test ends.
func startBuilt(t *testing.T, pkg string, spec func(bin string) brokerSpec) (tcpAddr, wsAddr string, pid int) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool to build " + pkg)
	}
	dir := t.TempDir()
	bin, err := buildInModule(context.Background(), pkg, dir, filepath.Base(pkg))
	if err != nil {
		t.Fatal(err)
	}
	rb, err := launch(spec(bin), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rb.stop)
	return rb.tcpAddr, rb.wsAddr, rb.cmd.Process.Pid
}

// TestExactCounts runs short scenarios against edgemq and checks that every
// message is counted once: published == acknowledged == delivered, nothing
// lost, duplicated or reordered. It counts against edgemq, not plain mochi:
// mochi drops a subscriber's messages when its outbound queue overflows
// (QoS 2 over WebSocket did on a loaded CI machine), so exact counts against
// it depend on the machine's speed; edgemq must lose nothing on any machine,
// so a miscount here is a fault of the tally or of the broker.
func TestExactCounts(t *testing.T) {
	tcpAddr, wsAddr, pid := startBuilt(t, "./cmd/edgemq", func(bin string) brokerSpec {
		return edgemqSpec(bin, "always", true, "")
	})
	cases := []struct {
		name string
		p    params
	}{
		{"fanin qos1 tcp 3.1.1", params{scenario: "fanin", qos: 1, pubs: 4,
			target: target{addr: tcpAddr, transport: "tcp", version: proto311}}},
		{"fanin qos2 ws 3.1.1", params{scenario: "fanin", qos: 2, pubs: 4,
			target: target{addr: wsAddr, transport: "ws", version: proto311}}},
		{"fanin qos0 tcp 5", params{scenario: "fanin", qos: 0, pubs: 4,
			target: target{addr: tcpAddr, transport: "tcp", version: proto5}}},
		{"fanout qos1 tcp 3.1.1", params{scenario: "fanout", qos: 1, subs: 5,
			target: target{addr: tcpAddr, transport: "tcp", version: proto311}}},
		{"shared qos1 tcp 3.1.1", params{scenario: "shared", qos: 1, subs: 3,
			target: target{addr: tcpAddr, transport: "tcp", version: proto311}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.p
			p.duration = 500 * time.Millisecond
			p.pid = pid
			p.drain = 5 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r, err := runScenario(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			if r.Published == 0 {
				t.Fatal("nothing published")
			}
			copies := uint64(1)
			if p.scenario == "fanout" {
				copies = uint64(p.subs)
			}
			if r.Expected != r.Published*copies || r.Delivered != r.Expected {
				t.Errorf("published %d expected %d delivered %d (copies %d)", r.Published, r.Expected, r.Delivered, copies)
			}
			if p.qos > 0 && r.Acknowledged != r.Published {
				t.Errorf("published %d acknowledged %d", r.Published, r.Acknowledged)
			}
			if r.Lost != 0 || r.Duplicated != 0 || r.Reordered != 0 || r.Foreign != 0 || r.Lossy {
				t.Errorf("lost %d dup %d reordered %d foreign %d lossy %v", r.Lost, r.Duplicated, r.Reordered, r.Foreign, r.Lossy)
			}
			if r.Latency == nil || r.Latency.Samples != int(r.Delivered) {
				t.Errorf("latency samples %+v, delivered %d", r.Latency, r.Delivered)
			}
			if r.BrokerPeakRSSMB <= 0 {
				t.Errorf("broker peak RSS not measured: %+v", r)
			}
			for _, n := range r.Notes {
				t.Log("note:", n)
			}
		})
	}
}

// TestBacklogAndConns runs the two scenarios that do not stream: an offline
// persistent session's backlog (within mochi's 8192-message offline bound)
// and idle connections.
func TestBacklogAndConns(t *testing.T) {
	tcpAddr, _, pid := startPlainMochi(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tgt := target{addr: tcpAddr, transport: "tcp", version: proto311}
	r, err := runScenario(ctx, params{scenario: "backlog", qos: 1, backlog: 1000, target: tgt, pid: pid})
	if err != nil {
		t.Fatal(err)
	}
	if r.Published != 1000 || r.Delivered != 1000 || r.Lost != 0 || r.Duplicated != 0 {
		t.Errorf("backlog: published %d delivered %d lost %d dup %d", r.Published, r.Delivered, r.Lost, r.Duplicated)
	}
	r, err = runScenario(ctx, params{scenario: "conns", conns: 50, target: tgt, pid: pid})
	if err != nil {
		t.Fatal(err)
	}
	if r.Conns != 50 || r.RSSPerConnKB == 0 {
		t.Errorf("conns: %d connections, %.1f KB each", r.Conns, r.RSSPerConnKB)
	}
}

// TestTally checks the counting itself: duplicates, reordering, gaps (loss)
// and foreign messages, and that the closed-loop window gets a token back
// per delivered message only, not for a lost one.
func TestTally(t *testing.T) {
	const nonce = 7
	win := newWindow(10, 1, 2, time.Second)
	for seq := range uint64(7) {
		win.take(nil, 0, seq)
	}
	tl := newTally(nonce, 2, win, false, nil)
	msg := func(n uint32, pub uint32, seq uint64) []byte {
		b := make([]byte, 32)
		encodeHeader(b, n, pub, seq, time.Now().UnixNano())
		return b
	}
	now := time.Now().UnixNano()
	for _, s := range []uint64{0, 1, 1, 3, 2, 5} { // dup 1, 2 late, 4 missing
		tl.record(msg(nonce, 0, s), now, nil)
	}
	tl.record(msg(nonce+1, 0, 9), now, nil) // another run
	tl.record(msg(nonce, 5, 0), now, nil)   // unknown publisher
	tl.record([]byte("short"), now, nil)
	p := tl.pubs[0]
	if p.unique != 5 || p.dup != 1 || p.reorder != 1 || p.hw != 5 {
		t.Errorf("unique %d dup %d reorder %d hw %d, want 5 1 1 5", p.unique, p.dup, p.reorder, p.hw)
	}
	if tl.foreign != 2 || tl.short != 1 {
		t.Errorf("foreign %d short %d, want 2 1", tl.foreign, tl.short)
	}
	// Five unique deliveries give five tokens back (3 + 5 free): not the
	// duplicate, and not seq 4, which never arrived although the high-water
	// mark passed it, nor seq 6, not delivered yet.
	if got := len(win.tokens); got != 8 {
		t.Errorf("window tokens free %d, want 8", got)
	}
	if got := tl.missing(0, 7, 5); len(got) != 2 || got[0] != 4 || got[1] != 6 {
		t.Errorf("missing %v, want [4 6]", got)
	}
	if l := tl.lat[0]; len(l) != 5 {
		t.Errorf("latency samples %d, want 5", len(l))
	}
	// A second later, seq 4 and 6 are presumed lost: their tokens come back,
	// and a late delivery of seq 4 then gives none.
	win.reclaim(time.Now().Add(2 * time.Second))
	if got, n := len(win.tokens), win.reclaimed.Load(); got != 10 || n != 2 {
		t.Errorf("after reclaim: %d tokens free, %d reclaimed; want 10 and 2", got, n)
	}
	win.take(nil, 0, 7)
	tl.record(msg(nonce, 0, 4), now, nil)
	if got := len(win.tokens); got != 9 {
		t.Errorf("a late delivery gave its token again: %d free, want 9", got)
	}
	if p := tl.pubs[0]; p.unique != 6 || p.reorder != 2 {
		t.Errorf("late seq 4: unique %d reorder %d, want 6 2", p.unique, p.reorder)
	}
}

// TestCompareSteady runs the steady 1,000 msg/s QoS 1 scenario through the
// compare driver, asking for its CPU row alone: the latency runs it reads
// happen, and give the fsync row measured in the same directory and the
// margin of p99 over fsync p99.
func TestCompareSteady(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool to build plainmochi")
	}
	out := filepath.Join(t.TempDir(), "runs.json")
	var stdout, stderr bytes.Buffer
	args := []string{"compare", "-quick", "-duration", "500ms", "-mosquitto", "", "-edgemq", "none",
		"-scenarios", cpuName, "-json", out}
	if err := run(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	var rep compareReport
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 1 {
		t.Fatalf("%d runs, want 1 (the cpu and fsync rows read the latency run)", len(rep.Runs))
	}
	r := rep.Runs[0]
	if r.Scenario != "latency" || r.TargetRate != 1000 || r.Publishers != 1 || r.Subscribers != 1 || r.Lossy {
		t.Errorf("run %+v", r)
	}
	if r.Fsync == nil || r.Fsync.Samples == 0 || r.Fsync.P99 <= 0 {
		t.Errorf("fsync not measured: %+v", r.Fsync)
	}
	got := map[string]*cell{}
	for _, c := range rep.Cells {
		got[c.Scenario] = c
	}
	if runtime.GOOS == "linux" && r.FsyncCPUMicros <= 0 {
		t.Errorf("fsync CPU not measured: %v µs", r.FsyncCPUMicros)
	}
	names := []string{steadyName, fsyncName, cpuName}
	if runtime.GOOS == "linux" {
		names = append(names, fsyncCPU)
	}
	for _, name := range names {
		if c := got[name]; c == nil || len(c.Values) != 1 || c.Broker != "mochi" {
			t.Errorf("cell %q: %+v", name, c)
		}
	}
	if c := got[fsyncName]; c != nil && c.Median != r.Fsync.P99 {
		t.Errorf("fsync row %v, run's fsync p99 %v", c.Median, r.Fsync.P99)
	}
	if !strings.Contains(stdout.String(), "fsync p99 ") {
		t.Errorf("no fsync margin in the output:\n%s", stdout.String())
	}
}

// TestCompareQuick runs the compare driver end to end against plain mochi
// alone: build, start, run, stop, summarize, JSON.
func TestCompareQuick(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool to build plainmochi")
	}
	out := filepath.Join(t.TempDir(), "runs.json")
	var stdout, stderr bytes.Buffer
	args := []string{"compare", "-quick", "-duration", "300ms", "-mosquitto", "", "-edgemq", "none",
		"-scenarios", "fanin qos1,conns 1k", "-json", out}
	if err := run(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	var rep compareReport
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 2 || len(rep.Cells) != 2 {
		t.Fatalf("%d runs and %d cells, want 2 and 2:\n%s", len(rep.Runs), len(rep.Cells), stdout.String())
	}
	for _, c := range rep.Cells {
		if c.Broker != "mochi" || len(c.Values) != 1 || c.Median <= 0 || c.Lossy || len(c.Errors) > 0 {
			t.Errorf("cell %+v", c)
		}
	}
	if !strings.Contains(stdout.String(), "fanin qos1") {
		t.Errorf("no table in the output:\n%s", stdout.String())
	}
}

// TestBridgeScenario runs the bridge scenario small: both edge brokers
// forward everything live and after the outage, and edgemq loses nothing
// across the kill -9 during the outage.
func TestBridgeScenario(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool to build edgemq")
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err != nil {
		t.Skip("mosquitto not installed (apt-get install mosquitto)")
	}
	out := filepath.Join(t.TempDir(), "bridge.json")
	var stdout, stderr bytes.Buffer
	args := []string{"bridge", "-messages", "2000", "-restart", "300", "-rounds", "1", "-settle", "3s", "-json", out}
	if err := run(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	var rep bridgeReport
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 2 {
		t.Fatalf("%d runs, want 2:\n%s", len(rep.Runs), stderr.String())
	}
	for _, r := range rep.Runs {
		if r.LiveMsgPerSec <= 0 || r.DrainMsgPerSec <= 0 || r.Lost != 0 || len(r.Notes) > 0 {
			t.Errorf("%s: %+v", r.Broker, r)
		}
		if r.Broker == "edgemq" && (r.RestartSent != 300 || r.RestartLost != 0) {
			t.Errorf("edgemq lost %d of %d across the kill -9", r.RestartLost, r.RestartSent)
		}
	}
	if !strings.Contains(stdout.String(), "drain of the backlog") {
		t.Errorf("no table in the output:\n%s", stdout.String())
	}
}
