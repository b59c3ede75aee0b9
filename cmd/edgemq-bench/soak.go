package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The soak test: the built edgemq as a subprocess under a realistic mixed
// load for a given duration, with periodic kill -9 and restart, a disk
// budget small enough to be reached and one full-disk episode, checked
// continuously against what a user must be able to rely on for weeks:
//
//   - checkpoints succeed (outside the full-disk episode), and the log's
//     size stays within its budget and shrinks once consumers catch up;
//   - the broker's RSS and goroutines stay under their bounds;
//   - every acknowledged QoS 1/2 telemetry message reaches every checked
//     subscription (persistent sessions subscribed before the load, a
//     shared group counted as one), and a QoS 2 one delivered at QoS 2
//     arrives once; the newest acknowledged retained state of each device
//     is there at the end;
//   - persistent sessions survive every restart;
//   - publishing resumes after the budget and the full-disk episodes.
//
// The load: devices (MQTT 5 and 3.1.1) publish QoS 0/1/2 telemetry and
// retained state, with wills, and drop their connections now and then;
// persistent subscribers (v5, v3.1.1, a shared group of two) are taken over
// by a new connection of theirs now and then; a slow consumer alternates
// between reading slowly (the budget fills) and draining; clean subscribers
// come and go; short-lived v5 sessions subscribe, leave and expire.
//
// It prints a status line every 10 s and a summary at the end, and returns
// an error (exit status 1) if any check failed. The summary's memory
// figures are first, peak and last (at the end of the drain) of RSS and of
// the live heap (what the last collection kept, where RSS also holds the
// garbage of up to gc_headroom), and idle: once the load is gone and the
// broker collected (quiesce), what it keeps. Growth shows in the live
// heap and in idle, and only over one broker's life (-kill-every).

type soakParams struct {
	duration      time.Duration
	killEvery     time.Duration
	budget        int64
	segment       int64
	devices       int
	rate          int // messages per second per device
	size          int
	bin           string
	dir           string
	maxRSS        int64
	maxGoroutines int
	tmpfs         bool
	drain         time.Duration
}

func runSoak(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgemq-bench soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var p soakParams
	var budget, rss string
	fs.DurationVar(&p.duration, "duration", 2*time.Minute, "how long the load runs (then a drain and the final checks)")
	fs.DurationVar(&p.killEvery, "kill-every", 30*time.Second, "kill -9 and restart the broker this often (0: never)")
	fs.StringVar(&budget, "budget", "2MiB", "storage.max_disk_bytes of the broker: small, so that the slow consumer fills it")
	fs.IntVar(&p.devices, "devices", 4, "publishing devices (half MQTT 5, half 3.1.1)")
	fs.IntVar(&p.rate, "rate", 40, "messages per second per device")
	fs.IntVar(&p.size, "size", 1024, "telemetry payload bytes")
	fs.StringVar(&p.bin, "bin", "", "edgemq binary (default: go build ./cmd/edgemq)")
	fs.StringVar(&p.dir, "dir", "", "working directory (default: a new temporary one, removed after a run without violations)")
	fs.StringVar(&rss, "max-rss", "256MiB", "the broker's RSS bound")
	fs.IntVar(&p.maxGoroutines, "max-goroutines", 1000, "the broker's goroutine bound")
	fs.BoolVar(&p.tmpfs, "tmpfs", true, "put storage on a small tmpfs (root only) for a full-disk episode; without it the budget is the only limit")
	fs.DurationVar(&p.drain, "drain", 2*time.Minute, "after the load, how long subscribers may take to receive everything")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if p.budget, err = parseSize(budget); err != nil {
		return fmt.Errorf("-budget: %w", err)
	}
	if p.maxRSS, err = parseSize(rss); err != nil {
		return fmt.Errorf("-max-rss: %w", err)
	}
	p.segment = max(64<<10, min(1<<20, p.budget/32))
	if p.dir == "" {
		if p.dir, err = os.MkdirTemp("", "edgemq-soak-"); err != nil {
			return err
		}
	}
	if p.bin == "" {
		if p.bin, err = buildInModule(ctx, "./cmd/edgemq", p.dir, "edgemq"); err != nil {
			return err
		}
	}
	s := &soak{p: p, out: stdout}
	verr := s.run(ctx)
	s.summary(stdout)
	if verr != nil {
		return verr
	}
	if len(s.violations) > 0 {
		return fmt.Errorf("soak: %d violations (broker log: %s)", len(s.violations), s.logPath)
	}
	if s.interrupted {
		return errors.New("soak: interrupted")
	}
	_ = os.RemoveAll(filepath.Join(p.dir, "data"))
	return nil
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("want a size like 8MiB (got %q)", s)
	}
	return n * mult, nil
}

