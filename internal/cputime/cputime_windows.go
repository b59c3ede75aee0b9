package cputime

import (
	"syscall"
	"time"
)

// Self is the process's user and system CPU time so far; 0 if the system
// refuses to say.
func Self() time.Duration {
	self, err := syscall.GetCurrentProcess() // a pseudo handle: nothing to close
	if err != nil {
		return 0
	}
	var creation, exit, kernel, user syscall.Filetime
	if syscall.GetProcessTimes(self, &creation, &exit, &kernel, &user) != nil {
		return 0
	}
	// A FILETIME here is a duration in 100 ns units, not a date (so not
	// Filetime.Nanoseconds, which counts from 1601 to 1970 first).
	ticks := func(f syscall.Filetime) int64 { return int64(f.HighDateTime)<<32 | int64(f.LowDateTime) }
	return time.Duration((ticks(kernel) + ticks(user)) * 100)
}
