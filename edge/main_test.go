package edge_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	pahopackets "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/edgemq/edgemq/edge"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testConfig is a broker on 127.0.0.1:0: TCP listener "tcp", WebSocket
// listener "ws", HTTP on port 0, no authentication.
func testConfig(t testing.TB) edge.Config {
	t.Helper()
	cfg := edge.DefaultConfig()
	cfg.Listeners = []edge.ListenerConfig{
		{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0"},
		{Name: "ws", Type: "ws", Address: "127.0.0.1:0", Path: "/mqtt"},
	}
	cfg.HTTP.Address = "127.0.0.1:0"
	cfg.Storage.Dir = t.TempDir()
	cfg.Shutdown.Grace = time.Second
	return cfg
}

type testBroker struct {
	*edge.Broker
	reg *prometheus.Registry
}

// startBroker starts a broker and shuts it down when the test ends.
func startBroker(t testing.TB, cfg edge.Config) *testBroker {
	t.Helper()
	reg := prometheus.NewRegistry()
	b, err := edge.New(cfg, edge.Options{Logger: testLogger(t), Registry: reg})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return &testBroker{Broker: b, reg: reg}
}

// testLogger logs Info and above through t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(&testWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct {
	mu sync.Mutex
	t  testing.TB
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// metric returns the value of a counter or gauge with the given labels
// (name=value pairs), or 0 if it does not exist.
func (tb *testBroker) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	families, err := tb.reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- MQTT 5 client (paho.golang) ----

type v5Client struct {
	*paho.Client
	msgs chan *paho.Publish
	disc chan *paho.Disconnect
	errs chan error
}

type v5Opts struct {
	id         string
	username   string
	password   string
	keepalive  uint16
	persistent bool // CleanStart false, session expiry 300 s
	will       *paho.WillMessage
}

// dialV5 opens the transport to listener "tcp"/"tls" (addr) or "ws"/"wss" (URL).
func dialNet(t testing.TB, network, addr string, tlsConfig *tls.Config) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	switch network {
	case "tcp":
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		return c
	case "tls":
		c, err := (&tls.Dialer{Config: tlsConfig}).DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("dial tls %s: %v", addr, err)
		}
		return c
	case "ws", "wss":
		opts := &websocket.DialOptions{Subprotocols: []string{"mqtt"}}
		if tlsConfig != nil {
			opts.HTTPClient = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig}}
		}
		// Not ctx: cancelling the handshake's context afterwards would close
		// the upgraded connection.
		ws, _, err := websocket.Dial(context.Background(), network+"://"+addr+"/mqtt", opts)
		if err != nil {
			t.Fatalf("dial %s: %v", network, err)
		}
		return websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	}
	t.Fatalf("unknown network %q", network)
	return nil
}

// connectV5 connects a paho.golang client and disconnects it when the test
// ends. It fails the test unless the CONNACK is a success.
func connectV5(t testing.TB, c net.Conn, o v5Opts) (*v5Client, *paho.Connack) {
	t.Helper()
	cl, ack, err := tryConnectV5(t, c, o)
	if err != nil {
		t.Fatalf("connect %s: %v (connack %+v)", o.id, err, ack)
	}
	return cl, ack
}

func tryConnectV5(t testing.TB, c net.Conn, o v5Opts) (*v5Client, *paho.Connack, error) {
	t.Helper()
	vc := &v5Client{
		msgs: make(chan *paho.Publish, 10000),
		disc: make(chan *paho.Disconnect, 1),
		errs: make(chan error, 16),
	}
	vc.Client = paho.NewClient(paho.ClientConfig{
		// paho writes one packet in several Writes, from more than one
		// goroutine: over TLS and WebSocket they must not interleave.
		Conn: pahopackets.NewThreadSafeConn(c),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			vc.msgs <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case vc.disc <- d:
			default:
			}
		},
		OnClientError: func(err error) {
			select {
			case vc.errs <- err:
			default:
			}
		},
		PacketTimeout: 10 * time.Second,
	})
	cp := &paho.Connect{ClientID: o.id, KeepAlive: o.keepalive, CleanStart: !o.persistent, WillMessage: o.will}
	if cp.KeepAlive == 0 {
		cp.KeepAlive = 30
	}
	if o.persistent {
		exp := uint32(300)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
	}
	if o.username != "" {
		cp.Username, cp.UsernameFlag = o.username, true
	}
	if o.password != "" {
		cp.Password, cp.PasswordFlag = []byte(o.password), true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := vc.Connect(ctx, cp)
	if err != nil {
		_ = c.Close()
		return nil, ack, err
	}
	t.Cleanup(func() {
		_ = vc.Disconnect(&paho.Disconnect{ReasonCode: 0})
		<-doneOrTimeout(vc.Done())
	})
	return vc, ack, nil
}

