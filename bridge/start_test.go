package bridge_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/edgemq/edgemq/edge"
)

// TestBridgesBeforeClients: a device that connects the moment the port
// accepts, as Broker.Start binds it, publishes into a broker whose forward
// rules already have their cursors. A rule's new cursor starts at the end of
// the log, so a message made durable before it was placed would never go
// upstream (TestOutageKillDrainMosquitto lost its message 0 that way, under
// load, when the bridges started after the listeners served).
func TestBridgesBeforeClients(t *testing.T) {
	up := startMosquitto(t, "")
	ta := newTally(1)
	subscribeAll(t, client(t, "tcp://"+up.addr, "central-sub", true, ta.handle))
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := edgeConfig(t.TempDir(), []edge.BridgeConfig{bridgeTo("central", "mqtt://"+up.addr)})
	cfg.Listeners[0].Address = addr
	b, err := edge.New(cfg, edge.Options{Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	// The first connection the kernel completes (once the port is bound):
	// how many bridges were running at that moment.
	atConnect := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				atConnect <- len(b.Bridges())
				c.Close()
				return
			}
		}
		close(atConnect)
	}()
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopEdge(t, b) })
	if n, ok := <-atConnect; !ok {
		t.Fatal("never connected")
	} else if n != 1 {
		t.Errorf("a client could connect with %d bridges running, want 1: what it published before the bridge's cursor existed would never be forwarded", n)
	}
	publishN(t, client(t, "tcp://"+addr, "device", true, nil), 1, 1, 0)
	ta.wait(t, 20*time.Second)
}
