package edge

import (
	"errors"
	"net"
	"sync"
	"syscall"
)

// readAheadSize is the most a connection reads from its socket at once,
// mochi's default read buffer. mochi's own buffer is cut to its minimum
// (mochiReadBuffer): the read-ahead under it is taken from a pool only
// while bytes wait in it, so a connection waiting for its next packet
// holds no read buffer at all. On plain TCP it waits for the socket to
// become readable with no buffer (readable); on TLS and WebSocket, whose
// libraries buffer on their own, it reads into a buffer from the pool,
// which it holds while it waits, as mochi's buffer was held.
const readAheadSize = 2048

// mochiReadBuffer is mochi's per-client read buffer
// (Options.ClientNetReadBufferSize): bufio's minimum, since the
// read-ahead does the buffering.
const mochiReadBuffer = 16

var readAheadPool = sync.Pool{New: func() any {
	b := make([]byte, readAheadSize)
	return &b
}}

// readAhead is one connection's read-ahead (see readAheadSize).
type readAhead struct {
	// raw is the TCP socket under a plain TCP connection; nil on TLS and
	// WebSocket. peek is its readiness check (readable), built once.
	raw  syscall.RawConn
	peek func(fd uintptr) bool
	one  [1]byte
	perr error
	// buf is the pool's buffer while pending holds bytes of it, else nil.
	buf     *[]byte
	pending []byte
}

// setRaw lets a plain TCP connection wait without a buffer.
func (r *readAhead) setRaw(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	r.raw = raw
	r.peek = func(fd uintptr) bool {
		_, _, r.perr = syscall.Recvfrom(int(fd), r.one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return !errors.Is(r.perr, syscall.EAGAIN)
	}
}

// read fills p from what was read ahead, or from c. A read as large as the
// read-ahead goes straight into p.
func (r *readAhead) read(c net.Conn, p []byte) (int, error) {
	if len(r.pending) > 0 {
		return r.take(p), nil
	}
	if len(p) >= readAheadSize {
		return c.Read(p)
	}
	if r.raw != nil && r.readable() != nil {
		// The deadline, or a closed socket: the ordinary read says which.
		return c.Read(p)
	}
	r.buf = readAheadPool.Get().(*[]byte)
	n, err := c.Read(*r.buf)
	r.pending = (*r.buf)[:n]
	return r.take(p), err
}

// take copies what it can of the pending bytes into p, and gives the
// buffer back once they are all taken.
func (r *readAhead) take(p []byte) int {
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	if len(r.pending) == 0 {
		r.pending = nil
		readAheadPool.Put(r.buf)
		r.buf = nil
	}
	return n
}

// readable waits until the socket has bytes (or its end) to read, under
// the read deadline, without taking them: a peek of one byte.
func (r *readAhead) readable() error {
	if err := r.raw.Read(r.peek); err != nil {
		return err
	}
	return r.perr
}
