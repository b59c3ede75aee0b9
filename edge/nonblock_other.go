//go:build unix && (!linux || race)

package edge

import "syscall"

// readNonblock is syscall.Read where a raw read(2) is not used (see
// nonblock_linux.go).
func readNonblock(fd uintptr, p []byte) (int, error) { return syscall.Read(int(fd), p) }

// writeNonblock is syscall.Write where a raw write(2) is not used.
func writeNonblock(fd uintptr, p []byte) (int, error) { return syscall.Write(int(fd), p) }
