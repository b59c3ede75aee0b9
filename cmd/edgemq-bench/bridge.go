package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgemq/edgemq/internal/linkproxy"
)

// The bridge scenario runs edgemq's bridge and Mosquitto's own bridge side
// by side: an edge broker (edgemq with storage.sync always, or Mosquitto
// with a `connection` bridge, `cleansession false`, persistence on) bridges
// QoS 1 over MQTT 3.1.1 through a proxy (which cuts the link) to a fresh
// Mosquitto upstream, with the same bridge window on both. One publisher at
// the edge, one subscriber at the upstream, both the generator's own lean
// clients. Per round and broker:
//
//   - live: n messages published with the link up, from the first publish
//     to the last arrival upstream;
//   - drain: n messages published while the link is cut, then the link
//     restored: from the first arrival to the last (the reconnect delay, a
//     policy, is left out; the span from the restore is reported too);
//   - restart: k messages published while the link is cut, the edge broker
//     killed with SIGKILL and restarted, the link restored: how many never
//     arrive.
//
// The edge broker's CPU seconds per million forwarded messages are
// reported for live and drain: steadier than msg/s on a busy machine.

// bridgeRound is what one round measured for one edge broker.
type bridgeRound struct {
	Broker string `json:"broker"`
	Round  int    `json:"round"`
	// LiveMsgPerSec: n messages over first publish to last arrival.
	LiveMsgPerSec float64 `json:"live_msg_per_sec"`
	LiveCPUPerM   float64 `json:"live_broker_cpu_sec_per_million"`
	// LivePublishPerSec is the live phase's n over first publish to last
	// PUBACK at the edge: the edge broker's intake while it forwards.
	LivePublishPerSec float64 `json:"live_publish_per_sec"`
	// DrainMsgPerSec: n-1 over first to last arrival after the restore.
	DrainMsgPerSec float64 `json:"drain_msg_per_sec"`
	DrainSeconds   float64 `json:"drain_seconds"`
	// DrainFromRestore is the restore to the last arrival: the
	// reconnect included.
	DrainFromRestore float64 `json:"drain_from_restore_seconds"`
	DrainCPUPerM     float64 `json:"drain_broker_cpu_sec_per_million"`
	// Lost counts messages of the live and drain phases that never
	// arrived (0 for a sound bridge); RestartLost those of the restart
	// phase, of RestartSent.
	Lost        uint64   `json:"lost"`
	RestartLost uint64   `json:"restart_lost"`
	RestartSent uint64   `json:"restart_sent"`
	Duplicated  uint64   `json:"duplicated"`
	Reordered   uint64   `json:"reordered"`
	LoadAvg     float64  `json:"load_avg_1m"`
	Notes       []string `json:"notes,omitempty"`
}

// bridgeReport is the JSON output of the bridge scenario.
type bridgeReport struct {
	Machine  string        `json:"machine"`
	Started  time.Time     `json:"started"`
	Seconds  float64       `json:"seconds"`
	Messages int           `json:"messages"`
	Restart  int           `json:"restart_messages"`
	Window   int           `json:"bridge_window"`
	Runs     []bridgeRound `json:"runs"`
}

// bridgeOptions are the scenario's knobs.
type bridgeOptions struct {
	n, restart, window, inflight, size int
	settle                             time.Duration
}

