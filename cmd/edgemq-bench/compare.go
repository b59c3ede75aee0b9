package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// compareScenario is one row of the comparison: a scenario with fixed
// parameters, run the same way against every broker.
type compareScenario struct {
	name string
	p    params
	// metric picks the headline figure from a result; lowerIsBetter says
	// how to read it.
	metric        func(Result) float64
	unit          string
	lowerIsBetter bool
	// skip names brokers (by spec name prefix) left out of this scenario, and why.
	skip map[string]string
	// quickSkip leaves the scenario out of -quick runs.
	quickSkip bool
	// from, when set, names the scenario whose runs this row reads another
	// figure of (the same runs, not runs of its own): p is unused.
	from string
	// noRatio leaves the row out of the ratio table (a property of the
	// machine, not of the broker).
	noRatio bool
	// fsync measures the disk's fsync latency during each run, in the
	// broker's directory (Result.Fsync).
	fsync bool
}

// The steady QoS 1 load of issue 10's bars: one publisher, one subscriber,
// 1,000 msg/s. Its runs give three rows: the end-to-end p99, the fsync p99
// of the disk measured meanwhile in the broker's directory, the CPU one
// such write and fsync costs the process that makes it (a floor under any
// durable broker's CPU per message at this rate), and the broker's CPU.
const (
	steadyName = "latency qos1 1k/s"
	fsyncName  = "fsync p99, same runs"
	fsyncCPU   = "fsync CPU, same runs"
	cpuName    = "cpu qos1 1k/s"
)

// mosquittoWSNote is why the WebSocket scenario leaves Mosquitto out.
const mosquittoWSNote = "Mosquitto 2.0.11 (Debian, libwebsockets) crawls at a few hundred msg/s over WebSocket " +
	"under this generator's closed loop with 8 or more publishers (1-5 publishers: 40-60k msg/s QoS 0); " +
	"strace shows WebSocket sockets serviced from a 100 ms poll loop. The paho client does not trigger it. Not a fair figure, so not run."

func compareScenarios(duration time.Duration, quick bool) []compareScenario {
	rate := func(r Result) float64 { return r.MsgPerSec }
	p99 := func(r Result) float64 {
		if r.Latency == nil {
			return 0
		}
		return r.Latency.P99
	}
	backlog := 10000
	if quick {
		backlog = 2000
	}
	connsRSS := func(r Result) float64 { return r.RSSPerConnKB }
	fsyncP99 := func(r Result) float64 {
		if r.Fsync == nil {
			return 0
		}
		return r.Fsync.P99
	}
	cpuShare := func(r Result) float64 { return r.BrokerCPUPercent }
	fsyncCost := func(r Result) float64 { return r.FsyncCPUMicros }
	flow := func(scenario string, qos byte) params {
		return params{scenario: scenario, qos: qos, duration: duration}
	}
	ws := func(p params) params {
		p.target.transport = "ws"
		return p
	}
	v5 := func(p params) params {
		p.target.version = proto5
		return p
	}
	all := []compareScenario{
		{name: "fanin qos0", p: flow("fanin", 0), metric: rate, unit: "msg/s"},
		{name: "fanin qos1", p: flow("fanin", 1), metric: rate, unit: "msg/s"},
		{name: "fanin qos2", p: flow("fanin", 2), metric: rate, unit: "msg/s"},
		{name: "fanin qos1 mqtt5", p: v5(flow("fanin", 1)), metric: rate, unit: "msg/s"},
		{name: "fanin qos1 ws", p: ws(flow("fanin", 1)), metric: rate, unit: "msg/s",
			skip: map[string]string{"mosquitto": mosquittoWSNote}},
		{name: "fanout qos0", p: flow("fanout", 0), metric: rate, unit: "deliveries/s"},
		{name: "fanout qos1", p: flow("fanout", 1), metric: rate, unit: "deliveries/s"},
		{name: "latency qos1 5k/s", p: params{scenario: "latency", qos: 1, rate: 5000, duration: duration},
			metric: p99, unit: "p99 ms", lowerIsBetter: true},
		{name: steadyName, p: params{scenario: "latency", qos: 1, rate: 1000, pubs: 1, subs: 1, duration: duration},
			metric: p99, unit: "p99 ms", lowerIsBetter: true, fsync: true},
		{name: fsyncName, from: steadyName, metric: fsyncP99, unit: "fsync p99 ms", lowerIsBetter: true, noRatio: true},
		{name: fsyncCPU, from: steadyName, metric: fsyncCost, unit: "µs CPU per fsync", lowerIsBetter: true, noRatio: true},
		{name: cpuName, from: steadyName, metric: cpuShare, unit: "% of a core", lowerIsBetter: true},
		{name: "conns 1k", p: params{scenario: "conns", conns: 1000},
			metric: connsRSS, unit: "KB RSS/conn", lowerIsBetter: true},
		{name: "conns 10k", p: params{scenario: "conns", conns: 10000}, quickSkip: true,
			metric: connsRSS, unit: "KB RSS/conn", lowerIsBetter: true},
		{name: "backlog qos1", p: params{scenario: "backlog", qos: 1, backlog: backlog}, metric: rate, unit: "drain msg/s"},
	}
	for i := range all {
		if j := slices.IndexFunc(all, func(s compareScenario) bool { return s.name == all[i].from }); j >= 0 {
			all[i].skip, all[i].quickSkip = all[j].skip, all[j].quickSkip
		}
	}
	if quick {
		all = slices.DeleteFunc(all, func(s compareScenario) bool { return s.quickSkip })
	}
	return all
}

