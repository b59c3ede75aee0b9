//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le || s390x)

package wal

import (
	"syscall"
	"unsafe"
)

// pwriteHolding is f.WriteAt(p, off) as raw pwrite(2) calls, as
// fsyncHolding is f.Sync. 64-bit only: there the offset is one argument
// (a 32-bit kernel takes it in two, in an order each architecture sets).
func pwriteHolding(f File, p []byte, off int64) (ok bool, err error) {
	if len(p) == 0 {
		return false, nil
	}
	return holding(f, func(fd uintptr) syscall.Errno {
		for len(p) > 0 {
			n, _, e := syscall.RawSyscall6(syscall.SYS_PWRITE64, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(off), 0, 0)
			switch {
			case e == syscall.EINTR:
				continue
			case e != 0:
				return e
			case n == 0:
				return syscall.EIO // a regular file never takes nothing; never loop
			}
			p, off = p[n:], off+int64(n)
		}
		return 0
	})
}
