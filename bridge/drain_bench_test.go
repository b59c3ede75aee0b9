package bridge_test

import (
	"flag"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
	"github.com/edgemq/edgemq/internal/cputime"
)

// BenchmarkDrain: b.N QoS 1 messages wait in an in-process edgemq's log
// while the link to a Mosquitto upstream (MQTT 3.1.1, window 256) is cut;
// timed is the drain once the link returns, until the bridge counts every
// one acknowledged. Both links: 3.1.1 (paho.mqtt.golang) and 5 (paho.golang). It reports the process's CPU time per message (the
// bridge, the log reader, paho and the in-process proxy: the edge broker's
// side of a drain, without the upstream), the read and write system calls
// per message (what batching saves) and the allocations per message, all
// steadier than the wall time on a shared machine:
//
//	go test ./bridge -run '^$' -bench Drain -benchtime 50000x -count 5
//
// -drainprofile FILE writes a CPU profile of the timed drain alone (the
// test binary's -cpuprofile would include the publishing before it).
func BenchmarkDrain(b *testing.B) {
	for _, proto := range []string{"3.1.1", "5"} {
		b.Run(proto, func(b *testing.B) { benchmarkDrain(b, proto) })
	}
}

var drainProfile = flag.String("drainprofile", "", "BenchmarkDrain: write a CPU profile of the drain to this file")

func benchmarkDrain(b *testing.B, proto string) {
	up := startMosquitto(b, "")
	p := newProxy(b, up.addr)
	p.Cut()
	bc := bridgeTo("central", proxyURL(p))
	bc.MaxInflight, bc.Protocol = 256, proto
	e := startEdge(b, b.TempDir(), []edge.BridgeConfig{bc})
	dev := client(b, "tcp://"+e.Addr("tcp").String(), "device", true, nil)
	payload := make([]byte, 64)
	toks := make([]mqtt.Token, 0, 256)
	for i := range b.N {
		toks = append(toks, dev.Publish("t/"+strconv.Itoa(i%8), 1, false, payload))
		if len(toks) == cap(toks) || i == b.N-1 {
			waitAll(b, toks)
			toks = toks[:0]
		}
	}
	before := status(b, e, "central").Forwarded
	cpu0 := cputime.Self()
	r0, w0 := sysCalls()
	b.ReportAllocs()
	if *drainProfile != "" {
		f, err := os.Create(*drainProfile)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	b.ResetTimer()
	p.Restore()
	waitStatus(b, e, "central", 10*time.Minute, func(s bridge.Status) bool { return s.Forwarded >= before+uint64(b.N) })
	b.StopTimer()
	b.ReportMetric(float64((cputime.Self()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/msg")
	r1, w1 := sysCalls()
	b.ReportMetric(float64(r1-r0)/float64(b.N), "reads/msg")
	b.ReportMetric(float64(w1-w0)/float64(b.N), "writes/msg")
}

// sysCalls is the process's read and write system calls so far
// (/proc/self/io; 0, 0 where there is none).
func sysCalls() (reads, writes uint64) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		n, _ := strconv.ParseUint(v, 10, 64)
		switch k {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes
}