// brokerSpec knows how to start one broker configuration.
type brokerSpec struct {
	name string
	note string
	// only, when set, limits the broker to the scenarios whose name starts with it.
	only string
	// start launches the broker listening on tcpPort (and wsPort) and
	// returns the command; dir is a fresh directory for its files.
	start func(dir string, tcpPort, wsPort int) (*exec.Cmd, error)
	// pin runs the broker on brokerCPU alone (compare -pin).
	pin bool
}

// runningBroker is a broker subprocess owned by the compare driver.
type runningBroker struct {
	cmd     *exec.Cmd
	done    chan struct{}
	log     string
	tcpAddr string // MQTT over TCP
	wsAddr  string // MQTT over WebSocket, path /mqtt
}

// launch starts a broker on free loopback ports and waits until its TCP
// and WebSocket listeners accept connections.
func launch(spec brokerSpec, dir string) (*runningBroker, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	cmd, err := spec.start(dir, ports[0], ports[1])
	if err != nil {
		return nil, err
	}
	if spec.pin {
		if cmd, err = pinned(cmd, brokerCPU); err != nil {
			return nil, err
		}
	}
	logPath := filepath.Join(dir, "broker.log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", spec.name, err)
	}
	rb := &runningBroker{cmd: cmd, done: make(chan struct{}), log: logPath,
		tcpAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]), wsAddr: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	go func() {
		_ = cmd.Wait()
		lf.Close()
		close(rb.done)
	}()
	deadline := time.Now().Add(15 * time.Second)
	listening := func(addr string) bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	for {
		if listening(rb.tcpAddr) && listening(rb.wsAddr) {
			return rb, nil
		}
		select {
		case <-rb.done:
			return nil, fmt.Errorf("%s exited at start: %s", spec.name, tail(logPath))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			rb.stop()
			return nil, fmt.Errorf("%s did not listen on %s within 15 s: %s", spec.name, rb.tcpAddr, tail(logPath))
		}
	}
}

// stop sends SIGTERM, then SIGKILL after 5 s, and waits for the exit.
func (rb *runningBroker) stop() {
	_ = rb.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-rb.done:
	case <-time.After(5 * time.Second):
		_ = rb.cmd.Process.Kill()
		<-rb.done
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	b = bytes.TrimSpace(b)
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return string(b)
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// mosquittoSpec is Mosquitto with its default config, or with unlimited
// per-client queues (max_queued_messages 0), which it needs to lose nothing
// under load, and no inflight bound (max_inflight_messages 0): with only the
// queues unlimited, Mosquitto 2.0.11 resets an MQTT 3.1.1 publisher with more
// than 20 unfinished QoS 2 messages and loses them (measured: 100%). Both
// run in every comparison; ratios are quoted against the one that lost
// nothing (bestBaseline).
func mosquittoSpec(bin string, unlimited bool) brokerSpec {
	name := "mosquitto"
	note := "Mosquitto (Debian package), default config: no persistence, max_queued_messages 1000, max_inflight_messages 20"
	extra := ""
	if unlimited {
		name = "mosquitto-unlimited"
		note = "Mosquitto (Debian package), no persistence, max_queued_messages 0 and max_inflight_messages 0 (unlimited queues and windows: drops nothing, RAM grows instead)"
		extra = "max_queued_messages 0\nmax_inflight_messages 0\n"
	}
	return brokerSpec{
		name: name,
		note: note,
		start: func(dir string, tcp, ws int) (*exec.Cmd, error) {
			conf := fmt.Sprintf("%slistener %d 127.0.0.1\nallow_anonymous true\nlistener %d 127.0.0.1\nprotocol websockets\n", extra, tcp, ws)
			path := filepath.Join(dir, "mosquitto.conf")
			if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
				return nil, err
			}
			return exec.Command(bin, "-c", path), nil
		},
	}
}

