package edge_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/edge"
)

// login sets a CONNECT's username and password.
func login(user, password string) func(*packets.Packet) {
	return func(pk *packets.Packet) {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(user)
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(password)
	}
}

// readPublishes reads n PUBLISH packets within d each, skipping others.
func (rc *rawClient) readPublishes(n int, d time.Duration) []packets.Packet {
	rc.t.Helper()
	var out []packets.Packet
	for len(out) < n {
		pk, err := rc.read(d)
		if err != nil {
			rc.t.Fatalf("read publish %d of %d: %v", len(out)+1, n, err)
		}
		if pk.FixedHeader.Type == packets.Publish {
			out = append(out, pk)
		}
	}
	return out
}

// TestSessionOwner: alice's persistent session shared-X holds 3 QoS 1
// messages unacknowledged and 3 more arrive while she is away. bob, with
// his own valid password, asks for shared-X: v5 gets CONNACK 0x87, v3 0x05,
// with clean start or not. alice then gets all 6, the 3 unacknowledged ones
// again with DUP. With auth.cross_user_takeover, bob gets in.
func TestSessionOwner(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "pw", "bob", "pw")
	cfg.Auth.ACL = []edge.ACLRule{{Topic: "devices/%u/#", Access: "readwrite"}}
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()

	alice := dialRaw(t, addr, 5)
	if ack := alice.connectWith("shared-X", false, 30, login("alice", "pw")); ack.ReasonCode != 0 {
		t.Fatalf("alice connack %#x", ack.ReasonCode)
	}
	alice.subscribe(1, "devices/alice/#", 1)
	if sa, err := alice.read(5 * time.Second); err != nil || sa.ReasonCodes[0] != 1 {
		t.Fatalf("suback %v %v", sa.ReasonCodes, err)
	}
	pub, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "pub", username: "alice", password: "pw"})
	for i := range 3 {
		if _, err := pub.publish(t, "devices/alice/t", 1, false, []byte{'a' + byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	alice.readPublishes(3, 5*time.Second) // and never acknowledged
	_ = alice.c.Close()
	eventually(t, "alice offline", func() bool { return tb.metric(t, "edgemq_mqtt_connections") == 1 })
	for i := range 3 {
		if _, err := pub.publish(t, "devices/alice/t", 1, false, []byte{'d' + byte(i)}); err != nil {
			t.Fatal(err)
		}
	}

	for _, clean := range []bool{false, true} {
		bob := dialRaw(t, addr, 5)
		if ack := bob.connectWith("shared-X", clean, 30, login("bob", "pw")); ack.ReasonCode != 0x87 {
			t.Errorf("bob v5 clean=%v: connack %#x, want 0x87 not authorized", clean, ack.ReasonCode)
		}
		bob3 := dialRaw(t, addr, 4)
		if ack := bob3.connectWith("shared-X", clean, 30, login("bob", "pw")); ack.ReasonCode != 0x05 {
			t.Errorf("bob v3 clean=%v: connack %#x, want 0x05 not authorized", clean, ack.ReasonCode)
		}
	}
	_, _, err := tryConnectV3(t, endpoint{network: "tcp", addr: addr}, "shared-X", func(o *pahov3.ClientOptions) {
		o.SetUsername("bob")
		o.SetPassword("pw")
		o.SetCleanSession(false)
	})
	if err == nil || !strings.Contains(err.Error(), "not Authorized") {
		t.Errorf("paho v3 bob: %v, want not authorized", err)
	}

	alice = dialRaw(t, addr, 5)
	if ack := alice.connectWith("shared-X", false, 30, login("alice", "pw")); ack.ReasonCode != 0 || ack.SessionPresent != true {
		t.Fatalf("alice back: connack %#x session present %v", ack.ReasonCode, ack.SessionPresent)
	}
	got := alice.readPublishes(6, 5*time.Second)
	for i, pk := range got {
		if want := string(rune('a' + i)); string(pk.Payload) != want || pk.FixedHeader.Dup != (i < 3) {
			t.Errorf("message %d: %q dup %v, want %q dup %v", i, pk.Payload, pk.FixedHeader.Dup, want, i < 3)
		}
	}
}

// TestSessionOwnerTakeoverAllowed: auth.cross_user_takeover lets another
// user take a session, and the read ACL still applies to what it resends:
// bob gets none of alice's unacknowledged messages.
func TestSessionOwnerTakeoverAllowed(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "pw", "bob", "pw")
	cfg.Auth.ACL = []edge.ACLRule{{Topic: "devices/%u/#", Access: "readwrite"}}
	cfg.Auth.CrossUserTakeover = true
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()

	alice := dialRaw(t, addr, 5)
	alice.connectWith("shared-X", false, 30, login("alice", "pw"))
	alice.subscribe(1, "devices/alice/#", 1)
	if _, err := alice.read(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	pub, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "pub", username: "alice", password: "pw"})
	if _, err := pub.publish(t, "devices/alice/t", 1, false, []byte("a")); err != nil {
		t.Fatal(err)
	}
	alice.readPublishes(1, 5*time.Second)
	_ = alice.c.Close()
	eventually(t, "alice offline", func() bool { return tb.metric(t, "edgemq_mqtt_connections") == 1 })

	bob := dialRaw(t, addr, 5)
	if ack := bob.connectWith("shared-X", false, 30, login("bob", "pw")); ack.ReasonCode != 0 {
		t.Fatalf("bob: connack %#x, want success with cross_user_takeover", ack.ReasonCode)
	}
	if pk, err := bob.read(500 * time.Millisecond); err == nil {
		t.Fatalf("bob got %v %q: the read ACL must hold on resend", pk.FixedHeader.Type, pk.Payload)
	}
	_ = bob.c.Close()
	eventually(t, "bob offline", func() bool { return tb.metric(t, "edgemq_mqtt_connections") == 1 })
	// What bob could not read is still owed to alice.
	alice = dialRaw(t, addr, 5)
	alice.connectWith("shared-X", false, 30, login("alice", "pw"))
	if pk := alice.readPublishes(1, 5*time.Second)[0]; string(pk.Payload) != "a" || !pk.FixedHeader.Dup {
		t.Fatalf("alice got %q dup %v, want \"a\" again", pk.Payload, pk.FixedHeader.Dup)
	}
}

