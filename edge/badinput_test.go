package edge_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/edge"
)

// stillServes checks that the broker carries a message after bad input.
func stillServes(t *testing.T, tb *testBroker) {
	t.Helper()
	addr := tb.Addr("tcp").String()
	s, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "healthy-sub"})
	s.subscribe(t, "healthy", 1)
	p, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "healthy-pub"})
	if _, err := p.publish(t, "healthy", 1, false, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	s.receive(t, 1)
}

// TestMalformedPackets: each kind of malformed input closes that one
// connection; a client connected throughout keeps working.
func TestMalformedPackets(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	bystander, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "bystander"})
	bystander.subscribe(t, "by/#", 1)

	for _, tc := range []struct {
		name      string
		connected bool // send a valid v3.1.1 CONNECT first
		bytes     []byte
	}{
		{"publish before connect", false, []byte{0x30, 0x03, 0x00, 0x01, 'a'}},
		{"bad protocol name", false, []byte{0x10, 0x0c, 0x00, 0x04, 'M', 'Q', 'X', 'X', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00}},
		{"remaining length overflow", false, []byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x7f}},
		{"reserved packet type 0", true, []byte{0x00, 0x00}},
		{"subscribe with wrong flags", true, []byte{0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x00}},
		{"publish qos 3", true, []byte{0x36, 0x05, 0x00, 0x01, 'a', 0x00, 0x01}},
		{"second connect", true, []byte{0x10, 0x0c, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00}},
		{"topic with wildcard", true, []byte{0x30, 0x03, 0x00, 0x01, '#'}},
		{"length beyond packet", true, []byte{0x30, 0x05, 0x00, 0x09, 'a', 'b', 'c'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, addr, 4)
			if tc.connected {
				rc.connect("bad-"+strings.ReplaceAll(tc.name, " ", "-"), true, 30)
			}
			if _, err := rc.c.Write(tc.bytes); err != nil {
				t.Fatal(err)
			}
			if tc.name == "length beyond packet" {
				_ = rc.c.(interface{ CloseWrite() error }).CloseWrite()
			}
			if !rc.closed(5 * time.Second) {
				t.Fatal("connection still open")
			}
		})
	}
	if _, err := bystander.publish(t, "by/x", 1, false, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	bystander.receive(t, 1)
	stillServes(t, tb)
}

// TestOversizedPacket: limits.max_packet_size is announced to v5 clients and
// a larger packet closes the connection, over TCP and WebSocket.
func TestOversizedPacket(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxPacketSize = 1024
	tb := startBroker(t, cfg)
	_, ack := connectV5(t, dialNet(t, "tcp", tb.Addr("tcp").String(), nil), v5Opts{id: "mps"})
	if ack.Properties == nil || ack.Properties.MaximumPacketSize == nil || *ack.Properties.MaximumPacketSize != 1024 {
		t.Fatalf("CONNACK Maximum Packet Size: %+v", ack.Properties)
	}

	rc := dialRaw(t, tb.Addr("tcp").String(), 4)
	rc.connect("big-tcp", true, 30)
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "big", Payload: make([]byte, 2048)})
	// MQTT 3.1.1 has no way to say why: the connection just closes, with
	// no packet before (not a second CONNACK [MQTT-3.2.0-1]).
	if pk, err := rc.read(5 * time.Second); err == nil {
		t.Fatalf("tcp: 3.1.1 client got packet type %d after an oversized packet, want the connection closed", pk.FixedHeader.Type)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("tcp: connection still open after an oversized packet")
	}

	ws := dialNet(t, "ws", tb.Addr("ws").String(), nil)
	defer ws.Close()
	wrc := &rawClient{t: t, c: ws, r: newReader(ws), version: 4}
	wrc.connect("big-ws", true, 30)
	wrc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "big", Payload: make([]byte, 2048)})
	if !wrc.closed(5 * time.Second) {
		t.Fatal("ws: connection still open after an oversized packet")
	}
	stillServes(t, tb)
}

