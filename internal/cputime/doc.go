// Package cputime reads the CPU time this process has used, user plus
// system, on every system edgemq builds for: getrusage(2) on Unix,
// GetProcessTimes on Windows. The broker's GOMAXPROCS policy
// (cmd/edgemq), the benchmark tool and the packages' benchmarks share it.
// On Linux it also reads one thread's CPU time (Thread), with which the
// benchmark tool prices an fsync.
//
// It guarantees a monotonic count for one process at the system's
// accounting granularity; it returns 0 where the system refuses, and it
// does not read other processes (cmd/edgemq-bench reads a broker's time
// from /proc, on Linux).
package cputime