func doneOrTimeout(done <-chan struct{}) <-chan struct{} {
	out := make(chan struct{})
	go func() {
		defer close(out)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}()
	return out
}

func (vc *v5Client) subscribe(t testing.TB, filter string, qos byte) *paho.Suback {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := vc.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil && sa == nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return sa
}

func (vc *v5Client) publish(t testing.TB, topic string, qos byte, retain bool, payload []byte) (*paho.PublishResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return vc.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Retain: retain, Payload: payload})
}

// receive waits for n messages.
func (vc *v5Client) receive(t testing.TB, n int) []*paho.Publish {
	t.Helper()
	var out []*paho.Publish
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case m := <-vc.msgs:
			out = append(out, m)
		case <-timeout:
			t.Fatalf("received %d of %d messages", len(out), n)
		}
	}
	return out
}

// quiet asserts that no message arrives for d.
func (vc *v5Client) quiet(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case m := <-vc.msgs:
		t.Fatalf("unexpected message on %s: %q", m.Topic, m.Payload)
	case <-time.After(d):
	}
}

// ---- raw MQTT over a socket, for bad input and stuck peers ----

type rawClient struct {
	t       testing.TB
	c       net.Conn
	r       *bufio.Reader
	version byte
}

func dialRaw(t testing.TB, addr string, version byte) *rawClient {
	t.Helper()
	c := dialNet(t, "tcp", addr, nil)
	t.Cleanup(func() { _ = c.Close() })
	return &rawClient{t: t, c: c, r: bufio.NewReader(c), version: version}
}

func (rc *rawClient) send(pk packets.Packet) {
	rc.t.Helper()
	if _, err := rc.c.Write(encode(rc.t, rc.version, pk)); err != nil {
		rc.t.Fatalf("write %v: %v", pk.FixedHeader.Type, err)
	}
}

func encode(t testing.TB, version byte, pk packets.Packet) []byte {
	t.Helper()
	b, err := encodePacket(version, pk)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return b
}

// encodePacket encodes pk for a client of the given protocol version.
func encodePacket(version byte, pk packets.Packet) ([]byte, error) {
	pk.ProtocolVersion = version
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		return nil, fmt.Errorf("encode: type %d not supported", pk.FixedHeader.Type)
	}
	return buf.Bytes(), err
}

// read reads one packet within d.
func (rc *rawClient) read(d time.Duration) (packets.Packet, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(d))
	var pk packets.Packet
	b, err := rc.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(rc.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(rc.r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = rc.version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Unsuback:
		err = pk.UnsubackDecode(body)
	case packets.Auth:
		err = pk.AuthDecode(body)
	}
	return pk, err
}

// connect sends CONNECT and returns the CONNACK.
func (rc *rawClient) connect(id string, clean bool, keepalive uint16) packets.Packet {
	rc.t.Helper()
	return rc.connectWith(id, clean, keepalive, nil)
}

// connectWith is connect with a chance to change the CONNECT packet.
func (rc *rawClient) connectWith(id string, clean bool, keepalive uint16, tune func(*packets.Packet)) packets.Packet {
	rc.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}}
	pk.Connect.ProtocolName = []byte("MQTT")
	pk.Connect.ClientIdentifier = id
	pk.Connect.Clean = clean
	pk.Connect.Keepalive = keepalive
	if rc.version == 5 && !clean {
		pk.Properties.SessionExpiryInterval = 300
		pk.Properties.SessionExpiryIntervalFlag = true
	}
	if tune != nil {
		tune(&pk)
	}
	rc.send(pk)
	ack, err := rc.read(5 * time.Second)
	if err != nil || ack.FixedHeader.Type != packets.Connack {
		rc.t.Fatalf("connack: %v (type %d)", err, ack.FixedHeader.Type)
	}
	return ack
}

// subscribe sends SUBSCRIBE for one filter.
func (rc *rawClient) subscribe(id uint16, filter string, qos byte) {
	rc.t.Helper()
	rc.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    id,
		Filters:     packets.Subscriptions{{Filter: filter, Qos: qos}},
	})
}

// closed reports whether the peer closed the connection within d (reading
// and discarding what arrives first).
func (rc *rawClient) closed(d time.Duration) bool {
	deadline := time.Now().Add(d)
	_ = rc.c.SetReadDeadline(deadline)
	_, err := io.Copy(io.Discard, rc.r)
	if err == nil {
		return true // EOF
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true // reset and the like
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }
