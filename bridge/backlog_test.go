package bridge_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
	"github.com/edgemq/edgemq/wal"
)

// TestMaxBacklogBytes: during an outage the bridge holds back at most
// max_backlog_bytes of the log; it drops its oldest messages beyond that,
// counted, and forwards the newest when the link returns, in order.
func TestMaxBacklogBytes(t *testing.T) {
	up := startMosquitto(t, "")
	const n, budget = 2000, 20 << 10
	ta := newTally(n)
	sub := client(t, "tcp://"+up.addr, "central-sub", true, ta.handle)
	subscribeAll(t, sub)
	p := newProxy(t, up.addr)
	p.Cut()
	bc := bridgeTo("central", proxyURL(p))
	bc.MaxBacklogBytes = budget
	b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
	publishN(t, dev, 4, n, 0)
	// The backlog is counted and trimmed every half second: wait until the
	// drops stop growing.
	var s bridge.Status
	for last := uint64(0); ; last = s.Dropped[bridge.DropMaxBytes] {
		time.Sleep(time.Second)
		s = status(t, b, "central")
		if s.Dropped[bridge.DropMaxBytes] > 0 && s.Dropped[bridge.DropMaxBytes] == last {
			break
		}
	}
	if s.BacklogBytes > budget || s.BacklogBytes == 0 {
		t.Errorf("backlog %d bytes, want at most the budget %d and more than none", s.BacklogBytes, budget)
	}
	dropped := int(s.Dropped[bridge.DropMaxBytes])
	if int(s.BacklogMessages) != n-dropped {
		t.Errorf("backlog %d messages after the trim, want the %d not dropped", s.BacklogMessages, n-dropped)
	}
	p.Restore()
	waitForwarded(t, ta, n-dropped, 20*time.Second)
	time.Sleep(200 * time.Millisecond) // nothing more may come
	got, _ := ta.counts()
	if got != n-dropped {
		t.Errorf("upstream got %d messages, want the %d not dropped", got, n-dropped)
	}
	ta.mu.Lock()
	for seq := n - got; seq < n; seq++ {
		if !ta.seen[seq] {
			t.Errorf("message %d (one of the newest) did not arrive", seq)
			break
		}
	}
	ta.mu.Unlock()
	t.Logf("backlog held to %d bytes (budget %d): %d oldest dropped, the newest %d forwarded", s.BacklogBytes, budget, dropped, got)
}

// TestMaxBacklogBytesAfterLostFlights: a link lost with messages in
// flight (sent into a black hole, never acknowledged) leaves them waiting
// to be sent again; when the outage then passes max_backlog_bytes, the
// oldest messages are dropped once each, those in flight included, and
// what comes back with the link is the rest: every message is either
// forwarded or counted dropped, none both, none neither.
func TestMaxBacklogBytesAfterLostFlights(t *testing.T) {
	up := startMosquitto(t, "")
	const before, flights, outage, budget = 100, 200, 2000, 20 << 10
	const n = before + flights + outage
	ta := newTally(n)
	subscribeAll(t, client(t, "tcp://"+up.addr, "central-sub", true, ta.handle))
	p := newProxy(t, up.addr)
	bc := bridgeTo("central", proxyURL(p))
	bc.MaxBacklogBytes = budget
	b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
	publishN(t, dev, 4, before, 0)
	waitForwarded(t, ta, before, 20*time.Second)
	// Acknowledged too, not only arrived: a message the upstream got and
	// whose PUBACK the black hole swallowed is owed, and may be dropped.
	time.Sleep(1100 * time.Millisecond) // a backlog count after the last acknowledgement
	waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.BacklogMessages == 0 })

	p.BlackHole()
	publishN(t, dev, 4, flights, before) // sent, never acknowledged
	waitStatus(t, b, "central", 3*bc.Keepalive, func(s bridge.Status) bool { return !s.Connected })
	p.Cut()
	publishN(t, dev, 4, outage, before+flights)
	var s bridge.Status
	for last, i := uint64(0), 0; ; last, i = s.Dropped[bridge.DropMaxBytes], i+1 {
		time.Sleep(time.Second)
		s = status(t, b, "central")
		if d := s.Dropped[bridge.DropMaxBytes]; d > flights+outage {
			t.Fatalf("dropped{max_backlog_bytes} %d, more than the %d messages the outage held", d, flights+outage)
		}
		if s.Dropped[bridge.DropMaxBytes] > 0 && s.Dropped[bridge.DropMaxBytes] == last {
			break
		}
		if i == 20 {
			t.Fatalf("dropped{max_backlog_bytes} still growing after 20 s: %d", s.Dropped[bridge.DropMaxBytes])
		}
	}
	dropped := int(s.Dropped[bridge.DropMaxBytes])
	p.Restore()
	waitForwarded(t, ta, n-dropped, 30*time.Second)
	time.Sleep(500 * time.Millisecond) // nothing more may come
	got, _ := ta.counts()
	all := 0 // max_backlog_bytes and any other reason (retention)
	for _, d := range status(t, b, "central").Dropped {
		all += int(d)
	}
	if got+all != n {
		t.Errorf("upstream got %d distinct messages and %d were counted dropped (%d for max_backlog_bytes): %d, want the %d published", got, all, dropped, got+all, n)
	}
	t.Logf("%d in flight when the link was lost, %d during the outage: %d dropped, %d forwarded", flights, outage, dropped, got)
}

