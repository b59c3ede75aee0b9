package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Scenario names accepted by -scenario.
var scenarioNames = []string{"fanin", "fanout", "shared", "latency", "conns", "burst", "backlog"}

// params are the settings of one scenario run.
type params struct {
	scenario string
	target   target
	label    string // broker label for reports
	qos      byte
	pubs     int
	subs     int
	size     int           // payload bytes, at least headerSize
	window   int           // closed loop: messages in flight end to end
	inflight int           // per-connection cap on unacknowledged QoS 1/2 publishes
	duration time.Duration // publish phase
	rate     int           // total msg/s for latency and burst (burst: the base rate)
	conns    int           // conns: idle connections
	backlog  int           // backlog: messages queued for the offline subscriber
	drain    time.Duration // give up waiting after this long without progress
	pid      int           // broker process, for CPU and RSS; 0: unknown
	// fsyncDir, when set, is a directory on the broker's disk: during the
	// publish phase of a flow, the latency of a small write and fsync there
	// is measured (Result.Fsync), to read the end-to-end latency against.
	fsyncDir string
	// count, when set, makes each publisher of a flow stop after count
	// messages instead of after duration (go test -bench uses it).
	count int
	// measure, when set, is called with true as publishing starts (after
	// connecting) and with false when the drain ends.
	measure func(start bool)
}

// defaults fills the zero fields with the scenario's defaults.
func (p *params) defaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	switch p.scenario {
	case "fanin", "latency", "burst":
		def(&p.pubs, 10)
		def(&p.subs, 1)
	case "fanout":
		def(&p.pubs, 1)
		def(&p.subs, 50)
	case "shared":
		def(&p.pubs, 10)
		def(&p.subs, 4)
	case "backlog":
		def(&p.pubs, 1)
		def(&p.subs, 1)
	}
	switch p.scenario {
	case "latency":
		def(&p.rate, 5000)
	case "burst":
		def(&p.rate, 2000)
	}
	def(&p.size, 256)
	if p.size < headerSize {
		p.size = headerSize
	}
	def(&p.window, 500)
	def(&p.inflight, 100)
	def(&p.conns, 1000)
	def(&p.backlog, 10000)
	if p.duration == 0 {
		p.duration = 5 * time.Second
	}
	if p.drain == 0 {
		p.drain = 2 * time.Second
	}
	if p.target.version == 0 {
		p.target.version = proto311
	}
	if p.target.transport == "" {
		p.target.transport = "tcp"
	}
}

