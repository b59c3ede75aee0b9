package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// errConnBroken is returned by writes after a write on the same connection
// failed: the byte stream is torn, nothing more may be sent on it.
var errConnBroken = errors.New("edge: connection broken by an earlier write error")

// errPacketTooLarge ends the read side of a connection whose client sent a
// packet larger than limits.max_packet_size.
var errPacketTooLarge = errors.New("edge: packet larger than limits.max_packet_size")

// errProtocolError ends the read side of a connection whose client sent an
// MQTT 5 packet with a property repeated that may appear once, or with a
// value it may not have (badProperty).
var errProtocolError = errors.New("edge: protocol error: a property repeated that may appear once, or with a value it may not have")

// conn wraps every accepted connection (TCP, TLS and WebSocket) before mochi
// sees it. It exists because mochi holds the client's lock across the socket
// write, and publishers take that same lock to allocate a packet id: one
// subscriber that stops reading would otherwise stall every QoS 1/2 publisher
// that sends to it, for as long as its socket stays blocked (forever with
// keepalive 0). With the wrapper:
//
//   - SetDeadline sets the read deadline only. The read loop calls it before
//     each read with 1.5 x keepalive; a write must not inherit that long a
//     deadline.
//   - Each Write that waits gets its own deadline (limits.write_timeout);
//     on plain TCP what the socket takes at once goes without one
//     (writeRaw). A write that misses it closes the connection at once, without a goodbye (no TLS
//     close_notify, no WebSocket close handshake, which would block again on
//     the same full socket), and counts a slow-consumer disconnect. mochi's
//     read goroutine then sees the closed socket and ends the client; its
//     persistent session keeps what it was owed.
//
// A publisher therefore waits at most one write timeout behind a stuck
// subscriber. mochi writes under the client lock and the engine's sender
// flushes a corked round without it: wmu serialises them. Read runs on
// mochi's read goroutine.
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
	// connectBy is when the client must have connected (accept time plus
	// limits.connect_timeout): a CONNECT waits for its password check no
	// longer.
	connectBy time.Time
	// onSlow is called once when a write misses its deadline.
	onSlow func()
	// framer follows each inbound packet before mochi reads it and refuses
	// one too large or with a bad property (see packetFramer); nil: no
	// checks. onRefused is called once when it does, before the goodbye,
	// with the reason code and, for a bad property, its identifier.
	framer    *packetFramer
	onRefused func(reason, property byte)
	// v5 is set once CONNECT says MQTT 5 and mochi took it: the client can
	// then be told why it is cut (DISCONNECT).
	v5 atomic.Bool
	// refused is the framer's reason code once it refused a packet: the
	// bytes before it went to mochi; the next Read says goodbye and fails.
	refused byte
	// readBy is the read deadline SetDeadline set last, readSlack how much
	// later than asked; the read goroutine's own.
	readBy    time.Time
	readSlack time.Duration
	// ra buffers reads for mochi, holding no buffer while the client is
	// quiet (readahead.go); Read's alone.
	ra readAhead

	// wmu serialises Write: mochi writes under its client lock, and the
	// read goroutine says goodbye to a client whose packet is too large.
	wmu sync.Mutex
	// Under wmu: while corked, Write collects into out (from outPool) and
	// flush writes it at once: the engine's sender corks for a round of
	// packets (mochiConn), so a round costs one system call (and one
	// WebSocket frame) instead of one per packet. Whatever else mochi
	// writes meanwhile joins the round in order; Close writes it first.
	corked bool
	out    *[]byte
	// writeRaw's write (writeOutNow, built once), what it writes and what
	// it returned.
	writeOut func(fd uintptr) bool
	nowP     []byte
	nowN     int
	nowErr   error

	// writingSince is when the write in progress began (UnixNano), 0 when
	// none is: the blocked-writers gauge reads it.
	writingSince atomic.Int64

	// takenOver is set when another connection takes over this client's
	// session (see inheritSession).
	takenOver atomic.Bool
	// end is called once when the connection is over (attach's detach),
	// with the error that ended it: it closes and forgets the connection.
	end func(err error)

	// bye is set once a DISCONNECT that refuses the client's packet went
	// out (disconnect), lingered once linger ran: Close then lets the
	// client read it before the socket goes (see linger).
	bye      atomic.Bool
	lingered atomic.Bool
	// saidBye is set once disconnect wrote a DISCONNECT: the server sends
	// nothing after it [MQTT-3.14.4-1], a second one included.
	saidBye atomic.Bool
	// byeTimer cuts the connection when its goodbye takes longer than
	// goodbyeTimeout (boundGoodbye); set once, under byeOnce.
	byeOnce  sync.Once
	byeTimer *time.Timer

	broken    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// SetDeadline sets the read deadline only; see conn. The read loop
