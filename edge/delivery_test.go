package edge_test

import (
	"crypto/tls"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/edge"
)

// allTransports is a broker with plain and TLS listeners of both kinds.
func allTransports(t testing.TB) (*testBroker, *testPKI) {
	t.Helper()
	pki := newTestPKI(t)
	cfg := testConfig(t)
	tlsCfg := edge.TLSConfig{CertFile: pki.certFile, KeyFile: pki.keyFile}
	cfg.Listeners = append(cfg.Listeners,
		edge.ListenerConfig{Name: "tls", Type: "tcp", Address: "127.0.0.1:0", TLS: tlsCfg},
		edge.ListenerConfig{Name: "wss", Type: "ws", Address: "127.0.0.1:0", Path: "/mqtt", TLS: tlsCfg},
	)
	return startBroker(t, cfg), pki
}

// msg is a received message, whichever client got it.
type msg struct {
	topic   string
	payload string
	qos     byte
	retain  bool
}

// endpoint is one client's way in: a dial for paho.golang, a URL for
// paho.mqtt.golang.
type endpoint struct {
	network string
	addr    string
	tls     *tls.Config
}

func (e endpoint) v3URL() string {
	switch e.network {
	case "tcp":
		return "tcp://" + e.addr
	case "tls":
		return "ssl://" + e.addr
	default:
		return e.network + "://" + e.addr + "/mqtt"
	}
}

// TestDelivery sends QoS 0, 1 and 2 over every transport with both client
// libraries: each message arrives once, in the order its publisher sent it.
func TestDelivery(t *testing.T) {
	tb, pki := allTransports(t)
	const n = 25
	for _, network := range []string{"tcp", "ws", "tls", "wss"} {
		ep := endpoint{network: network, addr: tb.Addr(network).String()}
		if network == "tls" || network == "wss" {
			ep.tls = pki.clientTLS(false)
		}
		for _, version := range []string{"v5", "v311"} {
			t.Run(network+"/"+version, func(t *testing.T) {
				prefix := "d/" + network + "/" + version
				sub, pub := clientPair(t, ep, version, prefix)
				for qos := byte(0); qos <= 2; qos++ {
					for i := range n {
						pub(fmt.Sprintf("%s/q%d", prefix, qos), qos, false, strconv.Itoa(i))
					}
				}
				got := sub(3 * n)
				seq := map[string]int{}
				for _, m := range got {
					want := seq[m.topic]
					if m.payload != strconv.Itoa(want) {
						t.Fatalf("%s: got %q, want %d (duplicate, loss or reorder)", m.topic, m.payload, want)
					}
					seq[m.topic]++
				}
				for qos := range 3 {
					if c := seq[fmt.Sprintf("%s/q%d", prefix, qos)]; c != n {
						t.Errorf("qos %d: %d messages, want %d", qos, c, n)
					}
				}
			})
		}
	}
	if v := tb.metric(t, "edgemq_mqtt_messages_received_total", "qos", "2"); v < 8*n {
		t.Errorf("messages_received_total{qos=2} = %v, want >= %d", v, 8*n)
	}
	if v := tb.metric(t, "edgemq_mqtt_messages_sent_total", "qos", "1"); v < 8*n {
		t.Errorf("messages_sent_total{qos=1} = %v, want >= %d", v, 8*n)
	}
	if v := tb.metric(t, "edgemq_mqtt_received_bytes_total"); v == 0 {
		t.Error("received_bytes_total = 0")
	}
}

type publishFn func(topic string, qos byte, retain bool, payload string)