func runBridgeCompare(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgemq-bench bridge", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bridgeOptions
	rounds := fs.Int("rounds", 3, "rounds; the two edge brokers alternate within each round")
	fs.IntVar(&o.n, "messages", 100_000, "messages of the live phase, and the backlog of the drain phase")
	fs.IntVar(&o.restart, "restart", 10_000, "messages queued during the outage of the restart phase")
	fs.IntVar(&o.window, "window", 256, "QoS 1 messages in flight on the bridge, both brokers (edgemq max_inflight, Mosquitto max_inflight_messages)")
	fs.IntVar(&o.inflight, "inflight", 100, "most unacknowledged publishes of the publisher at the edge")
	fs.IntVar(&o.size, "size", 64, "payload bytes (at least 24, the bench header)")
	fs.DurationVar(&o.settle, "settle", 10*time.Second, "stop waiting for arrivals after this long without one")
	mosq := fs.String("mosquitto", "/usr/sbin/mosquitto", "Mosquitto binary: the upstream, and the other edge broker")
	edgemq := fs.String("edgemq", "", "edgemq binary; empty: go build ./cmd/edgemq")
	baseline := fs.String("baseline", "", "a second edgemq binary (main's build, say), run as edgemq-base in alternation with the others: a before/after in one run")
	jsonOut := fs.String("json", "", "also write every round as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.size = max(o.size, 24)
	if _, err := os.Stat(*mosq); err != nil {
		return fmt.Errorf("the bridge scenario needs Mosquitto (apt-get install mosquitto): %w", err)
	}
	work, err := os.MkdirTemp("", "edgemq-bench-bridge-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if *edgemq == "" {
		if *edgemq, err = buildInModule(ctx, "./cmd/edgemq", work, "edgemq"); err != nil {
			return err
		}
	}
	rep := bridgeReport{Machine: machine(), Started: time.Now().UTC(), Messages: o.n, Restart: o.restart, Window: o.window}
	impls := []string{"edgemq", "mosquitto"}
	bins := map[string]string{"edgemq": *edgemq}
	if *baseline != "" {
		impls = append(impls, "edgemq-base")
		bins["edgemq-base"] = *baseline
	}
	for round := range *rounds {
		for i := range impls {
			impl := impls[(round+i)%len(impls)]
			if ctx.Err() != nil {
				return ctx.Err()
			}
			dir := filepath.Join(work, fmt.Sprintf("%s-%d", impl, round))
			r, err := bridgeOnce(ctx, impl, bins[impl], *mosq, dir, o)
			r.Broker, r.Round = impl, round+1
			if err != nil {
				r.Notes = append(r.Notes, "error: "+err.Error())
			}
			rep.Runs = append(rep.Runs, r)
			fmt.Fprintf(stderr, "round %d %-9s live %8.0f msg/s (published %.0f/s, %.1f CPU s/M)  drain %8.0f msg/s in %.2f s (%.1f CPU s/M)  lost %d  restart lost %d of %d  dup %d %v\n",
				round+1, impl, r.LiveMsgPerSec, r.LivePublishPerSec, r.LiveCPUPerM, r.DrainMsgPerSec, r.DrainSeconds, r.DrainCPUPerM, r.Lost, r.RestartLost, r.RestartSent, r.Duplicated, r.Notes)
		}
	}
	rep.Seconds = time.Since(rep.Started).Seconds()
	printBridge(stdout, rep)
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(*jsonOut, b, 0o644)
	}
	return nil
}

// bridgeEdgeSpec is the edge broker of the scenario, bridging bench/# at
// QoS 1 over MQTT 3.1.1 to upstream.
func bridgeEdgeSpec(impl, edgemqBin, mosqBin, upstream string, window int) brokerSpec {
	if strings.HasPrefix(impl, "edgemq") {
		s := edgemqSpec(edgemqBin, "always", true, "")
		base := s.start
		s.start = func(dir string, tcp, ws int) (*exec.Cmd, error) {
			cmd, err := base(dir, tcp, ws)
			if err != nil {
				return nil, err
			}
			// edgemqSpec wrote its config to dir/edgemq.yaml; the bridge
			// is one more top-level section.
			f, err := os.OpenFile(filepath.Join(dir, "edgemq.yaml"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				return nil, err
			}
			_, err = fmt.Fprintf(f, `bridges:
  - name: central
    upstreams: ["mqtt://%s"]
    protocol: "3.1.1"
    client_id: edgemq-edge
    keepalive: 5s
    max_inflight: %d
    backoff_min: 1s
    backoff_max: 1s
    forward: [{filter: "bench/#", qos: 1}]
`, upstream, window)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			return cmd, err
		}
		return s
	}
	return brokerSpec{
		name: "mosquitto",
		start: func(dir string, tcp, ws int) (*exec.Cmd, error) {
			user := ""
			if os.Geteuid() == 0 {
				user = "user root\n" // else it drops to user mosquitto, which cannot write dir
			}
			conf := fmt.Sprintf(`%slistener %d 127.0.0.1
allow_anonymous true
listener %d 127.0.0.1
protocol websockets
persistence true
persistence_location %s/
autosave_interval 1800
max_queued_messages 0
max_inflight_messages %d
connection central
address %s
topic bench/# out 1
cleansession false
clientid mosquitto-edge
bridge_protocol_version mqttv311
restart_timeout 1
keepalive_interval 5
try_private false
`, user, tcp, ws, filepath.Clean(dir), window, upstream)
			path := filepath.Join(dir, "mosquitto.conf")
			if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
				return nil, err
			}
			return exec.Command(mosqBin, "-c", path), nil
		},
	}
}

// reconnectWait is how long the scenario waits for a bridge to reconnect
// and send its first message: Mosquitto 2.0.11 took 5-6 s with
// restart_timeout 1.
const reconnectWait = 15 * time.Second