// soak is one run.
type soak struct {
	p       soakParams
	out     io.Writer
	addr    string // MQTT over TCP
	http    string
	dataDir string
	disk    string // the tmpfs mount, "" without one
	logPath string
	conf    string

	bmu     sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	upSince time.Time // zero while down

	mu         sync.Mutex
	violations []string
	acked      [][]uint8 // publisher -> seq -> QoS acknowledged (0: not)
	ackedAt    [][]int64 // publisher -> seq -> when, Unix ms (for the report of what is missing)
	killedAt   []string
	retAcked   []uint64 // device -> newest acknowledged retained seq
	retSent    []uint64 // device -> newest sent retained seq
	checked    []*soakSub
	receipts   map[string]*receipts

	published, ackedN, refused, timeouts            [3]atomic.Int64
	kills, drops, takeovers, expiring, cleanConns   atomic.Int64
	willsGot, lostSessions, refusedQuota, refused83 atomic.Int64
	lastAccept                                      atomic.Int64 // Unix ns
	episode                                         atomic.Bool
	episodeEnd                                      atomic.Int64
	draining                                        atomic.Bool

	first, last, peak metricSample
	samples           int
	idle              metricSample  // after the load, once the broker collected (quiesce)
	idleAfter         time.Duration // how long after the final checks idle was taken
	idleCollected     bool          // whether a collection came before it
	lastUp            time.Duration // how long the broker of last and idle had been up
	checkpointFails   float64       // summed over broker lifetimes
	loaded            time.Duration // how long the load ran
	interrupted       bool
	longestGap        time.Duration // the longest time without an accepted publish, as sampled
}

// metricSample is what the monitor reads from /metrics. live is the heap
// the last collection left (0 from a broker that does not say), gcs the
// collections so far.
type metricSample struct {
	goroutines, rss, diskBytes, cpFailures, cpLast, lastOffset, sessions, queued float64
	live, gcs                                                                    float64
}

// soakSub is a checked persistent subscriber.
type soakSub struct {
	id, filter string
	version    byte
	qos        byte
	receiveMax uint16
	slow       bool
	recv       *receipts
	awaitRel   map[uint16]bool // inbound QoS 2 state, kept across connections as a client must
}

// receipts counts deliveries per (publisher, seq) for one subscription (a
// shared group's members share theirs).
type receipts struct {
	name string
	qos  byte
	mu   sync.Mutex
	n    [][]uint8
	dups int64 // QoS 2 deliveries of a message already delivered at QoS 2
	got  int64
}

func (r *receipts) add(pub uint32, seq uint64, q byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for uint32(len(r.n)) <= pub {
		r.n = append(r.n, nil)
	}
	row := r.n[pub]
	for uint64(len(row)) <= seq {
		row = append(row, 0)
	}
	if row[seq] > 0 && q == 2 {
		r.dups++
	}
	if row[seq] < 255 {
		row[seq]++
	}
	r.n[pub] = row
	r.got++
}

func (s *soak) violate(format string, args ...any) {
	msg := time.Now().UTC().Format("15:04:05 ") + fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.violations = append(s.violations, msg)
	s.mu.Unlock()
	fmt.Fprintln(s.out, "VIOLATION:", msg)
}

