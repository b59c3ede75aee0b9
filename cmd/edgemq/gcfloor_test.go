package main

import (
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// readMetric is one runtime/metrics value of kind uint64.
func readMetric(t *testing.T, name string) uint64 {
	t.Helper()
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		t.Fatalf("runtime/metrics has no uint64 %s", name)
	}
	return s[0].Value.Uint64()
}

var garbageSink []byte

// collectionsWhileAllocating allocates n bytes of short-lived garbage and
// returns how many garbage collections ran meanwhile.
func collectionsWhileAllocating(t *testing.T, n int) uint64 {
	t.Helper()
	before := readMetric(t, "/gc/cycles/total:gc-cycles")
	for range n / 4096 {
		garbageSink = make([]byte, 4096)
	}
	garbageSink = nil
	return readMetric(t, "/gc/cycles/total:gc-cycles") - before
}

// TestGCFloor: with a floor of 128 MiB, 512 MiB of garbage on this test's
// small live heap take a few collections (about one every 128 MiB once the
// first showed the process busy; at most 10), fewer
// than GOGC=100 alone makes (its goal is the runtime's 4 MiB minimum here;
// on a busy machine a collection overshoots it, so fewer than 128); the
// heap goal is the live heap plus the headroom at least; the floor follows
// the live heap, lets go when the process allocates little, and stop puts
// GOGC back.
func TestGCFloor(t *testing.T) {
	const headroom, garbage = 128 << 20, 512 << 20
	runtime.GC()
	before := readMetric(t, "/gc/gogc:percent")
	without := collectionsWhileAllocating(t, garbage)

	stop := startGCFloor(headroom, 0)
	defer stop()
	with := collectionsWhileAllocating(t, garbage)
	// The floor adjusts from a cleanup, a moment after each collection:
	// until then the goal is computed with the GOGC set after the one before.
	live, goal, ok := heapGoalAbove(t, headroom)
	if !ok {
		t.Errorf("heap goal %d with a live heap of %d and a headroom of %d", goal, live, headroom)
	}
	t.Logf("collections for %d MiB of garbage: %d without the floor, %d with a %d MiB floor (live heap %d)", garbage>>20, without, with, headroom>>20, live)
	// One every 128 MiB, and a few at GOGC's goal: before the first
	// collection showed the floor that the process is busy, and after a
	// stall of this goroutine made the rate between two look low.
	if most := uint64(2*garbage/headroom + 2); with > most || with >= without {
		t.Errorf("collections for %d MiB of garbage: %d with a %d MiB floor (want at most %d), %d without", garbage>>20, with, headroom>>20, most, without)
	}

	// After each collection the floor follows the live heap: above the
	// headroom GOGC is back to 100, below it raised again; and with little
	// allocated between two collections, back to 100.
	waitGOGC := func(want func(uint64) bool, what string, between func()) {
		t.Helper()
		for range 50 { // each round a collection, then the cleanup that adjusts
			between()
			runtime.GC()
			if want(readMetric(t, "/gc/gogc:percent")) {
				return
			}
		}
		t.Errorf("GOGC %d after 50 collections, want %s", readMetric(t, "/gc/gogc:percent"), what)
	}
	busy := func() { collectionsWhileAllocating(t, 16<<20) }
	kept := make([][]byte, 0, 2*headroom>>20)
	for range cap(kept) {
		kept = append(kept, make([]byte, 1<<20))
	}
	waitGOGC(func(p uint64) bool { return p == before }, fmt.Sprintf("%d with a live heap twice the headroom", before), busy)
	runtime.KeepAlive(kept)
	kept = nil
	waitGOGC(func(p uint64) bool { return p > before }, fmt.Sprintf("above %d once the live heap is small again", before), busy)
	waitGOGC(func(p uint64) bool { return p == before }, fmt.Sprintf("%d while next to nothing is allocated", before), func() { time.Sleep(200 * time.Millisecond) })

	stop()
	if got := readMetric(t, "/gc/gogc:percent"); got != before {
		t.Errorf("GOGC after stop %d, want %d as before", got, before)
	}
}