func mochiSpec(bin string) brokerSpec {
	return brokerSpec{
		name: "mochi",
		note: "plain mochi-mqtt v2.7.9, default capabilities, allow-all auth, no storage (cmd/edgemq-bench/plainmochi)",
		start: func(dir string, tcp, ws int) (*exec.Cmd, error) {
			return exec.Command(bin, "-addr", fmt.Sprintf("127.0.0.1:%d", tcp), "-ws", fmt.Sprintf("127.0.0.1:%d", ws)), nil
		},
	}
}

// edgemqSpec is edgemq on storage.sync; memoryLimit, when set, is its
// memory_limit (GOMEMLIMIT), and then it runs the conns scenarios only: the
// gateway question is how many idle devices fit in 256 MB.
func edgemqSpec(bin, sync string, durable bool, memoryLimit string) brokerSpec {
	name := "edgemq-" + sync
	note := fmt.Sprintf("edgemq, storage.sync %s", sync)
	switch {
	case sync == "always" && durable:
		note += ": each PUBACK/PUBREC after the fsync of its log record (group commit)"
	case sync == "always":
		name += "*"
		note += "; * this build does NOT wait for an fsync before acking (-durable=false)"
	case sync == "never":
		note += ": no fsync at all; not durable"
	}
	only, extra := "", ""
	if memoryLimit != "" {
		name = "edgemq-memlimit"
		only = "conns"
		extra = "memory_limit: " + memoryLimit + "\n"
		note += "; memory_limit " + memoryLimit + " (GOMEMLIMIT), as under the systemd unit's MemoryMax=256M; conns scenarios only"
	}
	return brokerSpec{
		name: name,
		note: note,
		only: only,
		start: func(dir string, tcp, ws int) (*exec.Cmd, error) {
			ports, err := freePorts(1)
			if err != nil {
				return nil, err
			}
			conf := fmt.Sprintf(`listeners:
  - name: tcp
    type: tcp
    address: 127.0.0.1:%d
  - name: ws
    type: ws
    address: 127.0.0.1:%d
http:
  address: 127.0.0.1:%d
storage:
  dir: %s
  sync: %s
auth:
  allow_anonymous: true
limits:
  max_clients: 100000
log:
  level: warn
%s`, tcp, ws, ports[0], filepath.Join(dir, "data"), sync, extra)
			path := filepath.Join(dir, "edgemq.yaml")
			if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
				return nil, err
			}
			return exec.Command(bin, "run", "-c", path), nil
		},
	}
}

// buildInModule runs `go build` of pkg into dir and returns the binary.
func buildInModule(ctx context.Context, pkg, dir, name string) (string, error) {
	out := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if root, err := moduleRoot(ctx); err == nil {
		cmd.Dir = root
	}
	b, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s: %w: %s", pkg, err, bytes.TrimSpace(b))
	}
	return out, nil
}

func moduleRoot(ctx context.Context) (string, error) {
	b, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(b))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(mod), nil
}

