package bridge_test

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgemq/edgemq/internal/daemontest"
)

// TestCheckReportsBacklog: `edgemq check` reads each bridge's place in the
// log from disk, with the broker running and after it was killed: the
// cursor's offset, the messages behind it (exactly those the rule sends),
// their bytes, the log held back and the oldest's age, and a warning when
// the backlog nears max_backlog_bytes.
func TestCheckReportsBacklog(t *testing.T) {
	up := startMosquitto(t, "")
	ta := newTally(100)
	subscribeAll(t, client(t, "tcp://"+up.addr, "central-sub", true, ta.handle))
	p := newProxy(t, up.addr)
	d := daemontest.New(t, t.TempDir(), "info", fmt.Sprintf(`bridges:
  - name: central
    upstreams: [%q]
    client_id: edge-1
    keepalive: 2s
    backoff_min: 20ms
    backoff_max: 200ms
    forward: [{filter: "t/#", qos: 1}]
  - name: bounded
    upstreams: [%q]
    client_id: edge-2
    max_backlog_bytes: 18000 # 400 records of 40 bytes: 89%%
    forward: [{filter: "t/1", qos: 1}]
`, proxyURL(p), proxyURL(p)))
	d.Start()
	dev := client(t, "tcp://"+d.Addr(), "device", true, nil)
	publishN(t, dev, 2, 100, 0)
	waitForwarded(t, ta, 100, 20*time.Second)
	time.Sleep(200 * time.Millisecond) // the cursors' commits, every 20 ms

	p.Cut()
	const n = 400 // 200 on t/0, 200 on t/1
	publishN(t, dev, 2, n, 100)
	time.Sleep(1100 * time.Millisecond) // an age of at least a second

	check := func(when string) {
		t.Helper()
		cmd := exec.Command(daemontest.Binary(t), "check", "-c", d.ConfigPath())
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: edgemq check: %v\n%s%s", when, err, stdout.String(), stderr.String())
		}
		out := stdout.String()
		re := regexp.MustCompile(`bridge central forward\[0\] "t/#": cursor at offset (\d+); (\d+) messages \((\d+) bytes\) to forward, (\d+) bytes of log held back, the oldest (\d+)s old`)
		m := re.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("%s: edgemq check does not report bridge central's backlog:\n%s", when, out)
		}
		msgs, _ := strconv.Atoi(m[2])
		msgBytes, _ := strconv.Atoi(m[3])
		logBytes, _ := strconv.Atoi(m[4])
		age, _ := strconv.Atoi(m[5])
		if msgs != n || msgBytes < n*10 || logBytes < msgBytes || age < 1 || age > 60 {
			t.Errorf("%s: central: %d messages of %d bytes, %d bytes of log, %ds old; want %d messages, at least %d bytes, the log at least as much, 1-60s",
				when, msgs, msgBytes, logBytes, age, n, n*10)
		}
		if !strings.Contains(out, `bridge bounded forward[0] "t/1": cursor at offset `) {
			t.Errorf("%s: no line for bridge bounded:\n%s", when, out)
		}
		if !strings.Contains(stderr.String(), "bridges[1].max_backlog_bytes: warning: forward[0] holds back") {
			t.Errorf("%s: no warning for bridge bounded near its max_backlog_bytes:\n%s", when, stderr.String())
		}
		t.Logf("%s:\n%s%s", when, out, stderr.String())
	}
	check("broker running")
	d.Kill()
	check("broker killed")
}
