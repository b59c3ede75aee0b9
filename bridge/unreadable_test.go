package bridge_test

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
	"github.com/edgemq/edgemq/qos"
	"github.com/edgemq/edgemq/wal"
)

// lockedBuffer is a log destination for several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestUndecodableRecordSkipped puts message records that do not decode in
// the log between two good messages: the bridge skips them, counts each
// (unreadable), logs them once (rate-limited, with the count), and forwards
// the messages on both sides.
func TestUndecodableRecordSkipped(t *testing.T) {
	up := startMosquitto(t, "")
	ta := newTally(2)
	sub := client(t, "tcp://"+up.addr, "central-sub", true, ta.handle)
	subscribeAll(t, sub)
	p := newProxy(t, up.addr)
	p.Cut()
	dir := t.TempDir()
	cfg := edgeConfig(dir, []edge.BridgeConfig{bridgeTo("central", proxyURL(p))})

	b, err := edge.New(cfg, edge.Options{Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	dev := client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
	publishN(t, dev, 1, 1, 0)
	dev.Disconnect(0)
	stopEdge(t, b)

	const bad = 3
	l, err := wal.Open(filepath.Join(dir, "log"), wal.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for range bad {
		if _, err := l.Append(context.Background(), []byte{byte(qos.KindMessage), 0xee, 0xee, 0xee}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	var logs lockedBuffer
	b = runEdge2(t, cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	dev = client(t, "tcp://"+b.Addr("tcp").String(), "device", true, nil)
	publishN(t, dev, 1, 1, 1)
	p.Restore()
	ta.wait(t, 20*time.Second)
	s := status(t, b, "central")
	if got := s.Dropped[bridge.DropBad]; got != bad {
		t.Errorf("dropped unreadable = %d, want %d", got, bad)
	}
	if n := strings.Count(logs.String(), "undecodable record skipped"); n != 1 {
		t.Errorf("%d log lines about the undecodable records, want 1 (rate-limited):\n%s", n, logs.String())
	}
}

// runEdge2 is runEdge with a logger of the test's.
func runEdge2(t testing.TB, cfg edge.Config, lg *slog.Logger) *edge.Broker {
	t.Helper()
	b, err := edge.New(cfg, edge.Options{Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopEdge(t, b) })
	return b
}
