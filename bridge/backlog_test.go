package bridge_test

import (
	"testing"
	"time"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
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
