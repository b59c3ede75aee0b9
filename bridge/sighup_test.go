package bridge_test

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgemq/edgemq/internal/daemontest"
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
