package bridge_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/edgemq/edgemq/edge"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// nats-server and paho.mqtt.golang leave timers that end on their own.
		goleak.IgnoreTopFunction("time.Sleep"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
	)
}

// logger is quiet unless BRIDGE_TEST_LOG is set.
func logger() *slog.Logger {
	if os.Getenv("BRIDGE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// natsNode is an embedded nats-server with MQTT (which needs JetStream and a
// server name) on a loopback port.
type natsNode struct {
	srv      *server.Server
	opts     *server.Options
	mqttPort int
}

func (n *natsNode) addr() string { return fmt.Sprintf("mqtt://127.0.0.1:%d", n.mqttPort) }

// startNATS starts one node, or with routes a node of a cluster.
func startNATS(t testing.TB, name string, clusterPort int, routes []int) *natsNode {
	t.Helper()
	o := &server.Options{
		ServerName: name,
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoLog:      true,
		NoSigs:     true,
	}
	o.MQTT.Host, o.MQTT.Port = "127.0.0.1", freePort(t)
	if clusterPort != 0 {
		o.Cluster.Name, o.Cluster.Host, o.Cluster.Port = "central", "127.0.0.1", clusterPort
		var rs []string
		for _, p := range routes {
			rs = append(rs, fmt.Sprintf("nats://127.0.0.1:%d", p))
		}
		o.Routes = server.RoutesFromStr(strings.Join(rs, ","))
	}
	return runNATS(t, o)
}

func runNATS(t testing.TB, o *server.Options) *natsNode {
	t.Helper()
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	n := &natsNode{srv: s, opts: o, mqttPort: o.MQTT.Port}
	t.Cleanup(func() { n.stop() })
	return n
}

func (n *natsNode) stop() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// startEdge runs an in-process edgemq with the given bridges.
func startEdge(t testing.TB, dir string, bridges []edge.BridgeConfig) *edge.Broker {
	t.Helper()
	return startEdgeReg(t, dir, bridges, nil)
}

// startEdgeReg is startEdge with the metrics on reg.
func startEdgeReg(t testing.TB, dir string, bridges []edge.BridgeConfig, reg *prometheus.Registry) *edge.Broker {
	t.Helper()
	return runEdge(t, edgeConfig(dir, bridges), reg)
}

// runEdge runs an in-process edgemq on cfg until the test ends.
func runEdge(t testing.TB, cfg edge.Config, reg *prometheus.Registry) *edge.Broker {
	t.Helper()
	b, err := edge.New(cfg, edge.Options{Logger: logger(), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopEdge(t, b) })
	return b
}

// edgeConfig is the config of startEdge.
func edgeConfig(dir string, bridges []edge.BridgeConfig) edge.Config {
	cfg := edge.DefaultConfig()
	cfg.Listeners = []edge.ListenerConfig{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0"}}
	cfg.HTTP.Address = ""
	cfg.Storage.Dir = dir
	cfg.Bridges = bridges
	return cfg
}

func stopEdge(t testing.TB, b *edge.Broker) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Error(err)
	}
}

// bridgeTo is a 3.1.1 bridge forwarding t/# to the upstreams at QoS 1.
func bridgeTo(name string, upstreams ...string) edge.BridgeConfig {
	var c edge.BridgeConfig
	if err := yamlDefaults(&c); err != nil {
		panic(err)
	}
	c.Name, c.Upstreams, c.ClientID = name, upstreams, "edge-"+name
	c.Keepalive = 2 * time.Second
	c.BackoffMin, c.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	c.Forward = []edge.ForwardRule{{Filter: "t/#", Remote: "{topic}", QoS: 1, Retain: "keep"}}
	return c
}

// yamlDefaults fills c with the defaults a file would get.
func yamlDefaults(c *edge.BridgeConfig) error {
	cfg, err := edge.ParseConfig([]byte("bridges:\n  - name: x\n    upstreams: [\"mqtt://127.0.0.1:1\"]\n    forward: [{filter: \"#\"}]\n"))
	if err != nil {
		return err
	}
	*c = cfg.Bridges[0]
	return nil
}

// client connects a paho 3.1.1 client.
func client(t testing.TB, addr, id string, clean bool, onMsg mqtt.MessageHandler) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(addr).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(true).SetMaxResumePubInFlight(1000)
	if onMsg != nil {
		o.SetDefaultPublishHandler(onMsg)
	}
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", addr, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

// subscribeAll subscribes c to t/# at QoS 1.
func subscribeAll(t testing.TB, c mqtt.Client) {
	t.Helper()
	if tok := c.Subscribe("t/#", 1, nil); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
}

// publishN publishes n QoS 1 messages on topics t/0..t/(topics-1), payload
// "<topic> <seq>", from one client, waiting for every PUBACK.
func publishN(t testing.TB, c mqtt.Client, topics, n, from int) {
	t.Helper()
	toks := make([]mqtt.Token, 0, 512)
	for i := from; i < from+n; i++ {
		topic := "t/" + strconv.Itoa(i%topics)
		toks = append(toks, c.Publish(topic, 1, false, topic+" "+strconv.Itoa(i)))
		if len(toks) == cap(toks) {
			waitAll(t, toks)
			toks = toks[:0]
		}
	}
	waitAll(t, toks)
}

func waitAll(t testing.TB, toks []mqtt.Token) {
	t.Helper()
	for _, tok := range toks {
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
}

// tally counts what arrives upstream: every sequence number once, first
// arrivals in order per topic, duplicates counted.
type tally struct {
	mu      sync.Mutex
	seen    map[int]bool
	last    map[string]int
	dups    int
	unorder int
	got     chan struct{}
	want    int
}

func newTally(want int) *tally {
	return &tally{seen: map[int]bool{}, last: map[string]int{}, got: make(chan struct{}), want: want}
}

func (ta *tally) handle(_ mqtt.Client, m mqtt.Message) {
	topic, seqs, _ := strings.Cut(string(m.Payload()), " ")
	seq, _ := strconv.Atoi(seqs)
	ta.mu.Lock()
	defer ta.mu.Unlock()
	if ta.seen[seq] {
		ta.dups++
		return
	}
	if l, ok := ta.last[topic]; ok && seq < l {
		ta.unorder++
	}
	ta.last[topic] = seq
	ta.seen[seq] = true
	if len(ta.seen) == ta.want {
		close(ta.got)
	}
}

func (ta *tally) wait(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case <-ta.got:
	case <-time.After(d):
		ta.mu.Lock()
		defer ta.mu.Unlock()
		t.Fatalf("upstream got %d of %d messages (%d duplicates); missing %s", len(ta.seen), ta.want, ta.dups, ta.missingLocked(ta.want))
	}
	ta.mu.Lock()
	defer ta.mu.Unlock()
	if ta.unorder > 0 {
		t.Errorf("%d messages arrived before an older one of their topic", ta.unorder)
	}
}

// missingLocked says how many of the sequence numbers 0..to-1 have not
// arrived, and the first 20 of them.
func (ta *tally) missingLocked(to int) string {
	var miss []string
	n := 0
	for seq := 0; seq < to; seq++ {
		if !ta.seen[seq] {
			if n < 20 {
				miss = append(miss, strconv.Itoa(seq))
			}
			n++
		}
	}
	if n > len(miss) {
		miss = append(miss, "...")
	}
	return fmt.Sprintf("%d: [%s]", n, strings.Join(miss, " "))
}

func (ta *tally) counts() (unique, dups int) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	return len(ta.seen), ta.dups
}