// TestBacklogBytesCounted: during an outage the backlog in bytes grows with
// what waits, across many of the accounting's blocks of records, and it
// comes back to zero once the upstream acknowledged everything, after a
// drain slow enough (one message in flight) that the count follows the
// rule as it moves on.
func TestBacklogBytesCounted(t *testing.T) {
	up := startMosquitto(t, "")
	const n = 3000
	ta := newTally(2 * n)
	sub := client(t, "tcp://"+up.addr, "central-sub", true, ta.handle)
	subscribeAll(t, sub)
	p := newProxy(t, up.addr)
	p.Cut()
	bc := bridgeTo("central", proxyURL(p))
	bc.MaxInflight = 1
	b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
	// The bytes are counted every half second: wait for a count after the
	// last record.
	settled := func(want uint64) int64 {
		waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.BacklogRecords >= want })
		time.Sleep(1100 * time.Millisecond)
		return status(t, b, "central").BacklogBytes
	}
	publishN(t, dev, 4, n, 0)
	half := settled(n)
	publishN(t, dev, 4, n, n)
	full := settled(2 * n)
	if full < 2*half-half/10 || full > 2*half+half/10 {
		t.Errorf("backlog %d bytes with %d messages, %d with %d: want about twice", full, 2*n, half, n)
	}
	p.Restore()
	ta.wait(t, 60*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for s := status(t, b, "central"); s.BacklogBytes != 0; s = status(t, b, "central") {
		if time.Now().After(deadline) {
			t.Fatalf("backlog still %d bytes, %d records after everything was forwarded", s.BacklogBytes, s.BacklogRecords)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRetentionKeepsBridgeBacklog: with small segments and frequent
// checkpoints the log trims what everyone has, while a bridge's backlog
// (an outage) keeps its segments; once forwarded, they go too.
func TestRetentionKeepsBridgeBacklog(t *testing.T) {
	up := startMosquitto(t, "")
	const live, during = 4000, 10000
	ta := newTally(live + during)
	subscribeAll(t, client(t, "tcp://"+up.addr, "central-sub", true, ta.handle))
	p := newProxy(t, up.addr)
	cfg := edgeConfig(t.TempDir(), []edge.BridgeConfig{bridgeTo("central", proxyURL(p))})
	cfg.Storage.SegmentSize = 64 << 10
	cfg.Storage.CheckpointInterval = 100 * time.Millisecond
	reg := prometheus.NewRegistry()
	b := runEdge(t, cfg, reg)
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
	first := func() float64 { t.Helper(); return gauge(t, reg, "edgemq_log_first_offset") }
	waitFirst := func(what string, past float64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for first() <= past {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the log's first offset stayed at %v, want past %v", what, first(), past)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	publishN(t, dev, 4, live, 0)
	waitForwarded(t, ta, live, 20*time.Second)
	waitFirst("forwarded live", live/2) // retention works here

	p.Cut()
	cut := gauge(t, reg, "edgemq_log_last_offset")
	publishN(t, dev, 4, during, live)
	time.Sleep(2 * time.Second) // checkpoints and retention checks
	if f := first(); f > cut+1 {
		t.Fatalf("the log's first offset moved to %v during the outage, past the bridge's backlog from %v", f, cut+1)
	}
	p.Restore()
	ta.wait(t, 30*time.Second)
	waitFirst("backlog forwarded", cut+during/2)
}

// TestRetentionDropCounted: records a forward rule still needed that are
// gone from the log (its oldest segment removed while the broker was
// stopped, as retention does under a budget that forces it; edgemq's
// budget refuses publishes instead, so only a log cut outside the broker
// gets there) are counted as dropped for "retention", once each, and the
// rest is forwarded.
func TestRetentionDropCounted(t *testing.T) {
	up := startMosquitto(t, "")
	const n = 4000
	ta := newTally(n)
	subscribeAll(t, client(t, "tcp://"+up.addr, "central-sub", true, ta.handle))
	p := newProxy(t, up.addr)
	p.Cut()
	dir := t.TempDir()
	cfg := edgeConfig(dir, []edge.BridgeConfig{bridgeTo("central", proxyURL(p))})
	cfg.Storage.SegmentSize = 64 << 10
	b, err := edge.New(cfg, edge.Options{Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
	publishN(t, dev, 4, n, 0)
	dev.Disconnect(100)
	stopEdge(t, b)

	logDir := filepath.Join(dir, "log")
	segs, err := filepath.Glob(filepath.Join(logDir, strings.Repeat("[0-9]", 20)))
	if err != nil || len(segs) < 3 {
		t.Fatalf("segments %v %v, want several", segs, err)
	}
	cursors, err := wal.Cursors(logDir)
	if err != nil {
		t.Fatal(err)
	}
	var at uint64
	for name, off := range cursors {
		if strings.HasPrefix(name, "bridge/central/") {
			at = off
		}
	}
	next, err := strconv.ParseUint(filepath.Base(segs[1]), 10, 64)
	if err != nil || at == 0 || at >= next {
		t.Fatalf("the rule's cursor at %d (cursors %v), the second segment at %d (%v): want the cursor in the first", at, cursors, next, err)
	}
	if err := os.Remove(segs[0]); err != nil {
		t.Fatal(err)
	}

	b = runEdge(t, cfg, nil)
	p.Restore()
	lost := next - at // records, the rule's messages among them
	s := waitStatus(t, b, "central", 20*time.Second, func(s bridge.Status) bool { return s.Dropped[bridge.DropRetention] > 0 })
	deadline := time.Now().Add(20 * time.Second)
	for ; time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		s = status(t, b, "central")
		if s.BacklogRecords == 0 {
			break
		}
	}
	time.Sleep(200 * time.Millisecond) // nothing more may come
	got, _ := ta.counts()
	if d := s.Dropped[bridge.DropRetention]; d != lost {
		t.Errorf("dropped{retention} = %d, want the %d records removed before the rule reached them", d, lost)
	}
	if got == 0 || got >= n || uint64(n-got) > lost {
		t.Errorf("upstream got %d of %d messages, want all but at most the %d records removed", got, n, lost)
	}
	t.Logf("%d records removed before the rule's position; dropped{retention} %d; %d of %d messages forwarded", lost, s.Dropped[bridge.DropRetention], got, n)
	ta.mu.Lock()
	for seq := n - got; seq < n; seq++ {
		if !ta.seen[seq] {
			t.Errorf("message %d, after the removed segment, did not arrive", seq)
			break
		}
	}
	ta.mu.Unlock()
}
