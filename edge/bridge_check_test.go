package edge_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgemq/edgemq/edge"
	"github.com/edgemq/edgemq/wal"
)

// CheckBridges says which downlink filters a bridge recorded as subscribed
// upstream, and which no rule has any more; a forward rule that never ran
// has no cursor yet.
func TestCheckBridgesSubscriptions(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	l, err := wal.Open(filepath.Join(data, "log"), wal.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(data, "bridges"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "bridges", "central.subscriptions"), []byte(`["cmd/a/#","cmd/b/#"]`), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "edgemq.yaml")
	if err := os.WriteFile(path, []byte("storage: {dir: "+data+"}\nbridges:\n  - name: central\n    upstreams: [\"mqtt://127.0.0.1:1883\"]\n    forward: [{filter: \"t/#\"}]\n    downlink: [{filter: \"cmd/a/#\"}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := edge.CheckConfig(path)
	if len(c.Problems) > 0 {
		t.Fatal(c.Problems)
	}
	lines, warnings, err := edge.CheckBridges(c, time.Now())
	if err != nil || len(warnings) > 0 {
		t.Fatalf("check: %v, warnings %v", err, warnings)
	}
	got := strings.Join(lines, "\n")
	for _, want := range []string{
		`bridge central downlink: subscribed upstream ["cmd/a/#" "cmd/b/#"]; no rule any more for ["cmd/b/#"]: unsubscribed at the next connection to a resumed session`,
		`bridge central forward[0] "t/#": no cursor yet (it starts at the end of the log)`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("check says:\n%s\nwant a line %s", got, want)
		}
	}
}
