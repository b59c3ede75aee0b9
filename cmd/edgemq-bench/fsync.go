package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// fsyncProbe bounds measureFsync: at most this many samples, and no longer
// than this (a slow disk gives fewer samples rather than a longer run).
const (
	fsyncSamples = 1000
	fsyncBudget  = 2 * time.Second
)

// measureFsync is the latency of the disk under dir as the log sees it:
// append a small record to a file, fsync it, repeat. A durable QoS 1 ack
// cannot come sooner than one such fsync, so the latency scenario prints
// its p99 beside the end-to-end p99 of the same run. The file is removed.
func measureFsync(dir string) (latencyStats, error) {
	f, err := os.CreateTemp(dir, "fsync-probe-*")
	if err != nil {
		return latencyStats{}, fmt.Errorf("fsync probe: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	rec := make([]byte, 256+7) // a 256-byte payload and the log's framing
	var samples []uint32
	end := time.Now().Add(fsyncBudget)
	for len(samples) < fsyncSamples && time.Now().Before(end) {
		t0 := time.Now()
		if _, err := f.Write(rec); err != nil {
			return latencyStats{}, fmt.Errorf("fsync probe: %w", err)
		}
		if err := f.Sync(); err != nil {
			return latencyStats{}, fmt.Errorf("fsync probe: %w", err)
		}
		samples = append(samples, uint32(time.Since(t0).Microseconds()))
	}
	return summarize(samples), nil
}

// fsyncDirOf is where a broker run's files live: its log directory when it
// has one (edgemq's storage.dir), else the run's directory.
func fsyncDirOf(runDir string) string {
	if st, err := os.Stat(filepath.Join(runDir, "data")); err == nil && st.IsDir() {
		return filepath.Join(runDir, "data")
	}
	return runDir
}
