package edge_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/edge"
)

func passwordFile(t testing.TB, users ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "passwd")
	for i := 0; i+1 < len(users); i += 2 {
		if err := edge.SetPassword(path, users[i], users[i+1]); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// TestAuthentication: a wrong password, an unknown user and a missing
// username are refused with 0x86 (v5) or 0x04 (v3), counted, and the broker
// keeps serving; the right password gets in.
func TestAuthentication(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "s3cret")
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	ep := endpoint{network: "tcp", addr: addr}

	for _, tc := range []struct {
		name, user, pass string
	}{
		{"wrong password", "alice", "guess"},
		{"unknown user", "mallory", "s3cret"},
		{"anonymous", "", ""},
	} {
		t.Run(tc.name+"/v5", func(t *testing.T) {
			_, ack, err := tryConnectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "a5", username: tc.user, password: tc.pass})
			if err == nil {
				t.Fatal("connected")
			}
			if ack == nil || ack.ReasonCode != 0x86 {
				t.Fatalf("connack %+v, want reason 0x86", ack)
			}
		})
		t.Run(tc.name+"/v3", func(t *testing.T) {
			_, _, err := tryConnectV3(t, ep, "a3", func(o *pahov3.ClientOptions) {
				o.SetUsername(tc.user)
				o.SetPassword(tc.pass)
			})
			if err == nil || !strings.Contains(err.Error(), "bad user name or password") {
				t.Fatalf("err = %v, want bad user name or password (0x04)", err)
			}
		})
	}
	if v := tb.metric(t, "edgemq_auth_failures_total", "reason", "bad_credentials"); v != 4 {
		t.Errorf("auth_failures_total{bad_credentials} = %v, want 4", v)
	}
	if v := tb.metric(t, "edgemq_auth_failures_total", "reason", "anonymous"); v != 2 {
		t.Errorf("auth_failures_total{anonymous} = %v, want 2", v)
	}

	connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "alice5", username: "alice", password: "s3cret"})
	connectV3(t, ep, "alice3", func(o *pahov3.ClientOptions) {
		o.SetUsername("alice")
		o.SetPassword("s3cret")
	})
}

// TestAnonymousAllowed: with allow_anonymous, no username gets in, and a
// username still needs its password.
func TestAnonymousAllowed(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "s3cret")
	cfg.Auth.AllowAnonymous = true
	tb := startBroker(t, cfg)
	addr := tb.Addr("tcp").String()
	connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "anon"})
	if _, ack, err := tryConnectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "bad", username: "alice", password: "x"}); err == nil || ack.ReasonCode != 0x86 {
		t.Fatalf("wrong password: err %v, connack %+v", err, ack)
	}
}

// TestNoAuthBindsLoopback: with no authentication configured, a listener
// asked for every interface is bound to loopback instead.
func TestNoAuthBindsLoopback(t *testing.T) {
	cfg := testConfig(t)
	cfg.Listeners[0].Address = "0.0.0.0:0"
	cfg.Listeners[1].Address = ":0"
	cfg.HTTP.Address = "0.0.0.0:0"
	tb := startBroker(t, cfg)
	for _, name := range []string{"tcp", "ws"} {
		if a := tb.Addr(name).String(); !strings.HasPrefix(a, "127.0.0.1:") {
			t.Errorf("%s bound to %s, want loopback", name, a)
		}
	}
	if a := tb.HTTPAddr().String(); !strings.HasPrefix(a, "127.0.0.1:") {
		t.Errorf("http bound to %s, want loopback", a)
	}
	connectV5(t, dialNet(t, "tcp", tb.Addr("tcp").String(), nil), v5Opts{id: "anyone"})
}

// aclConfig: alice owns devices/alice/# except devices/alice/secret, every
// client may read public/# and write to its own clients/<id>/#, admin may
// write everywhere.
func aclConfig(t testing.TB) edge.Config {
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "pw", "bob", "pw", "admin", "pw")
	cfg.Auth.ACL = []edge.ACLRule{
		{User: "admin", Topic: "#", Access: "write"},
		{User: "alice", Topic: "devices/%u/#", Access: "readwrite"},
		{User: "alice", Topic: "devices/alice/secret", Access: "deny"},
		{Topic: "public/#", Access: "read"},
		{Topic: "clients/%c/#", Access: "write"},
	}
	return cfg
}