func (s *soak) run(ctx context.Context) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	s.addr, s.http = fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	s.dataDir = filepath.Join(s.p.dir, "data")
	if err := os.MkdirAll(s.dataDir, 0o750); err != nil {
		return err
	}
	if s.p.tmpfs {
		size := s.p.budget*2 + 8<<20
		if unmount, err := mountTmpfs(s.dataDir, size); err != nil {
			fmt.Fprintf(s.out, "soak: no tmpfs (%v): no full-disk episode, the budget is the only limit\n", err)
		} else {
			s.disk = s.dataDir
			defer unmount()
		}
	}
	s.logPath = filepath.Join(s.p.dir, "broker.log")
	s.conf = filepath.Join(s.p.dir, "edgemq.yaml")
	conf := fmt.Sprintf(`listeners:
  - name: tcp
    type: tcp
    address: %s
http:
  address: %s
storage:
  dir: %s
  sync: always
  segment_size: %d
  max_disk_bytes: %d
  checkpoint_interval: 1s
auth:
  allow_anonymous: true
log:
  level: info
`, s.addr, s.http, filepath.Join(s.dataDir, "store"), s.p.segment, s.p.budget)
	if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(s.out, "soak: %s for %s, budget %d bytes, segments %d, kill -9 every %s, %d devices at %d msg/s, dir %s, tmpfs %v\n",
		s.p.bin, s.p.duration, s.p.budget, s.p.segment, s.p.killEvery, s.p.devices, s.p.rate, s.p.dir, s.disk != "")
	if err := s.start(); err != nil {
		return err
	}
	defer s.stopBroker()

	s.acked, s.ackedAt = make([][]uint8, s.p.devices), make([][]int64, s.p.devices)
	s.retAcked, s.retSent = make([]uint64, s.p.devices), make([]uint64, s.p.devices)
	s.receipts = map[string]*receipts{}
	group := &receipts{name: "$share/soak/tele/# (v5, 2 members)", qos: 2}
	s.checked = []*soakSub{
		{id: "soak-sub-v5", filter: "tele/#", version: proto5, qos: 2, recv: &receipts{name: "soak-sub-v5 tele/# qos 2", qos: 2}},
		{id: "soak-sub-v3", filter: "tele/#", version: proto311, qos: 2, recv: &receipts{name: "soak-sub-v3 tele/# qos 2 (3.1.1)", qos: 2}},
		{id: "soak-slow", filter: "tele/#", version: proto5, qos: 1, receiveMax: 10, slow: true, recv: &receipts{name: "soak-slow tele/# qos 1 (slow, then draining)", qos: 1}},
		{id: "soak-grp-a", filter: "$share/soak/tele/#", version: proto5, qos: 2, recv: group},
		{id: "soak-grp-b", filter: "$share/soak/tele/#", version: proto5, qos: 2, recv: group},
	}
	subCtx, stopSubs := context.WithCancel(context.Background())
	var subs sync.WaitGroup
	ready := make(chan struct{}, len(s.checked))
	for _, sub := range s.checked {
		sub.awaitRel = map[uint16]bool{}
		subs.Add(1)
		go func() { defer subs.Done(); s.subscriber(subCtx, sub, ready) }()
	}
	for range s.checked {
		select {
		case <-ready:
		case <-time.After(30 * time.Second):
			stopSubs()
			subs.Wait()
			return errors.New("soak: subscribers did not subscribe within 30 s")
		}
	}
	willSub := &soakSub{id: "soak-wills", filter: "will/#", version: proto5, qos: 1, recv: &receipts{name: "wills"}, awaitRel: map[uint16]bool{}}
	subs.Add(1)
	go func() { defer subs.Done(); s.subscriber(subCtx, willSub, make(chan struct{}, 1)) }()

	loadCtx, stopLoad := context.WithTimeout(ctx, s.p.duration)
	defer stopLoad()
	var load sync.WaitGroup
	goLoad := func(f func(context.Context)) {
		load.Add(1)
		go func() { defer load.Done(); f(loadCtx) }()
	}
	s.lastAccept.Store(time.Now().UnixNano())
	loadStart := time.Now()
	for i := range s.p.devices {
		goLoad(func(ctx context.Context) { s.device(ctx, i) })
	}
	goLoad(s.cleanChurn)
	goLoad(s.expiringSessions)
	goLoad(s.killer)
	goLoad(s.diskEpisode)
	monCtx, stopMon := context.WithCancel(context.Background())
	monDone := make(chan struct{})
	go func() { defer close(monDone); s.monitor(monCtx) }()
	load.Wait()
	s.loaded = time.Since(loadStart).Round(time.Second)
	if ctx.Err() != nil { // interrupted: what is still on its way proves nothing
		fmt.Fprintln(s.out, "soak: interrupted; no final checks")
		s.interrupted = true
		stopSubs()
		subs.Wait()
		stopMon()
		<-monDone
		return nil
	}

	// Drain: no more load; the slow consumer reads at full speed.
	s.draining.Store(true)
	fmt.Fprintln(s.out, "soak: load done, draining")
	deadline := time.Now().Add(s.p.drain)
	for time.Now().Before(deadline) && s.missing(false) > 0 && ctx.Err() == nil {
		time.Sleep(time.Second)
	}
	stopSubs()
	subs.Wait()
	s.missing(true)
	s.willsGot.Store(willSub.recv.got)
	s.checkRetained()
	s.checkTrimmed()
	stopMon()
	<-monDone
	s.quiesce(ctx)
	return nil
}

// quiesceMax bounds quiesce: the runtime collects an idle process at least
// every 2 minutes.
const quiesceMax = 150 * time.Second

// quiesceSteady is how many samples (2 s apart) RSS must stay within 1%
// after the collection for quiesce to take it.
const quiesceSteady = 5

// quiesce waits, once the load and the final checks are over, for the
// broker to collect its garbage and give the freed pages back, and takes
// the summary's idle sample then: what the broker keeps after the load.
// Under load its heap, and RSS with it, holds up to gc_headroom (32 MiB)
// of garbage between collections, so the end of the drain (last) falls
// anywhere in that saw-tooth; an idle broker is collected late (the goal
// its last busy collection set stands until the heap reaches it or the
// runtime forces one), then RSS falls within seconds. It waits for one collection after it began,
// then for RSS to stop falling (quiesceSteady samples within 1%), at
// most quiesceMax; the summary says when no collection came.
func (s *soak) quiesce(ctx context.Context) {
	begin := time.Now()
	_, upFor := s.up()
	base, _, err := scrape(s.http)
	if err != nil {
		return
	}
	var prev []float64
	for time.Since(begin) < quiesceMax && ctx.Err() == nil {
		sleepCtx(ctx, 2*time.Second)
		m, _, err := scrape(s.http)
		if err != nil {
			continue
		}
		s.mu.Lock()
		s.idle, s.idleAfter, s.idleCollected, s.lastUp = m, time.Since(begin).Round(time.Second), m.gcs > base.gcs, upFor+time.Since(begin)
		s.mu.Unlock()
		if m.gcs <= base.gcs {
			continue
		}
		if prev = append(prev, m.rss); len(prev) > quiesceSteady && prev[len(prev)-1-quiesceSteady] <= m.rss*1.01 {
			return
		}
	}
}

// start starts the broker and waits until it listens.
func (s *soak) start() error {
	lf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.p.bin, "run", "-c", s.conf)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start %s: %w", s.p.bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); lf.Close(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", s.addr, time.Second); err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("soak: the broker exited at start: %s", tail(s.logPath))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("soak: the broker did not listen within 30 s: %s", tail(s.logPath))
		}
	}
	s.bmu.Lock()
	s.cmd, s.exited, s.upSince = cmd, exited, time.Now()
	s.bmu.Unlock()
	return nil
}

