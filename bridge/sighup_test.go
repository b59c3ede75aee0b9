package bridge_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/internal/daemontest"
	"github.com/edgemq/edgemq/wal"
)

// TestSIGHUPReloadsBridges: the built edgemq, started without bridges,
// gets one on SIGHUP (its new rule starts at the end of the log), keeps it
// through a SIGHUP with a broken file, and forwards throughout.
func TestSIGHUPReloadsBridges(t *testing.T) {
	up := startMosquitto(t, "")
	ta := newTally(300)
	subscribeAll(t, client(t, "tcp://"+up.addr, "central-sub", true, ta.handle))
	d := daemontest.New(t, t.TempDir(), "info", "")
	d.Start()
	dev := client(t, "tcp://"+d.Addr(), "device", true, nil)
	publishN(t, dev, 4, 100, 0) // no bridge yet: stays local

	bridges := `bridges:
  - name: central
    upstreams: ["mqtt://` + up.addr + `"]
    client_id: edge-1
    backoff_min: 20ms
    backoff_max: 200ms
    forward: [{filter: "t/#", qos: 1}]
`
	d.Write(bridges)
	d.Signal(syscall.SIGHUP)
	// The reload is asynchronous: publish until a message arrives.
	deadline := time.Now().Add(20 * time.Second)
	first := 100
	for ; ; first++ {
		publishN(t, dev, 4, 1, first)
		if u, _ := ta.counts(); u > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no message forwarded after SIGHUP added a bridge")
		}
		time.Sleep(50 * time.Millisecond)
	}
	before, _ := ta.counts()
	publishN(t, dev, 4, 100, first+1)
	waitForwarded(t, ta, before+100, 20*time.Second)

	d.Write(bridges + "    bogus: 1\n")
	d.Signal(syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	before, _ = ta.counts()
	publishN(t, dev, 4, 50, 10_000)
	waitForwarded(t, ta, before+50, 20*time.Second)
	ta.mu.Lock()
	for seq := 0; seq < 100; seq++ {
		if ta.seen[seq] {
			t.Errorf("message %d, published before the bridge existed, was forwarded", seq)
			break
		}
	}
	ta.mu.Unlock()
	if log, _ := os.ReadFile(d.LogPath()); !strings.Contains(string(log), "bogus") {
		t.Errorf("the broken file's problem is not in the log:\n%s", log)
	}
}

// TestSIGHUPChangesAndRemovesBridge: the built edgemq on SIGHUP changes a
// bridge (a rule added, the other unchanged) during an outage: the
// unchanged rule keeps its cursor, so its backlog arrives when the link
// returns, and the new rule forwards from then on; then a SIGHUP without
// the bridge removes it and its cursors.
func TestSIGHUPChangesAndRemovesBridge(t *testing.T) {
	up := startMosquitto(t, "")
	ta := newTally(250)
	subscribeAll(t, client(t, "tcp://"+up.addr, "central-sub", true, ta.handle))
	uta := newTally(10)
	usub := client(t, "tcp://"+up.addr, "central-u-sub", true, uta.handle)
	if tok := usub.Subscribe("u/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	p := newProxy(t, up.addr)
	dir := t.TempDir()
	bridges := `bridges:
  - name: central
    upstreams: ["` + proxyURL(p) + `"]
    client_id: edge-1
    keepalive: 2s
    backoff_min: 20ms
    backoff_max: 200ms
    forward:
      - {filter: "t/#", qos: 1}
`
	d := daemontest.New(t, dir, "info", bridges)
	d.Start()
	dev := client(t, "tcp://"+d.Addr(), "device", true, nil)
	publishN(t, dev, 4, 50, 0)
	waitForwarded(t, ta, 50, 20*time.Second)

	p.Cut()
	publishN(t, dev, 4, 200, 50) // the unchanged rule's backlog
	d.Write(bridges + `      - {filter: "u/#", qos: 1}
`)
	d.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(20 * time.Second)
	for {
		cursors, err := wal.Cursors(filepath.Join(dir, "data", "log"))
		if err != nil {
			t.Fatal(err)
		}
		if n := bridgeCursors(cursors); n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cursors after the SIGHUP that added a rule: %v, want two of bridge central", cursors)
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.Restore()
	ta.wait(t, 30*time.Second) // the 200 of the outage: t/#'s cursor survived the change
	uDev := client(t, "tcp://"+d.Addr(), "device-u2", true, nil)
	for i := range 10 {
		if tok := uDev.Publish("u/"+strconv.Itoa(i), 1, false, "u/x "+strconv.Itoa(i)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	uta.wait(t, 20*time.Second)

	d.Write("")
	d.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(20 * time.Second)
	for {
		cursors, err := wal.Cursors(filepath.Join(dir, "data", "log"))
		if err != nil {
			t.Fatal(err)
		}
		if bridgeCursors(cursors) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cursors after the SIGHUP that removed the bridge: %v, want none of it", cursors)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bridgeCursors counts the cursors of bridges.
func bridgeCursors(cursors map[string]uint64) int {
	n := 0
	for name := range cursors {
		if strings.HasPrefix(name, bridge.CursorPrefix) {
			n++
		}
	}
	return n
}