// TestACLSubscribe: a denied subscription gets 0x87 (v5) or 0x80 (v3), an
// allowed one its QoS.
func TestACLSubscribe(t *testing.T) {
	tb := startBroker(t, aclConfig(t))
	addr := tb.Addr("tcp").String()
	alice, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "a", username: "alice", password: "pw"})
	for _, tc := range []struct {
		filter string
		want   byte
	}{
		{"devices/alice/#", 1},
		{"devices/alice/t", 1},
		{"devices/+/t", 0x87},          // reaches other users' devices
		{"devices/bob/t", 0x87},        // another user's
		{"public/news", 1},             // pattern rule
		{"$share/g/public/#", 1},       // shared: access to the topics
		{"#", 0x87},                    // too wide
		{"clients/a/x", 0x87},          // write-only
		{"devices/alice/secret", 0x87}, // denied outright
	} {
		if sa := alice.subscribe(t, tc.filter, 1); sa.Reasons[0] != tc.want {
			t.Errorf("subscribe %s: reason %#x, want %#x", tc.filter, sa.Reasons[0], tc.want)
		}
	}

	bob := dialRaw(t, addr, 4)
	if ack := bob.connectWith("b3raw", true, 30, func(pk *packets.Packet) {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte("bob")
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte("pw")
	}); ack.ReasonCode != 0 {
		t.Fatalf("bob v3 connack %#x", ack.ReasonCode)
	}
	bob.subscribe(1, "devices/alice/#", 1)
	if ack, err := bob.read(5 * time.Second); err != nil || len(ack.ReasonCodes) != 1 || ack.ReasonCodes[0] != 0x80 {
		t.Fatalf("v3 denied subscribe: %v %v, want SUBACK 0x80", err, ack.ReasonCodes)
	}
	if v := tb.metric(t, "edgemq_acl_denials_total", "access", "read"); v < 6 {
		t.Errorf("acl_denials_total{read} = %v, want >= 6", v)
	}
}

// TestACLPublish: a denied publish is not delivered (nor retained) and is
// counted; v5 QoS 1 gets PUBACK 0x87, QoS 2 PUBREC 0x87; v3 is acknowledged
// normally. A deny rule also stops deliveries under an allowed wildcard
// subscription.
func TestACLPublish(t *testing.T) {
	tb := startBroker(t, aclConfig(t))
	addr := tb.Addr("tcp").String()
	alice, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "a", username: "alice", password: "pw"})
	alice.subscribe(t, "devices/alice/#", 1)
	bob, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "b", username: "bob", password: "pw"})

	for qos := byte(1); qos <= 2; qos++ {
		pr, err := bob.publish(t, "devices/alice/cmd", qos, true, []byte("evil"))
		if pr == nil || pr.ReasonCode != 0x87 {
			t.Errorf("bob publish qos %d: %+v %v, want reason 0x87", qos, pr, err)
		}
	}
	if _, err := bob.publish(t, "devices/alice/cmd", 0, false, []byte("evil0")); err != nil {
		t.Fatal(err)
	}
	bob3, _ := connectV3(t, endpoint{network: "tcp", addr: addr}, "b3", func(o *pahov3.ClientOptions) {
		o.SetUsername("bob")
		o.SetPassword("pw")
	})
	if tok := bob3.Publish("devices/alice/cmd", 1, false, "evil3"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("v3 denied publish not acknowledged: %v", tok.Error())
	}
	alice.quiet(t, 300*time.Millisecond)

	// Allowed: alice to her own tree; bob to clients/b/... (the %c rule).
	if _, err := alice.publish(t, "devices/alice/t", 1, false, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if m := alice.receive(t, 1)[0]; string(m.Payload) != "ok" {
		t.Fatalf("got %q", m.Payload)
	}
	if pr, err := bob.publish(t, "clients/b/status", 1, false, []byte("up")); err != nil {
		t.Fatalf("bob own topic: %+v %v", pr, err)
	}
	// Denied at delivery: admin may write devices/alice/secret, but alice's
	// devices/alice/# subscription does not carry it (a deny rule for her).
	admin, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "adm", username: "admin", password: "pw"})
	if _, err := admin.publish(t, "devices/alice/secret", 1, false, []byte("s")); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.publish(t, "devices/alice/t", 1, false, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if m := alice.receive(t, 1)[0]; string(m.Payload) != "after" {
		t.Fatalf("alice got %s %q, want only devices/alice/t", m.Topic, m.Payload)
	}
	if pr, _ := alice.publish(t, "devices/alice/secret", 1, false, []byte("s")); pr == nil || pr.ReasonCode != 0x87 {
		t.Errorf("alice publish to her denied topic: %+v", pr)
	}

	late, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "a2", username: "alice", password: "pw"})
	late.subscribe(t, "devices/alice/#", 1)
	late.quiet(t, 200*time.Millisecond) // nothing denied was retained
	if v := tb.metric(t, "edgemq_acl_denials_total", "access", "write"); v < 5 {
		t.Errorf("acl_denials_total{write} = %v, want >= 5", v)
	}
}

