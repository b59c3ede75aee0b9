package bridge_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
)

// status returns the named bridge's state.
func status(t testing.TB, b *edge.Broker, name string) bridge.Status {
	t.Helper()
	for _, s := range b.Bridges() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no bridge %q", name)
	return bridge.Status{}
}

// waitStatus polls until ok(status) or d passes, and returns the last status.
func waitStatus(t testing.TB, b *edge.Broker, name string, d time.Duration, ok func(bridge.Status) bool) bridge.Status {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := status(t, b, name)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridge state not reached within %s: %+v", d, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHalfOpenLink: the proxy stops forwarding without closing anything;
// the bridge declares the link down within 1.5 keepalives, reconnects when
// it is restored, and loses nothing published meanwhile.
func TestHalfOpenLink(t *testing.T) {
	for _, proto := range []string{"3.1.1", "5"} {
		t.Run(proto, func(t *testing.T) {
			up := startMosquitto(t, "")
			ta := newTally(3000)
			sub := client(t, "tcp://"+up.addr, "central-sub", true, ta.handle)
			subscribeAll(t, sub)
			p := newProxy(t, up.addr)
			bc := bridgeTo("central", proxyURL(p))
			bc.Protocol = proto
			b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
			dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
			publishN(t, dev, 4, 1000, 0)
			waitForwarded(t, ta, 1000, 20*time.Second)

			p.BlackHole()
			silent := time.Now()
			publishN(t, dev, 4, 1000, 1000) // into the black hole: no PUBACK comes back
			s := waitStatus(t, b, "central", 3*bc.Keepalive, func(s bridge.Status) bool { return !s.Connected })
			took := time.Since(silent)
			// 1.5 keepalives after the last packet read (at most when the
			// black hole began), plus the watchdog's tick of 1/8 keepalive,
			// plus slack for a loaded machine.
			if limit := bc.Keepalive*3/2 + time.Second; took > limit {
				t.Errorf("half-open link declared down after %s, want within 1.5 keepalives (%s) and a tick", took, bc.Keepalive*3/2)
			}
			if !strings.Contains(s.LastError, "1.5 keepalives") {
				t.Errorf("last error %q does not say the link went silent", s.LastError)
			}
			t.Logf("MQTT %s: half-open link declared down after %.2fs (keepalive %s)", proto, took.Seconds(), bc.Keepalive)
			p.Restore()
			publishN(t, dev, 4, 1000, 2000)
			ta.wait(t, 30*time.Second)
		})
	}
}

// TestFailoverBadPassword: the first upstream refuses the bridge's
// password, the second accepts: messages flow through the second, the
// state names the refusal, and local clients are served throughout.
func TestFailoverBadPassword(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	if out, err := exec.Command("mosquitto_passwd", "-c", "-b", pw, "bridge", "other-password").CombinedOutput(); err != nil {
		t.Skipf("mosquitto_passwd: %v %s", err, out)
	}
	first := startMosquitto(t, fmt.Sprintf("password_file %s\nallow_anonymous false\n", pw))
	second := startMosquitto(t, "")
	ta := newTally(500)
	sub := client(t, "tcp://"+second.addr, "central-sub", true, ta.handle)
	subscribeAll(t, sub)
	bc := bridgeTo("central", "mqtt://"+first.addr, "mqtt://"+second.addr)
	bc.Username, bc.Password = "bridge", "s3cret"
	reg := prometheus.NewRegistry()
	b := startEdgeReg(t, t.TempDir(), []edge.BridgeConfig{bc}, reg)
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
	publishN(t, dev, 4, 500, 0)
	ta.wait(t, 20*time.Second)
	s := waitStatus(t, b, "central", 5*time.Second, func(s bridge.Status) bool { return s.Forwarded >= 500 })
	for name, want := range map[string]float64{
		"edgemq_bridge_connected": 1, "edgemq_bridge_upstream": 1, "edgemq_bridge_forwarded_messages_total": 500,
		"edgemq_bridge_backlog_seconds": 0,
	} {
		if got := metric(t, reg, name); got != want {
			t.Errorf("%s{bridge=\"central\"} = %v, want %v", name, got, want)
		}
	}
	if !s.Connected || s.Upstream != 1 {
		t.Errorf("bridge connected %v to upstream %d, want the second (1)", s.Connected, s.Upstream)
	}
	// Mosquitto 2.0 answers a 3.1.1 bad password with 5, not authorized.
	if !strings.Contains(s.LastError, "upstream refused the connection: not authorized") && !strings.Contains(s.LastError, "bad user name or password") {
		t.Errorf("last error %q does not name the refusal", s.LastError)
	}
}

// metric returns the value of the central bridge's metric name.
func metric(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "bridge" && l.GetValue() == "central" {
					if c := m.GetCounter(); c != nil {
						return c.GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestTLS: a wrong CA fails with an error that says so; the right CA with a
// client certificate (mutual TLS, which the upstream requires) works.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	other := newCA(t, dir, "other-ca")
	ca.issue(t, dir, "server", "127.0.0.1", false)
	ca.issue(t, dir, "client", "edge-1", true)
	up := startMosquitto(t, fmt.Sprintf("cafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n",
		filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")))

	t.Run("wrong CA", func(t *testing.T) {
		bc := bridgeTo("central", "mqtts://"+up.addr)
		bc.TLS.CAFile = other.path
		bc.TLS.CertFile, bc.TLS.KeyFile = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
		b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
		s := waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.LastError != "" })
		if s.Connected || !strings.Contains(s.LastError, "not signed by a trusted CA (check tls.ca_file)") {
			t.Errorf("bridge state %+v, want a clear CA error", s)
		}
	})
	t.Run("insecure_skip_verify", func(t *testing.T) {
		ta := newTally(50)
		tlsClient(t, up.addr, dir, ta)
		bc := bridgeTo("central", "mqtts://"+up.addr)
		bc.TLS.CAFile = other.path // not the server's CA: the check is skipped
		bc.TLS.InsecureSkipVerify = true
		bc.TLS.CertFile, bc.TLS.KeyFile = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
		b, logBuf := startEdgeLog(t, t.TempDir(), []edge.BridgeConfig{bc}, nil)
		publishN(t, client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil), 2, 50, 0)
		ta.wait(t, 20*time.Second)
		if l := logBuf.String(); !strings.Contains(l, `level=WARN msg="bridge: tls.insecure_skip_verify is set: the upstream's certificate is not checked`) {
			t.Errorf("no loud warning in the log:\n%s", l)
		}
	})
	t.Run("mutual TLS", func(t *testing.T) {
		ta := newTally(200)
		// The test's subscriber needs a certificate too.
		tlsClient(t, up.addr, dir, ta)
		bc := bridgeTo("central", "mqtts://"+up.addr)
		bc.TLS.CAFile = filepath.Join(dir, "ca.pem")
		bc.TLS.CertFile, bc.TLS.KeyFile = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
		b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
		dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
		publishN(t, dev, 2, 200, 0)
		ta.wait(t, 20*time.Second)
	})
}

// ---- certificates ----

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	path string
}

func newCA(t testing.TB, dir, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, path: filepath.Join(dir, name+".pem")}
	writePEM(t, ca.path, "CERTIFICATE", der)
	return ca
}