// Result is what one scenario run measured. Counts are exact: every message
// carries its publisher and sequence number.
type Result struct {
	Scenario     string `json:"scenario"`
	Broker       string `json:"broker,omitempty"`
	Transport    string `json:"transport"`
	Protocol     string `json:"protocol"`
	QoS          int    `json:"qos"`
	Publishers   int    `json:"publishers,omitempty"`
	Subscribers  int    `json:"subscribers,omitempty"`
	PayloadBytes int    `json:"payload_bytes,omitempty"`
	Window       int    `json:"window,omitempty"`
	TargetRate   int    `json:"target_rate,omitempty"`
	// Seconds is the measured span: first publish to last new delivery.
	Seconds float64 `json:"seconds"`
	// Published counts PUBLISH packets sent (no retransmissions happen).
	Published uint64 `json:"published"`
	// Acknowledged counts PUBACKs (QoS 1) or PUBCOMPs (QoS 2) with success.
	Acknowledged uint64 `json:"acknowledged"`
	// Rejected counts acks with a v5 reason code of 0x80 or more; those
	// messages are not expected to be delivered.
	Rejected uint64 `json:"rejected"`
	// Unacked counts QoS 1/2 publishes with no ack when the run ended.
	Unacked uint64 `json:"unacked"`
	// Expected is the deliveries that should have happened: (published -
	// rejected) times the subscribers that each message is for.
	Expected   uint64 `json:"expected"`
	Delivered  uint64 `json:"delivered"`
	Duplicated uint64 `json:"duplicated"`
	Lost       uint64 `json:"lost"`
	Reordered  uint64 `json:"reordered"`
	// Foreign counts messages of other runs or without a bench header.
	Foreign uint64 `json:"foreign"`
	// WindowReclaimed counts closed-loop tokens taken back from messages
	// not delivered within a second of their sending (presumed lost).
	WindowReclaimed int64 `json:"window_reclaimed"`
	// Lossy is true when any expected delivery is missing.
	Lossy bool `json:"lossy"`
	// MsgPerSec is unique deliveries per second over Seconds.
	MsgPerSec     float64       `json:"msg_per_sec"`
	PublishPerSec float64       `json:"publish_per_sec"`
	Latency       *latencyStats `json:"latency,omitempty"`
	Phases        []phaseResult `json:"phases,omitempty"`
	Conns         int           `json:"conns,omitempty"`
	ConnectPerSec float64       `json:"connect_per_sec,omitempty"`
	RSSPerConnKB  float64       `json:"rss_per_conn_kb,omitempty"`
	DrainSeconds  float64       `json:"drain_seconds,omitempty"`
	GenCPUSeconds float64       `json:"generator_cpu_seconds"`
	// LoadAvg is the machine's one-minute load average when the run started:
	// above the core count, something else competed for the CPU.
	LoadAvg float64 `json:"load_avg_1m"`
	// Broker figures need the broker's PID.
	BrokerCPUSeconds float64 `json:"broker_cpu_seconds,omitempty"`
	BrokerPeakRSSMB  float64 `json:"broker_peak_rss_mb,omitempty"`
	// BrokerStartRSSMB and BrokerEndRSSMB are the broker's VmRSS when the
	// measured span began and ended (conns: before the first connection and
	// with all of them open).
	BrokerStartRSSMB float64 `json:"broker_start_rss_mb,omitempty"`
	BrokerEndRSSMB   float64 `json:"broker_end_rss_mb,omitempty"`
	// CPUSecPerMillion is broker CPU seconds per million deliveries.
	CPUSecPerMillion float64 `json:"broker_cpu_sec_per_million,omitempty"`
	// BrokerCPUPercent is the broker's utime+stime over the measured span
	// as a percentage of one core: at a fixed rate, what the load costs.
	BrokerCPUPercent float64 `json:"broker_cpu_percent,omitempty"`
	// Fsync is the latency of a small write plus fsync on the broker's disk,
	// measured during the publish phase in its directory (params.fsyncDir).
	Fsync *latencyStats `json:"fsync,omitempty"`
	// FsyncCPUMicros is the fsync probe's own CPU, user and system, per
	// small write and fsync (measureFsync); 0 where not measured.
	FsyncCPUMicros float64  `json:"fsync_cpu_us,omitempty"`
	Notes          []string `json:"notes,omitempty"`
}

// phaseResult is one phase of the burst scenario, by send time.
type phaseResult struct {
	Name    string       `json:"name"`
	Rate    int          `json:"rate"`
	Latency latencyStats `json:"latency"`
	// RecoverySeconds (last phase only) is how long after the spike ended
	// messages were still sent that took more than twice the base phase's
	// p99 (at least 1 ms): the time the broker needed to catch up.
	RecoverySeconds float64 `json:"recovery_seconds,omitempty"`
}

func protoName(v byte) string {
	if v == proto5 {
		return "5"
	}
	return "3.1.1"
}

// runScenario runs one scenario to completion.
func runScenario(ctx context.Context, p params) (Result, error) {
	p.defaults()
	r := Result{Scenario: p.scenario, Broker: p.label, Transport: p.target.transport,
		Protocol: protoName(p.target.version), QoS: int(p.qos)}
	cpu0 := selfCPUSeconds()
	r.LoadAvg = loadAvg1()
	if n := runtime.NumCPU(); r.LoadAvg > float64(n) {
		r.Notes = append(r.Notes, fmt.Sprintf("machine busy: load average %.1f on %d cores before the run; figures are not reliable", r.LoadAvg, n))
	}
	var err error
	switch p.scenario {
	case "fanin", "fanout", "shared", "latency", "burst":
		err = runFlow(ctx, p, &r)
	case "conns":
		err = runConns(ctx, p, &r)
	case "backlog":
		err = runBacklog(ctx, p, &r)
	default:
		err = fmt.Errorf("unknown scenario %q (want one of %v)", p.scenario, scenarioNames)
	}
	r.GenCPUSeconds = selfCPUSeconds() - cpu0
	if r.BrokerCPUSeconds > 0 && r.Delivered > 0 {
		r.CPUSecPerMillion = r.BrokerCPUSeconds / (float64(r.Delivered) / 1e6)
	}
	return r, err
}