// TestWebSocketHandshake: a text frame is closed with 1003, a client that
// offers no mqtt subprotocol with 1008 (at once, whether it answers the
// close or not), a foreign Origin gets 403 unless
// allowed, another path 404.
func TestWebSocketHandshake(t *testing.T) {
	cfg := testConfig(t)
	cfg.Listeners = append(cfg.Listeners, edge.ListenerConfig{
		Name: "ws-cors", Type: "ws", Address: "127.0.0.1:0", Path: "/mqtt", AllowedOrigins: []string{"*.example.com"},
	})
	tb := startBroker(t, cfg)
	url := "ws://" + tb.Addr("ws").String() + "/mqtt"
	ctx := context.Background()

	t.Run("text frame", func(t *testing.T) {
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		connect := encode(t, 4, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "text", Clean: true, Keepalive: 30}})
		if err := c.Write(ctx, websocket.MessageText, connect); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, _, err = c.Read(rctx)
		if s := websocket.CloseStatus(err); s != websocket.StatusUnsupportedData {
			t.Fatalf("close status %v (%v), want 1003", s, err)
		}
	})
	t.Run("split and joined packets", func(t *testing.T) {
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		connect := encode(t, 4, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "split", Clean: true, Keepalive: 30}})
		sub := encode(t, 4, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 7,
			Filters: packets.Subscriptions{{Filter: "split/#", Qos: 1}}})
		ping := encode(t, 4, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		for _, m := range [][]byte{connect[:5], connect[5:], append(sub, ping...)} {
			if err := c.Write(ctx, websocket.MessageBinary, m); err != nil {
				t.Fatal(err)
			}
		}
		nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
		rc := &rawClient{t: t, c: nc, r: newReader(nc), version: 4}
		for _, want := range []byte{packets.Connack, packets.Suback, packets.Pingresp} {
			pk, err := rc.read(5 * time.Second)
			if err != nil || pk.FixedHeader.Type != want {
				t.Fatalf("got type %d (%v), want %d", pk.FixedHeader.Type, err, want)
			}
		}
	})
	t.Run("no subprotocol", func(t *testing.T) {
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, _, err = c.Read(rctx)
		if s := websocket.CloseStatus(err); s != websocket.StatusPolicyViolation {
			t.Fatalf("close status %v (%v), want 1008", s, err)
		}
	})
	t.Run("no subprotocol, close never answered", func(t *testing.T) {
		// A raw upgrade whose client never reads the close frame, so
		// never answers it: the refusal's close handshake is cut within
		// the goodbye's bound, not coder's 5 s.
		c := dialNet(t, "tcp", tb.Addr("ws").String(), nil)
		defer c.Close()
		req := "GET /mqtt HTTP/1.1\r\nHost: " + tb.Addr("ws").String() + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, c) // bytes, not frames: no close frame goes back
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("refused upgrade still open after 10 s")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("refused upgrade closed %v after its request, want at once (the goodbye's bound is 500 ms)", d)
		}
	})
	t.Run("foreign origin", func(t *testing.T) {
		_, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{
			Subprotocols: []string{"mqtt"},
			HTTPHeader:   http.Header{"Origin": {"https://app.example.com"}},
		})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("err %v, response %v, want 403", err, resp)
		}
	})
	t.Run("allowed origin", func(t *testing.T) {
		c, _, err := websocket.Dial(ctx, "ws://"+tb.Addr("ws-cors").String()+"/mqtt", &websocket.DialOptions{
			Subprotocols: []string{"mqtt"},
			HTTPHeader:   http.Header{"Origin": {"https://app.example.com"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
		defer nc.Close()
		rc := &rawClient{t: t, c: nc, r: newReader(nc), version: 4}
		if ack := rc.connect("cors", true, 30); ack.ReasonCode != 0 {
			t.Fatalf("connack %#x", ack.ReasonCode)
		}
	})
	t.Run("wrong path", func(t *testing.T) {
		_, resp, err := websocket.Dial(ctx, "ws://"+tb.Addr("ws").String()+"/other", &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
			t.Fatalf("err %v, response %v, want 404", err, resp)
		}
	})
	if v := tb.metric(t, "edgemq_listener_rejected_connections_total", "listener", "ws", "reason", "ws_subprotocol"); v != 2 {
		t.Errorf("rejected{ws_subprotocol} = %v, want 2", v)
	}
	stillServes(t, tb)
}

// TestConnectTimeout: a connection that never sends CONNECT is closed after
// limits.connect_timeout.
func TestConnectTimeout(t *testing.T) {
	cfg := testConfig(t)
	// Short, but not so short that a loaded machine misses it with a
	// well-behaved client.
	cfg.Limits.ConnectTimeout = time.Second
	tb := startBroker(t, cfg)
	rc := dialRaw(t, tb.Addr("tcp").String(), 4)
	if !rc.closed(5 * time.Second) {
		t.Fatal("silent connection still open")
	}
	// A half-sent CONNECT too.
	rc = dialRaw(t, tb.Addr("tcp").String(), 4)
	_, _ = rc.c.Write([]byte{0x10, 0x0c, 0x00})
	if !rc.closed(5 * time.Second) {
		t.Fatal("half CONNECT still open")
	}
	// Sessions outlive the connect timeout, over WebSocket too (the HTTP
	// server's deadlines must not follow the upgraded connection).
	for _, network := range []string{"tcp", "ws"} {
		c, _ := connectV5(t, dialNet(t, network, tb.Addr(network).String(), nil), v5Opts{id: "long-" + network})
		c.subscribe(t, "long/"+network, 1)
		time.Sleep(1300 * time.Millisecond)
		if _, err := c.publish(t, "long/"+network, 1, false, []byte("x")); err != nil {
			t.Fatalf("%s after the connect timeout: %v", network, err)
		}
		c.receive(t, 1)
	}
}

// TestKeepaliveBounds: v5 clients are told the server keepalive when theirs
// is 0 or out of bounds; a v3 client above the maximum is refused (0x02).
func TestKeepaliveBounds(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MinKeepalive = 10 * time.Second
	cfg.Limits.MaxKeepalive = 60 * time.Second
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	for _, tc := range []struct {
		asked uint16
		want  uint16 // 0: no Server Keep Alive
	}{{0, 60}, {3600, 60}, {5, 10}, {30, 0}} {
		rc := dialRaw(t, addr, 5)
		ack := rc.connect("ka", true, tc.asked)
		got := uint16(0)
		if ack.Properties.ServerKeepAliveFlag {
			got = ack.Properties.ServerKeepAlive
		}
		if ack.ReasonCode != 0 || got != tc.want {
			t.Errorf("keepalive %d: reason %#x, server keepalive %d, want %d", tc.asked, ack.ReasonCode, got, tc.want)
		}
	}
	if ack := dialRaw(t, addr, 4).connect("ka3", true, 120); ack.ReasonCode != 0x02 {
		t.Errorf("v3 keepalive 120: return code %#x, want 0x02", ack.ReasonCode)
	}
	if ack := dialRaw(t, addr, 4).connect("ka3", true, 0); ack.ReasonCode != 0 {
		t.Errorf("v3 keepalive 0: return code %#x, want 0", ack.ReasonCode)
	}
}

// TestTopicLength: names and filters over limits.max_topic_length are
// refused with the reason codes for invalid topics.
func TestTopicLength(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxTopicLength = 32
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	long := strings.Repeat("x", 33)
	c, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "long"})
	c.subscribe(t, "#", 1)
	if pr, _ := c.publish(t, long, 1, false, []byte("x")); pr == nil || pr.ReasonCode != 0x90 {
		t.Errorf("qos 1: %+v, want PUBACK 0x90", pr)
	}
	if pr, _ := c.publish(t, long, 2, false, []byte("x")); pr == nil || pr.ReasonCode != 0x90 {
		t.Errorf("qos 2: %+v, want PUBREC 0x90", pr)
	}
	c.quiet(t, 200*time.Millisecond)
	if sa := c.subscribe(t, long, 1); sa.Reasons[0] != 0x8F {
		t.Errorf("subscribe: %#x, want 0x8F", sa.Reasons[0])
	}
	rc := dialRaw(t, addr, 4)
	rc.connect("long3", true, 30)
	rc.subscribe(1, long, 1)
	if ack, err := rc.read(5 * time.Second); err != nil || ack.ReasonCodes[0] != 0x80 {
		t.Errorf("v3 subscribe: %v %v, want 0x80", err, ack.ReasonCodes)
	}
	_, ack, err := tryConnectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "longwill", will: &paho.WillMessage{Topic: long, Payload: []byte("x")}})
	if err == nil || ack == nil || ack.ReasonCode != 0x90 {
		t.Errorf("long will: %v %+v, want CONNACK 0x90", err, ack)
	}
	if v := tb.metric(t, "edgemq_mqtt_dropped_messages_total", "reason", "topic_too_long"); v < 2 {
		t.Errorf("dropped{topic_too_long} = %v, want >= 2", v)
	}
}