// cell is the summary of one scenario on one broker over the rounds.
type cell struct {
	Scenario   string    `json:"scenario"`
	Broker     string    `json:"broker"`
	Unit       string    `json:"unit"`
	Median     float64   `json:"median"`
	Values     []float64 `json:"values"`
	Lost       uint64    `json:"lost"`
	Expected   uint64    `json:"expected"`
	Duplicated uint64    `json:"duplicated"`
	Lossy      bool      `json:"lossy"`
	// LowerIsBetter says how to read Median (latency, KB per connection).
	LowerIsBetter bool `json:"lower_is_better,omitempty"`
	// NoRatio leaves the row out of the ratios (the disk's fsync latency).
	NoRatio   bool    `json:"no_ratio,omitempty"`
	CPUPerM   float64 `json:"broker_cpu_sec_per_million"`
	PeakRSSMB float64 `json:"broker_peak_rss_mb"`
	// StartRSSMB and EndRSSMB are medians of the broker's VmRSS when the
	// measured span began and ended (conns: before the first connection,
	// that is the idle broker, and with every connection open).
	StartRSSMB float64  `json:"broker_start_rss_mb,omitempty"`
	EndRSSMB   float64  `json:"broker_end_rss_mb,omitempty"`
	GenCPU     float64  `json:"generator_cpu_seconds"`
	BrokerCPU  float64  `json:"broker_cpu_seconds"`
	Errors     []string `json:"errors,omitempty"`
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// compareReport is the JSON output of a comparison.
type compareReport struct {
	Machine string            `json:"machine"`
	Started time.Time         `json:"started"`
	Seconds float64           `json:"seconds"`
	Rounds  int               `json:"rounds"`
	Brokers map[string]string `json:"brokers"`
	Cells   []*cell           `json:"cells"`
	Runs    []Result          `json:"runs"`
	Skipped []string          `json:"skipped,omitempty"`
	// LoadAvg is the highest one-minute load average seen at the start of a run.
	LoadAvg float64 `json:"max_load_avg_1m"`
	// Pinned: compare -pin (brokers on CPU 0, the generator on CPU 1).
	Pinned bool `json:"pinned,omitempty"`
}

func runCompare(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgemq-bench compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := fs.Bool("quick", false, "smoke test: 1 round and 1 s per flow unless -rounds or -duration say otherwise; fewer connections and a smaller backlog")
	rounds := fs.Int("rounds", 3, "rounds; brokers alternate within each round")
	duration := fs.Duration("duration", 3*time.Second, "publish phase of each flow scenario")
	mosq := fs.String("mosquitto", "/usr/sbin/mosquitto", "Mosquitto binary, run with its default queues and with max_queued_messages 0; empty: skip")
	mochi := fs.String("mochi", "", "plain mochi binary; empty: go build ./cmd/edgemq-bench/plainmochi")
	edgemq := fs.String("edgemq", "", "edgemq binary; empty: go build ./cmd/edgemq (skipped if that fails); \"none\": skip")
	baseline := fs.String("baseline", "", "a second edgemq binary (main's build, say), run as edgemq-base-always and edgemq-base-memlimit beside -edgemq's: a before/after in one run")
	durable := fs.Bool("durable", true, "the edgemq binary acks QoS 1/2 only after an fsync under sync always; false marks a build where it does not")
	only := fs.String("scenarios", "", "comma-separated subset of scenario names (default: all)")
	jsonOut := fs.String("json", "", "also write the raw runs and the summary as JSON to this file")
	mdOut := fs.String("md", "", "also write the tables as Markdown to this file (as in deploy/bench/README.md)")
	inflight := fs.Int("inflight", 100, "most unacknowledged QoS 1/2 publishes per connection")
	drain := fs.Duration("drain", 5*time.Second, "a message not delivered after this long without any delivery counts as lost")
	pin := fs.Bool("pin", false, "every broker on CPU 0 alone (taskset; a Go broker then has GOMAXPROCS=1), the generator on CPU 1, as issue 10's external generator measured them")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pin {
		if err := pinSelf(generatorCPU); err != nil {
			return err
		}
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["rounds"] {
			*rounds = 1
		}
		if !set["duration"] {
			*duration = time.Second
		}
	}
	// Before any broker starts, so that each inherits the raised limit.
	if _, err := raiseFDLimit(); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "edgemq-bench-compare-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	rep := compareReport{Machine: machine(), Started: time.Now().UTC(), Rounds: *rounds, Brokers: map[string]string{}}
	var specs []brokerSpec
	if *mosq != "" {
		if _, err := os.Stat(*mosq); err == nil {
			specs = append(specs, mosquittoSpec(*mosq, false), mosquittoSpec(*mosq, true))
		} else {
			rep.Skipped = append(rep.Skipped, "mosquitto: "+err.Error())
		}
	}
	if *mochi == "" {
		if *mochi, err = buildInModule(ctx, "./cmd/edgemq-bench/plainmochi", work, "plainmochi"); err != nil {
			return err
		}
	}
	specs = append(specs, mochiSpec(*mochi))
	if *edgemq == "" {
		if *edgemq, err = buildInModule(ctx, "./cmd/edgemq", work, "edgemq"); err != nil {
			rep.Skipped = append(rep.Skipped, "edgemq: "+firstLine(err.Error()))
			*edgemq = "none"
		}
	}
	if *edgemq != "none" {
		specs = append(specs, edgemqSpec(*edgemq, "always", *durable, ""), edgemqSpec(*edgemq, "never", *durable, ""),
			edgemqSpec(*edgemq, "always", *durable, "200MiB"))
	}
	if *baseline != "" {
		for _, s := range []brokerSpec{edgemqSpec(*baseline, "always", *durable, ""), edgemqSpec(*baseline, "always", *durable, "200MiB")} {
			s.name = strings.Replace(s.name, "edgemq-", "edgemq-base-", 1)
			s.note = "baseline binary " + *baseline + ": " + s.note
			specs = append(specs, s)
		}
	}
	for i := range specs {
		specs[i].pin = *pin
		rep.Brokers[specs[i].name] = specs[i].note
	}
	rep.Pinned = *pin
	scens := compareScenarios(*duration, *quick)
	if *only != "" {
		want := strings.Split(*only, ",")
		for i := range want {
			want[i] = strings.TrimSpace(want[i])
		}
		// A row read from another scenario's runs needs those runs, and
		// those runs give every row read from them.
		for _, s := range scens {
			if s.from != "" && slices.Contains(want, s.name) {
				want = append(want, s.from)
			}
		}
		for _, s := range scens {
			if s.from != "" && slices.Contains(want, s.from) {
				want = append(want, s.name)
			}
		}
		scens = slices.DeleteFunc(scens, func(s compareScenario) bool { return !slices.Contains(want, s.name) })
		if len(scens) == 0 {
			return fmt.Errorf("-scenarios: none of %q known", *only)
		}
	}
	for _, s := range rep.Skipped {
		fmt.Fprintln(stderr, "skipped:", s)
	}

	cells := map[[2]string]*cell{}
	cpuPerM := map[[2]string][]float64{}
	rss := map[[2]string][]float64{}
	startRSS := map[[2]string][]float64{}
	endRSS := map[[2]string][]float64{}
	gen := map[[2]string][]float64{}
	bcpu := map[[2]string][]float64{}
	for _, sc := range scens {
		for _, b := range specs {
			if skipped(sc, b) != "" {
				continue
			}
			c := &cell{Scenario: sc.name, Broker: b.name, Unit: sc.unit, LowerIsBetter: sc.lowerIsBetter, NoRatio: sc.noRatio}
			cells[[2]string{sc.name, b.name}] = c
			rep.Cells = append(rep.Cells, c)
		}
	}
	add := func(key [2]string, v float64, res Result) {
		c := cells[key]
		c.Values = append(c.Values, v)
		c.Lost += res.Lost
		c.Expected += res.Expected
		c.Duplicated += res.Duplicated
		c.Lossy = c.Lossy || res.Lossy
		if res.CPUSecPerMillion > 0 {
			cpuPerM[key] = append(cpuPerM[key], res.CPUSecPerMillion)
		}
		rss[key] = append(rss[key], res.BrokerPeakRSSMB)
		startRSS[key] = append(startRSS[key], res.BrokerStartRSSMB)
		endRSS[key] = append(endRSS[key], res.BrokerEndRSSMB)
		gen[key] = append(gen[key], res.GenCPUSeconds)
		bcpu[key] = append(bcpu[key], res.BrokerCPUSeconds)
	}
	runs := slices.DeleteFunc(slices.Clone(scens), func(s compareScenario) bool { return s.from != "" })
	n := 0
	for round := range *rounds {
		for si, sc := range runs {
			// Alternate: rotate the broker order every round and scenario.
			order := slices.Clone(specs)
			k := (round + si) % len(order)
			order = append(order[k:], order[:k]...)
			for _, b := range order {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if skipped(sc, b) != "" {
					continue
				}
				n++
				dir := filepath.Join(work, fmt.Sprintf("run%03d", n))
				if err := os.MkdirAll(dir, 0o700); err != nil {
					return err
				}
				key := [2]string{sc.name, b.name}
				c := cells[key]
				res, err := compareOne(ctx, b, sc, dir, *inflight, *drain)
				if err != nil {
					c.Errors = append(c.Errors, fmt.Sprintf("round %d: %v", round+1, err))
					fmt.Fprintf(stderr, "round %d %-18s %-14s ERROR %v\n", round+1, sc.name, b.name, err)
					continue
				}
				rep.Runs = append(rep.Runs, res)
				rep.LoadAvg = max(rep.LoadAvg, res.LoadAvg)
				v := sc.metric(res)
				add(key, v, res)
				also := ""
				for _, d := range scens {
					if d.from == sc.name {
						dv := d.metric(res)
						add([2]string{d.name, b.name}, dv, res)
						also += fmt.Sprintf("  %s %s", fmtValue(dv), d.unit)
					}
				}
				flag := also
				if res.Lossy {
					flag = fmt.Sprintf("  LOSSY %d/%d", res.Lost, res.Expected)
				}
				if res.Duplicated > 0 {
					flag += fmt.Sprintf("  DUP %d", res.Duplicated)
				}
				fmt.Fprintf(stderr, "round %d %-18s %-14s %12.1f %s%s\n", round+1, sc.name, b.name, v, sc.unit, flag)
			}
		}
	}
	for key, c := range cells {
		c.Median = median(c.Values)
		c.CPUPerM = median(cpuPerM[key])
		c.PeakRSSMB = median(rss[key])
		c.StartRSSMB = median(startRSS[key])
		c.EndRSSMB = median(endRSS[key])
		c.GenCPU = median(gen[key])
		c.BrokerCPU = median(bcpu[key])
	}
	rep.Seconds = time.Since(rep.Started).Seconds()
	printCompare(stdout, rep, scens, specs)
	if *mdOut != "" {
		var md bytes.Buffer
		writeMarkdown(&md, rep)
		if err := os.WriteFile(*mdOut, md.Bytes(), 0o644); err != nil {
			return err
		}
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

// skipped is why broker b is left out of sc, or "".
func skipped(sc compareScenario, b brokerSpec) string {
	if b.only != "" && !strings.HasPrefix(sc.name, b.only) {
		return "runs " + b.only + " only"
	}
	for prefix, why := range sc.skip {
		if strings.HasPrefix(b.name, prefix) {
			return why
		}
	}
	return ""
}

// compareOne starts a fresh broker, runs one scenario against it, stops it.
// A fresh broker per run makes CPU and peak RSS belong to that run alone.
func compareOne(ctx context.Context, b brokerSpec, sc compareScenario, dir string, inflight int, drain time.Duration) (Result, error) {
	rb, err := launch(b, dir)
	if err != nil {
		return Result{}, err
	}
	defer rb.stop()
	p := sc.p
	version := sc.p.target.version
	if version == 0 {
		version = proto311
	}
	p.target = target{addr: rb.tcpAddr, transport: "tcp", version: version}
	if sc.p.target.transport == "ws" {
		p.target = target{addr: rb.wsAddr, transport: "ws", wsPath: "/mqtt", version: version}
	}
	p.label = b.name
	p.pid = rb.cmd.Process.Pid
	p.inflight = inflight
	p.drain = drain
	if sc.fsync {
		p.fsyncDir = fsyncDirOf(dir)
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res, err := runScenario(rctx, p)
	select {
	case <-rb.done:
		return res, fmt.Errorf("%s exited during the run: %s", b.name, tail(rb.log))
	default:
	}
	return res, err
}

// printCompare writes the medians table and the ratios.
func printCompare(w io.Writer, rep compareReport, scens []compareScenario, specs []brokerSpec) {
	fmt.Fprintf(w, "edgemq-bench compare: %d round(s), medians, %.0f s total; loopback, MQTT 3.1.1 over TCP unless the scenario says mqtt5 or ws, 256-byte payloads\n", rep.Rounds, rep.Seconds)
	pinned := ""
	if rep.Pinned {
		pinned = fmt.Sprintf("; brokers pinned to CPU %d, generator to CPU %d", brokerCPU, generatorCPU)
	}
	fmt.Fprintf(w, "machine: %s; started %s%s\n\n", rep.Machine, rep.Started.Format(time.RFC3339), pinned)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tbroker\tmedian\tunit\trounds min-max\tlost\tdup\tbroker CPU s/M msgs\tpeak RSS MB\tgenerator CPU s\t")
	byKey := map[[2]string]*cell{}
	for _, c := range rep.Cells {
		byKey[[2]string{c.Scenario, c.Broker}] = c
	}
	for _, sc := range scens {
		for _, b := range specs {
			c := byKey[[2]string{sc.name, b.name}]
			if c == nil || skipped(sc, b) != "" {
				continue
			}
			lost := "0"
			if c.Lossy {
				lost = fmt.Sprintf("%d (%.1f%%) LOSSY", c.Lost, 100*float64(c.Lost)/float64(max(c.Expected, 1)))
			}
			if len(c.Values) == 0 {
				fmt.Fprintf(tw, "%s\t%s\tERROR\t%s\t\t\t\t\t\t\t\n", sc.name, b.name, sc.unit)
				continue
			}
			cpu := "-"
			if c.CPUPerM > 0 {
				cpu = fmt.Sprintf("%.1f", c.CPUPerM)
			}
			spread := fmtValue(slices.Min(c.Values)) + "-" + fmtValue(slices.Max(c.Values))
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%.1f\t%.2f\t\n", sc.name, b.name, fmtValue(c.Median), sc.unit, spread, lost, c.Duplicated, cpu, c.PeakRSSMB, c.GenCPU)
		}
	}
	tw.Flush()

	if head, rows := ratioTable(rep); len(rows) > 0 {
		fmt.Fprintln(w, "\nratios of medians (higher is better for msg/s; for p99 and KB/conn a ratio below 1 is better);")
		fmt.Fprintln(w, "each against the Mosquitto configuration that lost nothing in that scenario (the better one if both):")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
		for _, row := range rows {
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
		tw.Flush()
	}
	if head, rows := footprintTable(rep); len(rows) > 0 {
		fmt.Fprintln(w, "\nfootprint (medians; RSS in MB, per connection in KB):")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
		for _, row := range rows {
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
		tw.Flush()
	}
	if lines := steadyMargins(rep); len(lines) > 0 {
		fmt.Fprintf(w, "\n%s: end-to-end p99 above the disk's fsync p99 (median over the runs of each run's difference):\n", steadyName)
		for _, l := range lines {
			fmt.Fprintln(w, "  "+l)
		}
	}
	fmt.Fprintf(w, "\nhighest load average at the start of a run: %.1f on %d cores", rep.LoadAvg, runtime.NumCPU())
	if rep.LoadAvg > float64(runtime.NumCPU()) {
		fmt.Fprint(w, " (something else competed for the CPU: figures are not reliable)")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "\nbrokers:")
	for _, b := range specs {
		fmt.Fprintf(w, "  %-20s %s\n", b.name, b.note)
	}
	for _, s := range rep.Skipped {
		fmt.Fprintln(w, "  skipped: "+s)
	}
	for _, sc := range scens {
		for prefix, why := range sc.skip {
			fmt.Fprintf(w, "  %s without %s: %s\n", sc.name, prefix, why)
		}
	}
	for _, c := range rep.Cells {
		for _, e := range c.Errors {
			fmt.Fprintf(w, "  error: %s on %s: %s\n", c.Scenario, c.Broker, firstLine(e))
		}
	}
}

func fmtValue(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// ratio is a's median over b's, with what either lost; named says which
// configuration b is when there is more than one of that broker.
func ratio(a, b *cell, named bool) string {
	if a == nil || b == nil || len(a.Values) == 0 || len(b.Values) == 0 || b.Median == 0 {
		return "-"
	}
	s := fmt.Sprintf("%.2fx", a.Median/b.Median)
	if named {
		s += " vs " + b.Broker
	}
	switch {
	case a.Lossy && b.Lossy:
		s += " (both lossy)"
	case a.Lossy:
		s += " (edgemq lossy)"
	case b.Lossy:
		s += fmt.Sprintf(" (%s lost %.1f%%)", b.Broker, 100*float64(b.Lost)/float64(max(b.Expected, 1)))
	}
	return s
}

// bestBaseline is the cell of scenario, among the brokers whose name starts
// with base, that a ratio compares against: of the configurations that lost
// nothing, the one with the best median; when every one lost, the one that
// lost the smallest share. A ratio against a broker that drops messages
// under load would flatter whoever does not.
func bestBaseline(cells []*cell, scenario, base string) (best *cell, configs int) {
	lossShare := func(c *cell) float64 { return float64(c.Lost) / float64(max(c.Expected, 1)) }
	for _, c := range cells {
		if c.Scenario != scenario || !strings.HasPrefix(c.Broker, base) || len(c.Values) == 0 {
			continue
		}
		configs++
		switch {
		case best == nil:
			best = c
		case best.Lossy != c.Lossy:
			if !c.Lossy {
				best = c
			}
		case c.Lossy:
			if lossShare(c) < lossShare(best) {
				best = c
			}
		case c.LowerIsBetter == (c.Median < best.Median):
			best = c
		}
	}
	return best, configs
}

// ratioTable is the ratios of every edgemq configuration against the best
// lossless Mosquitto and plain mochi, one row per scenario, in report order.
func ratioTable(rep compareReport) (head []string, rows [][]string) {
	var scenarios, edges []string
	byKey := map[[2]string]*cell{}
	for _, c := range rep.Cells {
		byKey[[2]string{c.Scenario, c.Broker}] = c
		if !slices.Contains(scenarios, c.Scenario) {
			scenarios = append(scenarios, c.Scenario)
		}
		if strings.HasPrefix(c.Broker, "edgemq") && !slices.Contains(edges, c.Broker) {
			edges = append(edges, c.Broker)
		}
	}
	if len(edges) == 0 {
		return nil, nil
	}
	head = []string{"scenario"}
	for _, e := range edges {
		head = append(head, e+" / lossless mosquitto", e+" / mochi")
	}
	for _, s := range scenarios {
		if c := byKey[[2]string{s, edges[0]}]; c != nil && c.NoRatio {
			continue
		}
		row := []string{s}
		for _, e := range edges {
			for _, base := range []string{"mosquitto", "mochi"} {
				b, n := bestBaseline(rep.Cells, s, base)
				row = append(row, ratio(byKey[[2]string{s, e}], b, n > 1))
			}
		}
		rows = append(rows, row)
	}
	return head, rows
}

// footprintTable is each broker's memory: idle, with the idle connections
// of the conns scenarios, and at its peak under the steady QoS 1 load of
// the latency scenario.
func footprintTable(rep compareReport) (head []string, rows [][]string) {
	var conns []string
	var load string
	var brokers []string
	for _, c := range rep.Cells {
		switch {
		case strings.HasPrefix(c.Scenario, "conns"):
			if !slices.Contains(conns, c.Scenario) {
				conns = append(conns, c.Scenario)
			}
		case strings.HasPrefix(c.Scenario, "latency qos1"):
			if load == "" || c.Scenario == "latency qos1 5k/s" {
				load = c.Scenario
			}
		default:
			continue
		}
		if !slices.Contains(brokers, c.Broker) {
			brokers = append(brokers, c.Broker)
		}
	}
	if len(conns) == 0 && load == "" {
		return nil, nil
	}
	byKey := map[[2]string]*cell{}
	for _, c := range rep.Cells {
		byKey[[2]string{c.Scenario, c.Broker}] = c
	}
	head = []string{"broker"}
	if len(conns) > 0 {
		head = append(head, "idle RSS MB")
	}
	for _, s := range conns {
		head = append(head, s+": RSS MB", s+": KB/conn")
	}
	if load != "" {
		head = append(head, load+": peak RSS MB")
	}
	mb := func(v float64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", v)
	}
	for _, b := range brokers {
		row := []string{b}
		if len(conns) > 0 {
			idle := "-"
			if c := byKey[[2]string{conns[0], b}]; c != nil {
				idle = mb(c.StartRSSMB)
			}
			row = append(row, idle)
		}
		for _, s := range conns {
			c := byKey[[2]string{s, b}]
			if c == nil || len(c.Values) == 0 {
				row = append(row, "-", "-")
				continue
			}
			row = append(row, mb(c.EndRSSMB), fmt.Sprintf("%.2f", c.Median))
		}
		if load != "" {
			v := "-"
			if c := byKey[[2]string{load, b}]; c != nil && len(c.Values) > 0 {
				v = mb(c.PeakRSSMB)
			}
			row = append(row, v)
		}
		rows = append(rows, row)
	}
	return head, rows
}

// steadyMargins is, per broker, how far the end-to-end p99 of the steady
// load lies above the fsync p99 measured during each of its runs in its
// directory: the median of the per-run differences. A durable ack needs one
// fsync, so this is what the broker adds to the disk.
func steadyMargins(rep compareReport) []string {
	var out []string
	for _, lat := range rep.Cells {
		if lat.Scenario != steadyName {
			continue
		}
		i := slices.IndexFunc(rep.Cells, func(c *cell) bool { return c.Scenario == fsyncName && c.Broker == lat.Broker })
		if i < 0 || len(rep.Cells[i].Values) != len(lat.Values) || len(lat.Values) == 0 {
			continue
		}
		fs := rep.Cells[i]
		diff := make([]float64, len(lat.Values))
		for j := range diff {
			diff[j] = lat.Values[j] - fs.Values[j]
		}
		out = append(out, fmt.Sprintf("%-20s p99 %s ms, fsync p99 %s ms: %+.2f ms", lat.Broker,
			fmtValue(lat.Median), fmtValue(fs.Median), median(diff)))
	}
	return out
}