// publisher is one publishing connection. sent is owned by the publishing
// goroutine; acked and rejected by the read loop.
type publisher struct {
	id       uint32
	c        *client
	topic    string
	qos      byte
	pids     chan uint16 // free packet ids; its capacity is the inflight cap
	sent     atomic.Uint64
	acked    atomic.Uint64
	rejected atomic.Uint64
	late     uint64 // fixed rate: sends more than 10 ms behind schedule
}

func newPublisher(c *client, id uint32, topic string, qos byte, inflight int) *publisher {
	pb := &publisher{id: id, c: c, topic: topic, qos: qos}
	if qos > 0 {
		n := inflight
		if rm := int(c.connack.receiveMax); rm > 0 && rm < n {
			n = rm
		}
		n = min(n, 65535)
		pb.pids = make(chan uint16, n)
		for i := 1; i <= n; i++ {
			pb.pids <- uint16(i)
		}
	}
	return pb
}

// readLoop processes acks until the connection closes.
func (pb *publisher) readLoop() error {
	var scratch [8]byte
	for {
		pk, err := pb.c.pr.read()
		if err != nil {
			return err
		}
		switch pk.typ {
		case pktPuback, pktPubcomp:
			pid, reason, err := parseAck(pk)
			if err != nil {
				return err
			}
			if reason >= 0x80 {
				pb.rejected.Add(1)
			} else {
				pb.acked.Add(1)
			}
			pb.pids <- pid
		case pktPubrec:
			pid, reason, err := parseAck(pk)
			if err != nil {
				return err
			}
			if reason >= 0x80 { // [MQTT-4.3.3] the id is free again, no PUBREL
				pb.rejected.Add(1)
				pb.pids <- pid
				continue
			}
			if err := pb.c.w.write(appendAck(scratch[:0], pktPubrel, pid)); err != nil {
				return err
			}
		case pktDisconnect:
			return fmt.Errorf("broker sent DISCONNECT % x", pk.body)
		}
	}
}

// rateFn gives a publisher's rate in msg/s at time t; nil: closed loop.
type rateFn func(t time.Time) float64

// publish sends until ctx ends: closed loop through win when rate is nil,
// otherwise on a fixed schedule.
func (pb *publisher) publish(ctx context.Context, nonce uint32, size int, win *window, rate rateFn, start time.Time, limit uint64) {
	payload := make([]byte, size)
	pkt := make([]byte, 0, size+64)
	next := start
	done := ctx.Done()
	for seq := uint64(0); limit == 0 || seq < limit; seq++ {
		if rate != nil {
			now := time.Now()
			if d := next.Sub(now); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-done:
					t.Stop()
					return
				}
			} else if d < -10*time.Millisecond {
				pb.late++
			}
			next = next.Add(time.Duration(float64(time.Second) / rate(next)))
		}
		if win != nil {
			if !win.take(done, int(pb.id), seq) {
				return
			}
		} else {
			select {
			case <-done:
				return
			default:
			}
		}
		var pid uint16
		if pb.qos > 0 {
			select {
			case pid = <-pb.pids:
			case <-done:
				return
			}
		}
		encodeHeader(payload, nonce, pb.id, seq, time.Now().UnixNano())
		pkt = appendPublish(pkt[:0], pb.c.version, pb.topic, pb.qos, pid, payload)
		if err := pb.c.w.write(pkt); err != nil {
			return
		}
		pb.sent.Add(1)
	}
}

// subscriberLoop reads deliveries into t and acknowledges them at qos.
// member is the shared-subscription member's own high-water marks (nil
// otherwise), see tally.record.
func subscriberLoop(c *client, t *tally, member []int64) error {
	var scratch [8]byte
	for {
		pk, err := c.pr.read()
		if err != nil {
			return err
		}
		switch pk.typ {
		case pktPublish:
			v, err := parsePublish(pk, c.version)
			if err != nil {
				return err
			}
			t.record(v.payload, time.Now().UnixNano(), member)
			switch v.qos {
			case 1:
				err = c.w.write(appendAck(scratch[:0], pktPuback, v.pid))
			case 2:
				err = c.w.write(appendAck(scratch[:0], pktPubrec, v.pid))
			}
			if err != nil {
				return err
			}
		case pktPubrel:
			pid, _, err := parseAck(pk)
			if err != nil {
				return err
			}
			if err := c.w.write(appendAck(scratch[:0], pktPubcomp, pid)); err != nil {
				return err
			}
		case pktDisconnect:
			return fmt.Errorf("broker sent DISCONNECT % x", pk.body)
		}
	}
}