// TestMaxClients: past limits.max_clients, CONNECT is refused with 0x89
// (v5) or 0x03 (v3).
func TestMaxClients(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxClients = 2
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "c1"})
	connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "c2"})
	if ack := dialRaw(t, addr, 5).connect("c3", true, 30); ack.ReasonCode != 0x89 {
		t.Errorf("v5: %#x, want 0x89", ack.ReasonCode)
	}
	if ack := dialRaw(t, addr, 4).connect("c4", true, 30); ack.ReasonCode != 0x03 {
		t.Errorf("v3: %#x, want 0x03", ack.ReasonCode)
	}
}

// TestBrokenConfig: New reports what it cannot build, naming the field.
func TestBrokenConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*edge.Config)
		want string
	}{
		{"acl access", func(c *edge.Config) { c.Auth.ACL = []edge.ACLRule{{Topic: "a", Access: "all"}} }, "auth.acl[0].access"},
		{"acl filter", func(c *edge.Config) { c.Auth.ACL = []edge.ACLRule{{Topic: "a/#/b", Access: "read"}} }, "auth.acl[0].topic"},
		{"missing certificate", func(c *edge.Config) {
			c.Listeners[0].TLS = edge.TLSConfig{CertFile: "/nonexistent/cert.pem", KeyFile: "/nonexistent/key.pem"}
		}, "listeners[0].tls"},
		{"missing password file", func(c *edge.Config) { c.Auth.PasswordFile = "/nonexistent/passwd" }, "password file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			tc.edit(&cfg)
			_, err := edge.New(cfg, edge.Options{Logger: testLogger(t)})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, edge.ErrConfig) {
				t.Fatalf("err = %v, want a ConfigError naming %q", err, tc.want)
			}
		})
	}
	// A broken file: the loader names the file and line, and nothing starts.
	path := filepath.Join(t.TempDir(), "edgemq.yaml")
	if err := os.WriteFile(path, []byte("listeners:\n  - type: tcp\n    address: [oops\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := edge.LoadConfig(path); err == nil || !strings.Contains(err.Error(), path+":") {
		t.Fatalf("LoadConfig of a broken file: %v", err)
	}
	// A port already taken: Start fails and releases what it bound.
	tb := startBroker(t, testConfig(t))
	cfg := testConfig(t)
	cfg.Listeners[1].Address = tb.Addr("tcp").String()
	b, err := edge.New(cfg, edge.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err == nil {
		t.Fatal("Start on a taken port succeeded")
	}
	if err := b.Start(context.Background()); !errors.Is(err, edge.ErrStopped) {
		t.Fatalf("second Start: %v, want ErrStopped", err)
	}
}

// TestConnectRefusalCodes: refusals reach each protocol version in its own
// terms: 0x01 (3.1.1) or 0x84 (5) for an unsupported level, 0x02 for an
// empty client id with a persistent session [MQTT-3.1.3-8]; and an empty
// password, which MQTT allows, is judged as no password.
func TestConnectRefusalCodes(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	if ack := dialRaw(t, addr, 4).connect("", false, 30); ack.ReasonCode != 0x02 {
		t.Errorf("empty id, clean 0: %#x, want 0x02", ack.ReasonCode)
	}
	// Level 7: encoded and decoded as 3.1.1 but for the level byte.
	if ack := dialRaw(t, addr, 7).connect("lvl7", true, 30); ack.ReasonCode != 0x01 {
		t.Errorf("level 7: %#x, want 0x01", ack.ReasonCode)
	}
	if ack := dialRaw(t, addr, 5).connectWith("lvl5", true, 30, func(pk *packets.Packet) {
		pk.Connect.ProtocolName = []byte("MQIsdp")
	}); ack.ReasonCode != 0x84 {
		t.Errorf("MQIsdp level 5: %#x, want 0x84", ack.ReasonCode)
	}
	emptyPassword := func(pk *packets.Packet) {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte("alice")
		pk.Connect.PasswordFlag, pk.Connect.Password = true, nil
	}
	if ack := dialRaw(t, addr, 4).connectWith("nopw", true, 30, emptyPassword); ack.ReasonCode != 0 {
		t.Errorf("empty password, no authentication configured: %#x, want 0", ack.ReasonCode)
	}

	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "pw")
	auth := startBroker(t, cfg)
	if ack := dialRaw(t, auth.Addr("tcp").String(), 4).connectWith("nopw", true, 30, emptyPassword); ack.ReasonCode != 0x04 {
		t.Errorf("empty password with a password file: %#x, want 0x04", ack.ReasonCode)
	}
}

