//go:build !linux

package cputime

import "time"

// Thread is the calling OS thread's CPU time; outside Linux it cannot
// tell (false).
func Thread() (time.Duration, bool) { return 0, false }