// loops runs read loops and remembers the first unexpected error, that is
// one that happens before closing is set.
type loops struct {
	wg      sync.WaitGroup
	closing atomic.Bool
	mu      sync.Mutex
	errs    []string
}

func (l *loops) goRun(name string, fn func() error) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if err := fn(); err != nil && !l.closing.Load() {
			l.mu.Lock()
			l.errs = append(l.errs, fmt.Sprintf("%s: %v", name, err))
			l.mu.Unlock()
		}
	}()
}

func newNonce() uint32 { return rand.Uint32() | 1 }

// runFlow is fanin, fanout, shared, latency and burst: publishers, subscribers,
// counting, then a drain.
func runFlow(ctx context.Context, p params, r *Result) error {
	nonce := newNonce()
	base := fmt.Sprintf("bench/%08x", nonce)
	copies := p.subs
	filter := base + "/+"
	pubTopic := func(i int) string { return fmt.Sprintf("%s/p%d", base, i) }
	switch p.scenario {
	case "fanout":
		filter = base + "/fo"
		pubTopic = func(int) string { return base + "/fo" }
	case "shared":
		filter = "$share/bench/" + base + "/+"
		copies = 1
	}
	r.Publishers, r.Subscribers, r.PayloadBytes = p.pubs, p.subs, p.size
	closedLoop := p.scenario != "latency" && p.scenario != "burst"
	var win *window
	if closedLoop {
		win = newWindow(p.window, copies, p.pubs, time.Second)
		r.Window = p.window
	} else {
		r.TargetRate = p.rate
	}

	// The schedule: burst is 3/8 base rate, 2/8 ten times that, 3/8 base.
	start := time.Now().Add(200 * time.Millisecond)
	var phaseEnds []int64
	var rate rateFn
	if !closedLoop {
		per := float64(p.rate) / float64(p.pubs)
		rate = func(time.Time) float64 { return per }
		if p.scenario == "burst" {
			b1 := start.Add(p.duration * 3 / 8)
			b2 := start.Add(p.duration * 5 / 8)
			phaseEnds = []int64{b1.UnixNano(), b2.UnixNano(), start.Add(p.duration).UnixNano()}
			rate = func(t time.Time) float64 {
				if !t.Before(b1) && t.Before(b2) {
					return per * 10
				}
				return per
			}
		}
	}

	var subLoops, pubLoops loops
	var subs []*client
	var pubs []*publisher
	defer func() {
		pubLoops.closing.Store(true)
		for _, pb := range pubs {
			pb.c.close(true)
		}
		pubLoops.wg.Wait()
		subLoops.closing.Store(true)
		for _, c := range subs {
			c.close(true)
		}
		subLoops.wg.Wait()
	}()

	var tallies []*tally
	var sharedTally *tally
	if p.scenario == "shared" {
		sharedTally = newTally(nonce, p.pubs, win, true, phaseEnds)
		tallies = append(tallies, sharedTally)
	}
	for i := range p.subs {
		c, err := connect(ctx, p.target, connectOptions{clientID: fmt.Sprintf("bench-%08x-s%d", nonce, i), clean: true, keepalive: 600})
		if err != nil {
			return err
		}
		subs = append(subs, c)
		if err := c.subscribe(filter, p.qos); err != nil {
			return err
		}
	}
	for i := range p.pubs {
		c, err := connect(ctx, p.target, connectOptions{clientID: fmt.Sprintf("bench-%08x-p%d", nonce, i), clean: true, keepalive: 600})
		if err != nil {
			return err
		}
		pubs = append(pubs, newPublisher(c, uint32(i), pubTopic(i), p.qos, p.inflight))
	}
	for i, c := range subs {
		t := sharedTally
		var member []int64
		if t == nil {
			t = newTally(nonce, p.pubs, win, false, phaseEnds)
			tallies = append(tallies, t)
		} else {
			member = make([]int64, p.pubs)
			for j := range member {
				member[j] = -1
			}
		}
		subLoops.goRun(fmt.Sprintf("subscriber %d", i), func() error { return subscriberLoop(c, t, member) })
	}
	for i, pb := range pubs {
		pubLoops.goRun(fmt.Sprintf("publisher %d", i), pb.readLoop)
	}

	time.Sleep(time.Until(start))
	probe := startProbe(p.pid)
	if p.measure != nil {
		p.measure(true)
	}
	var pubCtx context.Context
	var cancel context.CancelFunc
	if p.count > 0 {
		pubCtx, cancel = context.WithCancel(ctx)
	} else {
		pubCtx, cancel = context.WithDeadline(ctx, start.Add(p.duration))
	}
	defer cancel()
	// With a count, the last publisher to finish ends the publish phase
	// (and with it the reclaim scan).
	var remaining atomic.Int64
	remaining.Store(int64(len(pubs)))
	var pubWG sync.WaitGroup
	var fsyncStats latencyStats
	var fsyncCPU float64
	var fsyncErr error
	if p.fsyncDir != "" {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			fsyncStats, fsyncCPU, fsyncErr = measureFsync(pubCtx, p.fsyncDir)
		}()
	}
	for _, pb := range pubs {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			pb.publish(pubCtx, nonce, p.size, win, rate, start, uint64(p.count))
			if remaining.Add(-1) == 0 && p.count > 0 {
				cancel()
			}
		}()
	}
	delivered := func() uint64 {
		var n uint64
		for _, t := range tallies {
			n += t.uniqueN.Load()
		}
		return n
	}
	// Reclaim: a message lost in the broker would hold its token forever.
	if win != nil {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-pubCtx.Done():
					return
				case now := <-tick.C:
					win.reclaim(now)
				}
			}
		}()
	}
	pubWG.Wait()
	pubEnd := time.Now()
	if fsyncErr != nil {
		return fsyncErr
	}
	if p.fsyncDir != "" {
		r.Fsync = &fsyncStats
		r.FsyncCPUMicros = fsyncCPU
	}

	// Drain: wait for the acks, then for the deliveries, each until complete
	// or until p.drain passes with no progress.
	waitFor := func(progress func() uint64, want func() uint64) {
		last, since := progress(), time.Now()
		for progress() < want() && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
			if n := progress(); n != last {
				last, since = n, time.Now()
			} else if time.Since(since) > p.drain {
				return
			}
		}
	}
	sum := func(f func(*publisher) uint64) uint64 {
		var n uint64
		for _, pb := range pubs {
			n += f(pb)
		}
		return n
	}
	if p.qos > 0 {
		waitFor(func() uint64 { return sum(func(pb *publisher) uint64 { return pb.acked.Load() + pb.rejected.Load() }) },
			func() uint64 { return sum(func(pb *publisher) uint64 { return pb.sent.Load() }) })
	}
	expected := func() uint64 {
		return sum(func(pb *publisher) uint64 { return pb.sent.Load() - pb.rejected.Load() }) * uint64(copies)
	}
	waitFor(delivered, expected)
	if p.measure != nil {
		p.measure(false)
	}
	probe.finish(r)

	// Stop the read loops before reading the tallies.
	pubLoops.closing.Store(true)
	subLoops.closing.Store(true)
	for _, pb := range pubs {
		pb.c.close(true)
	}
	pubLoops.wg.Wait()
	for _, c := range subs {
		c.close(true)
	}
	subLoops.wg.Wait()
	pubsDone := pubs
	pubs, subs = nil, nil

	var late uint64
	for _, pb := range pubsDone {
		sent, acked, rej := pb.sent.Load(), pb.acked.Load(), pb.rejected.Load()
		r.Published += sent
		r.Acknowledged += acked
		r.Rejected += rej
		if p.qos > 0 && sent > acked+rej {
			r.Unacked += sent - acked - rej
		}
		late += pb.late
	}
	r.Expected = (r.Published - r.Rejected) * uint64(copies)
	var lastNano int64
	var lat [][]uint32
	var missingNotes []string
	for _, t := range tallies {
		for i := range t.pubs {
			tp := &t.pubs[i]
			r.Delivered += tp.unique
			r.Duplicated += tp.dup
			r.Reordered += tp.reorder
			exp := pubsDone[i].sent.Load() - pubsDone[i].rejected.Load()
			if tp.unique < exp {
				r.Lost += exp - tp.unique
				if len(missingNotes) < 5 && pubsDone[i].rejected.Load() == 0 {
					missingNotes = append(missingNotes, fmt.Sprintf("publisher %d: %d missing, first %v",
						i, exp-tp.unique, t.missing(i, exp, 5)))
				}
			}
		}
		r.Foreign += t.foreign + t.short
		lastNano = max(lastNano, t.lastNano)
		if lat == nil {
			lat = make([][]uint32, len(t.lat))
		}
		for i := range t.lat {
			lat[i] = append(lat[i], t.lat[i]...)
		}
	}
	r.Lossy = r.Lost > 0
	if win != nil {
		r.WindowReclaimed = win.reclaimed.Load()
	}
	span := time.Duration(lastNano - start.UnixNano())
	if lastNano == 0 {
		span = pubEnd.Sub(start)
	}
	r.Seconds = span.Seconds()
	if r.Seconds > 0 {
		r.MsgPerSec = float64(r.Delivered) / r.Seconds
	}
	r.PublishPerSec = float64(r.Published) / pubEnd.Sub(start).Seconds()
	var all []uint32
	for _, l := range lat {
		all = append(all, l...)
	}
	ls := summarize(all)
	r.Latency = &ls
	if p.scenario == "burst" {
		names := []string{"base", "10x burst", "after"}
		for i, l := range lat {
			rt := p.rate
			if i == 1 {
				rt *= 10
			}
			r.Phases = append(r.Phases, phaseResult{Name: names[i], Rate: rt, Latency: summarize(l)})
		}
		if len(r.Phases) == 3 {
			limit := uint32(max(2*r.Phases[0].Latency.P99*1000, 1000))
			spikeEnd := phaseEnds[1]
			var lastSlow int64
			for _, t := range tallies {
				for _, s := range t.lastPhase {
					if s.us > limit && s.sent > lastSlow {
						lastSlow = s.sent
					}
				}
			}
			if lastSlow > spikeEnd {
				r.Phases[2].RecoverySeconds = time.Duration(lastSlow - spikeEnd).Seconds()
			}
		}
	}
	if late > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("generator fell behind its schedule by more than 10 ms on %d sends", late))
	}
	r.Notes = append(r.Notes, missingNotes...)
	r.Notes = append(r.Notes, pubLoops.errs...)
	r.Notes = append(r.Notes, subLoops.errs...)
	return nil
}