// clientPair connects a subscriber on prefix/# (QoS 2) and a publisher.
// The returned sub waits for n messages.
func clientPair(t testing.TB, ep endpoint, version, prefix string) (func(n int) []msg, publishFn) {
	t.Helper()
	id := strings.ReplaceAll(prefix, "/", "-")
	if version == "v5" {
		s, _ := connectV5(t, dialNet(t, ep.network, ep.addr, ep.tls), v5Opts{id: id + "-sub"})
		if sa := s.subscribe(t, prefix+"/#", 2); sa.Reasons[0] != 2 {
			t.Fatalf("suback %v", sa.Reasons)
		}
		p, _ := connectV5(t, dialNet(t, ep.network, ep.addr, ep.tls), v5Opts{id: id + "-pub"})
		return func(n int) []msg {
				var out []msg
				for _, m := range s.receive(t, n) {
					out = append(out, msg{m.Topic, string(m.Payload), m.QoS, m.Retain})
				}
				return out
			}, func(topic string, qos byte, retain bool, pl string) {
				if _, err := p.publish(t, topic, qos, retain, []byte(pl)); err != nil {
					t.Fatalf("publish: %v", err)
				}
			}
	}
	s, ch := connectV3(t, ep, id+"-sub", nil)
	if tok := s.Subscribe(prefix+"/#", 2, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	p, _ := connectV3(t, ep, id+"-pub", nil)
	return func(n int) []msg { return receiveV3(t, ch, n) }, func(topic string, qos byte, retain bool, pl string) {
		if tok := p.Publish(topic, qos, retain, pl); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
}

// connectV3 connects a paho.mqtt.golang client (MQTT 3.1.1) and returns it
// with the channel its messages arrive on.
func connectV3(t testing.TB, ep endpoint, id string, tune func(*pahov3.ClientOptions)) (pahov3.Client, chan msg) {
	t.Helper()
	c, ch, err := tryConnectV3(t, ep, id, tune)
	if err != nil {
		t.Fatalf("connect v3 %s: %v", id, err)
	}
	return c, ch
}

func tryConnectV3(t testing.TB, ep endpoint, id string, tune func(*pahov3.ClientOptions)) (pahov3.Client, chan msg, error) {
	t.Helper()
	ch := make(chan msg, 10000)
	o := pahov3.NewClientOptions().
		AddBroker(ep.v3URL()).
		SetClientID(id).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(30 * time.Second).
		SetConnectTimeout(5 * time.Second).
		SetCleanSession(true).
		SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) {
			ch <- msg{m.Topic(), string(m.Payload()), m.Qos(), m.Retained()}
		})
	if ep.tls != nil {
		o.SetTLSConfig(ep.tls)
	}
	if tune != nil {
		tune(o)
	}
	c := pahov3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, nil, fmt.Errorf("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, ch, nil
}

func receiveV3(t testing.TB, ch chan msg, n int) []msg {
	t.Helper()
	var out []msg
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case m := <-ch:
			out = append(out, m)
		case <-timeout:
			t.Fatalf("received %d of %d messages", len(out), n)
		}
	}
	return out
}

// TestRetained: a retained message reaches later subscribers with the
// retain flag, and an empty retained payload clears it [MQTT-3.3.1-5,-10].
func TestRetained(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	p, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "ret-pub"})
	if _, err := p.publish(t, "r/a", 1, true, []byte("kept")); err != nil {
		t.Fatal(err)
	}
	// The PUBACK says the message is durable; it is retained once the
	// dispatcher read it. A SUBSCRIBE before that gets it live, without
	// the retain flag.
	eventually(t, "the retained message dispatched", func() bool {
		return tb.metric(t, "edgemq_messages_dispatched_total") >= 1
	})

	s, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "ret-sub5"})
	s.subscribe(t, "r/#", 1)
	m := s.receive(t, 1)[0]
	if m.Topic != "r/a" || string(m.Payload) != "kept" || !m.Retain {
		t.Fatalf("retained v5: %s %q retain=%v", m.Topic, m.Payload, m.Retain)
	}

	_, ch := connectV3(t, endpoint{network: "tcp", addr: addr}, "ret-sub3", func(o *pahov3.ClientOptions) {
		o.SetOnConnectHandler(func(c pahov3.Client) { c.Subscribe("r/#", 1, nil) })
	})
	if got := receiveV3(t, ch, 1)[0]; got.payload != "kept" || !got.retain {
		t.Fatalf("retained v3: %+v", got)
	}

	if _, err := p.publish(t, "r/a", 1, true, nil); err != nil {
		t.Fatal(err)
	}
	s.receive(t, 1) // the clearing message itself, live
	s2, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "ret-sub-late"})
	s2.subscribe(t, "r/#", 1)
	s2.quiet(t, 300*time.Millisecond)
}