// bridgeOnce runs one round for one edge broker on a fresh upstream.
func bridgeOnce(ctx context.Context, impl, edgemqBin, mosqBin, dir string, o bridgeOptions) (r bridgeRound, err error) {
	r.LoadAvg = loadAvg1()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	for _, d := range []string{"up", "edge"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return r, err
		}
	}
	up, err := launch(mosquittoSpec(mosqBin, true), filepath.Join(dir, "up"))
	if err != nil {
		return r, err
	}
	defer up.stop()
	nonce := newNonce()
	const warm = 3 // publisher ids: 0 live, 1 drain, 2 restart, 3 warm-up
	t := newTally(nonce, warm+1, nil, false, nil)
	sc, err := connect(ctx, target{addr: up.tcpAddr, version: proto311}, connectOptions{clientID: fmt.Sprintf("bench-%08x-central", nonce), clean: true, keepalive: 600})
	if err != nil {
		return r, err
	}
	if err := sc.subscribe(fmt.Sprintf("bench/%08x/#", nonce), 1); err != nil {
		sc.close(false)
		return r, err
	}
	var subLoops loops
	subLoops.goRun("subscriber", func() error { return subscriberLoop(sc, t, nil) })
	defer func() {
		subLoops.closing.Store(true)
		sc.close(true)
		subLoops.wg.Wait()
		r.Notes = append(r.Notes, subLoops.errs...)
	}()
	px, err := linkproxy.New(up.tcpAddr)
	if err != nil {
		return r, err
	}
	defer px.Close()
	spec := bridgeEdgeSpec(impl, edgemqBin, mosqBin, px.Addr(), o.window)
	edgeDir := filepath.Join(dir, "edge")
	edge, err := launch(spec, edgeDir)
	if err != nil {
		return r, err
	}
	defer func() { edge.stop() }()
	edgeT := target{addr: edge.tcpAddr, version: proto311}

	// publish sends n messages as publisher id and waits for their PUBACKs.
	publish := func(id uint32, n int) error {
		c, err := connect(ctx, edgeT, connectOptions{clientID: fmt.Sprintf("bench-%08x-p%d", nonce, id), clean: true, keepalive: 600})
		if err != nil {
			return err
		}
		pb := newPublisher(c, id, fmt.Sprintf("bench/%08x/%d", nonce, id), 1, o.inflight)
		var l loops
		l.goRun("publisher", pb.readLoop)
		pb.publishN(ctx, nonce, o.size, uint64(n))
		for pb.acked.Load()+pb.rejected.Load() < uint64(n) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		l.closing.Store(true)
		c.close(true)
		l.wg.Wait()
		if len(l.errs) > 0 {
			return fmt.Errorf("%v", l.errs)
		}
		if pb.rejected.Load() > 0 {
			return fmt.Errorf("%d publishes rejected", pb.rejected.Load())
		}
		return ctx.Err()
	}
	// arrive waits until want messages arrived in all, or none came for
	// o.settle; the first may take up to reconnect (a bridge reconnecting).
	arrive := func(want uint64, reconnect time.Duration) {
		last, since, wait := t.uniqueN.Load(), time.Now(), max(reconnect, o.settle)
		for ctx.Err() == nil {
			n := t.uniqueN.Load()
			if n >= want {
				return
			}
			if n != last {
				last, since, wait = n, time.Now(), o.settle
			} else if time.Since(since) > wait {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	cpuPerM := func(pid int, before float64, n int) float64 {
		after, err := procCPUSeconds(pid)
		if err != nil {
			return 0
		}
		return (after - before) / float64(n) * 1e6
	}

	// Warm-up: one message through, so the bridge is connected.
	if err := publish(warm, 1); err != nil {
		return r, err
	}
	arrive(1, reconnectWait)
	if t.uniqueN.Load() != 1 {
		return r, fmt.Errorf("the warm-up message did not arrive upstream within %v", o.settle)
	}
	n := uint64(o.n)

	// Live.
	pid := edge.cmd.Process.Pid
	cpu0, _ := procCPUSeconds(pid)
	t0 := time.Now()
	if err := publish(0, o.n); err != nil {
		return r, err
	}
	r.LivePublishPerSec = float64(o.n) / time.Since(t0).Seconds()
	arrive(1+n, 0)
	if p := t.pubs[0]; p.unique > 0 {
		r.LiveMsgPerSec = float64(p.unique) / time.Duration(p.last-t0.UnixNano()).Seconds()
		r.LiveCPUPerM = cpuPerM(pid, cpu0, int(p.unique))
	}

	// Drain.
	px.Cut()
	if err := publish(1, o.n); err != nil {
		return r, err
	}
	cpu0, _ = procCPUSeconds(pid)
	restored := time.Now()
	px.Restore()
	arrive(1+2*n, reconnectWait)
	if p := t.pubs[1]; p.unique > 1 {
		d := time.Duration(p.last - p.first).Seconds()
		r.DrainSeconds = d
		r.DrainMsgPerSec = float64(p.unique-1) / d
		r.DrainFromRestore = time.Duration(p.last - restored.UnixNano()).Seconds()
		r.DrainCPUPerM = cpuPerM(pid, cpu0, int(p.unique))
	}
	r.Lost = 2*n - t.pubs[0].unique - t.pubs[1].unique

	// Restart during an outage.
	px.Cut()
	if err := publish(2, o.restart); err != nil {
		return r, err
	}
	_ = edge.cmd.Process.Kill()
	<-edge.done
	again, err := launch(spec, edgeDir)
	if err != nil {
		return r, fmt.Errorf("restart: %w", err)
	}
	edge = again
	px.Restore()
	arrive(1+2*n+uint64(o.restart), reconnectWait)
	r.RestartSent = uint64(o.restart)
	r.RestartLost = r.RestartSent - t.pubs[2].unique
	for _, p := range t.pubs {
		r.Duplicated += p.dup
		r.Reordered += p.reorder
	}
	return r, nil
}

// printBridge writes the medians of the rounds and the ratios.
func printBridge(w io.Writer, rep bridgeReport) {
	med := func(broker string, f func(bridgeRound) float64) (float64, []float64) {
		var v []float64
		for _, r := range rep.Runs {
			if r.Broker == broker && r.LiveMsgPerSec > 0 {
				v = append(v, f(r))
			}
		}
		return median(v), v
	}
	rows := []struct {
		name string
		f    func(bridgeRound) float64
		// higher is better for the ratio's reading
		higher bool
	}{
		{"live forwarding (msg/s)", func(r bridgeRound) float64 { return r.LiveMsgPerSec }, true},
		{"live: publishes acknowledged at the edge (msg/s)", func(r bridgeRound) float64 { return r.LivePublishPerSec }, true},
		{"drain of the backlog (msg/s)", func(r bridgeRound) float64 { return r.DrainMsgPerSec }, true},
		{"drain time (s)", func(r bridgeRound) float64 { return r.DrainSeconds }, false},
		{"drain time from the restore (s)", func(r bridgeRound) float64 { return r.DrainFromRestore }, false},
		{"edge CPU s / M msgs, live", func(r bridgeRound) float64 { return r.LiveCPUPerM }, false},
		{"edge CPU s / M msgs, drain", func(r bridgeRound) float64 { return r.DrainCPUPerM }, false},
		{"lost, live and drain", func(r bridgeRound) float64 { return float64(r.Lost) }, false},
		{fmt.Sprintf("lost of %d after a kill -9 in an outage", rep.Restart), func(r bridgeRound) float64 { return float64(r.RestartLost) }, false},
		{"duplicates", func(r bridgeRound) float64 { return float64(r.Duplicated) }, false},
	}
	fmt.Fprintf(w, "bridge scenario: %s; %d messages live and as backlog, window %d, %.0f s in all; medians of rounds [per-round values]\n",
		rep.Machine, rep.Messages, rep.Window, rep.Seconds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	ratio := func(a, b float64) string {
		if a > 0 && b > 0 {
			return fmt.Sprintf("%.2fx", a/b)
		}
		return "-"
	}
	base := slices.ContainsFunc(rep.Runs, func(r bridgeRound) bool { return r.Broker == "edgemq-base" })
	if base {
		fmt.Fprintln(tw, "\tedgemq\tmosquitto bridge\tedgemq / mosquitto\tedgemq-base\tedgemq / edgemq-base\t")
	} else {
		fmt.Fprintln(tw, "\tedgemq\tmosquitto bridge\tedgemq / mosquitto\t")
	}
	for _, row := range rows {
		e, ev := med("edgemq", row.f)
		m, mv := med("mosquitto", row.f)
		fmt.Fprintf(tw, "%s\t%s %v\t%s %v\t%s\t", row.name, fmtValue(e), roundAll(ev), fmtValue(m), roundAll(mv), ratio(e, m))
		if base {
			b, bv := med("edgemq-base", row.f)
			fmt.Fprintf(tw, "%s %v\t%s\t", fmtValue(b), roundAll(bv), ratio(e, b))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	goal := float64(rep.Messages) / 5000
	e, _ := med("edgemq", func(r bridgeRound) float64 { return r.DrainSeconds })
	fmt.Fprintf(w, "drain goal: the backlog of %d drained within the %.0f s it took to arrive at 5,000 msg/s: edgemq %.2f s\n", rep.Messages, goal, e)
	for _, r := range rep.Runs {
		if len(r.Notes) > 0 {
			fmt.Fprintf(w, "round %d %s: %v\n", r.Round, r.Broker, r.Notes)
		}
	}
}

func roundAll(v []float64) []string {
	out := make([]string, len(v))
	for i, x := range v {
		out[i] = fmtValue(x)
	}
	return out
}