// TestSessionOwnerRace: alice and bob ask at the same moment for a client
// id that has no session yet. Exactly one gets it (CONNACK 0), the other
// is refused (0x87), and the winner's connection stays up: the owner check
// and the session's creation are one step. A refused connection does not
// close the owner's either.
func TestSessionOwnerRace(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "pw", "bob", "pw")
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	for _, u := range []string{"alice", "bob"} { // bcrypt once: the rounds race on the cache
		rc := dialRaw(t, addr, 5)
		rc.connectWith("warm-"+u, true, 30, login(u, "pw"))
		_ = rc.c.Close()
	}
	users := []string{"alice", "bob"}
	for round := range 50 {
		id := fmt.Sprintf("race-%d", round)
		rcs := []*rawClient{dialRaw(t, addr, 5), dialRaw(t, addr, 5)}
		acks := make([]packets.Packet, 2)
		errs := make([]error, 2)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, rc := range rcs {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}}
			pk.Connect.ProtocolName, pk.Connect.ClientIdentifier, pk.Connect.Keepalive = []byte("MQTT"), id, 30
			pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
			login(users[i], "pw")(&pk)
			b := encode(t, 5, pk)
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if _, errs[i] = rc.c.Write(b); errs[i] == nil {
					acks[i], errs[i] = rc.read(5 * time.Second)
				}
			}()
		}
		close(start)
		wg.Wait()
		won := -1
		for i := range rcs {
			switch {
			case errs[i] != nil || acks[i].FixedHeader.Type != packets.Connack:
				t.Fatalf("round %d %s: %v (type %d)", round, users[i], errs[i], acks[i].FixedHeader.Type)
			case acks[i].ReasonCode == 0 && won >= 0:
				t.Fatalf("round %d: both %s and %s got %s", round, users[won], users[i], id)
			case acks[i].ReasonCode == 0:
				won = i
			case acks[i].ReasonCode != 0x87:
				t.Fatalf("round %d %s: connack %#x, want 0 or 0x87", round, users[i], acks[i].ReasonCode)
			}
		}
		if won < 0 {
			t.Fatalf("round %d: neither got %s", round, id)
		}
		// Once more, sequentially: the loser is refused while the winner holds it.
		loser := dialRaw(t, addr, 5)
		if ack := loser.connectWith(id, round%2 == 0, 30, login(users[1-won], "pw")); ack.ReasonCode != 0x87 {
			t.Fatalf("round %d %s again: connack %#x, want 0x87", round, users[1-won], ack.ReasonCode)
		}
		rcs[won].send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		if pk, err := rcs[won].read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Pingresp {
			t.Fatalf("round %d: winner %s's connection after the refusals: %v (type %d)", round, users[won], err, pk.FixedHeader.Type)
		}
		for _, rc := range append(rcs, loser) {
			_ = rc.c.Close()
		}
	}
}

// TestSessionOwnerSurvivesRestart: the owner is in the log, so after a
// restart bob is still refused alice's session.
func TestSessionOwnerSurvivesRestart(t *testing.T) {
	r := newRestartable(t, func(c *edge.Config) {
		c.Auth.PasswordFile = passwordFile(t, "alice", "pw", "bob", "pw")
	})
	alice := dialRaw(t, r.tb.Addr("tcp").String(), 4)
	alice.connectWith("dev-1", false, 30, login("alice", "pw"))
	_ = alice.c.Close()
	r.restart()
	bob := dialRaw(t, r.tb.Addr("tcp").String(), 4)
	if ack := bob.connectWith("dev-1", false, 30, login("bob", "pw")); ack.ReasonCode != 0x05 {
		t.Fatalf("bob after restart: connack %#x, want 0x05", ack.ReasonCode)
	}
}

// connackCase is a CONNECT over MQTT version with client id, and the
// CONNACK code it should get.
type connackCase struct {
	version byte
	id      string
	want    byte
}

// connackCodes connects each case (tune sets the rest of its CONNECT) and
// checks its CONNACK code; each connection is closed after.
func connackCodes(t *testing.T, addr string, tune func(*packets.Packet), cases []connackCase) {
	t.Helper()
	for _, tc := range cases {
		rc := dialRaw(t, addr, tc.version)
		if ack := rc.connectWith(tc.id, true, 30, tune); ack.ReasonCode != tc.want {
			t.Errorf("v%d id %.20q (%d bytes): connack %#x, want %#x", tc.version, tc.id, len(tc.id), ack.ReasonCode, tc.want)
		}
		_ = rc.c.Close()
	}
}

