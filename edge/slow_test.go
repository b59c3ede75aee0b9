package edge_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
)

// stuckSubscriber connects over network ("tcp" or "ws") with a small receive
// buffer, subscribes to topic at QoS 1 with a persistent session, and then
// never reads again. It speaks MQTT 3.1.1 (stuckSubscriberV: version).
func stuckSubscriber(t testing.TB, network, addr, id, topic string) *rawClient {
	t.Helper()
	return stuckSubscriberV(t, 4, network, addr, id, topic)
}

func stuckSubscriberV(t testing.TB, version byte, network, addr, id, topic string) *rawClient {
	t.Helper()
	return stuckSubscriberWith(t, version, network, addr, id, topic, 0, nil)
}

// stuckSubscriberWith is stuckSubscriberV with a keepalive and a chance to
// change the CONNECT packet (tune, nil: none).
func stuckSubscriberWith(t testing.TB, version byte, network, addr, id, topic string, keepalive uint16, tune func(*packets.Packet)) *rawClient {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			smallRecvBuffer(fd)
		})
	}}
	var c net.Conn
	switch network {
	case "tcp":
		var err error
		if c, err = d.Dial("tcp", addr); err != nil {
			t.Fatal(err)
		}
	case "ws":
		// coder's client, which reads only when asked, on a small receive
		// buffer too.
		ws, _, err := websocket.Dial(context.Background(), "ws://"+addr+"/mqtt", &websocket.DialOptions{
			Subprotocols: []string{"mqtt"},
			HTTPClient:   &http.Client{Transport: &http.Transport{DialContext: d.DialContext}},
		})
		if err != nil {
			t.Fatal(err)
		}
		c = websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	}
	t.Cleanup(func() { _ = c.Close() })
	rc := &rawClient{t: t, c: c, r: newReader(c), version: version}
	if ack := rc.connectWith(id, false, keepalive, tune); ack.ReasonCode != 0 {
		t.Fatalf("connack %#x", ack.ReasonCode)
	}
	rc.subscribe(1, topic, 1)
	if ack, err := rc.read(5 * time.Second); err != nil || ack.FixedHeader.Type != packets.Suback {
		t.Fatalf("suback: %v", err)
	}
	return rc
}

// TestSlowSubscriber: a QoS 1 subscriber that stops reading does not hold a
// publisher's PUBACKs for longer than the write timeout (mochi alone would
// hold them as long as the socket stays blocked: forever with keepalive 0).
// The stuck subscriber is disconnected and counted, its persistent session
// keeps messages for it, and the heap stays bounded.
func TestSlowSubscriber(t *testing.T) {
	for _, network := range []string{"tcp", "ws"} {
		t.Run(network, func(t *testing.T) {
			const writeTimeout = 300 * time.Millisecond
			cfg := testConfig(t)
			cfg.Limits.WriteTimeout = writeTimeout
			// A wide outbound window, so that the stuck subscriber's socket
			// fills (with the default 128 x 1 KiB the kernel buffers take all
			// and no write ever blocks).
			cfg.Limits.MaxInflight = 65535
			// The write deadline is under test, not the disk: no fsync.
			cfg.Storage.Sync = "never"
			tb := startBroker(t, cfg)
			addr := tb.Addr(network).String()

			runtime.GC()
			var before runtime.MemStats
			runtime.ReadMemStats(&before)

			stuck := stuckSubscriber(t, network, addr, "stuck-"+network, "slow/t")
			pub, _ := connectV5(t, dialNet(t, "tcp", tb.Addr("tcp").String(), nil), v5Opts{id: "fast-pub"})
			body := make([]byte, 1024)
			var lat []time.Duration
			after := -1 // publishes since the stuck subscriber was cut
			for i := 0; i < 50000 && after < 500; i++ {
				start := time.Now()
				if _, err := pub.publish(t, "slow/t", 1, false, body); err != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
				lat = append(lat, time.Since(start))
				if after >= 0 {
					after++
				} else if tb.metric(t, "edgemq_mqtt_slow_consumer_disconnects_total") >= 1 {
					after = 0
				}
			}
			if after < 0 {
				t.Fatalf("stuck subscriber never cut after %d publishes", len(lat))
			}
			slices.Sort(lat)
			maxLat := lat[len(lat)-1]
			t.Logf("%d publishes: PUBACK latency median %v, p99 %v, max %v (write timeout %v)",
				len(lat), lat[len(lat)/2], lat[len(lat)*99/100], maxLat, writeTimeout)
			// Generous slack for a loaded 2-core machine; without the write
			// deadline the stall has no bound at all.
			if limit := writeTimeout + 3*time.Second; maxLat > limit {
				t.Errorf("a PUBACK took %v, more than the write timeout + slack (%v)", maxLat, limit)
			}
			if !stuck.closed(10 * time.Second) {
				t.Error("stuck subscriber's connection still open")
			}

			runtime.GC()
			var now runtime.MemStats
			runtime.ReadMemStats(&now)
			growth := int64(now.HeapInuse) - int64(before.HeapInuse)
			t.Logf("heap in use grew by %d KiB", growth/1024)
			if growth > 64<<20 {
				t.Errorf("heap grew by %d MiB", growth>>20)
			}

			// The session kept what it was owed, up to limits.max_inflight.
			back := dialRaw(t, addr, 4)
			if network == "ws" {
				c := dialNet(t, "ws", addr, nil)
				t.Cleanup(func() { _ = c.Close() })
				back = &rawClient{t: t, c: c, r: newReader(c), version: 4}
			}
			if ack := back.connect("stuck-"+network, false, 30); !ack.SessionPresent {
				t.Fatal("session not present")
			}
			got := 0
			for {
				pk, err := back.read(time.Second)
				if err != nil {
					break
				}
				// Not acknowledged: mochi resends the whole backlog before it
				// reads again, so PUBACKs written meanwhile could fill both
				// directions of the socket.
				if pk.FixedHeader.Type == packets.Publish {
					got++
				}
			}
			t.Logf("reconnected subscriber received %d queued messages", got)
			if got == 0 {
				t.Error("no queued messages after reconnect")
			}

		})
	}
}