// TestPartialPacketHoldsLittle: a client that declares a large packet and
// sends a few bytes of it holds memory for what it sent, not for what it
// declared, while its read waits (limits.connect_timeout before CONNECT,
// 1.5 keepalives after): 16 sockets that each begin a CONNECT of nearly
// limits.max_packet_size (1 MiB) and stop, which no client limit counts
// (max_clients counts clients past CONNECT), and 16 connected clients that
// each begin such a PUBLISH. Without a bound, each held its 1 MiB at once.
func TestPartialPacketHoldsLittle(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	const each = 16
	remaining := 1<<20 - 16
	var length []byte // the remaining length, a variable byte integer
	for v := remaining; ; v >>= 7 {
		if v < 128 {
			length = append(length, byte(v))
			break
		}
		length = append(length, byte(v&127|128))
	}
	begin := func(typ byte) []byte {
		return append(append([]byte{typ << 4}, length...), 0, 4, 'M', 'Q', 'T', 'T')
	}
	var clients []*rawClient
	for i := range each {
		rc := dialRaw(t, addr, 5)
		rc.connect(fmt.Sprintf("partial-%d", i), true, 60)
		clients = append(clients, rc)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for range each {
		rc := dialRaw(t, addr, 5)
		if _, err := rc.c.Write(begin(packets.Connect)); err != nil {
			t.Fatal(err)
		}
	}
	for _, rc := range clients {
		if _, err := rc.c.Write(begin(packets.Publish)); err != nil {
			t.Fatal(err)
		}
	}
	// The reads begin at once; what they allocate shows within a moment.
	var grew uint64
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var now runtime.MemStats
		runtime.ReadMemStats(&now)
		if grew = now.TotalAlloc - before.TotalAlloc; grew > 2*each<<20/2 {
			break
		}
	}
	t.Logf("allocated %d KiB for %d partial packets of 1 MiB", grew>>10, 2*each)
	if grew > 8<<20 {
		t.Errorf("%d partial packets of 1 MiB, a few bytes each sent, allocated %d MiB", 2*each, grew>>20)
	}
	stillServes(t, tb)
}

// TestHTTPRequestBodyNeverSent: an HTTP request that declares a body and
// never sends it does not hold its connection past the HTTP side's read
// timeout: net/http reads the rest of an unread body after the handler
// answered, to reuse the connection, and without a read timeout waited for
// it as long as the client kept the socket open.
func TestHTTPRequestBodyNeverSent(t *testing.T) {
	t.Parallel() // it waits out the read timeout, 10 s
	tb := startBroker(t, testConfig(t))
	c := dialNet(t, "tcp", tb.HTTPAddr().String(), nil)
	t.Cleanup(func() { _ = c.Close() })
	if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection with a body never sent still open %v later (the read timeout is 10 s)", time.Since(start))
	}
	t.Logf("closed %v after the request", time.Since(start))
}
