package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// errConnBroken is returned by writes after a write on the same connection
// failed: the byte stream is torn, nothing more may be sent on it.
var errConnBroken = errors.New("edge: connection broken by an earlier write error")

// conn wraps every accepted connection (TCP, TLS and WebSocket) before mochi
// sees it. It exists because mochi holds the client's lock across the socket
// write, and publishers take that same lock to allocate a packet id: one
// subscriber that stops reading would otherwise stall every QoS 1/2 publisher
// that sends to it, for as long as its socket stays blocked (forever with
// keepalive 0). With the wrapper:
//
//   - SetDeadline sets the read deadline only. mochi calls it before each read
//     with 1.5 x keepalive; a write must not inherit that long a deadline.
//   - Each Write gets its own deadline (limits.write_timeout). A write that
//     misses it closes the connection at once, without a goodbye (no TLS
//     close_notify, no WebSocket close handshake, which would block again on
//     the same full socket), and counts a slow-consumer disconnect. mochi's
//     read goroutine then sees the closed socket and ends the client; its
//     persistent session keeps what it was owed.
//
// A publisher therefore waits at most one write timeout behind a stuck
// subscriber. mochi serialises writes under the client lock, so Write is
// never called concurrently; Read runs on mochi's read goroutine.
type conn struct {
	net.Conn

	// writeTimeout bounds each Write.
	writeTimeout time.Duration
	// closeNow closes the transport without a goodbye.
	closeNow func() error
	// tlsState is the handshake result on TLS and WSS listeners; nil otherwise.
	tlsState *tls.ConnectionState
	// useCN makes a verified client certificate's CN the username.
	useCN bool
	// onSlow is called once when a write misses its deadline.
	onSlow func()

	// writingSince is when the write in progress began (UnixNano), 0 when
	// none is: the blocked-writers gauge reads it.
	writingSince atomic.Int64

	broken    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// SetDeadline sets the read deadline only; see conn.
func (c *conn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// SetWriteDeadline is ignored: every Write sets its own deadline.
func (c *conn) SetWriteDeadline(time.Time) error { return nil }

// Write writes p within writeTimeout, or closes the connection.
func (c *conn) Write(p []byte) (int, error) {
	if c.broken.Load() {
		return 0, errConnBroken
	}
	now := time.Now()
	deadline := now.Add(c.writeTimeout)
	_ = c.Conn.SetWriteDeadline(deadline)
	c.writingSince.Store(now.UnixNano())
	n, err := c.Conn.Write(p)
	c.writingSince.Store(0)
	if err == nil {
		return n, nil
	}
	if c.broken.CompareAndSwap(false, true) && isTimeout(err, deadline) {
		if c.onSlow != nil {
			c.onSlow()
		}
	}
	_ = c.closeNow()
	return n, err
}

// Close closes the connection once. After a failed write it skips the
// goodbye, which would block on the same stuck socket.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		if c.broken.Load() {
			c.closeErr = c.closeNow()
			return
		}
		c.closeErr = c.Conn.Close()
	})
	return c.closeErr
}

// blockedFor says how long the write in progress has been blocked.
func (c *conn) blockedFor(now time.Time) time.Duration {
	since := c.writingSince.Load()
	if since == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, since))
}

// cut closes the connection without a goodbye (shutdown of stragglers).
func (c *conn) cut() {
	c.broken.Store(true)
	_ = c.closeNow()
	_ = c.Close()
}

// certUsername returns the CN of a verified client certificate when the
// listener maps it to the username.
func (c *conn) certUsername() (string, bool) {
	if !c.useCN || c.tlsState == nil || len(c.tlsState.VerifiedChains) == 0 || len(c.tlsState.PeerCertificates) == 0 {
		return "", false
	}
	cn := c.tlsState.PeerCertificates[0].Subject.CommonName
	return cn, cn != ""
}

// isTimeout reports whether a write error came from its deadline. coder's
// NetConn reports a deadline as a cancelled context, so the clock decides too.
func isTimeout(err error, deadline time.Time) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return !time.Now().Before(deadline)
}
