//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le || s390x)

package wal

import (
	"os"
	"syscall"
	"unsafe"
)

// pwriteHolding is f.WriteAt(p, off) as raw pwrite(2) calls, as
// fsyncHolding is f.Sync. 64-bit only: there the offset is one argument
// (a 32-bit kernel takes it in two, in an order each architecture sets).
func pwriteHolding(f File, p []byte, off int64) (ok bool, err error) {
	of, isOS := f.(*os.File)
	if !isOS || len(p) == 0 {
		return false, nil
	}
	rc, err := of.SyscallConn()
	if err != nil {
		return false, nil
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		for len(p) > 0 {
			n, _, e := syscall.RawSyscall6(syscall.SYS_PWRITE64, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(off), 0, 0)
			switch {
			case e == syscall.EINTR:
				continue
			case e != 0:
				errno = e
				return
			case n == 0:
				errno = syscall.EIO // a regular file never takes nothing; never loop
				return
			}
			p, off = p[n:], off+int64(n)
		}
	}); err != nil {
		return true, err
	}
	if errno != 0 {
		return true, errno
	}
	return true, nil
}