// TestClientIDRules: use_username_as_clientid gives each user one session
// named after it; client_id_prefix "%u-" refuses a client id that does not
// start with the username (v5 0x85, v3 0x02).
func TestClientIDRules(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "pw")
	cfg.Auth.ClientIDPrefix = "%u-"
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	connackCodes(t, addr, login("alice", "pw"), []connackCase{{5, "alice-1", 0}, {5, "bob-1", 0x85}, {5, "alice", 0x85}, {4, "alice-2", 0}, {4, "bob-2", 0x02}})

	cfg = testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "pw")
	cfg.Auth.UseUsernameAsClientID = true
	tb = startBroker(t, cfg)
	first := dialRaw(t, tb.Addr("tcp").String(), 5)
	first.connectWith("anything", true, 30, login("alice", "pw"))
	second := dialRaw(t, tb.Addr("tcp").String(), 5)
	second.connectWith("something-else", true, 30, login("alice", "pw"))
	// Same client id underneath: the second took the first over
	// [MQTT-3.1.4-3], which gets DISCONNECT 0x8E and is closed.
	if pk, err := first.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != 0x8E {
		t.Fatalf("first connection: %v %v, want DISCONNECT 0x8E session taken over", pk.FixedHeader.Type, err)
	}
}

// TestACLPlaceholderInName: a user literally named "%c" with client id
// "bob" does not reach devices/bob/# through "devices/%u/#": %u and %c are
// substituted in one pass, and a name holding '%', '/', '+', '#' or NUL
// never matches a rule that substitutes it.
func TestACLPlaceholderInName(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "%c", "pw", "%u", "pw", "alice", "pw")
	cfg.Auth.ACL = []edge.ACLRule{{Topic: "devices/%u/#", Access: "readwrite"}, {Topic: "clients/%c/#", Access: "readwrite"}}
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	for _, tc := range []struct{ user, id, filter string }{
		{"%c", "bob", "devices/bob/#"},
		{"%c", "bob", "devices/%c/#"},
		{"%u", "x", "devices/%u/#"},
		{"alice", "%u", "clients/%u/#"},
		{"alice", "%c", "clients/%c/#"},
	} {
		rc := dialRaw(t, addr, 5)
		if ack := rc.connectWith(tc.id, true, 30, login(tc.user, "pw")); ack.ReasonCode != 0 {
			t.Fatalf("%q: connack %#x", tc.user, ack.ReasonCode)
		}
		rc.subscribe(1, tc.filter, 1)
		if sa, err := rc.read(5 * time.Second); err != nil || len(sa.ReasonCodes) != 1 || sa.ReasonCodes[0] != 0x87 {
			t.Errorf("user %q id %q subscribe %q: %v %v, want 0x87", tc.user, tc.id, tc.filter, sa.ReasonCodes, err)
		}
	}
	rc := dialRaw(t, addr, 5)
	rc.connectWith("c1", true, 30, login("alice", "pw"))
	rc.subscribe(1, "devices/alice/#", 1)
	if sa, err := rc.read(5 * time.Second); err != nil || sa.ReasonCodes[0] != 1 {
		t.Errorf("alice's own tree: %v %v", sa.ReasonCodes, err)
	}
}

// wsUpgrade sends a WebSocket upgrade with the given Host and Origin (""
// for none) over a raw socket and returns the HTTP status.
func wsUpgrade(t *testing.T, addr, host, origin string) int {
	t.Helper()
	c := dialNet(t, "tcp", addr, nil)
	defer c.Close()
	req := "GET /mqtt HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n"
	if origin != "" {
		req += "Origin: " + origin + "\r\n"
	}
	if _, err := c.Write([]byte(req + "\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestWebSocketOriginRebinding: with no allowed_origins, a page whose
// Origin equals a Host that is neither loopback nor a configured server
// name is refused (DNS rebinding: the attacker's name resolves to us),
// counted and logged; loopback and server_names pass, as do clients that
// send no Origin.
func TestWebSocketOriginRebinding(t *testing.T) {
	cfg := testConfig(t)
	cfg.Listeners = append(cfg.Listeners, edge.ListenerConfig{
		Name: "ws-named", Type: "ws", Address: "127.0.0.1:0", Path: "/mqtt", ServerNames: []string{"gw.example"},
	})
	tb := startBroker(t, cfg)
	addr := tb.Addr("ws").String()
	_, port, _ := net.SplitHostPort(addr)
	named := tb.Addr("ws-named").String()
	_, namedPort, _ := net.SplitHostPort(named)
	for _, tc := range []struct {
		addr, host, origin string
		want               int
	}{
		{addr, "rebind.attacker.example:" + port, "http://rebind.attacker.example:" + port, 403},
		{addr, "rebind.attacker.example:" + port, "", 101}, // not a browser
		{addr, "127.0.0.1:" + port, "http://127.0.0.1:" + port, 101},
		{addr, "localhost:" + port, "http://localhost:" + port, 101},
		{addr, "[::1]:" + port, "http://[::1]:" + port, 101},
		{addr, "127.0.0.1:" + port, "http://evil.example", 403},
		{named, "gw.example:" + namedPort, "https://gw.example:" + namedPort, 101},
		{named, "GW.example:" + namedPort, "https://gw.EXAMPLE:" + namedPort, 101},
		{named, "other.example:" + namedPort, "https://other.example:" + namedPort, 403},
	} {
		if got := wsUpgrade(t, tc.addr, tc.host, tc.origin); got != tc.want {
			t.Errorf("Host %s Origin %q: status %d, want %d", tc.host, tc.origin, got, tc.want)
		}
	}
	if v := tb.metric(t, "edgemq_listener_rejected_connections_total", "listener", "ws", "reason", "ws_origin"); v != 2 {
		t.Errorf("rejected{ws_origin} = %v, want 2", v)
	}
}

// httpStatus sends GET path with the given Host header over a raw socket
// and returns the HTTP status.
func httpStatus(t *testing.T, addr, path, host string) int {
	t.Helper()
	c := dialNet(t, "tcp", addr, nil)
	defer c.Close()
	if _, err := c.Write([]byte("GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestHTTPHostRebinding: the HTTP side (/metrics, /healthz, /readyz) answers
// a Host that is an IP address (a scraper by address), loopback, or one of
// http.server_names; another DNS name is refused with 403 and counted (DNS
// rebinding: a page on the attacker's name, pointed at the gateway, reading
// the metrics), as the WebSocket listener refuses it.
func TestHTTPHostRebinding(t *testing.T) {
	cfg := testConfig(t)
	cfg.HTTP.ServerNames = []string{"gw.example"}
	tb := startBroker(t, cfg)
	addr := tb.HTTPAddr().String()
	_, port, _ := net.SplitHostPort(addr)
	for _, tc := range []struct {
		host string
		want int
	}{
		{"rebind.attacker.example:" + port, 403},
		{"rebind.attacker.example", 403},
		{"127.0.0.1:" + port, 200},
		{"localhost:" + port, 200},
		{"LOCALHOST", 200},
		{"[::1]:" + port, 200},
		{"192.168.1.20:" + port, 200}, // Prometheus scraping by address
		{"[fe80::1]:" + port, 200},
		{"gw.example:" + port, 200},
		{"GW.Example", 200},
		{"other.example:" + port, 403},
	} {
		for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
			if got := httpStatus(t, addr, path, tc.host); got != tc.want {
				t.Errorf("GET %s Host %s: status %d, want %d", path, tc.host, got, tc.want)
			}
		}
	}
	if v := tb.metric(t, "edgemq_listener_rejected_connections_total", "listener", "http", "reason", "http_host"); v != 9 {
		t.Errorf("rejected{http, http_host} = %v, want 9", v)
	}
}

// TestReservedTopics: QoS 1/2 publishes from clients to $SYS get PUBACK or
// PUBREC 0x87 (v5) or a normal acknowledgement (v3, which cannot refuse),
// are counted and delivered to no one. A will on $SYS is refused like an
// ACL denial (0x87, v3 0x05); a will topic with wildcards is not a topic
// name [MQTT-3.3.2-2]: 0x90 (v3 0x05).
func TestReservedTopics(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	sub, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "sys-sub"})
	sub.subscribe(t, "$SYS/test/#", 1)

	for _, version := range []byte{5, 4} {
		rc := dialRaw(t, addr, version)
		rc.connect("sys-pub", true, 30)
		for q := byte(1); q <= 2; q++ {
			rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: q}, PacketID: uint16(q), TopicName: "$SYS/test/x", Payload: []byte("evil")})
			ack, err := rc.read(5 * time.Second)
			want := map[byte]byte{1: packets.Puback, 2: packets.Pubrec}[q]
			if err != nil || ack.FixedHeader.Type != want {
				t.Fatalf("v%d qos %d: got type %d (%v), want %d", version, q, ack.FixedHeader.Type, err, want)
			}
			wantCode := byte(0)
			if version == 5 {
				wantCode = 0x87
			}
			if ack.ReasonCode != wantCode {
				t.Errorf("v%d qos %d: reason %#x, want %#x", version, q, ack.ReasonCode, wantCode)
			}
			if q == 2 && version == 4 {
				rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 2})
				if pk, err := rc.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Pubcomp {
					t.Fatalf("v3 pubrel: got type %d (%v), want PUBCOMP", pk.FixedHeader.Type, err)
				}
			}
		}
	}
	sub.quiet(t, 300*time.Millisecond)
	if v := tb.metric(t, "edgemq_mqtt_dropped_messages_total", "reason", "reserved_topic"); v != 4 {
		t.Errorf("dropped{reserved_topic} = %v, want 4", v)
	}

	for _, tc := range []struct {
		topic  string
		v5, v3 byte
	}{{"$SYS/broker/version", 0x87, 0x05}, {"a/+/b", 0x90, 0x05}, {"a/#", 0x90, 0x05},
		// The start of a shared subscription's filter, no topic [MQTT-4.8.2-2].
		{"$share/g", 0x90, 0x05}, {"$share", 0x90, 0x05}} {
		for _, version := range []byte{5, 4} {
			rc := dialRaw(t, addr, version)
			ack := rc.connectWith("willer", true, 30, func(pk *packets.Packet) {
				pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload, pk.Connect.WillRetain = true, tc.topic, []byte("w"), true
			})
			want := tc.v3
			if version == 5 {
				want = tc.v5
			}
			if ack.ReasonCode != want {
				t.Errorf("will %q v%d: connack %#x, want %#x", tc.topic, version, ack.ReasonCode, want)
			}
		}
	}
	if n := tb.metric(t, "edgemq_mqtt_retained_messages"); n != 0 {
		// mochi's own $SYS values are not counted among clients' retained
		// messages; a will kept under a wildcard name would be.
		t.Errorf("retained messages = %v, want 0", n)
	}
	// The reserved wills ($SYS, $share/g, $share; v5 and v3) are messages
	// not accepted, as the publishes are; a wildcard is mochi's refusal.
	if v := tb.metric(t, "edgemq_mqtt_dropped_messages_total", "reason", "reserved_topic"); v != 4+6 {
		t.Errorf("dropped{reserved_topic} = %v after the wills, want %d", v, 4+6)
	}
}

