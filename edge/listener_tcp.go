package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// tcpListener is MQTT over TCP, or TLS when tlsConfig is set. It implements
// mochi's listeners.Listener so mochi starts it, but every accepted
// connection goes through the broker's conn wrapper first.
type tcpListener struct {
	b         *Broker
	name      string
	address   string
	tlsConfig *tls.Config                // at start; nil: plain TCP
	tlsNow    atomic.Pointer[tls.Config] // in force (setTLS)
	useCN     bool
	log       *slog.Logger

	ln     net.Listener
	served chan struct{} // closed when Serve returns
	gate   connGate
}

func newTCPListener(b *Broker, lc ListenerConfig, tlsConfig *tls.Config) *tcpListener {
	l := &tcpListener{
		b:         b,
		name:      lc.Name,
		address:   lc.Address,
		tlsConfig: tlsConfig,
		useCN:     lc.TLS.UseCNAsUsername,
		log:       b.log.With("listener", lc.Name),
		served:    make(chan struct{}),
	}
	l.tlsNow.Store(tlsConfig)
	return l
}

// setTLS puts a TLS configuration in force for new connections (Reload
// rotates certificates this way); established ones keep theirs.
func (l *tcpListener) setTLS(c *tls.Config) { l.tlsNow.Store(c) }

// Init binds the socket.
func (l *tcpListener) Init(*slog.Logger) error {
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return fmt.Errorf("listener %s: %w", l.name, err)
	}
	l.ln = ln
	return nil
}

// Serve accepts connections until the listener is closed. Each runs in
// the broker's attach, not in mochi's EstablishConnection.
func (l *tcpListener) Serve(listeners.EstablishFn) {
	defer close(l.served)
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.gate.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http does,
			// instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.b.throttledLog.warn(l.log, "accept failed", "error", err, "retry_in", backoff)
			if !l.gate.sleep(backoff) {
				return
			}
			continue
		}
		backoff = 0
		if !l.gate.enter() {
			_ = c.Close()
			return
		}
		go l.handle(c)
	}
}

// handle runs one connection: the TLS handshake (bounded by the connect
// timeout), then the MQTT session on the wrapped connection (serveConn,
// which leaves the gate when the connection is over).
func (l *tcpListener) handle(raw net.Conn) {
	if l.tlsConfig == nil {
		l.b.serveConn(l.name, raw, raw.Close, nil, false, l.gate.leave)
		return
	}
	tc := tls.Server(raw, l.tlsNow.Load())
	ctx, cancel := context.WithTimeout(l.gate.context(), l.b.connectTimeout())
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.b.metrics.rejected.WithLabelValues(l.name, "tls_handshake").Inc()
		l.log.Debug("tls handshake failed", "remote", raw.RemoteAddr().String(), "error", err)
		_ = raw.Close()
		l.gate.leave()
		return
	}
	state := tc.ConnectionState()
	l.b.serveConn(l.name, tc, raw.Close, &state, l.useCN, l.gate.leave)
}

// ID is the listener name.
func (l *tcpListener) ID() string { return l.name }

// Address is the bound address.
func (l *tcpListener) Address() string {
	if l.ln == nil {
		return l.address
	}
	return l.ln.Addr().String()
}

// Protocol is "tcp" or "tls".
func (l *tcpListener) Protocol() string { return l.kind() }

func (l *tcpListener) kind() string {
	if l.tlsConfig != nil {
		return "tls"
	}
	return "tcp"
}

func (l *tcpListener) addr() net.Addr {
	if l.ln == nil {
		return nil
	}
	return l.ln.Addr()
}

// Close stops accepting. It deliberately does not call closeClients: mochi's
// closeListenerClients goes through Clients.GetByListener, which takes a
// recursive read lock and can deadlock against a connecting client (mochi
// issue #488). The broker disconnects clients itself, in batches, before
// mochi's Close runs.
func (l *tcpListener) Close(listeners.CloseFn) { l.stopAccepting() }

func (l *tcpListener) stopAccepting() {
	l.gate.close()
	if l.ln != nil {
		_ = l.ln.Close()
	}
}

func (l *tcpListener) wait(ctx context.Context, started bool) error {
	if started {
		if err := waitDone(ctx, l.served); err != nil {
			return err
		}
	}
	return l.gate.wait(ctx)
}