// kill9 kills the broker with SIGKILL and waits for it.
func (s *soak) kill9() {
	s.bmu.Lock()
	cmd, exited := s.cmd, s.exited
	s.upSince = time.Time{}
	s.bmu.Unlock()
	_ = cmd.Process.Kill()
	<-exited
}

// stopBroker stops the broker with SIGTERM; it must exit 0 within 15 s.
func (s *soak) stopBroker() {
	s.bmu.Lock()
	cmd, exited := s.cmd, s.exited
	s.upSince = time.Time{}
	s.bmu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			s.violate("the broker exited with status %d after SIGTERM", code)
		}
	case <-time.After(15 * time.Second):
		s.violate("the broker did not exit within 15 s of SIGTERM")
		_ = cmd.Process.Kill()
		<-exited
	}
}

func (s *soak) up() (bool, time.Duration) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	if s.upSince.IsZero() {
		return false, 0
	}
	return true, time.Since(s.upSince)
}

// killer kills and restarts the broker every killEvery, outside the
// full-disk episode.
func (s *soak) killer(ctx context.Context) {
	if s.p.killEvery <= 0 {
		return
	}
	t := time.NewTicker(s.p.killEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.episode.Load() {
			continue
		}
		s.kill9()
		s.kills.Add(1)
		s.mu.Lock()
		s.killedAt = append(s.killedAt, time.Now().UTC().Format("15:04:05.000"))
		s.mu.Unlock()
		if err := s.start(); err != nil {
			s.violate("restart after kill -9: %v", err)
			time.Sleep(time.Second)
			if err := s.start(); err != nil {
				s.violate("second restart: %v", err)
			}
		}
	}
}

// diskEpisode fills the tmpfs for 10 s at 40% of the run.
func (s *soak) diskEpisode(ctx context.Context) {
	if s.disk == "" {
		return
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(s.p.duration * 2 / 5):
	}
	s.episode.Store(true)
	path := filepath.Join(s.disk, "filler")
	f, err := os.Create(path)
	if err == nil {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := f.Write(chunk); err != nil {
				break
			}
		}
		f.Close()
	}
	fmt.Fprintln(s.out, "soak: disk full")
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
	}
	_ = os.Remove(path)
	fmt.Fprintln(s.out, "soak: disk space back")
	s.episodeEnd.Store(time.Now().UnixNano())
	s.episode.Store(false)
	at := time.Now()
	for time.Since(at) < 60*time.Second {
		if s.lastAccept.Load() > at.UnixNano() {
			return
		}
		if ctx.Err() != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.violate("no publish accepted within 60 s after the full-disk episode")
}

// device publishes telemetry at QoS 0, 1 and 2 in turn and its retained
// state every 20 messages, with a will, and drops its connection now and
// then (no DISCONNECT: the will goes).
func (s *soak) device(ctx context.Context, idx int) {
	version := byte(proto5)
	if idx%2 == 1 {
		version = proto311
	}
	id := fmt.Sprintf("soak-dev-%d", idx)
	var seq, retSeq uint64
	tick := time.NewTicker(time.Second / time.Duration(max(s.p.rate, 1)))
	defer tick.Stop()
	for ctx.Err() == nil {
		m, _, err := mdial(s.addr, connectOptions{clientID: id, version: version, clean: true,
			willTopic: "will/" + id, willQoS: 1, willBody: []byte("gone")})
		if err != nil {
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		dropAt := time.Now().Add(time.Duration(10+rand.IntN(20)) * time.Second)
		var pid uint16
		for ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
			if time.Now().After(dropAt) {
				s.drops.Add(1)
				break
			}
			pid = pid%65535 + 1
			var ok bool
			if seq%20 == 19 {
				retSeq++
				s.mu.Lock()
				s.retSent[idx] = retSeq
				s.mu.Unlock()
				var acked bool
				acked, ok = s.publish(m, "state/"+id, 1, true, pid, soakPayload(uint32(idx), retSeq, 16))
				if acked {
					s.mu.Lock()
					s.retAcked[idx] = max(s.retAcked[idx], retSeq)
					s.mu.Unlock()
				}
			} else {
				q := byte(seq % 3)
				s.published[q].Add(1)
				var acked bool
				acked, ok = s.publish(m, fmt.Sprintf("tele/%s/q%d", id, q), q, false, pid, soakPayload(uint32(idx), seq, s.p.size))
				if acked && q > 0 {
					s.ackedN[q].Add(1)
					s.mu.Lock()
					row := s.acked[idx]
					for uint64(len(row)) <= seq {
						row = append(row, 0)
					}
					row[seq] = q
					s.acked[idx] = row
					for uint64(len(s.ackedAt[idx])) <= seq {
						s.ackedAt[idx] = append(s.ackedAt[idx], 0)
					}
					s.ackedAt[idx][seq] = time.Now().UnixMilli()
					s.mu.Unlock()
				}
			}
			seq++
			if !ok {
				break
			}
		}
		if ctx.Err() != nil {
			m.disconnect()
		} else {
			m.close()
		}
	}
}

