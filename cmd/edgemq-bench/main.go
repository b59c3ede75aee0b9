package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "edgemq-bench:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "compare":
			return runCompare(ctx, args[1:], stdout, stderr)
		case "report":
			return runReport(args[1:], stdout, stderr)
		case "soak":
			return runSoak(ctx, args[1:], stdout, stderr)
		case "bridge":
			return runBridgeCompare(ctx, args[1:], stdout, stderr)
		}
	}
	fs := flag.NewFlagSet("edgemq-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, `usage: edgemq-bench [flags]          run one scenario against a running broker
       edgemq-bench compare [flags]  start Mosquitto, plain mochi and edgemq and compare them
       edgemq-bench report runs.json Markdown tables of a saved comparison (compare -json)
       edgemq-bench soak [flags]     the built edgemq under a mixed load for -duration, with kill -9, checked
       edgemq-bench bridge [flags]   edgemq's bridge beside Mosquitto's: live, drain after an outage, kill -9

scenarios: fanin (N publishers, 1 wildcard subscriber), fanout (1 publisher, M subscribers),
shared ($share group of workers), latency (fixed rate, end-to-end percentiles), conns (idle
connections, broker RSS per connection with -pid), burst (base rate, 10x spike, base rate),
backlog (an offline persistent subscriber accumulates -backlog messages, then drains).

flags:
`)
		fs.PrintDefaults()
	}
	var p params
	var proto string
	var qos int
	var asJSON bool
	fs.StringVar(&p.scenario, "scenario", "fanin", "scenario: fanin, fanout, shared, latency, conns, burst, backlog")
	fs.StringVar(&p.target.addr, "addr", "127.0.0.1:1883", "broker listener host:port")
	fs.StringVar(&p.target.transport, "transport", "tcp", "tcp or ws (MQTT over WebSocket)")
	fs.StringVar(&p.target.wsPath, "ws-path", "/mqtt", "HTTP path of a ws listener")
	fs.StringVar(&proto, "mqtt", "3.1.1", "MQTT version: 3.1.1 or 5")
	fs.IntVar(&qos, "qos", 0, "QoS of publishes and subscriptions: 0, 1 or 2")
	fs.IntVar(&p.pubs, "pubs", 0, "publishers (default per scenario: 10; fanout 1)")
	fs.IntVar(&p.subs, "subs", 0, "subscribers (default per scenario: 1; fanout 50; shared 4)")
	fs.IntVar(&p.size, "size", 256, "payload bytes (at least 24, the bench header)")
	fs.IntVar(&p.window, "window", 500, "closed loop: most messages in flight end to end")
	fs.IntVar(&p.inflight, "inflight", 100, "most unacknowledged QoS 1/2 publishes per connection (capped by the broker's v5 Receive Maximum)")
	fs.DurationVar(&p.duration, "duration", 5*time.Second, "publish phase")
	fs.IntVar(&p.rate, "rate", 0, "latency and burst: total msg/s (default 5000; burst base 2000)")
	fs.IntVar(&p.conns, "conns", 1000, "conns: idle connections")
	fs.IntVar(&p.backlog, "backlog", 10000, "backlog: messages queued while the subscriber is offline")
	fs.DurationVar(&p.drain, "drain", 2*time.Second, "stop waiting for acks and deliveries after this long without progress")
	fs.IntVar(&p.pid, "pid", 0, "broker PID: report its CPU seconds, peak RSS and (conns) RSS per connection")
	fs.StringVar(&p.label, "label", "", "broker name for the report")
	fs.StringVar(&p.fsyncDir, "fsync-dir", "", "while publishing, measure the latency of a small write+fsync in this directory every 5 ms (the broker's storage dir)")
	fs.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch proto {
	case "3.1.1", "4", "3":
		p.target.version = proto311
	case "5":
		p.target.version = proto5
	default:
		return fmt.Errorf("-mqtt: want 3.1.1 or 5 (got %q)", proto)
	}
	if qos < 0 || qos > 2 {
		return fmt.Errorf("-qos: want 0, 1 or 2 (got %d)", qos)
	}
	p.qos = byte(qos)
	res, err := runScenario(ctx, p)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	printResult(stdout, res)
	return nil
}
