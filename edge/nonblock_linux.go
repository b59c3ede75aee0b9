//go:build linux && !race

package edge

import (
	"syscall"
	"unsafe"
)

// readNonblock is read(2) of a non-blocking socket as a raw system call,
// and writeNonblock its write(2). The socket never blocks, so the runtime's
// bookkeeping for a system call that might (syscall.Read enters and leaves
// it: the goroutine marks its P as in a system call, and the first call
// after the process was idle wakes sysmon, which then polls every 20 us
// until every P is idle again) buys nothing, and at a low rate it cost
// more CPU than the read itself: a message at 1,000 msg/s woke sysmon
// about once per packet. The race detector's build uses syscall.Read and
// syscall.Write (nonblock_other.go), which tell it about the buffer.
func readNonblock(fd uintptr, p []byte) (int, error) { return rawNonblock(syscall.SYS_READ, fd, p) }

// writeNonblock: see readNonblock.
func writeNonblock(fd uintptr, p []byte) (int, error) { return rawNonblock(syscall.SYS_WRITE, fd, p) }

// rawNonblock is read(2) or write(2) (trap) of p on fd as a raw system
// call, retried on EINTR.
func rawNonblock(trap, fd uintptr, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, _, errno := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch errno {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return -1, errno
	}
}