// TestBlockedWritersGauge: a subscriber whose write is blocked shows in
// edgemq_mqtt_blocked_writers until the write timeout cuts it.
func TestBlockedWritersGauge(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.WriteTimeout = 3 * time.Second
	cfg.Limits.MaxInflight = 65535
	cfg.Storage.Sync = "never"
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	stuckSubscriber(t, "tcp", addr, "blocked", "blk/t")
	fillStuck(t, tb, "blk/t")
	eventually(t, "the blocked subscriber cut", func() bool {
		return tb.metric(t, "edgemq_mqtt_slow_consumer_disconnects_total") == 1 && tb.metric(t, "edgemq_mqtt_blocked_writers") == 0
	})
}

// TestTakeoverOfStuckConnection: a takeover closes the old connection at
// once [MQTT-3.1.4-3] though the old client reads nothing and its socket
// is full, the write in progress blocked: the new connection gets its
// CONNACK without waiting for limits.write_timeout (30 s here), over TCP
// and WebSocket, and an MQTT 5 client's DISCONNECT 0x8E, which cannot
// reach it, does not wait either. 5 s is far from that and from what a
// takeover takes on a busy machine.
func TestTakeoverOfStuckConnection(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.WriteTimeout = 30 * time.Second
	cfg.Limits.MaxInflight = 65535
	cfg.Storage.Sync = "never"
	tb := startBroker(t, cfg)
	for _, version := range []byte{4, 5} {
		for _, network := range []string{"tcp", "ws"} {
			t.Run(fmt.Sprintf("v%d/%s", version, network), func(t *testing.T) {
				addr := tb.Addr(network).String()
				id := fmt.Sprintf("stuck-take-%d-%s", version, network)
				topic := "stuck/take/" + id
				old := stuckSubscriberV(t, version, network, addr, id, topic)
				fillStuck(t, tb, topic)
				start := time.Now()
				c := dialNet(t, network, addr, nil)
				t.Cleanup(func() { _ = c.Close() })
				nc := &rawClient{t: t, c: c, r: newReader(c), version: version}
				ack := nc.connect(id, false, 0)
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("CONNACK of the new connection after %v, want at once", d)
				}
				if ack.ReasonCode != 0 || !ack.SessionPresent {
					t.Errorf("connack %#x, session present %v; want 0 and present", ack.ReasonCode, ack.SessionPresent)
				}
				if !old.closed(5*time.Second - time.Since(start)) {
					t.Errorf("old connection still open %v after the takeover", time.Since(start))
				}
			})
		}
	}
}

