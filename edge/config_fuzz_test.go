package edge_test

import (
	"errors"
	"os"
	"reflect"
	"testing"

	"github.com/edgemq/edgemq/edge"
)

// FuzzParseConfig feeds the loader arbitrary documents, whole and cut in two.
// It must never panic; what it accepts must validate and parse the same way
// again; what it rejects must be a ConfigError. Seeds: testdata/fuzz/FuzzParseConfig
// and the example config. Run: go test -run='^$' -fuzz=FuzzParseConfig ./edge
func FuzzParseConfig(f *testing.F) {
	if data, err := os.ReadFile(exampleConfig); err == nil {
		f.Add(data)
	}
	f.Add([]byte("listeners:\n  - type: ws\n    address: 127.0.0.1:0\n    allowed_origins: ['*.example.com']\n"))
	f.Add([]byte("storage: {sync: interval, sync_interval: 20ms, segment_size: 1MiB}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		check(t, data)
		check(t, data[:len(data)/2])
	})
}

func check(t *testing.T, data []byte) {
	cfg, err := edge.ParseConfig(data)
	if err != nil {
		if !errors.Is(err, edge.ErrConfig) {
			t.Fatalf("ParseConfig(%q): error is not a ConfigError: %v", data, err)
		}
		return
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("ParseConfig(%q) accepted a config that does not validate: %v", data, err)
	}
	again, err := edge.ParseConfig(data)
	if err != nil || !reflect.DeepEqual(cfg, again) {
		t.Fatalf("ParseConfig(%q) is not deterministic: %+v, then %+v, %v", data, cfg, again, err)
	}
}