// publishOfSize is a v5 QoS 1 PUBLISH of exactly size bytes on the wire.
func publishOfSize(t *testing.T, size int) []byte {
	t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 9, TopicName: "t", Payload: make([]byte, size)}
	b := encode(t, 5, pk)
	for len(b) != size && len(pk.Payload) > 0 { // headers and length bytes
		pk.Payload = pk.Payload[:len(pk.Payload)-(len(b)-size)]
		b = encode(t, 5, pk)
	}
	if len(b) != size {
		t.Fatalf("built %d bytes, want %d", len(b), size)
	}
	return b
}

// TestPacketSizeExact: max_packet_size counts the whole packet: a packet
// of exactly that size is taken, one byte more gets v5 DISCONNECT 0x95
// (Packet too large) [MQTT-3.2.2-15] that the client can read (no reset),
// over TCP and WebSocket, as does a far larger one; a v3 client is closed.
func TestPacketSizeExact(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxPacketSize = 1024
	tb := startBroker(t, cfg)
	for _, network := range []string{"tcp", "ws"} {
		for _, size := range []int{1025, 70000} {
			c := dialNet(t, network, tb.Addr(network).String(), nil)
			rc := &rawClient{t: t, c: c, r: newReader(c), version: 5}
			rc.connect("exact", true, 30)
			if _, err := c.Write(publishOfSize(t, 1024)); err != nil {
				t.Fatal(err)
			}
			if pk, err := rc.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Puback || pk.ReasonCode != 0 {
				t.Fatalf("%s: 1024 bytes: %v %v, want PUBACK", network, pk.FixedHeader.Type, err)
			}
			if _, err := c.Write(publishOfSize(t, size)); err != nil {
				t.Fatal(err)
			}
			pk, err := rc.read(5 * time.Second)
			if err != nil || pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != 0x95 {
				t.Errorf("%s: %d bytes: type %d reason %#x (%v), want DISCONNECT 0x95", network, size, pk.FixedHeader.Type, pk.ReasonCode, err)
			}
			if !rc.closed(5 * time.Second) {
				t.Errorf("%s: still open", network)
			}
			_ = c.Close()
		}
	}
	rc := dialRaw(t, tb.Addr("tcp").String(), 4)
	rc.connect("exact3", true, 30)
	b := encode(t, 4, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t", Payload: make([]byte, 1025-6)})
	if len(b) != 1025 {
		t.Fatalf("v3 packet of %d bytes", len(b))
	}
	_, _ = rc.c.Write(b)
	if !rc.closed(5 * time.Second) {
		t.Error("v3: still open after 1025 bytes")
	}
	if v := tb.metric(t, "edgemq_listener_rejected_connections_total", "listener", "tcp", "reason", "packet_too_large"); v != 3 {
		t.Errorf("rejected{packet_too_large} on tcp = %v, want 3", v)
	}
}

// TestClientLimits: a client id longer than max_client_id_length is
// refused (v5 0x85, v3 0x02); a client may hold max_subscriptions filters,
// and one more gets SUBACK 0x97 Quota exceeded (v3 0x80); a connection
// over max_clients is refused, counted and logged.
func TestClientLimits(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxClientIDLength = 16
	cfg.Limits.MaxSubscriptions = 3
	cfg.Limits.MaxClients = 3
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()

	connackCodes(t, addr, nil, []connackCase{{5, strings.Repeat("x", 16), 0}, {5, strings.Repeat("x", 17), 0x85}, {4, strings.Repeat("y", 17), 0x02}})
	eventually(t, "clients gone", func() bool { return tb.metric(t, "edgemq_mqtt_connections") == 0 })

	for _, version := range []byte{5, 4} {
		rc := dialRaw(t, addr, version)
		rc.connect("subs", true, 30)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: "a", Qos: 1}, {Filter: "b", Qos: 1}}})
		if sa, err := rc.read(5 * time.Second); err != nil || len(sa.ReasonCodes) != 2 || sa.ReasonCodes[1] != 1 {
			t.Fatalf("v%d first two: %v %v", version, sa.ReasonCodes, err)
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 2,
			Filters: packets.Subscriptions{{Filter: "a", Qos: 0}, {Filter: "c", Qos: 1}, {Filter: "d", Qos: 1}}})
		over := byte(0x97)
		if version == 4 {
			over = 0x80
		}
		// "a" again replaces a subscription and costs nothing [MQTT-3.8.4-3].
		if sa, err := rc.read(5 * time.Second); err != nil || len(sa.ReasonCodes) != 3 || sa.ReasonCodes[0] != 0 || sa.ReasonCodes[1] != 1 || sa.ReasonCodes[2] != over {
			t.Errorf("v%d: %v %v, want [0 1 %#x]", version, sa.ReasonCodes, err, over)
		}
		_ = rc.c.Close()
		eventually(t, "client gone", func() bool { return tb.metric(t, "edgemq_mqtt_connections") == 0 })
	}

	for i := range 3 {
		dialRaw(t, addr, 5).connect("full-"+string(rune('0'+i)), true, 30)
	}
	if ack := dialRaw(t, addr, 5).connect("one-too-many", true, 30); ack.ReasonCode != 0x89 {
		t.Errorf("over max_clients: connack %#x, want 0x89 server busy", ack.ReasonCode)
	}
	eventually(t, "max_clients refusal counted", func() bool {
		return tb.metric(t, "edgemq_listener_rejected_connections_total", "listener", "tcp", "reason", "max_clients") == 1
	})
}