// publish sends one message and waits for its acknowledgement. It reports
// whether it was acknowledged (QoS 0: sent) and whether the connection may
// go on.
func (s *soak) publish(m *mconn, topic string, q byte, retain bool, pid uint16, payload []byte) (acked, ok bool) {
	b := appendPublish(nil, m.version, topic, q, pid, payload)
	if retain {
		b[0] |= 1
	}
	if err := m.write(b); err != nil {
		return false, false
	}
	if q == 0 {
		return true, true // sent is all QoS 0 promises
	}
	want := byte(pktPuback)
	if q == 2 {
		want = pktPubrec
	}
	for {
		p, err := m.next(5 * time.Second)
		if err != nil {
			if errors.Is(err, errTimeout) {
				s.timeouts[q].Add(1) // a v3.1.1 refusal is no acknowledgement at all
			}
			return false, false
		}
		if p.typ != want {
			continue
		}
		got, reason, err := parseAck(p)
		if err != nil || got != pid {
			continue
		}
		if reason >= 0x80 {
			s.refused[q].Add(1)
			switch reason {
			case 0x97:
				s.refusedQuota.Add(1)
			case 0x83:
				s.refused83.Add(1)
			}
			return false, true
		}
		s.lastAccept.Store(time.Now().UnixNano())
		if q == 1 {
			return true, true
		}
		if err := m.write(appendAck(nil, pktPubrel, pid)); err != nil {
			return true, false
		}
		for {
			p, err := m.next(5 * time.Second)
			if err != nil {
				return true, false
			}
			if p.typ == pktPubcomp {
				return true, true
			}
		}
	}
}