// (refreshDeadline) calls it before every packet it reads, with 1.5 x
// keepalive from now [MQTT-3.1.2-22]:
// the deadline is moved only once the one set is more than a sixteenth of
// the keepalive span early, so a busy connection resets its timer a few
// times per keepalive, not per packet, and a silent client is cut at most
// a sixteenth of that span late.
func (c *conn) SetDeadline(t time.Time) error {
	if t.IsZero() {
		c.readBy, c.readSlack = time.Time{}, 0
		return c.Conn.SetReadDeadline(t)
	}
	if !c.readBy.IsZero() && !t.After(c.readBy) && c.readBy.Sub(t) <= c.readSlack {
		return nil
	}
	c.readSlack = time.Until(t) / 16
	c.readBy = t.Add(c.readSlack)
	return c.Conn.SetReadDeadline(c.readBy)
}

// SetWriteDeadline is ignored: every Write sets its own deadline.
func (c *conn) SetWriteDeadline(time.Time) error { return nil }

// Read reads from the client, cutting the stream before a packet the
// framer refuses (too large, or with a bad property): mochi gets the
// packets before it, then an error.
func (c *conn) Read(p []byte) (int, error) {
	if c.framer == nil {
		return c.ra.read(c.Conn, p)
	}
	if c.refused != 0 {
		return 0, c.goodbye()
	}
	n, err := c.ra.read(c.Conn, p)
	if k, reason := c.framer.scan(p[:n]); reason != 0 {
		c.refused = reason
		if k > 0 {
			return k, nil
		}
		return 0, c.goodbye()
	}
	return n, err
}

// goodbye tells a v5 client why it is cut (CONNACK, or DISCONNECT after
// CONNECT, with the framer's reason code) and lets the refused packet's
// bytes drain for a moment (linger): closing a TCP socket with unread
// bytes sends a reset, and the client's stack then throws away the
// DISCONNECT before the client reads it. It returns the error that ends
// mochi's read loop.
func (c *conn) goodbye() error {
	err := errPacketTooLarge
	if c.refused == packets.ErrProtocolViolation.Code {
		err = errProtocolError
	}
	if c.onRefused != nil {
		c.onRefused(c.refused, c.framer.property)
		c.onRefused = nil
	}
	var werr error
	if c.framer.inConnect {
		// Before mochi saw CONNECT: a CONNACK refuses it [MQTT-3.2.2-8]
		// (session present 0, no properties).
		werr = c.sayGoodbye([]byte{packets.Connack << 4, 3, 0, c.refused, 0})
	} else {
		werr = c.disconnect(c.refused)
	}
	if werr == nil {
		c.linger()
	}
	return err
}

// goodbyeTimeout bounds the server's goodbye to a client, from its first
// step (sayGoodbye, or Close) to the closed socket: the wait for a write
// of ours already in progress, what a cork holds, the DISCONNECT (or
// refusing CONNACK) that says why, and the close (a TLS close_notify, the
// WebSocket close handshake). On a healthy connection that is a write to
// a socket with room, microseconds; a client that reads nothing more, its
// socket full and a write of ours blocked on it, would hold them for
// limits.write_timeout (TLS and coder/websocket bound their close by 5 s
// more of their own), and with them the goroutine that says goodbye (the
// read goroutine, and with it the session's disconnect and its will; a
// takeover's CONNACK; a shutdown batch). What is not done by then is cut
// (conn.cut), which ends the blocked writes too: the client cannot read a
// goodbye then anyway. linger, which waits for a client that is still
// writing, moves the bound by drainTime.
const goodbyeTimeout = 500 * time.Millisecond