// TestMaxSubscriptionsFilterTwice: a new filter named twice in one
// SUBSCRIBE is one subscription, the second replacing the first
// [MQTT-3.8.4-3] [MQTT-3.8.4-4], so it costs one place of
// max_subscriptions: a client one below its limit gets both granted, and
// then holds its limit.
func TestMaxSubscriptionsFilterTwice(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxSubscriptions = 3
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	for _, version := range []byte{5, 4} {
		rc := dialRaw(t, addr, version)
		rc.connect(fmt.Sprint("twice-", version), true, 30)
		subscribe := func(pid uint16, filters ...string) []byte {
			t.Helper()
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: pid}
			for _, f := range filters {
				pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
			}
			rc.send(pk)
			sa, err := rc.read(5 * time.Second)
			if err != nil || sa.FixedHeader.Type != packets.Suback {
				t.Fatalf("v%d: no SUBACK: %v", version, err)
			}
			return sa.ReasonCodes
		}
		over := byte(0x97)
		if version == 4 {
			over = 0x80
		}
		if codes := subscribe(1, "a", "b"); !bytes.Equal(codes, []byte{1, 1}) {
			t.Fatalf("v%d a, b: %x", version, codes)
		}
		if codes := subscribe(2, "c", "c"); !bytes.Equal(codes, []byte{1, 1}) {
			t.Errorf("v%d c twice at 2 of 3: %x, want 01 01", version, codes)
		}
		if codes := subscribe(3, "d", "a"); !bytes.Equal(codes, []byte{over, 1}) {
			t.Errorf("v%d d, a at 3 of 3: %x, want %02x 01", version, codes, over)
		}
		_ = rc.c.Close()
	}
}

// TestLoginBackoff: after failure_burst wrong passwords from one source,
// its logins are refused before any bcrypt, with the usual 0x86 (counted as
// backoff), the right password included, unless that password was
// verified recently (the cache). Other checks fail as bad_credentials.
func TestLoginBackoff(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "pw", "bob", "pw")
	cfg.Auth.FailureBurst = 3
	cfg.Auth.FailureInterval = time.Hour
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	try := func(user, pw string) byte {
		rc := dialRaw(t, addr, 5)
		defer rc.c.Close()
		return rc.connectWith("c-"+user, true, 30, login(user, pw)).ReasonCode
	}
	if code := try("alice", "pw"); code != 0 {
		t.Fatalf("alice: %#x", code)
	}
	for i := range 3 {
		if code := try("bob", "guess"); code != 0x86 {
			t.Fatalf("guess %d: %#x", i, code)
		}
	}
	if v := tb.metric(t, "edgemq_auth_failures_total", "reason", "bad_credentials"); v != 3 {
		t.Errorf("bad_credentials = %v, want 3", v)
	}
	for _, tc := range []struct{ user, pw string }{{"bob", "guess"}, {"bob", "pw"}} {
		if code := try(tc.user, tc.pw); code != 0x86 {
			t.Errorf("%s/%s during backoff: %#x, want 0x86", tc.user, tc.pw, code)
		}
	}
	if v := tb.metric(t, "edgemq_auth_failures_total", "reason", "backoff"); v != 2 {
		t.Errorf("backoff = %v, want 2", v)
	}
	// alice proved her password before: the cache lets her in.
	if code := try("alice", "pw"); code != 0 {
		t.Errorf("alice during backoff: %#x, want success from the cache", code)
	}
	if v := tb.metric(t, "edgemq_auth_cache_hits_total"); v != 1 {
		t.Errorf("cache hits = %v, want 1", v)
	}
	// A wrong password for a cached user is no hit.
	if code := try("alice", "wrong"); code != 0x86 {
		t.Errorf("alice wrong password: %#x", code)
	}
}

// TestLoginBusy: a flood of parallel logins cannot make one wait past its
// connect timeout for a bcrypt slot: those that get none in time are
// refused as server busy (v5 0x89), counted as such (not as
// limits.max_clients), and the broker serves on.
//
// The connect deadline runs from the accept, so each CONNECT is written
// right after its dial: dialing them all first let a loaded machine pass
// the first ones' deadlines before they said anything (the broker then
// closes them unanswered). The first CONNECT always finds a slot free
// (0x86); the flood is sized to the slots (half the CPUs, as the broker
// has) so that some always wait past the deadline (0x89).
func TestLoginBusy(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "pw")
	cfg.Auth.FailureBurst = 0
	cfg.Limits.ConnectTimeout = time.Second
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	// ~50 ms of bcrypt each, at least 3 s of work per slot: 3 times what a
	// slot gets through before the deadline.
	n := 60 * max(1, runtime.NumCPU()/2)
	codes := make(chan byte, n)
	connect := encode(t, 5, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "flood", Clean: true, Keepalive: 30,
			UsernameFlag: true, Username: []byte("alice"), PasswordFlag: true, Password: []byte("guess")}})
	for range n {
		c := dialNet(t, "tcp", addr, nil)
		defer c.Close()
		if _, err := c.Write(connect); err != nil {
			t.Fatalf("write CONNECT: %v", err)
		}
		go func() {
			rc := &rawClient{t: t, c: c, r: newReader(c), version: 5}
			ack, err := rc.read(10 * time.Second)
			if err != nil {
				codes <- 0xfe
				return
			}
			codes <- ack.ReasonCode
		}()
	}
	got := map[byte]int{}
	for range n {
		got[<-codes]++
	}
	if got[0x89] == 0 || got[0x86] == 0 || got[0x86]+got[0x89] != n {
		t.Errorf("codes %v: want some 0x86 (checked) and some 0x89 (busy), nothing else (0xfe: closed unanswered)", got)
	}
	if v := tb.metric(t, "edgemq_auth_failures_total", "reason", "busy"); int(v) != got[0x89] {
		t.Errorf("busy = %v, want %d", v, got[0x89])
	}
	if v := tb.metric(t, "edgemq_listener_rejected_connections_total", "reason", "max_clients"); v != 0 {
		t.Errorf("rejected max_clients = %v, want 0: no limit was reached", v)
	}
	connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "after", username: "alice", password: "pw"})
}