// TestWill: a client that vanishes without DISCONNECT has its will
// published; one that disconnects cleanly does not [MQTT-3.1.2-8, -10].
func TestWill(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	s, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "will-watch"})
	s.subscribe(t, "will/#", 1)

	c := dialNet(t, "tcp", addr, nil)
	connectV5(t, c, v5Opts{id: "will-dies", will: &paho.WillMessage{Topic: "will/dies", QoS: 1, Payload: []byte("gone")}})
	_ = c.Close() // vanish
	m := s.receive(t, 1)[0]
	if m.Topic != "will/dies" || string(m.Payload) != "gone" {
		t.Fatalf("will: %s %q", m.Topic, m.Payload)
	}

	// A v3 client with a will that disconnects cleanly.
	v3, _ := connectV3(t, endpoint{network: "tcp", addr: addr}, "will-polite", func(o *pahov3.ClientOptions) {
		o.SetWill("will/polite", "should not appear", 1, false)
	})
	v3.Disconnect(100)
	s.quiet(t, 300*time.Millisecond)
}

// TestSessionTakeover: a second connection with the same client id takes
// the session over: the first gets DISCONNECT 0x8E, the second finds the
// session present with its subscription, and messages queued while no one
// was connected arrive.
func TestSessionTakeover(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	first, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "same", persistent: true})
	first.subscribe(t, "take/#", 1)

	second, ack := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "same", persistent: true})
	if !ack.SessionPresent {
		t.Fatal("session not present after takeover")
	}
	select {
	case d := <-first.disc:
		if d.ReasonCode != 0x8E {
			t.Fatalf("first client: DISCONNECT reason %#x, want 0x8E", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first client got no DISCONNECT")
	}
	p, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "take-pub"})
	if _, err := p.publish(t, "take/x", 1, false, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if m := second.receive(t, 1)[0]; string(m.Payload) != "after" {
		t.Fatalf("got %q", m.Payload)
	}

	// Offline queue: the session's client goes away, a message is published,
	// the client returns and gets it.
	if err := second.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	<-doneOrTimeout(second.Done())
	if _, err := p.publish(t, "take/y", 1, false, []byte("queued")); err != nil {
		t.Fatal(err)
	}
	third, ack := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "same", persistent: true})
	if !ack.SessionPresent {
		t.Fatal("session not present on return")
	}
	// The PUBACK for "after" may not have left before the disconnect (paho
	// acknowledges after its handler): then "after" comes again, with DUP
	// set, before what was queued [MQTT-4.4.0-1].
	m := third.receive(t, 1)[0]
	if string(m.Payload) == "after" && m.Duplicate() {
		m = third.receive(t, 1)[0]
	}
	if string(m.Payload) != "queued" {
		t.Fatalf("got %q", m.Payload)
	}
}

// TestSharedSubscription: each message on a $share group goes to exactly one
// member.
func TestSharedSubscription(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	a, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "share-a"})
	b, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "share-b"})
	a.subscribe(t, "$share/g/jobs/#", 1)
	b.subscribe(t, "$share/g/jobs/#", 1)
	_, ch := connectV3(t, endpoint{network: "tcp", addr: addr}, "share-v3", func(o *pahov3.ClientOptions) {
		o.SetOnConnectHandler(func(c pahov3.Client) { c.Subscribe("$share/g/jobs/#", 1, nil) })
	})
	time.Sleep(100 * time.Millisecond) // the v3 subscription is asynchronous
	p, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "share-pub"})
	const n = 30
	for i := range n {
		if _, err := p.publish(t, "jobs/1", 1, false, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]int{}
	deadline := time.After(10 * time.Second)
	for len(seen) < n {
		select {
		case m := <-a.msgs:
			seen[string(m.Payload)]++
		case m := <-b.msgs:
			seen[string(m.Payload)]++
		case m := <-ch:
			seen[m.payload]++
		case <-deadline:
			t.Fatalf("got %d distinct of %d", len(seen), n)
		}
	}
	time.Sleep(200 * time.Millisecond)
	for len(a.msgs)+len(b.msgs)+len(ch) > 0 {
		select {
		case m := <-a.msgs:
			seen[string(m.Payload)]++
		case m := <-b.msgs:
			seen[string(m.Payload)]++
		case m := <-ch:
			seen[m.payload]++
		}
	}
	for k, c := range seen {
		if c != 1 {
			t.Errorf("message %s delivered %d times", k, c)
		}
	}
}

