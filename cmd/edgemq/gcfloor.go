package main

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// heapMinimumAt100 is the Go runtime's smallest heap goal at GOGC=100
// (defaultHeapMinimum in runtime/mgcpacer.go); it scales with GOGC.
const heapMinimumAt100 = 4 << 20

// gcFloor keeps the garbage collector's heap goal at least the live heap plus
// a headroom: with GOGC=100 alone a broker whose live heap is a few MB
// collects every few MB allocated, dozens of times a second under load, a
// tenth to a quarter of its CPU per message (docs/deployment.md). Above the
// floor GOGC is as it was (the goal is the live heap doubled); the memory
// limit (memory_limit, GOMEMLIMIT) stays the bound, since the runtime takes
// the smaller of the GOGC goal and the limit's, and the floor is never more
// than a quarter of the limit in force, so that it does not push the heap
// into the limit's regime, where the collector works harder; nor more than a
// quarter of the memory the process may use (processMemory: RAM, cgroup
// limit), which bounds it when no limit is in force. The floor holds
// only while the broker is busy, GOGC alone collecting at least once per
// busyInterval at the allocation rate since the collection before (from the
// start until the first collection it does not hold): an idle broker keeps
// GOGC's footprint, and a busy one collects once at GOGC's goal, within
// milliseconds, before the floor holds.
//
// It works by setting GOGC (debug.SetGCPercent) after each collection, from
// the live heap that collection marked (runtime/metrics): the runtime's goal
// is live + (live + stacks + globals) * GOGC/100, at least 4 MiB * GOGC/100
// (floorPercent). What it cannot do: a collection computes its successor's
// goal with the GOGC set after the one before, so when the live heap grew
// tenfold in between, that goal is too high until the callback lowers it,
// which is at once unless the callback missed a cycle (its sentinel allocated
// during a mark phase: the next collection finishes the job); the memory
// limit bounds that cycle too.
type gcFloor struct {
	headroom uint64
	base     int    // GOGC above the floor, as the process started with it
	memory   uint64 // the memory the process may use, bytes (math.MaxInt64: unknown)

	mu         sync.Mutex
	stopped    bool
	percent    int // the GOGC last set
	samples    []metrics.Sample
	lastAllocs uint64    // /gc/heap/allocs:bytes at the last adjust
	lastTime   time.Time // of the last adjust; zero before the first
}

// busyInterval: the floor applies only while GOGC alone would collect at
// least this often. Rarer collections cost next to nothing (an idle broker
// with 1,000 connections allocates about 0.3 MB/s: GOGC=100 collects it every
// 30 s or so), and there the floor would only hold memory: 40 MB more RSS in
// that case.
const busyInterval = time.Second

// heapState is what the floor reads after a collection.
type heapState struct {
	live, stacks, globals uint64  // what the runtime's goal is computed from, bytes
	limit                 uint64  // the memory limit in force or the memory the process may use, the smaller, bytes (math.MaxInt64: none)
	allocRate             float64 // bytes allocated per second since the adjust before; 0 at the first
}

// gcFloorMetrics are read after each collection, in heapState's order, then
// the bytes allocated so far.
var gcFloorMetrics = []string{
	"/gc/heap/live:bytes",
	"/gc/scan/stack:bytes",
	"/gc/scan/globals:bytes",
	"/gc/gomemlimit:bytes",
	"/gc/heap/allocs:bytes",
}

// startGCFloor keeps the heap goal at least the live heap plus headroom bytes,
// at most a quarter of the memory limit in force and of memory, the bytes the
// process may use (processMemory; 0: unknown), until stop, which puts GOGC
// back as it was. It does nothing (and stop does nothing) when headroom is 0
// or GOGC is off.
func startGCFloor(headroom int64, memory uint64) (stop func()) {
	gogc := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(gogc)
	base := int(int32(gogc[0].Value.Uint64())) // -1 when off
	if headroom <= 0 || base <= 0 {
		return func() {}
	}
	if memory == 0 {
		memory = math.MaxInt64
	}
	f := &gcFloor{headroom: uint64(headroom), base: base, memory: memory, percent: base}
	for _, name := range gcFloorMetrics {
		f.samples = append(f.samples, metrics.Sample{Name: name})
	}
	f.adjust()
	f.arm()
	return f.stop
}

// gcSentinel is garbage whose cleanup runs after the collection that found
// it unreachable: one callback per collection. It holds a pointer so that it
// is not a tiny allocation (runtime.AddCleanup: a tiny object may share its
// block with live ones and never be collected).
type gcSentinel struct{ _ *int }

// arm allocates the next sentinel. Called from its cleanup, which runs after
// a collection's mark phase: the new sentinel is allocated outside a mark
// phase, so the next collection finds it unreachable.
func (f *gcFloor) arm() {
	runtime.AddCleanup(new(gcSentinel), func(f *gcFloor) {
		if f.adjust() {
			f.arm()
		}
	}, f)
}

// adjust sets GOGC for the live heap of the last collection and the
// allocation rate since the adjust before; false once stopped.
func (f *gcFloor) adjust() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return false
	}
	metrics.Read(f.samples)
	var v [5]uint64
	for i, s := range f.samples {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	now := time.Now()
	h := heapState{live: v[0], stacks: v[1], globals: v[2], limit: min(v[3], f.memory)}
	if !f.lastTime.IsZero() {
		h.allocRate = float64(v[4]-f.lastAllocs) / max(now.Sub(f.lastTime).Seconds(), 1e-9)
	}
	f.lastAllocs, f.lastTime = v[4], now
	if p := floorPercent(f.headroom, f.base, h); p != f.percent {
		debug.SetGCPercent(p)
		f.percent = p
	}
	return true
}

// floorPercent is the smallest GOGC, never less than base, that makes the
// runtime's heap goal, max(live + (live+stacks+globals)*GOGC/100,
// 4 MiB*GOGC/100), at least live+headroom, with headroom at most a quarter
// of limit; base when GOGC alone would collect less often than busyInterval.
func floorPercent(headroom uint64, base int, h heapState) int {
	scanned := float64(max(h.live+h.stacks+h.globals, 1))
	b := float64(base) / 100
	grow := max(scanned*b, heapMinimumAt100*b-float64(h.live)) // bytes allocated between collections under GOGC alone
	if h.allocRate*busyInterval.Seconds() < grow {
		return base
	}
	room := float64(min(headroom, h.limit/4))
	p := math.Ceil(min(room/scanned, (float64(h.live)+room)/heapMinimumAt100) * 100)
	return max(base, int(min(p, math.MaxInt32)))
}

// stop ends the floor and puts GOGC back as the process started with it.
func (f *gcFloor) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.stopped {
		f.stopped = true
		debug.SetGCPercent(f.base)
	}
}
