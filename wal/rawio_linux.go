package wal

import (
	"os"
	"syscall"
)

// fsyncHolding is f.Sync as a raw fsync(2): the writer keeps its P (the Go
// scheduler's right to run Go code) through the call, so the runtime
// neither wakes sysmon for it nor hands the P to another thread and takes
// it back afterwards (see quiet for when the writer may). ok is false when
// f is not an *os.File (a simulated or fault-injecting FS in tests, which
// must see every call): the caller then calls f.Sync.
func fsyncHolding(f File) (ok bool, err error) {
	return holding(f, func(fd uintptr) syscall.Errno {
		for {
			_, _, errno := syscall.RawSyscall(syscall.SYS_FSYNC, fd, 0, 0)
			if errno != syscall.EINTR {
				return errno
			}
		}
	})
}

// holding runs call on f's descriptor, which stays open meanwhile
// (SyscallConn's Control holds a reference against a concurrent Close).
// ok is false, and call is not run, when f is not an *os.File; err is
// call's errno, or Control's error for a file closed meanwhile.
func holding(f File, call func(fd uintptr) syscall.Errno) (ok bool, err error) {
	of, isOS := f.(*os.File)
	if !isOS {
		return false, nil
	}
	rc, err := of.SyscallConn()
	if err != nil {
		return false, nil
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) { errno = call(fd) }); err != nil {
		return true, err // closed meanwhile
	}
	if errno != 0 {
		return true, errno
	}
	return true, nil
}