// TestMQTT31: an MQTT 3.1 client (protocol name MQIsdp, level 3) connects,
// subscribes and receives.
func TestMQTT31(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	rc := dialRaw(t, addr, 3)
	if ack := rc.connectWith("old-client", true, 30, func(pk *packets.Packet) {
		pk.Connect.ProtocolName = []byte("MQIsdp")
	}); ack.ReasonCode != 0 {
		t.Fatalf("connack %#x", ack.ReasonCode)
	}
	rc.subscribe(1, "old/#", 1)
	if ack, err := rc.read(5 * time.Second); err != nil || ack.FixedHeader.Type != packets.Suback || ack.ReasonCodes[0] != 1 {
		t.Fatalf("suback %v %v", err, ack.ReasonCodes)
	}
	p, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "new-pub"})
	if _, err := p.publish(t, "old/x", 1, false, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	m, err := rc.read(5 * time.Second)
	if err != nil || m.FixedHeader.Type != packets.Publish || string(m.Payload) != "hi" {
		t.Fatalf("publish: %v %+v", err, m)
	}
}

// TestEmptyWillPayload: a will with an empty payload is accepted and
// published empty.
func TestEmptyWillPayload(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	s, _ := connectV5(t, dialNet(t, "tcp", addr, nil), v5Opts{id: "ew-watch"})
	s.subscribe(t, "ew/#", 1)
	rc := dialRaw(t, addr, 4)
	if ack := rc.connectWith("ew", true, 30, func(pk *packets.Packet) {
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillQos = true, "ew/gone", 1
	}); ack.ReasonCode != 0 {
		t.Fatalf("connack %#x", ack.ReasonCode)
	}
	_ = rc.c.Close()
	if m := s.receive(t, 1)[0]; m.Topic != "ew/gone" || len(m.Payload) != 0 {
		t.Fatalf("will %s %q, want ew/gone with an empty payload", m.Topic, m.Payload)
	}
}

// TestMessageExpiryOverSockets: a message whose Message Expiry Interval
// passes while its subscriber is offline is not delivered [MQTT-3.3.2-5];
// one without an interval is.
func TestMessageExpiryOverSockets(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	persistent := func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
	}
	sub := dialRaw(t, addr, 5)
	sub.connectWith("exp-sub", true, 30, persistent)
	sub.subscribe(1, "exp/#", 1)
	if pk, err := sub.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("SUBACK: %v type %d", err, pk.FixedHeader.Type)
	}
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	if !sub.closed(5 * time.Second) {
		t.Fatal("subscriber still connected")
	}
	pub := dialRaw(t, addr, 5)
	pub.connect("exp-pub", true, 30)
	short := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "exp/short", PacketID: 1, Payload: []byte("short")}
	short.Properties.MessageExpiryInterval = 1
	pub.send(short)
	pub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "exp/long", PacketID: 2, Payload: []byte("long")})
	for range 2 {
		if pk, err := pub.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Puback {
			t.Fatalf("PUBACK: %v type %d", err, pk.FixedHeader.Type)
		}
	}
	time.Sleep(2100 * time.Millisecond)
	sub = dialRaw(t, addr, 5)
	sub.connectWith("exp-sub", false, 30, persistent)
	got := sub.readPublishes(1, 5*time.Second)
	if string(got[0].Payload) != "long" {
		t.Fatalf("got %s %q, want only exp/long", got[0].TopicName, got[0].Payload)
	}
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: got[0].PacketID})
	if pk, err := sub.read(300 * time.Millisecond); err == nil {
		t.Fatalf("then %s %q, want nothing", pk.TopicName, pk.Payload)
	}
}
