package bridge_test

import (
	"path/filepath"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
)

// TestExamples loads examples/bridge/ with the real loader and runs the
// exchange its README describes: a sensor reading goes up, a command comes
// down. Only the addresses and directories change (to free ports and temp
// directories).
func TestExamples(t *testing.T) {
	load := func(name string) edge.Config {
		cfg, err := edge.LoadConfig(filepath.Join("..", "examples", "bridge", name))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Listeners[0].Address, cfg.HTTP.Address, cfg.Storage.Dir = "127.0.0.1:0", "", t.TempDir()
		return cfg
	}
	cloud := runEdge(t, load("cloud.yaml"), nil)
	gw := load("gateway.yaml")
	if len(gw.Bridges) != 1 || gw.Bridges[0].Upstreams[0] != "mqtt://127.0.0.1:1884" {
		t.Fatalf("gateway bridges = %+v, want one to the cloud on 1884", gw.Bridges)
	}
	gw.Bridges[0].Upstreams = []string{"mqtt://" + cloud.Addr("tcp").String()}
	gateway := runEdge(t, gw, nil)

	got := make(chan string, 10)
	handler := func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() + " " + string(m.Payload()) }
	cloudSub := client(t, "tcp://"+cloud.Addr("tcp").String(), "cloud-sub", true, handler)
	if tok := cloudSub.Subscribe("gateways/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	device := client(t, "tcp://"+gateway.Addr("tcp").String(), "device", true, handler)
	if tok := device.Subscribe("commands/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	waitStatus(t, gateway, "central", 10*time.Second, func(s bridge.Status) bool { return s.Connected })
	device.Publish("sensors/temp", 1, false, "21.5").WaitTimeout(10 * time.Second)
	expect(t, got, "gateways/gw1/sensors/temp 21.5")
	// The bridge's downlink subscription is in place once connected: the
	// cloud's command comes down.
	deadline := time.Now().Add(10 * time.Second)
	for {
		cloudSub.Publish("commands/gw1/valve", 1, false, "open").WaitTimeout(10 * time.Second)
		select {
		case m := <-got:
			if m != "commands/valve open" {
				t.Fatalf("got %q, want the command", m)
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the command never came down")
		}
	}
}

func expect(t testing.TB, got <-chan string, want string) {
	t.Helper()
	select {
	case m := <-got:
		if m != want {
			t.Fatalf("got %q, want %q", m, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no %q", want)
	}
}
