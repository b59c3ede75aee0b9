package bridge_test

import (
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
)

// downlinkAB is a bridge with a persistent upstream session bringing
// cmd/a/# and cmd/b/# down.
func downlinkAB(upstream, protocol string) edge.BridgeConfig {
	c := bridgeTo("central", upstream)
	c.Protocol = protocol
	c.CleanStart = false
	c.SessionExpiry = time.Hour
	c.Downlink = []edge.DownlinkRule{{Filter: "cmd/a/#", Local: "{topic}", QoS: 1}, {Filter: "cmd/b/#", Local: "{topic}", QoS: 1}}
	return c
}

// localTopics subscribes to cmd/# on the broker and passes on the topics
// that arrive.
func localTopics(t *testing.T, b *edge.Broker, id string) <-chan string {
	got := make(chan string, 100)
	c := client(t, "tcp://"+b.Addr("tcp").String(), id, true, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case got <- m.Topic():
		default:
		}
	})
	if tok := c.Subscribe("cmd/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	return got
}

// downlinkThrough publishes topic upstream until it arrives locally.
func downlinkThrough(t *testing.T, cloud mqtt.Client, got <-chan string, topic string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		cloud.Publish(topic, 1, false, "x").WaitTimeout(time.Second)
		timeout := time.After(200 * time.Millisecond)
	wait:
		for {
			select {
			case tp := <-got:
				if tp == topic {
					return
				}
			case <-timeout:
				break wait
			}
		}
	}
	t.Fatalf("%s never came down", topic)
}

// waitConnectedSince waits until the bridge is connected by a connection
// made after since.
func waitConnectedSince(t *testing.T, b *edge.Broker, since time.Time) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if s := status(t, b, "central"); s.Connected && s.Since.After(since) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the bridge did not connect again")
}

// TestRestartUnsubscribesRemovedDownlink: edgemq restarts with a downlink
// rule removed while the upstream kept the bridge's session (and with it
// the removed rule's subscription). The bridge remembers what it
// subscribed (storage.dir/bridges), so on connecting to the resumed session
// it unsubscribes the filter no rule has any more: a message on it no
// longer comes down (it would be dropped, counted no_rule).
func TestRestartUnsubscribesRemovedDownlink(t *testing.T) {
	for _, protocol := range []string{"3.1.1", "5"} {
		t.Run(protocol, func(t *testing.T) {
			up := startMosquitto(t, "")
			cloud := client(t, "tcp://"+up.addr, "cloud", true, nil)
			dir := t.TempDir()
			bc := downlinkAB("mqtt://"+up.addr, protocol)
			b := runEdge(t, edgeConfig(dir, []edge.BridgeConfig{bc}), nil)
			downlinkThrough(t, cloud, localTopics(t, b, "actuator"), "cmd/a/probe") // one SUBSCRIBE made both subscriptions
			stopEdge(t, b)

			bc.Downlink = bc.Downlink[:1]
			restarted := time.Now()
			b = runEdge(t, edgeConfig(dir, []edge.BridgeConfig{bc}), nil)
			got := localTopics(t, b, "actuator-2")
			waitConnectedSince(t, b, restarted)
			cloud.Publish("cmd/b/1", 1, false, "x").WaitTimeout(5 * time.Second)
			downlinkThrough(t, cloud, got, "cmd/a/1") // after cmd/b/1 on the same connection
			if n := status(t, b, "central").Dropped[bridge.DropNoRule]; n != 0 {
				t.Errorf("dropped no_rule = %d, want 0: the removed rule's subscription is still upstream after the restart", n)
			}
		})
	}
}

// TestReloadUnsubscribesRemovedDownlink: a reload that removes a downlink
// rule unsubscribes its filter upstream, so the persistent upstream session
// stops sending on it.
func TestReloadUnsubscribesRemovedDownlink(t *testing.T) {
	for _, protocol := range []string{"3.1.1", "5"} {
		t.Run(protocol, func(t *testing.T) {
			up := startMosquitto(t, "")
			cloud := client(t, "tcp://"+up.addr, "cloud", true, nil)
			dir := t.TempDir()
			cfg := edgeConfig(dir, []edge.BridgeConfig{downlinkAB("mqtt://"+up.addr, protocol)})
			b := runEdge(t, cfg, nil)
			got := localTopics(t, b, "actuator")
			downlinkThrough(t, cloud, got, "cmd/a/probe") // one SUBSCRIBE made both subscriptions

			cfg.Bridges[0].Downlink = cfg.Bridges[0].Downlink[:1]
			reloaded := time.Now()
			if err := b.Reload(cfg); err != nil {
				t.Fatal(err)
			}
			waitConnectedSince(t, b, reloaded)
			cloud.Publish("cmd/b/1", 1, false, "x").WaitTimeout(5 * time.Second)
			downlinkThrough(t, cloud, got, "cmd/a/1")
			if n := status(t, b, "central").Dropped[bridge.DropNoRule]; n != 0 {
				t.Errorf("dropped no_rule = %d, want 0: the removed rule's subscription is still upstream", n)
			}
		})
	}
}
