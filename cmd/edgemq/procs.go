package main

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"time"

	"github.com/edgemq/edgemq/internal/cputime"
)

// adaptProcs' rule, looked at every procsEvery: the broker goes to one P
// after procsQuiet looks in a row at which it used less than procsDown of
// a core, and back to the runtime's default at the first look at which it
// used more than procsUp of a core or more than procsLate of its
// goroutines waited longer than procsWait to run. procsWait is above the
// longest time the log writer holds its P through an fsync while the log
// is quiet (2 ms, wal's quietFsync), which the rest waits for at one P.
const (
	procsEvery = 200 * time.Millisecond
	procsQuiet = 5
	procsDown  = 0.25
	procsUp    = 0.6
	procsWait  = 5 * time.Millisecond
	procsLate  = 0.05
)

// procsAdapting is set while an adaptProcs runs: GOMAXPROCS is the
// process's, and one policy at a time sets it (tests run several brokers
// in one process).
var procsAdapting atomic.Bool

// adaptProcs is the daemon's GOMAXPROCS policy, until ctx ends: one P
// while the broker is quiet, the runtime's default (every CPU the process
// may use, within its cgroup's limit) under load. At a low rate every
// hand-off between goroutines (a read loop waking the log writer, the
// writer waking the dispatcher) found another P idle and woke a thread for
// it (the runtime's wakep), which found nothing to do and went back to
// sleep: at 1,000 msg/s QoS 1 on 2 cores that cost more CPU than the work
// itself. On one P a hand-off is a goroutine switch on the same thread.
// The price: a burst after a quiet spell runs on one P until a look sees
// it, up to two procsEvery (the look during which it began may have seen
// less than procsUp of a core of it; a full core is seen within 1.6),
// sooner when its goroutines wait past procsWait. It does nothing where the
// default is one P already, or when GOMAXPROCS is set in the environment
// (the operator's choice stands).
func adaptProcs(ctx context.Context, every time.Duration, log *slog.Logger) {
	if runtime.GOMAXPROCS(0) <= 1 || os.Getenv("GOMAXPROCS") != "" || !procsAdapting.CompareAndSwap(false, true) {
		return
	}
	defer procsAdapting.Store(false)
	t := time.NewTicker(every)
	defer t.Stop()
	// It starts on one P: the first busy look (a replay of a long log, a
	// burst of clients) gives the default back, and a broker that starts
	// quiet is quiet from the start, not after procsQuiet looks.
	p := procsState{one: true}
	runtime.GOMAXPROCS(1)
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	lastLate, lastAll := late(s[0].Value.Float64Histogram())
	lastCPU, at := cputime.Self(), time.Now()
	for {
		select {
		case <-ctx.Done():
			if p.one {
				runtime.SetDefaultGOMAXPROCS()
			}
			return
		case <-t.C:
		}
		now, c := time.Now(), cputime.Self()
		used := float64(c-lastCPU) / float64(now.Sub(at))
		lastCPU, at = c, now
		metrics.Read(s)
		l, a := late(s[0].Value.Float64Histogram())
		waited := float64(l-lastLate) / float64(max(a-lastAll, 1))
		lastLate, lastAll = l, a
		was := p.one
		p = p.next(used, waited)
		switch {
		case p.one && !was:
			runtime.GOMAXPROCS(1)
			log.Debug("quiet: one P", "cores_used", used)
		case !p.one && was:
			runtime.SetDefaultGOMAXPROCS()
			log.Debug("busy: GOMAXPROCS back to the default", "gomaxprocs", runtime.GOMAXPROCS(0),
				"cores_used", used, "late_share", waited)
		}
	}
}

// procsState is where adaptProcs' rule stands: on one P, or how many quiet
// looks in a row it saw.
type procsState struct {
	one   bool
	quiet int
}

// next applies the rule to one look: used cores, and the share of
// goroutines that waited longer than procsWait to run.
func (p procsState) next(used, waited float64) procsState {
	switch {
	case p.one:
		if used > procsUp || waited > procsLate {
			return procsState{}
		}
		return p
	case used < procsDown:
		p.quiet++
		if p.quiet >= procsQuiet {
			return procsState{one: true}
		}
		return p
	default:
		return procsState{}
	}
}

// late counts the scheduling latencies of at least procsWait, and all of
// them, in the runtime's histogram.
func late(h *metrics.Float64Histogram) (over, all uint64) {
	for i, n := range h.Counts {
		all += n
		if h.Buckets[i] >= procsWait.Seconds() {
			over += n
		}
	}
	return over, all
}
