package cputime

import (
	"syscall"
	"time"
)

// rusageThread is RUSAGE_THREAD of getrusage(2), which package syscall
// does not name.
const rusageThread = 1

// Thread is the calling OS thread's user and system CPU time so far, and
// whether the system can tell. Only meaningful between calls on one
// thread: the caller holds runtime.LockOSThread.
func Thread() (time.Duration, bool) {
	var ru syscall.Rusage
	if syscall.Getrusage(rusageThread, &ru) != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