// TestConfigBooleans: true and false are taken quoted or not, as the only
// spellings (the refusals are in TestParseConfigErrors).
func TestConfigBooleans(t *testing.T) {
	for _, doc := range []string{"auth:\n  allow_anonymous: true\n", "auth:\n  allow_anonymous: \"true\"\n", "auth:\n  allow_anonymous: 'true'\n"} {
		cfg, err := edge.ParseConfig([]byte(doc))
		if err != nil || !cfg.Auth.AllowAnonymous {
			t.Errorf("%q: %v, allow_anonymous %v", doc, err, cfg.Auth.AllowAnonymous)
		}
	}
	if cfg, err := edge.ParseConfig([]byte("auth:\n  allow_anonymous: \"false\"\n")); err != nil || cfg.Auth.AllowAnonymous {
		t.Errorf("quoted false: %v %v", err, cfg.Auth.AllowAnonymous)
	}
}

// TestReload: Reload reads the password file again, takes the new ACL and
// the new TLS certificates, without dropping a connected client; a reload
// with a bad file changes nothing and says why.
func TestReload(t *testing.T) {
	pkiA, pkiB := newTestPKI(t), newTestPKI(t)
	pwFile := passwordFile(t, "alice", "old")
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = pwFile
	cfg.Auth.ACL = []edge.ACLRule{{User: "alice", Topic: "a/#", Access: "readwrite"}}
	tlsOf := func(p *testPKI) edge.TLSConfig { return edge.TLSConfig{CertFile: p.certFile, KeyFile: p.keyFile} }
	cfg.Listeners = append(cfg.Listeners,
		edge.ListenerConfig{Name: "tls", Type: "tcp", Address: "127.0.0.1:0", TLS: tlsOf(pkiA)},
		edge.ListenerConfig{Name: "wss", Type: "ws", Address: "127.0.0.1:0", Path: "/mqtt", TLS: tlsOf(pkiA)})
	tb := startBroker(t, cfg)
	tcp := tb.Addr("tcp").String()

	stay, _ := connectV5(t, dialNet(t, "tls", tb.Addr("tls").String(), pkiA.clientTLS(false)), v5Opts{id: "stay", username: "alice", password: "old"})
	stay.subscribe(t, "a/#", 1)

	next := cfg
	next.Listeners = append([]edge.ListenerConfig(nil), cfg.Listeners...)
	next.Listeners[2].TLS, next.Listeners[3].TLS = tlsOf(pkiB), tlsOf(pkiB)
	next.Auth.ACL = append(next.Auth.ACL, edge.ACLRule{User: "bob", Topic: "a/#", Access: "readwrite"})
	if err := edge.SetPassword(pwFile, "alice", "new"); err != nil {
		t.Fatal(err)
	}
	if err := edge.SetPassword(pwFile, "bob", "pw"); err != nil {
		t.Fatal(err)
	}
	if err := tb.Reload(next); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	code := func(user, pw string) byte {
		rc := dialRaw(t, tcp, 5)
		defer rc.c.Close()
		return rc.connectWith("r-"+user+pw, true, 30, login(user, pw)).ReasonCode
	}
	if c := code("alice", "old"); c != 0x86 {
		t.Errorf("alice's old password after reload: %#x, want 0x86", c)
	}
	if c := code("alice", "new"); c != 0 {
		t.Errorf("alice's new password: %#x", c)
	}
	bob, _ := connectV5(t, dialNet(t, "tcp", tcp, nil), v5Opts{id: "bob", username: "bob", password: "pw"})
	if _, err := bob.publish(t, "a/x", 1, false, []byte("from bob")); err != nil {
		t.Fatal(err)
	}
	// The connection made before the reload is still there, and gets it.
	if m := stay.receive(t, 1)[0]; string(m.Payload) != "from bob" {
		t.Fatalf("got %q", m.Payload)
	}
	// New handshakes present the new certificate, over TLS and WSS.
	for _, l := range []struct{ name, network string }{{"tls", "tls"}, {"wss", "wss"}} {
		c := dialNet(t, l.network, tb.Addr(l.name).String(), pkiB.clientTLS(false))
		_ = c.Close()
		if _, err := tls.Dial("tcp", tb.Addr(l.name).String(), pkiA.clientTLS(false)); err == nil {
			t.Errorf("%s: the old certificate is still served", l.name)
		}
	}

	// A bad password file: refused as a whole, every problem named, the
	// running configuration stays.
	if err := os.WriteFile(pwFile, []byte("alice:not-a-hash\n#x\n bob:y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := tb.Reload(next)
	if !errors.Is(err, edge.ErrConfig) || !strings.Contains(err.Error(), ":1:") || !strings.Contains(err.Error(), ":3:") {
		t.Fatalf("bad reload: %v, want a config error naming lines 1 and 3", err)
	}
	if c := code("bob", "pw"); c != 0 {
		t.Errorf("after a refused reload bob: %#x, want the running configuration", c)
	}
	bad := next
	bad.Listeners = next.Listeners[:2]
	if err := tb.Reload(bad); !errors.Is(err, edge.ErrConfig) {
		t.Errorf("removing listeners: %v, want a config error (needs a restart)", err)
	}
}

// TestRepeatedProperties: an MQTT 5 property that may appear once, given
// twice, is a protocol error (MQTT 5 §3.1.2.11, §3.3.2.3, §3.8.2.1): in
// CONNECT it gets CONNACK 0x82, later DISCONNECT 0x82, and the connection
// closes; a repeated User Property is fine.
func TestRepeatedProperties(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	// CONNECT v5, clean, keepalive 30, properties: Session Expiry Interval
	// twice, client id "dup".
	connect := []byte{0x10, 0, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 30, 10, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2, 0, 3, 'd', 'u', 'p'}
	connect[1] = byte(len(connect) - 2)
	rc := dialRaw(t, addr, 5)
	_, _ = rc.c.Write(connect)
	if pk, err := rc.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != 0x82 {
		t.Errorf("CONNECT with Session Expiry twice: type %d reason %#x (%v), want CONNACK 0x82", pk.FixedHeader.Type, pk.ReasonCode, err)
	}
	if !rc.closed(5 * time.Second) {
		t.Error("still open after CONNACK 0x82")
	}

	for _, tc := range []struct {
		name string
		pk   []byte
		want byte // 0: answered normally with this type
		typ  byte
	}{
		// QoS 1 PUBLISH "a", packet id 1, Message Expiry Interval twice.
		{"publish", []byte{0x32, 15, 0, 1, 'a', 0, 1, 10, 0x02, 0, 0, 0, 9, 0x02, 0, 0, 0, 9}, 0x82, packets.Disconnect},
		// SUBSCRIBE id 2, Subscription Identifier twice, filter "a" QoS 0.
		{"subscribe", []byte{0x82, 10, 0, 2, 4, 0x0b, 1, 0x0b, 2, 0, 1, 'a', 0}, 0x82, packets.Disconnect},
		// QoS 1 PUBLISH with two User Properties: allowed.
		{"user properties", []byte{0x32, 20, 0, 1, 'a', 0, 3, 14, 0x26, 0, 1, 'k', 0, 1, 'v', 0x26, 0, 1, 'k', 0, 1, 'w'}, 0, packets.Puback},
	} {
		rc := dialRaw(t, addr, 5)
		rc.connect("dup-"+tc.name, true, 30)
		tc.pk[1] = byte(len(tc.pk) - 2)
		_, _ = rc.c.Write(tc.pk)
		pk, err := rc.read(5 * time.Second)
		if err != nil || pk.FixedHeader.Type != tc.typ || pk.ReasonCode != tc.want {
			t.Errorf("%s: type %d reason %#x (%v), want type %d reason %#x", tc.name, pk.FixedHeader.Type, pk.ReasonCode, err, tc.typ, tc.want)
		}
	}
	if v := tb.metric(t, "edgemq_listener_rejected_connections_total", "listener", "tcp", "reason", "protocol_error"); v != 3 {
		t.Errorf("rejected{protocol_error} = %v, want 3", v)
	}
}

// TestCheckPasswordFileLines: every bad line of the password file is its
// own problem, at the config line that names the file.
func TestCheckPasswordFileLines(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	if err := os.WriteFile(pw, []byte("bob:x\n# fine\n bad:y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "edgemq.yaml")
	if err := os.WriteFile(cfgFile, []byte("storage:\n  dir: "+dir+"\nauth:\n  password_file: "+pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := edge.CheckConfig(cfgFile)
	var got []string
	for _, p := range c.Problems {
		got = append(got, p.Error())
	}
	if len(got) != 2 || !strings.Contains(got[0], ":4: auth.password_file: password file "+pw+":1:") || !strings.Contains(got[1], pw+":3: username \" bad\"") {
		t.Fatalf("problems %q, want one per bad line, each at line 4", got)
	}
}

// TestMaxSubscriptionsAfterRestart: the subscriptions a persistent session
// kept across a restart count against max_subscriptions, as before it: a
// filter beyond the quota gets 0x97 Quota exceeded (v3 0x80), one the
// session holds replaces its subscription [MQTT-3.8.4-3].
func TestMaxSubscriptionsAfterRestart(t *testing.T) {
	r := newRestartable(t, func(c *edge.Config) { c.Limits.MaxSubscriptions = 2 })
	persist := func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
	}
	for _, version := range []byte{5, 4} {
		id := fmt.Sprintf("quota-v%d", version)
		connect := func() *rawClient {
			if version == 4 {
				rc, _ := v3(t, r.ep().addr, id, false, nil)
				return rc
			}
			rc, _ := v5(t, r.ep().addr, id, false, persist)
			return rc
		}
		rc := connect()
		if codes := rc.subscribeWith(1, 0, packets.Subscription{Filter: "q/a", Qos: 1}, packets.Subscription{Filter: "q/b", Qos: 1}); !bytes.Equal(codes, []byte{1, 1}) {
			t.Fatalf("v%d: suback %x, want 01 01", version, codes)
		}
		_ = rc.c.Close()
		eventually(t, "client gone", func() bool { return r.tb.metric(t, "edgemq_mqtt_connections") == 0 })
		r.restart()
		rc = connect()
		over := byte(0x97)
		if version == 4 {
			over = 0x80
		}
		if codes := rc.subscribeWith(2, 0, packets.Subscription{Filter: "q/a", Qos: 0}, packets.Subscription{Filter: "q/c", Qos: 1}); !bytes.Equal(codes, []byte{0, over}) {
			t.Errorf("v%d after the restart: suback %x, want 00 %02x", version, codes, over)
		}
		_ = rc.c.Close()
		eventually(t, "client gone", func() bool { return r.tb.metric(t, "edgemq_mqtt_connections") == 0 })
	}
}
