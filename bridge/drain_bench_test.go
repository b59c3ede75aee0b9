package bridge_test

import (
	"flag"
	"os"
	"runtime/pprof"
	"strconv"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/edge"
)

// BenchmarkDrain: b.N QoS 1 messages wait in an in-process edgemq's log
// while the link to a Mosquitto upstream (MQTT 3.1.1, window 256) is cut;
// timed is the drain once the link returns, until the bridge counts every
// one acknowledged. Both links: 3.1.1 (paho.mqtt.golang) and 5 (paho.golang). It reports the process's CPU time per message (the
// bridge, the log reader, paho and the in-process proxy: the edge broker's
// side of a drain, without the upstream) and the allocations per message,
// both steadier than the wall time on a shared machine:
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
	cpu0 := cpuTime()
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
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/msg")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
