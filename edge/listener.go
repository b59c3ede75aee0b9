package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// edgeListener is what the broker needs from its listeners beyond mochi's
// listeners.Listener.
type edgeListener interface {
	listeners.Listener
	// addr is the bound address (after Init).
	addr() net.Addr
	// stopAccepting closes the socket; accepted connections keep running.
	stopAccepting()
	// wait blocks until the accept loop and every connection goroutine are
	// done, or ctx ends. started says whether Serve was ever called.
	wait(ctx context.Context, started bool) error
	// kind is "tcp", "tls", "ws" or "wss".
	kind() string
	// setTLS replaces the TLS configuration of a TLS listener for new
	// connections.
	setTLS(*tls.Config)
}

// connGate counts a listener's connection goroutines and refuses new ones
// once closed, so that waiting for them cannot race with a late Add.
type connGate struct {
	mu     sync.Mutex
	closed bool
	n      int
	zero   chan struct{} // closed when closed && n == 0
	stop   chan struct{} // closed on close, wakes sleepers
	ctx    context.Context
	cancel context.CancelFunc // cancels ctx on close
}

func (g *connGate) init() {
	if g.stop == nil {
		g.stop = make(chan struct{})
		g.zero = make(chan struct{})
		g.ctx, g.cancel = context.WithCancel(context.Background())
	}
}

// context is cancelled when the gate closes: it bounds work done before a
// connection is handed to mochi (the TLS handshake).
func (g *connGate) context() context.Context {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	return g.ctx
}

func (g *connGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	if g.closed {
		return false
	}
	g.n++
	return true
}

func (g *connGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if g.closed && g.n == 0 {
		close(g.zero)
	}
}

func (g *connGate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	if g.closed {
		return
	}
	g.closed = true
	close(g.stop)
	g.cancel()
	if g.n == 0 {
		close(g.zero)
	}
}

func (g *connGate) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// sleep waits d, or returns false at once when the gate closes.
func (g *connGate) sleep(d time.Duration) bool {
	g.mu.Lock()
	g.init()
	stop := g.stop
	g.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}

// wait blocks until the gate is closed and empty, or ctx ends.
func (g *connGate) wait(ctx context.Context) error {
	g.mu.Lock()
	g.init()
	zero := g.zero
	g.mu.Unlock()
	return waitDone(ctx, zero)
}

// serveConn wraps an accepted connection and runs it (attach), on the
// caller's goroutine until CONNACK and on a goroutine of its own after;
// leave is called once the client is gone.
func (b *Broker) serveConn(listener string, c net.Conn, closeNow func() error, tlsState *tls.ConnectionState, useCN bool, leave func()) {
	remote := c.RemoteAddr().String()
	wc := &conn{
		Conn:         c,
		writeTimeout: b.writeTimeout(),
		closeNow:     closeNow,
		tlsState:     tlsState,
		useCN:        useCN,
		connectBy:    time.Now().Add(b.connectTimeout()),
		onSlow: func() {
			b.metrics.slowConsumers.Inc()
			b.throttledLog.warn(b.log, "slow consumer disconnected: a write missed its deadline",
				"listener", listener, "remote", remote, "write_timeout", b.writeTimeout())
		},
	}
	wc.ra.setRaw(c)
	if ws, ok := c.(*wsConn); ok {
		ws.onExpire = wc.keepAliveTimeout
	}
	if m := b.cfg.Limits.MaxPacketSize; m > 0 {
		wc.framer = &packetFramer{max: int64(m)}
		wc.onRefused = func(reason, property byte) {
			if reason == packets.ErrProtocolViolation.Code {
				b.metrics.rejected.WithLabelValues(listener, "protocol_error").Inc()
				b.throttledLog.info(b.log, "client sent a property twice that MQTT 5 allows once, or a value it may not have (protocol error): disconnected",
					"listener", listener, "remote", remote, "property", fmt.Sprintf("%#02x", property))
				return
			}
			b.metrics.rejected.WithLabelValues(listener, "packet_too_large").Inc()
			b.throttledLog.info(b.log, "client sent a packet larger than limits.max_packet_size: disconnected",
				"listener", listener, "remote", remote, "max_packet_size", int64(m))
		}
	}
	wc.end = func(err error) {
		_ = wc.Close()
		if errors.Is(err, errMaxClients) {
			b.metrics.rejected.WithLabelValues(listener, "max_clients").Inc()
			b.throttledLog.warn(b.log, "connection refused: limits.max_clients reached", "listener", listener, "remote", remote,
				"max_clients", b.cfg.Limits.MaxClients)
		}
		if err != nil {
			b.log.Debug("connection ended", "listener", listener, "remote", remote, "error", err)
		}
		b.untrack(wc)
		leave()
	}
	if !b.track(wc) {
		wc.cut()
		leave()
		return
	}
	b.metrics.accepted.WithLabelValues(listener).Inc()

	// mochi reads CONNECT with no deadline at all; a client that connects and
	// says nothing would hold its goroutine forever. After CONNECT mochi sets
	// the keepalive deadline itself.
	_ = c.SetReadDeadline(time.Now().Add(b.connectTimeout()))
	b.attach(listener, wc)
}