// fillStuck publishes 16 KiB QoS 0 messages to topic until a write of ours
// to a stuck subscriber of it has been blocked for a second
// (edgemq_mqtt_blocked_writers).
func fillStuck(t testing.TB, tb *testBroker, topic string) {
	t.Helper()
	pub, _ := connectV5(t, dialNet(t, "tcp", tb.Addr("tcp").String(), nil), v5Opts{id: "fill-" + topic})
	body := make([]byte, 16<<10)
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i%16 != 0 || tb.metric(t, "edgemq_mqtt_blocked_writers") == 0; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no writer blocked after %d messages", i)
		}
		if _, err := pub.publish(t, topic, 0, false, body); err != nil {
			t.Fatal(err)
		}
	}
}

// TestKeepAliveOfStuckConnection: an MQTT 5 client that stopped reading
// and sending, its socket full and a write of ours blocked on it, is cut
// 1.5 keepalives after its last packet [MQTT-3.1.2-22], over TCP and
// WebSocket, and its session's disconnect (its will) follows at once: its
// DISCONNECT 0x8D Keep Alive timeout, which cannot reach it, does not
// hold the close for limits.write_timeout (60 s here).
func TestKeepAliveOfStuckConnection(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.WriteTimeout = 60 * time.Second
	cfg.Limits.MaxInflight = 65535
	cfg.Storage.Sync = "never"
	tb := startBroker(t, cfg)
	for _, network := range []string{"tcp", "ws"} {
		t.Run(network, func(t *testing.T) {
			addr := tb.Addr(network).String()
			id := "stuck-keepalive-" + network
			topic := "stuck/keepalive/" + network
			will := "will/stuck-keepalive/" + network
			watch, _ := connectV5(t, dialNet(t, "tcp", tb.Addr("tcp").String(), nil), v5Opts{id: "watch-" + id})
			watch.subscribe(t, will, 1)
			const keepalive = 4 // s: the deadline is 6 s after the SUBSCRIBE
			start := time.Now()
			stuck := stuckSubscriberWith(t, 5, network, addr, id, topic, keepalive, willConnect(will, 0, 300))
			t.Logf("subscribed in %v", time.Since(start))
			fillStuck(t, tb, topic)
			if d := time.Since(start); d > keepalive*time.Second {
				t.Fatalf("the socket took %v to fill: the keepalive (%d s) may have passed before a write blocked", d, keepalive)
			}
			select {
			case m := <-watch.msgs:
				if m.Topic != will {
					t.Errorf("will on %q, want %q", m.Topic, will)
				}
				t.Logf("will %v after the SUBSCRIBE (keepalive deadline 6 s)", time.Since(start))
			case <-time.After(12*time.Second - time.Since(start)):
				t.Fatalf("no will %v after the SUBSCRIBE of a client silent since (keepalive deadline 6 s, write timeout 60 s)", time.Since(start))
			}
			if !stuck.closed(time.Second) {
				t.Error("stuck connection still open after its will")
			}
		})
	}
}

// TestWebSocketCloseOfSilentClient: a WebSocket client that ends its
// session (DISCONNECT 0x04, with its will) and then reads nothing, so
// never answers the WebSocket close handshake, does not hold its session's
// disconnect for the handshake's own timeout (5 s in coder/websocket): the
// goodbye's bound cuts the close, and the will follows at once; over WS
// and WSS.
func TestWebSocketCloseOfSilentClient(t *testing.T) {
	tb, pki := allTransports(t)
	for _, network := range []string{"ws", "wss"} {
		t.Run(network, func(t *testing.T) {
			will := "will/silent-close/" + network
			watch, _ := connectV5(t, dialNet(t, "tcp", tb.Addr("tcp").String(), nil), v5Opts{id: "watch-silent-close-" + network})
			watch.subscribe(t, will, 1)
			var tlsConfig *tls.Config
			if network == "wss" {
				tlsConfig = pki.clientTLS(false)
			}
			c := dialNet(t, network, tb.Addr(network).String(), tlsConfig)
			t.Cleanup(func() { _ = c.Close() })
			rc := &rawClient{t: t, c: c, r: newReader(c), version: 5}
			rc.connectWith("silent-close-"+network, true, 0, willConnect(will, 0, 0))
			start := time.Now()
			rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: packets.CodeDisconnectWillMessage.Code})
			select {
			case m := <-watch.msgs:
				if m.Topic != will {
					t.Errorf("will on %q, want %q", m.Topic, will)
				}
				if d := time.Since(start); d > 3*time.Second {
					t.Errorf("will %v after the DISCONNECT, want at once (the goodbye's bound is 500 ms)", d)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no will 10 s after the DISCONNECT")
			}
		})
	}
}