// TestGCFloorUnderMemoryLimit: the memory limit wins over the floor. With a
// limit 64 MiB above what the process holds, a floor of 1 GiB does not let
// the heap goal past the limit, and 512 MiB of garbage are collected at least
// once every 64 MiB, not once or not at all.
func TestGCFloorUnderMemoryLimit(t *testing.T) {
	debug.FreeOSMemory() // what earlier tests' garbage left mapped
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	// What the memory limit counts: the runtime's memory, less what it gave back.
	limit := readMetric(t, "/memory/classes/total:bytes") - readMetric(t, "/memory/classes/heap/released:bytes") + 64<<20
	debug.SetMemoryLimit(int64(limit))
	stop := startGCFloor(1<<30, 0)
	defer stop()
	runtime.GC()
	if goal := readMetric(t, "/gc/heap/goal:bytes"); goal > limit {
		t.Errorf("heap goal %d above the memory limit %d", goal, limit)
	}
	if n := collectionsWhileAllocating(t, 512<<20); n < 512/64 {
		t.Errorf("%d collections for 512 MiB of garbage under a limit 64 MiB above the process's memory, want at least %d", n, 512/64)
	}
}

// TestFloorPercent: the GOGC that gives the runtime's goal, live + (live +
// stacks + globals) * GOGC/100 but at least 4 MiB * GOGC/100, its floor;
// GOGC as it was when that would collect less often than once a second.
func TestFloorPercent(t *testing.T) {
	const mib = 1 << 20
	none := uint64(1<<63 - 1) // no memory limit: math.MaxInt64
	busy := math.Inf(1)
	for _, c := range []struct {
		name     string
		headroom uint64
		base     int
		h        heapState
		want     int
	}{
		{"small live heap: the floor", 32 * mib, 100, heapState{7 * mib, mib / 2, mib / 2, none, busy}, 400},
		{"tiny live heap: the runtime's 4 MiB minimum, scaled by GOGC, gives the floor", 32 * mib, 100, heapState{mib, 0, 0, none, busy}, 825},
		{"large live heap: GOGC as it was", 32 * mib, 100, heapState{100 * mib, 0, 0, none, busy}, 100},
		{"a base above 100 stays", 32 * mib, 300, heapState{16 * mib, 0, 0, none, busy}, 300},
		{"a quarter of the memory limit at most", 32 * mib, 100, heapState{8 * mib, 0, 0, 64 * mib, busy}, 200},
		{"a huge headroom does not overflow", 1 << 62, 100, heapState{4 * mib, 0, 0, none, busy}, 1<<31 - 1},
		{"an empty heap", 32 * mib, 100, heapState{0, 0, 0, none, busy}, 800},
		{"idle: GOGC alone collects 8 MiB every 2 s", 32 * mib, 100, heapState{7 * mib, mib / 2, mib / 2, none, 4 * mib}, 100},
		{"busy: GOGC alone collects 8 MiB every 0.5 s", 32 * mib, 100, heapState{7 * mib, mib / 2, mib / 2, none, 16 * mib}, 400},
		{"idle, tiny heap: GOGC alone collects 3 MiB every 1.5 s", 32 * mib, 100, heapState{mib, 0, 0, none, 2 * mib}, 100},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := floorPercent(c.headroom, c.base, c.h); got != c.want {
				t.Errorf("floorPercent = %d, want %d", got, c.want)
			}
		})
	}
}