// boundGoodbye starts the goodbye's bound, once: goodbyeTimeout from now,
// the connection is cut. Close stops it once closed.
func (c *conn) boundGoodbye() {
	c.byeOnce.Do(func() { c.byeTimer = goodbyeBound(c.cut) })
}

// goodbyeBound starts a goodbye's bound: goodbyeTimeout from now, cut
// runs, unless the timer it returns is stopped first. Every goodbye the
// server says takes it: a connection's (boundGoodbye) and a WebSocket
// refused before it is one (wsListener.handle).
func goodbyeBound(cut func()) *time.Timer { return time.AfterFunc(goodbyeTimeout, cut) }

// sayGoodbye begins the end of the connection, which the server takes
// this way whatever its reason: it starts the goodbye's bound and writes
// last (the packet that says why; nil: nothing) after whatever a cork
// holds. The caller then closes (Close), or its read goroutine does,
// ending; both are within the bound.
func (c *conn) sayGoodbye(last []byte) error {
	c.boundGoodbye()
	if last == nil {
		return nil
	}
	if _, err := c.Write(last); err != nil {
		return err
	}
	return c.flush()
}

// disconnect is sayGoodbye with DISCONNECT reason to an MQTT 5 client
// (§3.14.2.1), once: the reason code and an empty property list, which
// could be left out [MQTT-3.14.2.2.1] but whose absence some decoders,
// mochi's own, read as no reason; no reason string, which could make it
// larger than the client's Maximum Packet Size [MQTT-3.14.2-3]. MQTT
// 3.1.1 has no DISCONNECT from the server: nothing is written.
//
// After 0x93 Receive Maximum exceeded (§3.3.4, §4.13.2), sent on the read
// goroutine to a client that is sending a stream of QoS 1/2 publishes and
// may still be writing, Close lingers. Not after the others: those sent
// for other reasons (0x8B shutting down, 0x8D keep alive timeout, 0x8E
// session taken over) come often from another goroutine, where Close must
// not wait, and a client refused for a single packet (0x82 for a second
// CONNECT) is waiting for an answer, not writing: Paho's suite, whose
// client spins on a socket that reads end-of-file, hung in 2 of 8 runs of
// test_basic when those lingered too, and in none of 8 without. The
// framer's refusals (goodbye) linger as before.
func (c *conn) disconnect(reason byte) error {
	if !c.v5.Load() || !c.saidBye.CompareAndSwap(false, true) {
		return c.sayGoodbye(nil)
	}
	if reason == packets.ErrReceiveMaximum.Code {
		c.bye.Store(true)
	}
	return c.sayGoodbye([]byte{packets.Disconnect << 4, 2, reason, 0})
}

// linger ends the sending side (FIN; TLS close_notify) and reads and drops
// what the client still sends, until it closes or for drainTime, once per
// connection: after a DISCONNECT the server sends nothing more
// [MQTT-3.14.4-1] and closes the connection [MQTT-3.14.4-2], but a client
// that was writing when it came (a QoS 2 flood over the Receive Maximum
// still answering its PUBRECs, as Paho's test_flow_control2 does) must be
// able to read it. A socket closed with the client's bytes still arriving
// answers them with a reset, which fails the client's next write before it
// reads the DISCONNECT, and can make its stack throw the DISCONNECT away.
// It runs on the goroutine that closes: the read goroutine, for the
// DISCONNECT 0x93 (disconnect). Not on WebSocket: its close handshake ends
// it. The goodbye's bound moves to drainTime (and goodbyeTimeout for the
// close) from its start.
func (c *conn) linger() {
	hc, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok || !c.lingered.CompareAndSwap(false, true) {
		return
	}
	c.boundGoodbye()
	c.byeTimer.Reset(drainTime + goodbyeTimeout)
	_ = hc.CloseWrite()
	_ = c.Conn.SetReadDeadline(time.Now().Add(drainTime))
	_, _ = io.Copy(io.Discard, io.LimitReader(c.Conn, drainBytes))
}