// TestACLWill: a will on a topic the client may not write is refused at
// CONNECT with 0x87.
func TestACLWill(t *testing.T) {
	tb := startBroker(t, aclConfig(t))
	_, ack, err := tryConnectV5(t, dialNet(t, "tcp", tb.Addr("tcp").String(), nil), v5Opts{
		id: "w", username: "bob", password: "pw",
		will: &paho.WillMessage{Topic: "devices/alice/cmd", Payload: []byte("x")},
	})
	if err == nil || ack == nil || ack.ReasonCode != 0x87 {
		t.Fatalf("err %v connack %+v, want 0x87", err, ack)
	}
}

// TestTLSClientCertificate: with require_client_cert and use_cn_as_username
// the certificate's CN is the username (the ACL sees it), no password is
// needed, and a client without a certificate does not get through the
// handshake.
func TestTLSClientCertificate(t *testing.T) {
	pki := newTestPKI(t)
	cfg := testConfig(t)
	cfg.Auth.PasswordFile = passwordFile(t, "alice", "pw")
	cfg.Auth.ACL = []edge.ACLRule{{User: "device-7", Topic: "d/device-7/#", Access: "readwrite"}}
	cfg.Listeners = append(cfg.Listeners, edge.ListenerConfig{
		Name: "mtls", Type: "tcp", Address: "127.0.0.1:0",
		TLS: edge.TLSConfig{CertFile: pki.certFile, KeyFile: pki.keyFile, ClientCAFile: pki.caFile, RequireClientCert: true, UseCNAsUsername: true},
	}, edge.ListenerConfig{
		Name: "mwss", Type: "ws", Address: "127.0.0.1:0", Path: "/mqtt",
		TLS: edge.TLSConfig{CertFile: pki.certFile, KeyFile: pki.keyFile, ClientCAFile: pki.caFile, RequireClientCert: true, UseCNAsUsername: true},
	})
	tb := startBroker(t, cfg)

	for _, l := range []struct{ name, network string }{{"mtls", "tls"}, {"mwss", "wss"}} {
		t.Run(l.network, func(t *testing.T) {
			addr := tb.Addr(l.name).String()
			c, _ := connectV5(t, dialNet(t, l.network, addr, pki.clientTLS(true)), v5Opts{id: "dev7-" + l.network})
			if sa := c.subscribe(t, "d/device-7/#", 1); sa.Reasons[0] != 1 {
				t.Fatalf("own tree: %#x", sa.Reasons[0])
			}
			if sa := c.subscribe(t, "d/device-8/#", 1); sa.Reasons[0] != 0x87 {
				t.Fatalf("other tree: %#x", sa.Reasons[0])
			}
		})
	}
	// No certificate: the handshake fails (TLS 1.3 reports it on first read).
	conn := dialNet(t, "tls", tb.Addr("mtls").String(), pki.clientTLS(false))
	defer conn.Close()
	_, _ = conn.Write([]byte{0x10, 0})
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("read succeeded without a client certificate")
	}
	eventually(t, "rejected tls_handshake", func() bool {
		return tb.metric(t, "edgemq_listener_rejected_connections_total", "listener", "mtls", "reason", "tls_handshake") >= 1
	})
	// The same over WSS.
	ws := dialNet(t, "tls", tb.Addr("mwss").String(), pki.clientTLS(false))
	defer ws.Close()
	_, _ = ws.Write([]byte("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n"))
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := ws.Read(make([]byte, 1)); err == nil {
		t.Fatal("wss read succeeded without a client certificate")
	}
	eventually(t, "rejected tls_handshake on wss", func() bool {
		return tb.metric(t, "edgemq_listener_rejected_connections_total", "listener", "mwss", "reason", "tls_handshake") >= 1
	})
}