// TestGCFloorDaemon: the running broker keeps the floor (gc_headroom,
// default 32MiB), as /metrics shows: GOGC 100 while idle, raised and the
// next collection at 32 MiB at least once publishes keep it busy; a GOGC
// environment variable wins over it.
func TestGCFloorDaemon(t *testing.T) {
	bin := buildBinary(t)
	gauge := func(t *testing.T, url, name string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(httpGet(t, url))
		if m == nil {
			t.Fatalf("no %s in /metrics", name)
		}
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, gogc := range []string{"", "150"} {
		t.Run("GOGC="+gogc, func(t *testing.T) {
			t.Setenv("GOGC", gogc) // inherited by the broker; "" is unset for the runtime and for us
			dir := t.TempDir()
			port, httpAddr := freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
			cfg := writeFile(t, dir, "edgemq.yaml", fmt.Sprintf("listeners:\n  - {type: tcp, address: \"127.0.0.1:%d\"}\nhttp: {address: %q}\nauth: {allow_anonymous: true}\nstorage: {dir: %q}\nshutdown: {grace: 0s}\n",
				port, httpAddr, filepath.Join(dir, "data")))
			d := startDaemon(t, bin, "run", "-c", cfg)
			waitFor(t, d.stderr, d.done, "address="+httpAddr)
			metrics := "http://" + httpAddr + "/metrics"
			idle := 100.0
			if gogc != "" {
				idle = 150
			}
			if p := gauge(t, metrics, "go_gc_gogc_percent"); p != idle {
				t.Errorf("GOGC %v at the start, want %v", p, idle)
			}
			c := paho.NewClient(paho.NewClientOptions().AddBroker(fmt.Sprintf("tcp://127.0.0.1:%d", port)).SetClientID("gcfloor").SetAutoReconnect(false))
			if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("connect: %v", tok.Error())
			}
			payload := make([]byte, 32<<10)
			busy := 0.0
			for range 200 { // 20 rounds of 640 KiB each second: far more than GOGC=100 collects at once a second
				for range 20 {
					c.Publish("gcfloor/load", 0, false, payload).Wait()
				}
				if busy = gauge(t, metrics, "go_gc_gogc_percent"); busy != idle {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			next := gauge(t, metrics, "go_memstats_next_gc_bytes")
			c.Disconnect(100)
			switch {
			case gogc == "" && (busy <= 100 || next < 32<<20):
				t.Errorf("under load GOGC %v, next collection at %v bytes: want GOGC above 100 and the next collection at 32 MiB at least", busy, next)
			case gogc != "" && busy != 150:
				t.Errorf("under load GOGC %v, want the environment's 150", busy)
			}
			if code := d.stop(t); code != 0 {
				t.Errorf("exit %d after SIGTERM", code)
			}
		})
	}
}

// TestGCFloorUnderProcessMemory: with no memory limit in force, a quarter of
// the memory the process may use bounds the floor: of 256 MiB, a floor of
// 1 GiB is 64 MiB, the heap goal the live heap plus 64 MiB (and the rounding
// of GOGC to a percent), not plus 1 GiB.
func TestGCFloorUnderProcessMemory(t *testing.T) {
	const memory, room = 256 << 20, 64 << 20
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1)) // none in force
	stop := startGCFloor(1<<30, memory)
	defer stop()
	live, goal, _ := heapGoalAbove(t, room)
	if most := live + room + live/50 + 1<<20; goal < live+room || goal > most {
		t.Errorf("heap goal %d with a live heap of %d, a floor of 1 GiB and %d MiB the process may use: want %d to %d", goal, live, memory>>20, live+room, most)
	}
}

// heapGoalAbove collects while allocating until the heap goal is at least
// room above the live heap, or 20 tries of 100 ms passed (the floor adjusts
// from a cleanup, a moment after each collection); it returns the last
// live heap and goal read, and whether the goal got there.
func heapGoalAbove(t *testing.T, room uint64) (live, goal uint64, ok bool) {
	t.Helper()
	for range 20 {
		collectionsWhileAllocating(t, 16<<20)
		runtime.GC()
		for range 100 {
			if live, goal = readMetric(t, "/gc/heap/live:bytes"), readMetric(t, "/gc/heap/goal:bytes"); goal >= live+room {
				return live, goal, true
			}
			time.Sleep(time.Millisecond)
		}
	}
	return live, goal, false
}