// issue writes name.pem and name.key: a server certificate for host (an
// IP address or a DNS name), or a client certificate with CN host.
func (ca *testCA) issue(t testing.TB, dir, name, host string, client bool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	switch {
	case client:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case net.ParseIP(host) != nil:
		tmpl.IPAddresses = []net.IP{net.ParseIP(host)}
	default:
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".key"), "EC PRIVATE KEY", kb)
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsClient subscribes to t/# on a TLS upstream with the client
// certificate in dir.
func tlsClient(t testing.TB, addr, dir string, ta *tally) mqtt.Client {
	t.Helper()
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("ca: %v", err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	o := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID("central-sub").SetAutoReconnect(false).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}).SetDefaultPublishHandler(ta.handle)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	subscribeAll(t, c)
	return c
}

// TestWebSocketUpstream: a bridge over ws:// (the broker's WebSocket dialer,
// subprotocol mqtt) to another edgemq's WebSocket listener, both protocols.
func TestWebSocketUpstream(t *testing.T) {
	for _, proto := range []string{"3.1.1", "5"} {
		t.Run(proto, func(t *testing.T) {
			cloudCfg := edgeConfig(t.TempDir(), nil)
			cloudCfg.Listeners = append(cloudCfg.Listeners, edge.ListenerConfig{Name: "ws", Type: "ws", Address: "127.0.0.1:0", Path: "/mqtt"})
			cloud := runEdge(t, cloudCfg, nil)
			ta := newTally(300)
			subscribeAll(t, client(t, "tcp://"+cloud.Addr("tcp").String(), "cloud-sub", true, ta.handle))
			bc := bridgeTo("central", "ws://"+cloud.Addr("ws").String()+"/mqtt")
			bc.Protocol = proto
			gw := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
			publishN(t, client(t, "tcp://"+gw.Addr("tcp").String(), "device", true, nil), 4, 300, 0)
			ta.wait(t, 20*time.Second)
		})
	}
}