// keepAliveTimeout tells an MQTT 5 client that it is cut for its
// silence: DISCONNECT 0x8D Keep Alive timeout (§3.14.2.1) before the
// close [MQTT-3.1.2-22]. The caller closes.
func (c *conn) keepAliveTimeout() {
	_ = c.disconnect(packets.ErrKeepAliveTimeout.Code)
}

// drainTime and drainBytes bound what linger reads and drops.
const (
	drainTime  = time.Second
	drainBytes = 16 << 20
)

// outPool holds the buffers of corked connections: an idle connection
// holds none.
var outPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// corkLimit is the most a corked connection collects before it writes:
// a long round goes out in pieces of this size.
const corkLimit = 64 << 10

// Write writes p within writeTimeout, or closes the connection; while
// corked it keeps p for flush.
func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken.Load() {
		return 0, errConnBroken
	}
	if !c.corked {
		return c.writeLocked(p)
	}
	if c.out == nil {
		c.out = outPool.Get().(*[]byte)
	}
	*c.out = append(*c.out, p...)
	if len(*c.out) >= corkLimit {
		if _, err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// appendCorked appends to the buffer what add appends (the engine's
// packets, encoded in place: mochiConn) and corks. add returns b
// unchanged with an error when it refuses: then nothing changes.
// appendCorked returns the bytes added.
func (c *conn) appendCorked(add func(b []byte) ([]byte, error)) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.appendCorkedLocked(add, true)
}

// appendCorkedNow is appendCorked without waiting: ok is false, with
// nothing added, while another write holds the connection or when the
// connection cannot write without waiting (TLS, WebSocket: flushNow
// never writes there, so the sender must, and it encodes too), and it
// never writes at the cork limit (its callers add a few small packets).
func (c *conn) appendCorkedNow(add func(b []byte) ([]byte, error)) (n int, ok bool, err error) {
	if c.ra.raw == nil || !c.wmu.TryLock() {
		return 0, false, nil
	}
	defer c.wmu.Unlock()
	n, err = c.appendCorkedLocked(add, false)
	return n, true, err
}

