package bridge_test

import (
	"os"
	"strconv"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgemq/edgemq/edge"
)

// TestForwardToNATSCluster forwards 100,000 QoS 1 messages to a three-node
// nats-server cluster over MQTT 3.1.1 while the node the bridge uses is cut
// off (through a proxy) and then the node it fails over to is shut down:
// every message arrives, first arrivals in order per topic; duplicates are
// counted and reported. BRIDGE_CLUSTER_MESSAGES changes the count.
func TestForwardToNATSCluster(t *testing.T) {
	total := 100_000
	if s := os.Getenv("BRIDGE_CLUSTER_MESSAGES"); s != "" {
		total, _ = strconv.Atoi(s)
	}
	if testing.Short() {
		total = 10_000
	}
	cp := []int{freePort(t), freePort(t), freePort(t)}
	nodes := []*natsNode{
		startNATS(t, "n1", cp[0], cp), startNATS(t, "n2", cp[1], cp), startNATS(t, "n3", cp[2], cp),
	}
	ta := newTally(total)
	sub := clientRetry(t, nodes[2].addr(), "central-sub", ta.handle)
	subscribeAll(t, sub)
	p1 := newProxy(t, nodes[0].addr())
	p2 := newProxy(t, nodes[1].addr())
	bc := bridgeTo("central", proxyURL(p1), proxyURL(p2), nodes[2].addr())
	bc.MaxInflight = 1024
	b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)

	start := time.Now()
	step := total / 4
	publishN(t, dev, 16, step, 0)
	p1.Cut() // n1 cut off mid-stream: the bridge fails over to n2
	publishN(t, dev, 16, step, step)
	waitForwarded(t, ta, 2*step, 60*time.Second)
	nodes[1].stop() // n2 shut down: over to n3 (n1 is still cut off)
	publishN(t, dev, 16, step, 2*step)
	p1.Restore()
	publishN(t, dev, 16, total-3*step, 3*step)
	ta.wait(t, 120*time.Second)
	_, dups := ta.counts()
	el := time.Since(start)
	t.Logf("%d QoS 1 messages through a node cut off and a node shut down: all arrived in order per topic, %d duplicates (%.2f%%), %.1fs, %.0f msg/s",
		total, dups, 100*float64(dups)/float64(total), el.Seconds(), float64(total)/el.Seconds())
}

// waitForwarded waits until n distinct messages arrived upstream. On a
// timeout it names the sequence numbers below n that did not arrive (the
// missing ones, when the test published 0..n-1).
func waitForwarded(t testing.TB, ta *tally, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if u, _ := ta.counts(); u >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	ta.mu.Lock()
	defer ta.mu.Unlock()
	t.Fatalf("upstream got %d of %d messages; missing %s", len(ta.seen), n, ta.missingLocked(n))
}

// clientRetry connects a persistent 3.1.1 client, retrying while the
// cluster's JetStream is still electing its leader.
func clientRetry(t testing.TB, addr, id string, onMsg mqtt.MessageHandler) mqtt.Client {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		o := mqtt.NewClientOptions().AddBroker(addr).SetClientID(id).SetCleanSession(false).
			SetAutoReconnect(false).SetOrderMatters(true).SetDefaultPublishHandler(onMsg)
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
			t.Cleanup(func() { c.Disconnect(50) })
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect %s: %v", addr, tok.Error())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
