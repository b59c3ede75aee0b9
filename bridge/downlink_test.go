package bridge_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgemq/edgemq/internal/daemontest"
)

// TestDownlinkAcrossRestart: commands published on Mosquitto come down an
// MQTT 5 bridge into the built edgemq, which is killed with SIGKILL in the
// middle of them and restarted. A local persistent session gets every QoS 2
// command exactly once (a copy with DUP set is the local leg's resend after
// the crash, which the client must drop [MQTT-4.3.3]; a copy without DUP
// would be the bridge appending a command twice) and every QoS 1 command at
// least once.
func TestDownlinkAcrossRestart(t *testing.T) {
	up := startMosquitto(t, "")
	d := daemontest.New(t, t.TempDir(), "info", `bridges:
  - name: central
    upstreams: ["mqtt://`+up.addr+`"]
    protocol: "5"
    client_id: edge-1
    keepalive: 2s
    backoff_min: 20ms
    backoff_max: 200ms
    downlink:
      - {filter: "cmd/q2/#", qos: 2}
      - {filter: "cmd/q1/#", qos: 1}
`)
	d.Start()
	const n = 1500
	c := newCounter()
	local := client(t, "tcp://"+d.Addr(), "actuator", false, c.handle)
	if tok := local.SubscribeMultiple(map[string]byte{"cmd/#": 2}, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	cloud := client(t, "tcp://"+up.addr, "cloud", true, nil)
	c.waitProbe(t, cloud)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the cloud keeps sending while edgemq crashes
		defer wg.Done()
		for i := 0; i < n; i++ {
			cloud.Publish("cmd/q2/"+strconv.Itoa(i%4), 2, false, fmt.Sprintf("q2 %d", i))
			tok := cloud.Publish("cmd/q1/"+strconv.Itoa(i%4), 1, false, fmt.Sprintf("q1 %d", i))
			if i%100 == 99 {
				tok.WaitTimeout(10 * time.Second)
			}
		}
	}()
	c.waitAtLeast(t, "q2", n/3, 30*time.Second)
	local.Disconnect(0)
	d.Kill()
	d.Start()
	wg.Wait()
	local = client(t, "tcp://"+d.Addr(), "actuator", false, c.handle)
	c.waitAll(t, n, 60*time.Second)
	q2Dup, q2Again, q1Again := c.report()
	if q2Again > 0 {
		t.Errorf("%d QoS 2 commands delivered twice without DUP: the bridge appended them twice", q2Again)
	}
	t.Logf("%d QoS 2 and %d QoS 1 commands across a SIGKILL: QoS 2 once each (%d resends with DUP on the local leg), QoS 1 %d duplicates",
		n, n, q2Dup, q1Again)
}

// counter counts commands by kind ("q1"/"q2") and sequence number.
type counter struct {
	mu    sync.Mutex
	seen  map[string]map[int]int
	dups  map[string]int // copies with DUP set
	again map[string]int // copies without DUP
	probe bool
}

// waitProbe publishes probes upstream until one comes down: the bridge's
// subscription is in place.
func (c *counter) waitProbe(t testing.TB, cloud mqtt.Client) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		cloud.Publish("cmd/q1/probe", 0, false, "probe 0").WaitTimeout(time.Second)
		time.Sleep(20 * time.Millisecond)
		c.mu.Lock()
		ok := c.probe
		c.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the bridge's downlink subscription never delivered")
		}
	}
}

func newCounter() *counter {
	return &counter{seen: map[string]map[int]int{"q1": {}, "q2": {}}, dups: map[string]int{}, again: map[string]int{}}
}

func (c *counter) handle(_ mqtt.Client, m mqtt.Message) {
	kind, seqs, _ := strings.Cut(string(m.Payload()), " ")
	seq, _ := strconv.Atoi(seqs)
	c.mu.Lock()
	defer c.mu.Unlock()
	if kind == "probe" {
		c.probe = true
	}
	if c.seen[kind] == nil {
		return
	}
	if c.seen[kind][seq] > 0 {
		if m.Duplicate() {
			c.dups[kind]++
		} else {
			c.again[kind]++
		}
	}
	c.seen[kind][seq]++
}

func (c *counter) waitAtLeast(t testing.TB, kind string, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		c.mu.Lock()
		got := len(c.seen[kind])
		c.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d commands arrived", kind, got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *counter) waitAll(t testing.TB, n int, d time.Duration) {
	t.Helper()
	c.waitAtLeast(t, "q2", n, d)
	c.waitAtLeast(t, "q1", n, d)
}

func (c *counter) report() (q2Dup, q2Again, q1Again int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dups["q2"], c.again["q2"], c.dups["q1"] + c.again["q1"]
}