// subscriber runs a checked persistent session: it subscribes once, stays
// connected (reconnecting after each kill), is taken over by a new
// connection of its own every 10-30 s, and counts what it receives.
func (s *soak) subscriber(ctx context.Context, sub *soakSub, ready chan<- struct{}) {
	subscribed := false
	o := connectOptions{clientID: sub.id, version: sub.version, sessionExpiry: 3600, receiveMax: sub.receiveMax}
	var m *mconn
	for ctx.Err() == nil {
		if m == nil {
			var ci connackInfo
			var err error
			m, ci, err = mdial(s.addr, o)
			if err != nil {
				m = nil
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
			if subscribed && !ci.sessionPresent {
				s.lostSessions.Add(1)
				s.violate("%s: session lost (CONNACK session present 0)", sub.id)
				subscribed = false
			}
			if !subscribed {
				if err := m.write(appendSubscribe(nil, sub.version, 1, sub.filter, sub.qos)); err != nil {
					m.close()
					m = nil
					continue
				}
			}
		}
		takeoverAt := time.Now().Add(time.Duration(10+rand.IntN(20)) * time.Second)
		for ctx.Err() == nil {
			p, err := m.next(500 * time.Millisecond)
			if errors.Is(err, errTimeout) {
				if time.Now().After(takeoverAt) && !s.draining.Load() {
					break
				}
				continue
			}
			if err != nil {
				break
			}
			switch p.typ {
			case pktSuback:
				if b := p.body; len(b) > 2 && b[len(b)-1] >= 0x80 {
					s.violate("%s: subscription to %s refused: %#x", sub.id, sub.filter, b[len(b)-1])
				}
				if !subscribed {
					subscribed = true
					select {
					case ready <- struct{}{}:
					default:
					}
				}
			case pktPublish:
				v, err := parsePublish(p, sub.version)
				if err != nil {
					s.violate("%s: malformed PUBLISH", sub.id)
					continue
				}
				deliver := true
				switch v.qos {
				case 1:
					err = m.write(appendAck(nil, pktPuback, v.pid))
				case 2:
					deliver = !sub.awaitRel[v.pid] // [MQTT-4.3.3]: a resent PUBLISH before PUBREL is not a new message
					if !deliver && !v.dup {
						// A resent PUBLISH has DUP set [MQTT-3.3.1-1]: this is a new message on
						// a packet id whose exchange the client has not finished.
						s.violate("%s: a new QoS 2 PUBLISH on packet id %d, which still waits for PUBREL", sub.id, v.pid)
					}
					sub.awaitRel[v.pid] = true
					err = m.write(appendAck(nil, pktPubrec, v.pid))
				}
				if deliver && strings.HasPrefix(string(v.topic), "tele/") {
					if pub, seq, perr := parseSoakPayload(v.payload); perr == nil {
						sub.recv.add(pub, seq, v.qos)
					}
				} else if deliver {
					sub.recv.mu.Lock()
					sub.recv.got++
					sub.recv.mu.Unlock()
				}
				if sub.slow && !s.draining.Load() && (time.Now().Unix()/30)%2 == 0 {
					time.Sleep(100 * time.Millisecond) // about 10 msg/s: the backlog grows to the budget
				}
			case pktPubrel:
				pid, _, _ := parseAck(p)
				delete(sub.awaitRel, pid)
				err = m.write(appendAck(nil, pktPubcomp, pid))
			}
			if err != nil {
				break
			}
		}
		if ctx.Err() != nil {
			m.disconnect()
			return
		}
		if up, _ := s.up(); up && m != nil && time.Now().After(takeoverAt) {
			// A takeover: the new connection comes while the old is open.
			m2, ci, err := mdial(s.addr, o)
			if err == nil {
				s.takeovers.Add(1)
				if !ci.sessionPresent {
					s.lostSessions.Add(1)
					s.violate("%s: session lost at a takeover", sub.id)
				}
				m.close()
				m = m2
				continue
			}
		}
		m.close()
		m = nil
	}
}

// cleanChurn connects clean 3.1.1 subscribers that read a while and leave,
// half of them without DISCONNECT.
func (s *soak) cleanChurn(ctx context.Context) {
	for n := 0; ctx.Err() == nil; n++ {
		m, _, err := mdial(s.addr, connectOptions{clientID: fmt.Sprint("soak-clean-", n%8), version: proto311, clean: true})
		if err != nil {
			sleepCtx(ctx, 500*time.Millisecond)
			continue
		}
		s.cleanConns.Add(1)
		_ = m.write(appendSubscribe(nil, proto311, 1, "tele/#", 1))
		readFor(m, time.Duration(500+rand.IntN(1500))*time.Millisecond)
		if n%2 == 0 {
			m.disconnect()
		} else {
			m.close()
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
}

// expiringSessions opens short v5 persistent sessions (expiry 2 s) that
// subscribe, read a second and leave for good.
func (s *soak) expiringSessions(ctx context.Context) {
	for n := 0; ctx.Err() == nil; n++ {
		m, _, err := mdial(s.addr, connectOptions{clientID: fmt.Sprint("soak-exp-", n), version: proto5, sessionExpiry: 2})
		if err != nil {
			sleepCtx(ctx, 500*time.Millisecond)
			continue
		}
		s.expiring.Add(1)
		_ = m.write(appendSubscribe(nil, proto5, 1, "tele/#", 1))
		readFor(m, time.Second)
		m.disconnect()
		sleepCtx(ctx, 2*time.Second)
	}
}

// readFor reads and acknowledges what arrives for d.
func readFor(m *mconn, d time.Duration) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		p, err := m.next(time.Until(end))
		if err != nil {
			return
		}
		switch p.typ {
		case pktPublish:
			v, err := parsePublish(p, m.version)
			if err != nil {
				return
			}
			switch v.qos {
			case 1:
				_ = m.write(appendAck(nil, pktPuback, v.pid))
			case 2:
				_ = m.write(appendAck(nil, pktPubrec, v.pid))
			}
		case pktPubrel:
			pid, _, _ := parseAck(p)
			_ = m.write(appendAck(nil, pktPubcomp, pid))
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// monitor reads /metrics every 2 s and checks the bounds, and prints a
// status line every 10 s.
func (s *soak) monitor(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	var prev metricSample
	havePrev := false
	lastStatus := time.Now()
	started := time.Now()
	stalled, reported := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		up, upFor := s.up()
		if !up || upFor < 2*time.Second {
			havePrev = false
			continue
		}
		m, absent, err := scrape(s.http)
		if err != nil {
			continue
		}
		if len(absent) > 0 && !reported {
			reported = true
			s.violate("/metrics lacks %s: those checks cannot be made", strings.Join(absent, ", "))
		}
		s.mu.Lock()
		if s.samples == 0 {
			s.first = m
		}
		if s.first.live == 0 { // none before the first collection
			s.first.live = m.live
		}
		s.samples++
		s.last = m
		s.peak.goroutines = max(s.peak.goroutines, m.goroutines)
		s.peak.rss = max(s.peak.rss, m.rss)
		s.peak.diskBytes = max(s.peak.diskBytes, m.diskBytes)
		s.peak.sessions = max(s.peak.sessions, m.sessions)
		s.peak.queued = max(s.peak.queued, m.queued)
		s.peak.live = max(s.peak.live, m.live)
		s.mu.Unlock()
		episode := s.episode.Load() || time.Since(time.Unix(0, s.episodeEnd.Load())) < 15*time.Second
		if havePrev && m.cpFailures > prev.cpFailures {
			s.mu.Lock()
			s.checkpointFails += m.cpFailures - prev.cpFailures
			s.mu.Unlock()
			if !episode {
				s.violate("%v checkpoint failures outside the full-disk episode (see %s)", m.cpFailures-prev.cpFailures, s.logPath)
			}
		}
		if m.cpLast > 0 && upFor > time.Minute && !episode && havePrev && m.lastOffset > prev.lastOffset &&
			time.Since(time.Unix(int64(m.cpLast), 0)) > time.Minute {
			s.violate("no successful checkpoint for %s while the log grows", time.Since(time.Unix(int64(m.cpLast), 0)).Round(time.Second))
		}
		if limit := float64(s.p.budget + 2*s.p.segment); m.diskBytes > limit {
			s.violate("log size %.0f bytes over the budget (%d)", m.diskBytes, s.p.budget)
		}
		if m.goroutines > float64(s.p.maxGoroutines) {
			s.violate("%v goroutines (bound %d)", m.goroutines, s.p.maxGoroutines)
		}
		if m.rss > float64(s.p.maxRSS) {
			s.violate("RSS %.0f MiB (bound %d MiB)", m.rss/(1<<20), s.p.maxRSS>>20)
		}
		gap := time.Since(time.Unix(0, s.lastAccept.Load()))
		if !s.draining.Load() {
			s.mu.Lock()
			s.longestGap = max(s.longestGap, gap)
			s.mu.Unlock()
		}
		if !s.draining.Load() && !episode && upFor > 90*time.Second && gap > 90*time.Second {
			if !stalled {
				s.violate("no publish accepted for 90 s (the budget does not recover)")
			}
			stalled = true
		} else {
			stalled = false
		}
		prev, havePrev = m, true
		if time.Since(lastStatus) >= 10*time.Second {
			lastStatus = time.Now()
			fmt.Fprintf(s.out, "soak %5.0fs: acked %d/%d, refused %d (0x97 %d, 0x83 %d), v3 timeouts %d, kills %d, log %.1f MiB, rss %.1f MiB, goroutines %.0f, sessions %.0f, queued %.0f\n",
				time.Since(started).Seconds(), s.ackedN[1].Load()+s.ackedN[2].Load(), s.published[1].Load()+s.published[2].Load(),
				s.refused[1].Load()+s.refused[2].Load(), s.refusedQuota.Load(), s.refused83.Load(), s.timeouts[1].Load()+s.timeouts[2].Load(),
				s.kills.Load(), m.diskBytes/(1<<20), m.rss/(1<<20), m.goroutines, m.sessions, m.queued)
		}
	}
}

// scrape reads the figures the monitor checks from /metrics, and names
// those it did not find.
func scrape(addr string) (m metricSample, missing []string, err error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return m, nil, err
	}
	defer resp.Body.Close()
	fields := map[string]*float64{
		"go_goroutines":                                            &m.goroutines,
		"process_resident_memory_bytes":                            &m.rss,
		"edgemq_log_disk_bytes":                                    &m.diskBytes,
		"edgemq_storage_checkpoint_failures_total":                 &m.cpFailures,
		"edgemq_storage_checkpoint_last_success_timestamp_seconds": &m.cpLast,
		"edgemq_log_last_offset":                                   &m.lastOffset,
		"edgemq_mqtt_sessions":                                     &m.sessions,
		"edgemq_mqtt_queued_messages":                              &m.queued,
		"go_gc_duration_seconds_count":                             &m.gcs,
		"go_gc_heap_live_bytes":                                    &m.live,
	}
	for _, p := range fields {
		*p = -1
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		if p := fields[name]; p != nil {
			if v, err := strconv.ParseFloat(value, 64); err == nil {
				*p = v
			}
		}
	}
	if err := sc.Err(); err != nil {
		return m, nil, err
	}
	for name, p := range fields {
		if *p < 0 {
			if name != "go_gc_heap_live_bytes" { // an older broker's: its figures are only not reported
				missing = append(missing, name)
			}
			*p = 0
		}
	}
	return m, missing, nil
}

// missing counts acknowledged messages a checked subscription has not got
// (and, with report, records the violations, QoS 2 duplicates included).
func (s *soak) missing(report bool) int {
	s.mu.Lock()
	acked := make([][]uint8, len(s.acked))
	copy(acked, s.acked)
	s.mu.Unlock()
	seen := map[*receipts]bool{}
	total := 0
	for _, sub := range s.checked {
		r := sub.recv
		if seen[r] {
			continue
		}
		seen[r] = true
		r.mu.Lock()
		lost := 0
		var examples []string
		for pub, row := range acked {
			for seq, q := range row {
				if q == 0 {
					continue
				}
				if pub >= len(r.n) || seq >= len(r.n[pub]) || r.n[pub][seq] == 0 {
					lost++
					if report && len(examples) < 5 {
						examples = append(examples, fmt.Sprintf("device %d seq %d qos %d acknowledged at %s", pub, seq, q,
							time.UnixMilli(s.ackedAtLocked(pub, seq)).UTC().Format("15:04:05.000")))
					}
				}
			}
		}
		dups := r.dups
		r.mu.Unlock()
		total += lost
		if report {
			if lost > 0 {
				s.violate("%s: %d acknowledged messages never arrived, e.g. %s (kills at %s)", r.name, lost,
					strings.Join(examples, "; "), strings.Join(s.kills9(), " "))
			}
			if dups > 0 {
				s.violate("%s: %d QoS 2 messages arrived twice", r.name, dups)
			}
		}
	}
	return total
}

func (s *soak) ackedAtLocked(pub, seq int) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq < len(s.ackedAt[pub]) {
		return s.ackedAt[pub][seq]
	}
	return 0
}

func (s *soak) kills9() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.killedAt...)
}

