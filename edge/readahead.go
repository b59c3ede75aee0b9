package edge

import (
	"net"
	"sync"
	"syscall"
)

// readAheadSize is the most a connection reads from its socket at once,
// mochi's default read buffer. mochi's own buffer is cut to its minimum
// (mochiReadBuffer): the read-ahead under it is taken from a pool only
// while bytes wait in it, so a connection waiting for its next packet
// holds no read buffer at all. On plain TCP it waits for the socket to
// become readable with no buffer (recvInto); on TLS and WebSocket, whose
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
	// WebSocket. recv is its read (recvInto), built once.
	raw  syscall.RawConn
	recv func(fd uintptr) bool
	// got is what recv's last read returned; fallback is set when it
	// failed or met the end of the stream: the ordinary read says which.
	got      int
	fallback bool
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
	r.recv = r.recvInto
}

// recvInto is the read of a plain TCP socket, run by RawConn.Read: one
// read(2) into a buffer from the pool, which goes back to the pool when
// the socket has nothing yet (EAGAIN: the socket is non-blocking), so a
// waiting connection holds none. A socket with bytes waiting costs one
// system call; one without, a failing one and the wait.
//
// It asks the socket even right after a read that took less than it could
// (the socket was empty then), though the runtime's netpoller is
// edge-triggered and records readiness that comes while no one waits:
// RawConn.Read clears that record before its first call of recvInto
// (internal/poll's prepareRead, runtime.poll_runtime_pollReset), so a
// recvInto that skipped the read would wait for bytes that are already
// there until more come or the deadline passes
// (TestReadAheadReadsWhatCameAfterAShortRead).
func (r *readAhead) recvInto(fd uintptr) bool {
	if r.buf == nil {
		r.buf = readAheadPool.Get().(*[]byte)
	}
	n, err := readNonblock(fd, *r.buf)
	switch {
	case err == syscall.EAGAIN || err == syscall.EINTR: // readNonblock's errors are bare Errnos
		readAheadPool.Put(r.buf)
		r.buf = nil
		return false
	case err != nil || n <= 0:
		readAheadPool.Put(r.buf)
		r.buf = nil
		r.fallback = true
		return true
	}
	r.got = n
	return true
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
	if r.raw != nil {
		r.fallback = false
		if err := r.raw.Read(r.recv); err != nil || r.fallback {
			// The deadline, a closed socket, an error or the end of the
			// stream: the ordinary read says which.
			return c.Read(p)
		}
		r.pending = (*r.buf)[:r.got]
		return r.take(p), nil
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
