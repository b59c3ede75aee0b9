package bridge_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
)

// topics collects what an upstream client gets: topic -> retain flag.
type topics struct {
	mu  sync.Mutex
	got map[string]bool
}

func (tp *topics) handle(_ mqtt.Client, m mqtt.Message) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.got[m.Topic()] = m.Retained()
}

func (tp *topics) get(topic string) (retained, ok bool) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	retained, ok = tp.got[topic]
	return retained, ok
}

// TestForwardRuleOptions: what a forward rule does to a message on its way
// up (MQTT 5 to Mosquitto): strip_prefix and a remote template with {topic}
// and {client} (the publishing device's id), and retain keep (the message
// is retained upstream) or clear (it is not); and the loop marker: a
// downlink message carrying the bridge's own edgemq-bridge user property
// (one it forwarded, come back by another path) is dropped, counted loop.
func TestForwardRuleOptions(t *testing.T) {
	up := startMosquitto(t, "")
	live := &topics{got: map[string]bool{}}
	sub := client(t, "tcp://"+up.addr, "live-sub", true, live.handle)
	if tok := sub.Subscribe("#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	bc := bridgeTo("central", "mqtt://"+up.addr)
	bc.Protocol = "5"
	bc.Forward = []edge.ForwardRule{
		{Filter: "r/#", StripPrefix: "r/", Remote: "up/{client}/{topic}", QoS: 1, Retain: "keep"},
		{Filter: "c/#", Remote: "{topic}", QoS: 1, Retain: "clear"},
	}
	bc.Downlink = []edge.DownlinkRule{{Filter: "cmd/#", Local: "{topic}", QoS: 1}}
	b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
	waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.Connected })
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "dev-7", true, nil)
	for _, topic := range []string{"r/a", "c/a"} {
		if tok := dev.Publish(topic, 1, true, "x"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.Forwarded == 2 })
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, a := live.get("up/dev-7/a")
		_, c := live.get("c/a")
		if a && c {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upstream got %v, want up/dev-7/a (r/a with its prefix stripped, under the device's id) and c/a", live.got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// What the upstream retained: a new subscriber gets it at once.
	later := &topics{got: map[string]bool{}}
	lsub := client(t, "tcp://"+up.addr, "later-sub", true, later.handle)
	if tok := lsub.Subscribe("#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	time.Sleep(300 * time.Millisecond)
	if retained, ok := later.get("up/dev-7/a"); !ok || !retained {
		t.Errorf("retain keep: a new upstream subscriber got up/dev-7/a %v (retained %v), want it retained", ok, retained)
	}
	if _, ok := later.get("c/a"); ok {
		t.Error("retain clear: the upstream retained c/a")
	}

	// The loop marker, by another path than the bridge's own connection
	// (which No Local covers).
	got := localTopics(t, b, "actuator")
	cloud := v5Client(t, up.addr, "cloud-v5")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cloud.Publish(ctx, &paho.Publish{Topic: "cmd/echo", QoS: 1, Payload: []byte("x"),
		Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "edgemq-bridge", Value: bc.ClientID}}}}); err != nil {
		t.Fatal(err)
	}
	downlinkThrough(t, client(t, "tcp://"+up.addr, "cloud", true, nil), got, "cmd/ok")
	if n := status(t, b, "central").Dropped[bridge.DropLoop]; n != 1 {
		t.Errorf("dropped loop = %d, want 1 (cmd/echo, with the bridge's own marker)", n)
	}
}

// v5Client connects a paho.golang MQTT 5 client to addr.
func v5Client(t testing.TB, addr, id string) *paho.Client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn, PacketTimeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Disconnect(&paho.Disconnect{})
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
		}
	})
	return c
}

// TestBidirectionalNoLocal: an MQTT 5 bridge that forwards and brings down
// the same topics: its downlink subscription has No Local, so the upstream
// does not send back what the bridge forwarded, and local subscribers get
// each message once. (Over 3.1.1, which has no No Local, the upstream
// echoes it once: bridging.md says not to overlap the rules there.)
func TestBidirectionalNoLocal(t *testing.T) {
	up := startMosquitto(t, "")
	upstream := &topics{got: map[string]bool{}}
	sub := client(t, "tcp://"+up.addr, "up-sub", true, upstream.handle)
	if tok := sub.Subscribe("echo/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	bc := bridgeTo("central", "mqtt://"+up.addr)
	bc.Protocol = "5"
	bc.Forward = []edge.ForwardRule{{Filter: "echo/#", Remote: "{topic}", QoS: 1, Retain: "keep"}}
	bc.Downlink = []edge.DownlinkRule{{Filter: "echo/#", Local: "{topic}", QoS: 1}}
	b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
	waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.Connected })
	var mu sync.Mutex
	copies := map[string]int{}
	local := client(t, "tcp://"+b.Addr("tcp").String(), "local", true, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		copies[m.Topic()]++
		mu.Unlock()
	})
	if tok := local.Subscribe("echo/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	// From the upstream (connected means subscribed): comes down once.
	if tok := client(t, "tcp://"+up.addr, "cloud", true, nil).Publish("echo/down", 1, false, "x"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
	if tok := dev.Publish("echo/up", 1, false, "x"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.Forwarded >= 1 })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := upstream.get("echo/up"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("echo/up did not reach the upstream")
		}
	}
	time.Sleep(500 * time.Millisecond) // time for an echo to come down
	mu.Lock()
	defer mu.Unlock()
	if copies["echo/up"] != 1 || copies["echo/down"] != 1 {
		t.Errorf("local subscriber got echo/up %d times and echo/down %d times, want each once (No Local)", copies["echo/up"], copies["echo/down"])
	}
	if s := status(t, b, "central"); s.Received != 1 || s.Dropped[bridge.DropLoop] != 0 {
		t.Errorf("received %d, dropped loop %d; want 1 (echo/down) and 0 (no echo came)", s.Received, s.Dropped[bridge.DropLoop])
	}
}
