package edge_test

import "syscall"

// smallRecvBuffer sets a socket's receive buffer to 4 KiB before it
// connects (stuckSubscriber), so that a client that stops reading fills it
// soon.
func smallRecvBuffer(fd uintptr) {
	_ = syscall.SetsockoptInt(syscall.Handle(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
}
