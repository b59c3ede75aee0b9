package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/edgemq/edgemq/internal/cputime"
)

// fsyncEvery is the pace of measureFsync: light beside a broker's own
// fsyncs (a durable broker at 1,000 msg/s does hundreds a second), dense
// enough for a p99 over a few seconds.
const fsyncEvery = 5 * time.Millisecond

// measureFsync is the latency of the disk under dir as a log sees it,
// while the run goes on: every fsyncEvery, append a small record to a file
// and fsync it, until ctx ends. A durable QoS 1 ack cannot come sooner than
// one such fsync, so the latency scenario prints its p99 beside the
// end-to-end p99: measured at the same time, on a shared machine both see
// the same disk. The file is removed.
//
// cpuMicros is the CPU time, user and system, of the probe's own thread
// per write and fsync (0 where the system cannot tell, outside Linux):
// what one fsync per message costs any broker that makes it, beside the
// broker's CPU per message at the same rate.
func measureFsync(ctx context.Context, dir string) (stats latencyStats, cpuMicros float64, err error) {
	f, err := os.CreateTemp(dir, "fsync-probe-*")
	if err != nil {
		return latencyStats{}, 0, fmt.Errorf("fsync probe: %w", err)
	}
	// One thread, so that its CPU clock counts this loop's system calls
	// alone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var cpu time.Duration
	cpuKnown := true
	defer os.Remove(f.Name())
	defer f.Close()
	rec := make([]byte, 256+7) // a 256-byte payload and the log's framing
	var samples []uint32
	tick := time.NewTicker(fsyncEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if cpuKnown && len(samples) > 0 {
				cpuMicros = float64(cpu.Microseconds()) / float64(len(samples))
			}
			return summarize(samples), cpuMicros, nil
		case <-tick.C:
		}
		c0, ok0 := cputime.Thread()
		t0 := time.Now()
		if _, err := f.Write(rec); err != nil {
			return latencyStats{}, 0, fmt.Errorf("fsync probe: %w", err)
		}
		if err := f.Sync(); err != nil {
			return latencyStats{}, 0, fmt.Errorf("fsync probe: %w", err)
		}
		samples = append(samples, uint32(time.Since(t0).Microseconds()))
		c1, ok1 := cputime.Thread()
		cpuKnown = cpuKnown && ok0 && ok1
		cpu += c1 - c0
	}
}

// fsyncDirOf is where a broker run's files live: its log directory when it
// has one (edgemq's storage.dir), else the run's directory.
func fsyncDirOf(runDir string) string {
	if st, err := os.Stat(filepath.Join(runDir, "data")); err == nil && st.IsDir() {
		return filepath.Join(runDir, "data")
	}
	return runDir
}