// TestRefusedLoginBacksOff: an upstream that refuses the bridge's password
// is tried again with a growing backoff (capped, full jitter), not at the
// pace of backoff_min; local clients are served meanwhile.
func TestRefusedLoginBacksOff(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	if out, err := exec.Command("mosquitto_passwd", "-c", "-b", pw, "bridge", "other-password").CombinedOutput(); err != nil {
		t.Skipf("mosquitto_passwd: %v %s", err, out)
	}
	up := startMosquitto(t, fmt.Sprintf("password_file %s\nallow_anonymous false\n", pw))
	bc := bridgeTo("central", "mqtt://"+up.addr)
	bc.Username, bc.Password = "bridge", "s3cret"
	bc.BackoffMin, bc.BackoffMax = 20*time.Millisecond, 2*time.Second
	b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
	local := client(t, "tcp://"+b.Addr("tcp").String(), "sub", true, nil)
	subscribeAll(t, local)
	const watch = 3 * time.Second
	time.Sleep(watch)
	publishN(t, client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil), 1, 10, 0) // served throughout
	log, err := os.ReadFile(up.logf.Name())
	if err != nil {
		t.Fatal(err)
	}
	attempts := strings.Count(string(log), "New connection from")
	// At backoff_min the bridge would have tried about 150 times; doubling
	// from 20 ms up to 2 s, with each wait drawn below its cap, about 8.
	if attempts < 2 || attempts > 25 {
		t.Errorf("%d connection attempts to a refusing upstream in %s, want a growing backoff (2 to 25)", attempts, watch)
	}
	s := status(t, b, "central")
	if s.Connected || !strings.Contains(s.LastError, "upstream refused the connection") {
		t.Errorf("state %+v, want not connected, the refusal as last error", s)
	}
	t.Logf("%d attempts in %s to an upstream refusing the login", attempts, watch)
}

// TestWSSUpstreamServerName: a bridge over wss:// (WebSocket over TLS) to
// another edgemq whose certificate names only a DNS name: dialled by IP, it
// fails on the name, and with tls.server_name set to that name it works
// (both protocols).
func TestWSSUpstreamServerName(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	ca.issue(t, dir, "cloud", "cloud.example.test", false)
	cloudCfg := edgeConfig(t.TempDir(), nil)
	cloudCfg.Listeners = append(cloudCfg.Listeners, edge.ListenerConfig{Name: "wss", Type: "ws", Address: "127.0.0.1:0", Path: "/mqtt",
		TLS: edge.TLSConfig{CertFile: filepath.Join(dir, "cloud.pem"), KeyFile: filepath.Join(dir, "cloud.key")}})
	cloud := runEdge(t, cloudCfg, nil)
	url := "wss://" + cloud.Addr("wss").String() + "/mqtt"

	t.Run("name mismatch", func(t *testing.T) {
		bc := bridgeTo("central", url)
		bc.TLS.CAFile = ca.path
		gw := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
		s := waitStatus(t, gw, "central", 10*time.Second, func(s bridge.Status) bool { return s.LastError != "" })
		if s.Connected || !strings.Contains(s.LastError, "does not match the host (check the address or tls.server_name)") {
			t.Errorf("bridge state %+v, want a clear name error", s)
		}
	})
	for _, proto := range []string{"3.1.1", "5"} {
		t.Run(proto, func(t *testing.T) {
			ta := newTally(200)
			subscribeAll(t, client(t, "tcp://"+cloud.Addr("tcp").String(), "cloud-sub", true, ta.handle))
			bc := bridgeTo("central", url)
			bc.Protocol = proto
			bc.TLS.CAFile, bc.TLS.ServerName = ca.path, "cloud.example.test"
			gw := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
			publishN(t, client(t, "tcp://"+gw.Addr("tcp").String(), "device", true, nil), 4, 200, 0)
			ta.wait(t, 20*time.Second)
		})
	}
}

// TestFailoverRoundAgain: with every upstream down, the bridge goes round
// the list again (upstream 0 after the last) and connects to the one that
// comes back; when that one is lost, the next takes over.
func TestFailoverRoundAgain(t *testing.T) {
	up := startMosquitto(t, "")
	first, second := newProxy(t, up.addr), newProxy(t, up.addr)
	first.Cut()
	second.Cut()
	bc := bridgeTo("central", proxyURL(first), proxyURL(second))
	b := startEdge(t, t.TempDir(), []edge.BridgeConfig{bc})
	waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.Upstream == 1 && s.LastError != "" })
	first.Restore() // the first again, after the second failed
	waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.Connected && s.Upstream == 0 })
	second.Restore()
	first.Cut()
	waitStatus(t, b, "central", 10*time.Second, func(s bridge.Status) bool { return s.Connected && s.Upstream == 1 })
}