// runConns opens idle connections and measures what they cost the broker.
func runConns(ctx context.Context, p params, r *Result) error {
	nonce := newNonce()
	r.Conns = p.conns
	if limit, err := raiseFDLimit(); err != nil {
		return err
	} else if need := uint64(p.conns) + 64; limit < need {
		return fmt.Errorf("conns: %d connections need %d file descriptors, the hard limit is %d (ulimit -Hn)", p.conns, need, limit)
	}
	probe := startProbe(p.pid)
	if p.pid > 0 && probe == nil {
		return fmt.Errorf("broker %d: cannot read its /proc entry", p.pid)
	}
	clients := make([]*client, p.conns)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.close(true)
			}
		}
	}()
	t0 := time.Now()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	next := atomic.Int64{}
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= p.conns {
					return
				}
				c, err := connect(ctx, p.target, connectOptions{clientID: fmt.Sprintf("bench-%08x-c%d", nonce, i), clean: true, keepalive: 600})
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				clients[i] = c
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	r.Seconds = time.Since(t0).Seconds()
	r.ConnectPerSec = float64(p.conns) / r.Seconds
	// Let the broker settle (goroutine stacks, buffers) before measuring.
	select {
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}
	probe.finish(r)
	if p.pid > 0 {
		if r.BrokerEndRSSMB == 0 {
			return fmt.Errorf("broker %d: RSS unreadable", p.pid)
		}
		r.RSSPerConnKB = (r.BrokerEndRSSMB - r.BrokerStartRSSMB) * 1024 / float64(p.conns)
	} else {
		r.Notes = append(r.Notes, "no -pid: broker RSS per connection not measured")
	}
	return nil
}

