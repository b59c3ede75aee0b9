//go:build pprof

package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof/ on http.DefaultServeMux
	"os"
)

// A build with -tags pprof serves net/http/pprof on EDGEMQ_PPROF (host:port,
// loopback only by intent) for profiling a soak or a crash loop; a normal
// build has none of it.
func init() {
	addr := os.Getenv("EDGEMQ_PPROF")
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "edgemq: EDGEMQ_PPROF: %v (no pprof)\n", err)
		return
	}
	go func() { _ = http.Serve(ln, nil) }()
}
