package bridge_test

import (
	"strings"
	"testing"

	"github.com/edgemq/edgemq/internal/linkproxy"
)

// newProxy puts a linkproxy between a bridge and target ("mqtt://host:port"
// or "host:port"), closed when the test ends.
func newProxy(t testing.TB, target string) *linkproxy.Proxy {
	t.Helper()
	p, err := linkproxy.New(target[strings.LastIndex(target, "/")+1:])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// proxyURL is the address a bridge is given for p.
func proxyURL(p *linkproxy.Proxy) string { return "mqtt://" + p.Addr() }