// runBacklog lets a persistent subscriber go offline, publishes p.backlog
// messages, then reconnects it and measures the drain.
func runBacklog(ctx context.Context, p params, r *Result) error {
	nonce := newNonce()
	topic := fmt.Sprintf("bench/%08x/backlog", nonce)
	subID := fmt.Sprintf("bench-%08x-offline", nonce)
	r.Publishers, r.Subscribers, r.PayloadBytes = 1, 1, p.size
	if p.qos == 0 {
		r.Notes = append(r.Notes, "QoS 0 is not queued for offline sessions by MQTT: expect total loss")
	}
	persist := connectOptions{clientID: subID, clean: false, keepalive: 600, sessionExpiry: 3600}
	if p.target.version == proto5 {
		persist.clean = true // a fresh session that outlives the connection (expiry 3600 s)
	}
	sc, err := connect(ctx, p.target, persist)
	if err != nil {
		return err
	}
	if err := sc.subscribe(topic, p.qos); err != nil {
		sc.close(false)
		return err
	}
	sc.close(true)

	probe := startProbe(p.pid)
	pc, err := connect(ctx, p.target, connectOptions{clientID: fmt.Sprintf("bench-%08x-p0", nonce), clean: true, keepalive: 600})
	if err != nil {
		return err
	}
	pb := newPublisher(pc, 0, topic, p.qos, p.inflight)
	var pubLoops loops
	pubLoops.goRun("publisher", pb.readLoop)
	pubCtx, cancel := context.WithCancel(ctx)
	t0 := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pb.publishN(pubCtx, nonce, p.size, uint64(p.backlog))
	}()
	<-done
	cancel()
	// Wait for every ack.
	last, since := uint64(0), time.Now()
	for p.qos > 0 && pb.acked.Load()+pb.rejected.Load() < pb.sent.Load() && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
		if n := pb.acked.Load() + pb.rejected.Load(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) > p.drain {
			break
		}
	}
	pubSeconds := time.Since(t0).Seconds()
	pubLoops.closing.Store(true)
	pc.close(true)
	pubLoops.wg.Wait()
	r.Published, r.Acknowledged, r.Rejected = pb.sent.Load(), pb.acked.Load(), pb.rejected.Load()
	if p.qos > 0 && r.Published > r.Acknowledged+r.Rejected {
		r.Unacked = r.Published - r.Acknowledged - r.Rejected
	}
	r.PublishPerSec = float64(r.Published) / pubSeconds

	// Reconnect and drain; the broker sends the backlog on its own.
	persist.clean = false
	t1 := time.Now()
	sc, err = connect(ctx, p.target, persist)
	if err != nil {
		return err
	}
	if !sc.connack.sessionPresent {
		r.Notes = append(r.Notes, "broker did not keep the session (session present = 0)")
	}
	t := newTally(nonce, 1, nil, false, nil)
	var subLoops loops
	subLoops.goRun("subscriber", func() error { return subscriberLoop(sc, t, nil) })
	want := r.Published - r.Rejected
	last, since = 0, time.Now()
	for t.uniqueN.Load() < want && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
		if n := t.uniqueN.Load(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) > p.drain {
			break
		}
	}
	probe.finish(r)
	subLoops.closing.Store(true)
	sc.close(true)
	subLoops.wg.Wait()

	tp := &t.pubs[0]
	r.Expected, r.Delivered, r.Duplicated, r.Reordered = want, tp.unique, tp.dup, tp.reorder
	r.Foreign = t.foreign + t.short
	if tp.unique < want {
		r.Lost = want - tp.unique
		if r.Rejected == 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("missing sequence numbers, first: %v", t.missing(0, want, 10)))
		}
	}
	r.Lossy = r.Lost > 0
	if t.lastNano > 0 {
		r.DrainSeconds = time.Duration(t.lastNano - t1.UnixNano()).Seconds()
		r.Seconds = r.DrainSeconds
		if r.DrainSeconds > 0 {
			r.MsgPerSec = float64(r.Delivered) / r.DrainSeconds
		}
	}
	ls := summarize(t.lat[0])
	r.Latency = &ls
	r.Notes = append(r.Notes, "latency here is time spent queued offline, not a delivery latency")
	r.Notes = append(r.Notes, pubLoops.errs...)
	r.Notes = append(r.Notes, subLoops.errs...)
	return nil
}

// publishN sends n messages as fast as the per-connection inflight cap
// allows (QoS 0: as fast as the socket takes them).
func (pb *publisher) publishN(ctx context.Context, nonce uint32, size int, n uint64) {
	payload := make([]byte, size)
	pkt := make([]byte, 0, size+64)
	for seq := uint64(0); seq < n; seq++ {
		var pid uint16
		if pb.qos > 0 {
			select {
			case pid = <-pb.pids:
			case <-ctx.Done():
				return
			}
		}
		encodeHeader(payload, nonce, pb.id, seq, time.Now().UnixNano())
		pkt = appendPublish(pkt[:0], pb.c.version, pb.topic, pb.qos, pid, payload)
		if err := pb.c.w.write(pkt); err != nil {
			return
		}
		pb.sent.Add(1)
	}
}