// checkRetained reads every device's retained state with a new clean
// session: the newest acknowledged one (or a newer one sent) must be there.
func (s *soak) checkRetained() {
	m, _, err := mdial(s.addr, connectOptions{clientID: "soak-retained", version: proto5, clean: true})
	if err != nil {
		s.violate("retained check: connect: %v", err)
		return
	}
	defer m.disconnect()
	_ = m.write(appendSubscribe(nil, proto5, 1, "state/#", 1))
	got := map[uint32]uint64{}
	end := time.Now().Add(3 * time.Second)
	for time.Now().Before(end) {
		p, err := m.next(time.Until(end))
		if err != nil {
			break
		}
		if p.typ != pktPublish {
			continue
		}
		v, err := parsePublish(p, proto5)
		if err != nil {
			continue
		}
		if v.qos == 1 {
			_ = m.write(appendAck(nil, pktPuback, v.pid))
		}
		if pub, seq, err := parseSoakPayload(v.payload); err == nil {
			got[pub] = seq
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.p.devices {
		if s.retAcked[i] == 0 {
			continue
		}
		if g := got[uint32(i)]; g < s.retAcked[i] || g > s.retSent[i] {
			s.violations = append(s.violations, fmt.Sprintf("device %d: retained state %d, want %d..%d", i, g, s.retAcked[i], s.retSent[i]))
		}
	}
}

// checkTrimmed: once every consumer has caught up, the log shrinks to a
// few segments within 30 s.
func (s *soak) checkTrimmed() {
	want := float64(max(s.p.budget/2, 4*s.p.segment))
	var m metricSample
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(time.Second) {
		var err error
		if m, _, err = scrape(s.http); err == nil && m.diskBytes <= want {
			s.mu.Lock()
			s.last = m
			s.mu.Unlock()
			return
		}
	}
	s.violate("the log is %.0f bytes 30 s after every consumer caught up (want at most %.0f)", m.diskBytes, want)
}

func (s *soak) summary(w io.Writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mib := func(v float64) string { return fmt.Sprintf("%.1f MiB", v/(1<<20)) }
	fmt.Fprintf(w, "\nsoak summary (%s of load, kill -9 every %s, budget %s, tmpfs %v)\n", s.loaded, s.p.killEvery, mib(float64(s.p.budget)), s.disk != "")
	if s.interrupted {
		fmt.Fprintln(w, "  INTERRUPTED: no final checks (delivery, retained state, trim)")
	}
	fmt.Fprintf(w, "  published   qos0 %d  qos1 %d  qos2 %d (plus retained state)\n", s.published[0].Load(), s.published[1].Load(), s.published[2].Load())
	fmt.Fprintf(w, "  acknowledged qos1 %d  qos2 %d\n", s.ackedN[1].Load(), s.ackedN[2].Load())
	fmt.Fprintf(w, "  refused     %d (0x97 quota %d, 0x83 %d); 3.1.1 unacknowledged (timeouts) %d; longest time without an accepted publish %s\n",
		s.refused[1].Load()+s.refused[2].Load(), s.refusedQuota.Load(), s.refused83.Load(), s.timeouts[1].Load()+s.timeouts[2].Load(), s.longestGap.Round(time.Second))
	seen := map[*receipts]bool{}
	for _, sub := range s.checked {
		if seen[sub.recv] {
			continue
		}
		seen[sub.recv] = true
		fmt.Fprintf(w, "  delivered   %-48s %d, all QoS (qos 2 twice: %d)\n", sub.recv.name, sub.recv.got, sub.recv.dups)
	}
	fmt.Fprintf(w, "  kills %d, device drops %d (wills received %d), takeovers %d, clean sessions %d, expiring sessions %d, lost sessions %d\n",
		s.kills.Load(), s.drops.Load(), s.willsGot.Load(), s.takeovers.Load(), s.cleanConns.Load(), s.expiring.Load(), s.lostSessions.Load())
	fmt.Fprintf(w, "  checkpoint failures %.0f (during the full-disk episode they are expected)\n", s.checkpointFails)
	fmt.Fprintf(w, "  log size     first %s  peak %s  last %s\n", mib(s.first.diskBytes), mib(s.peak.diskBytes), mib(s.last.diskBytes))
	idle := "none (interrupted)"
	if s.idleAfter > 0 {
		idle = fmt.Sprintf("%s after the checks, after a collection", s.idleAfter)
		if !s.idleCollected {
			idle = fmt.Sprintf("%s after the checks, NO collection came: it still holds the garbage", s.idleAfter)
		}
	}
	fmt.Fprintf(w, "  broker RSS   first %s  peak %s  last %s  idle %s (%s)\n", mib(s.first.rss), mib(s.peak.rss), mib(s.last.rss), mib(s.idle.rss), idle)
	if s.peak.live > 0 {
		live := func(v float64) string { // 0: the broker has not collected since it started
			if v == 0 {
				return "none yet"
			}
			return mib(v)
		}
		fmt.Fprintf(w, "  live heap    first %s  peak %s  last %s  idle %s (what the last collection kept: RSS also holds up to gc_headroom of garbage)\n",
			live(s.first.live), live(s.peak.live), live(s.last.live), live(s.idle.live))
	}
	if s.lastUp > 0 && s.p.killEvery > 0 {
		fmt.Fprintf(w, "  the broker of last and idle had been up %s: growth over a longer life than kill -9 every %s allows does not show (-kill-every 0 for it)\n",
			s.lastUp.Round(time.Second), s.p.killEvery)
	}
	fmt.Fprintf(w, "  goroutines   first %.0f  peak %.0f  last %.0f\n", s.first.goroutines, s.peak.goroutines, s.last.goroutines)
	fmt.Fprintf(w, "  sessions peak %.0f, queued messages peak %.0f, metric samples %d\n", s.peak.sessions, s.peak.queued, s.samples)
	if len(s.violations) == 0 {
		fmt.Fprintln(w, "  no violations")
		return
	}
	fmt.Fprintf(w, "  %d VIOLATIONS:\n", len(s.violations))
	for _, v := range s.violations {
		fmt.Fprintln(w, "   ", v)
	}
}