// appendCorkedLocked is appendCorked with wmu held; limit writes the
// buffer once it reaches corkLimit.
func (c *conn) appendCorkedLocked(add func(b []byte) ([]byte, error), limit bool) (int, error) {
	if c.broken.Load() {
		return 0, errConnBroken
	}
	if c.out == nil {
		c.out = outPool.Get().(*[]byte)
	}
	start := len(*c.out)
	b, err := add(*c.out)
	*c.out = b
	if err != nil {
		// Nothing kept: not corked, or nothing would flush what mochi
		// writes next (the engine flushes rounds that wrote something).
		if !c.corked && len(b) == 0 {
			outPool.Put(c.out)
			c.out = nil
		}
		return 0, err
	}
	c.corked = true
	n := len(b) - start
	if limit && len(b) >= corkLimit {
		if _, err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// cork makes Writes collect until flush.
func (c *conn) cork() {
	c.wmu.Lock()
	c.corked = true
	c.wmu.Unlock()
}

// flush writes what Write collected since cork, and uncorks.
func (c *conn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.corked = false
	_, err := c.flushLocked()
	if c.out != nil {
		*c.out = (*c.out)[:0]
		outPool.Put(c.out)
		c.out = nil
	}
	return err
}

// flushNow is flush without waiting: it writes what the cork collected
// as far as the socket takes it at once (one non-blocking write(2) on a
// plain TCP socket), keeps the rest, still corked, for the next flush,
// and reports whether all of it went. It takes nothing while another
// write holds the connection, and nothing on TLS and WebSocket, which
// cannot write without waiting. An error means the connection is broken.
func (c *conn) flushNow() (bool, error) {
	if !c.wmu.TryLock() {
		return false, nil
	}
	defer c.wmu.Unlock()
	if c.broken.Load() {
		return false, errConnBroken
	}
	if c.out == nil || len(*c.out) == 0 {
		c.corked = false
		if c.out != nil {
			outPool.Put(c.out)
			c.out = nil
		}
		return true, nil
	}
	n, ok := c.writeRaw(*c.out)
	if !ok {
		return false, nil // flush, which waits, says what it is
	}
	out := *c.out
	*c.out = out[:copy(out, out[n:])]
	if len(*c.out) > 0 {
		return false, nil
	}
	c.corked = false
	outPool.Put(c.out)
	c.out = nil
	return true, nil
}

// writeRaw writes p as far as the socket takes it at once: one
// non-blocking write(2) on a plain TCP socket, in RawConn.Write. n is what
// it took (0 for a full socket); ok is false when it cannot write this way
// (TLS, WebSocket) or the write failed: the blocking write says why.
// Unlike Conn.Write it needs no deadline (a runtime timer per write) and
// no blocking system call, whose entry wakes sysmon when the process was
// idle. Under wmu.
func (c *conn) writeRaw(p []byte) (n int, ok bool) {
	if c.ra.raw == nil {
		return 0, false
	}
	if c.writeOut == nil {
		c.writeOut = c.writeOutNow
	}
	c.nowP = p
	err := c.ra.raw.Write(c.writeOut)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The deadline of the last write that waited has passed (it stays
		// set after it): RawConn.Write refuses before it writes, though a
		// non-blocking write needs none. Every write that waits sets its
		// own (writeLocked), so clearing it here costs none of them.
		_ = c.Conn.SetWriteDeadline(time.Time{})
		err = c.ra.raw.Write(c.writeOut)
	}
	c.nowP = nil
	switch {
	case err != nil:
		return 0, false
	case c.nowErr == syscall.EAGAIN || c.nowErr == syscall.EINTR:
		return 0, true
	case c.nowErr != nil:
		return 0, false
	}
	return c.nowN, true
}

// writeOutNow is writeRaw's write(2) of nowP, in RawConn.Write: once,
// whether the socket took it or not (it is non-blocking). Under wmu.
func (c *conn) writeOutNow(fd uintptr) bool {
	c.nowN, c.nowErr = writeNonblock(fd, c.nowP)
	return true
}

// flushLocked writes what out holds. Called with wmu held.
func (c *conn) flushLocked() (int, error) {
	if c.out == nil || len(*c.out) == 0 {
		return 0, nil
	}
	if c.broken.Load() {
		return 0, errConnBroken
	}
	n, err := c.writeLocked(*c.out)
	*c.out = (*c.out)[:0]
	return n, err
}

// writeLocked writes p within writeTimeout, or closes the connection.
// On plain TCP what the socket takes at once goes first (writeRaw); only
// what a full socket does not take waits, with the deadline. Called with
// wmu held.
func (c *conn) writeLocked(p []byte) (int, error) {
	done, _ := c.writeRaw(p)
	if done == len(p) {
		return done, nil
	}
	p = p[done:]
	now := time.Now()
	deadline := now.Add(c.writeTimeout)
	_ = c.Conn.SetWriteDeadline(deadline)
	c.writingSince.Store(now.UnixNano())
	n, err := c.Conn.Write(p)
	c.writingSince.Store(0)
	n += done
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

// Close closes the connection once, after writing what a cork collected,
// and after a DISCONNECT that refused the client's packet, once the client
// could read it (linger), all within the goodbye's bound (boundGoodbye).
// After a failed write it skips the goodbye, which would block on the
// same stuck socket.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.boundGoodbye()
		defer c.byeTimer.Stop()
		if c.broken.Load() {
			c.closeErr = c.closeNow()
			return
		}
		// What a corked round collected goes first (a DISCONNECT among
		// it), unless a write is in progress, which may be stuck: the
		// close must end it at once, as it did before there was a cork.
		if c.writingSince.Load() == 0 {
			_ = c.flush()
		}
		if c.broken.Load() {
			c.closeErr = c.closeNow()
			return
		}
		if c.bye.Load() {
			c.linger()
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

// isTimeout reports whether a write error came from its deadline: the
// error says so (a WebSocket write's too, wsConn), or, for a transport
// that reports it otherwise (a write ended by the close its deadline
// made), the clock.
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
