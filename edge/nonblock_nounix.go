//go:build !unix

package edge

import "errors"

// errNoRawSocketCall is what readNonblock and writeNonblock return where
// a socket has no non-blocking read(2) and write(2) (Windows: Go's
// sockets are overlapped handles, which a plain read would block on).
// recvInto and writeOutNow take any error but EAGAIN and EINTR as "use
// the ordinary read or write", so these systems always do. Built for
// developers; edgemq ships for Linux.
var errNoRawSocketCall = errors.New("edge: no non-blocking socket call on this system")

// readNonblock: see errNoRawSocketCall.
func readNonblock(fd uintptr, p []byte) (int, error) { return 0, errNoRawSocketCall }

// writeNonblock: see errNoRawSocketCall.
func writeNonblock(fd uintptr, p []byte) (int, error) { return 0, errNoRawSocketCall }
