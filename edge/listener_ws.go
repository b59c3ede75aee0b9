package edge

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// wsSubprotocols are the WebSocket subprotocols accepted. MQTT 3.1.1 and 5
// require "mqtt" [MQTT-6.0.0-3]; "mqttv3.1" is what MQTT 3.1 clients offer.
var wsSubprotocols = []string{"mqtt", "mqttv3.1"}

// wsListener is MQTT over WebSocket (WSS when tlsConfig is set), on
// github.com/coder/websocket. Each binary WebSocket message is part of the
// MQTT byte stream: messages may split or join MQTT packets. A text frame
// closes the connection with 1003 (unsupported data); a client that offers
// no MQTT subprotocol is closed with 1008 (policy violation).
type wsListener struct {
	b         *Broker
	name      string
	address   string
	path      string
	origins   []string
	names     []string                   // server_names
	tlsConfig *tls.Config                // at start; nil: plain WebSocket
	tlsNow    atomic.Pointer[tls.Config] // in force (setTLS)
	useCN     bool
	readLimit int64
	log       *slog.Logger

	ln     net.Listener
	srv    *http.Server
	served chan struct{}
	gate   connGate
}

func newWSListener(b *Broker, lc ListenerConfig, tlsConfig *tls.Config) *wsListener {
	// NetConn turns coder's read limit off. mochi bounds each MQTT packet;
	// this bounds each WebSocket message, leaving room for a client that
	// packs a few packets into one message.
	limit := 2*int64(b.cfg.Limits.MaxPacketSize) + 1024
	if b.cfg.Limits.MaxPacketSize <= 0 {
		limit = 2*maxMQTTPacket + 1024
	}
	return &wsListener{
		b:         b,
		name:      lc.Name,
		address:   lc.Address,
		path:      lc.Path,
		origins:   lc.AllowedOrigins,
		names:     lc.ServerNames,
		tlsConfig: tlsConfig,
		useCN:     lc.TLS.UseCNAsUsername,
		readLimit: limit,
		log:       b.log.With("listener", lc.Name),
		served:    make(chan struct{}),
	}
}

// Init binds the socket.
func (l *wsListener) Init(*slog.Logger) error {
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return fmt.Errorf("listener %s: %w", l.name, err)
	}
	l.ln = ln
	mux := http.NewServeMux()
	mux.HandleFunc(l.path, l.handle)
	l.srv = &http.Server{
		Handler: mux,
		// The upgrade must happen within the connect timeout; an idle
		// keep-alive connection that never upgrades is closed as soon.
		// Hijacking clears these deadlines for the MQTT session.
		ReadHeaderTimeout: l.b.connectTimeout(),
		ReadTimeout:       l.b.connectTimeout(),
		IdleTimeout:       l.b.connectTimeout(),
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          log.New(httpErrorLog{l}, "", 0),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, socketKey{}, c)
		},
	}
	if l.tlsConfig != nil {
		l.setTLS(l.tlsConfig)
		// Each handshake takes the configuration in force (see setTLS).
		l.srv.TLSConfig = &tls.Config{
			NextProtos: []string{"http/1.1"},
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				return l.tlsNow.Load(), nil
			},
		}
		l.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	return nil
}

// setTLS puts a TLS configuration in force for new connections (Reload
// rotates certificates this way); established ones keep theirs.
func (l *wsListener) setTLS(c *tls.Config) {
	c = c.Clone()
	// WebSocket needs HTTP/1.1 (Go keeps RFC 8441 extended CONNECT off).
	c.NextProtos = []string{"http/1.1"}
	l.tlsNow.Store(c)
}

// Serve serves HTTP until the listener is closed. Each connection runs in
// the broker's attach, not in mochi's EstablishConnection.
func (l *wsListener) Serve(listeners.EstablishFn) {
	defer close(l.served)
	var err error
	if l.tlsConfig != nil {
		err = l.srv.ServeTLS(l.ln, "", "")
	} else {
		err = l.srv.Serve(l.ln)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		l.log.Error("websocket listener stopped", "error", err)
	}
}

// handle upgrades one request and runs the MQTT session on it.
func (l *wsListener) handle(w http.ResponseWriter, r *http.Request) {
	if !l.gate.enter() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	handed := false // to serveConn, which then leaves the gate
	defer func() {
		if !handed {
			l.gate.leave()
		}
	}()

	if origin := r.Header.Get("Origin"); !l.originAllowed(origin, r.Host) {
		l.b.metrics.rejected.WithLabelValues(l.name, "ws_origin").Inc()
		l.b.throttledLog.warn(l.log, "websocket connection refused for its origin: add it to allowed_origins, or its host to server_names",
			"origin", origin, "host", r.Host, "remote", r.RemoteAddr)
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols:       wsSubprotocols,
		InsecureSkipVerify: true, // originAllowed decided, more strictly than coder would
	})
	if err != nil {
		// Accept has answered with the HTTP error already.
		l.b.metrics.rejected.WithLabelValues(l.name, "ws_handshake").Inc()
		l.log.Debug("websocket handshake refused", "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"), "error", err)
		return
	}
	cut := cutWS(r, ws)
	if ws.Subprotocol() == "" {
		l.b.metrics.rejected.WithLabelValues(l.name, "ws_subprotocol").Inc()
		l.log.Debug("websocket client offered no mqtt subprotocol", "remote", r.RemoteAddr)
		// Within the goodbye's bound: coder's close handshake waits up to
		// 5 s for a close frame the client may never send.
		bound := goodbyeBound(func() { _ = cut() })
		_ = ws.Close(websocket.StatusPolicyViolation, "subprotocol mqtt required")
		bound.Stop()
		return
	}
	nc := newWSConn(websocket.NetConn(context.Background(), ws, websocket.MessageBinary), cut)
	ws.SetReadLimit(l.readLimit)
	handed = true
	l.b.serveConn(l.name, nc, cut, r.TLS, l.useCN, l.gate.leave)
}

// socketKey keys, in each request's context, the connection the HTTP
// server accepted (http.Server.ConnContext).
type socketKey struct{}

// cutWS returns what closes ws at once, without its close handshake: the
// TCP socket under it (under TLS too) first, then coder's CloseNow. Not
// CloseNow alone: while a close handshake runs (Close, which writes a
// close frame and waits up to 5 s each for it to go and for the client's),
// CloseNow waits for it to end, so a client that never answers it, or
// whose socket is full, would hold the close for up to 10 s, past the
// goodbye's bound (goodbyeTimeout) and a write timeout's cut; with the
// socket closed, the handshake's writes and reads fail at once.
func cutWS(r *http.Request, ws *websocket.Conn) func() error {
	sock, _ := r.Context().Value(socketKey{}).(net.Conn)
	if tc, ok := sock.(*tls.Conn); ok {
		sock = tc.NetConn()
	}
	if sock == nil {
		return ws.CloseNow
	}
	return func() error {
		err := sock.Close()
		_ = ws.CloseNow()
		return err
	}
}

// errReadExpired and errWriteExpired are what a WebSocket read or write
// returns once its deadline passed: os.ErrDeadlineExceeded, as a TCP or
// TLS read or write says.
var (
	errReadExpired  = fmt.Errorf("edge: websocket read: %w", os.ErrDeadlineExceeded)
	errWriteExpired = fmt.Errorf("edge: websocket write: %w", os.ErrDeadlineExceeded)
)

// wsConn is coder/websocket's NetConn with deadlines of its own
// (wsDeadline), coder's left unused. coder's closes the WebSocket the
// moment its read deadline passes during a read, so a client silent for
// 1.5 keepalives could not be told why first (DISCONNECT 0x8D Keep Alive
// timeout, §3.14.2.1), as TCP and TLS clients are (Broker.serve). Here
// the read deadline, when it finds a read waiting, has onExpire say
// goodbye (conn.keepAliveTimeout) and then closes the WebSocket, without
// its close handshake, which would wait up to 5 s for a client that sends
// nothing: the read then fails with errReadExpired. With no read waiting,
// the next read fails so, and the read goroutine says goodbye itself. A
// write deadline that passes during a write closes the connection, as
// coder's does (conn then cuts it as a slow consumer).
type wsConn struct {
	net.Conn // websocket.NetConn
	closeNow func() error
	// onExpire is set before the first deadline (serveConn) and runs on
	// the timer's goroutine.
	onExpire func()
	rd, wd   wsDeadline
}

func newWSConn(nc net.Conn, closeNow func() error) *wsConn {
	w := &wsConn{Conn: nc, closeNow: closeNow}
	w.rd.init(func() {
		if w.onExpire != nil {
			w.onExpire()
		}
		_ = w.closeNow()
	})
	w.wd.init(func() { _ = w.closeNow() })
	return w
}

// wsDeadline is one direction's deadline on a wsConn: a timer, and the
// deadline in force, which alone its callback acts on. coder's NetConn
// deadlines (and the one wsConn had) clear the expired mark and then reset
// the timer: a timer that fired for the previous deadline between the two
// marked the new one expired, and the next read (write) failed at a
// deadline no longer in force. Here set and fire take turns under mu, and
// fire, for an earlier deadline than the one in force, waits for that.
type wsDeadline struct {
	mu    sync.Mutex // guards by, and fire's decision
	by    time.Time  // the deadline in force; zero: none
	timer *time.Timer
	// expired is set once by passed: the read (write) in progress fails,
	// and so does every next one until set moves the deadline.
	expired atomic.Bool
	// busy is held by the read (write) in progress (wsConn.Read, Write).
	busy sync.Mutex
	// onPass runs, on the timer's goroutine, when by passes during a read
	// (write); it closes the connection, which ends it.
	onPass func()
}

func (d *wsDeadline) init(onPass func()) {
	d.onPass = onPass
	d.timer = time.AfterFunc(time.Duration(math.MaxInt64), d.fire)
	d.timer.Stop()
}

// set puts deadline t in force; the zero time: none.
func (d *wsDeadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.by = t
	d.expired.Store(false)
	if t.IsZero() {
		d.timer.Stop()
		return
	}
	d.timer.Reset(max(time.Until(t), 1))
}

// fire is the timer's callback: it marks the deadline in force expired
// once it passed, and has onPass end the read (write) in progress.
func (d *wsDeadline) fire() {
	d.mu.Lock()
	if d.by.IsZero() {
		d.mu.Unlock()
		return // stopped since the timer fired
	}
	if left := time.Until(d.by); left > 0 {
		// Fired for an earlier deadline, which set moved since (it may
		// have re-armed the timer already: once more is harmless).
		d.timer.Reset(left)
		d.mu.Unlock()
		return
	}
	d.expired.Store(true)
	during := !d.busy.TryLock()
	if !during {
		d.busy.Unlock() // none in progress: the next one fails
	}
	d.mu.Unlock()
	if during {
		d.onPass()
	}
}

// Read reads the next bytes of the stream; see wsConn.
func (w *wsConn) Read(p []byte) (int, error) {
	w.rd.busy.Lock()
	defer w.rd.busy.Unlock()
	if w.rd.expired.Load() {
		return 0, errReadExpired
	}
	n, err := w.Conn.Read(p)
	if err != nil && w.rd.expired.Load() {
		err = errReadExpired
	}
	return n, err
}

// Write writes p as one binary message; see wsConn.
func (w *wsConn) Write(p []byte) (int, error) {
	w.wd.busy.Lock()
	defer w.wd.busy.Unlock()
	if w.wd.expired.Load() {
		return 0, errWriteExpired
	}
	n, err := w.Conn.Write(p)
	if err != nil && w.wd.expired.Load() {
		err = errWriteExpired
	}
	return n, err
}

// SetReadDeadline sets the read deadline; the zero time: none.
func (w *wsConn) SetReadDeadline(t time.Time) error {
	w.rd.set(t)
	return nil
}

// SetWriteDeadline sets the write deadline; the zero time: none.
func (w *wsConn) SetWriteDeadline(t time.Time) error {
	w.wd.set(t)
	return nil
}

// SetDeadline sets both deadlines.
func (w *wsConn) SetDeadline(t time.Time) error {
	w.rd.set(t)
	w.wd.set(t)
	return nil
}

// Close stops the deadlines' timers and closes the WebSocket.
func (w *wsConn) Close() error {
	w.rd.set(time.Time{})
	w.wd.set(time.Time{})
	return w.Conn.Close()
}

// originAllowed decides a browser's WebSocket request by its Origin
// header (RFC 6455 §10.2). No Origin: not a browser, allowed. An Origin
// host matching allowed_origins: allowed. Otherwise only a same-origin
// request (Origin's host and port are Host) on a trusted host: loopback or
// server_names. coder/websocket trusts every same-origin request, but a
// page on a DNS name that resolves to us (DNS rebinding) is same-origin
// with whatever Host it sends.
func (l *wsListener) originAllowed(origin, host string) bool {
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	for _, p := range l.origins {
		p = strings.ToLower(p)
		if ok, _ := path.Match(p, strings.ToLower(u.Hostname())); ok {
			return true
		}
		if ok, _ := path.Match(p, strings.ToLower(u.Host)); ok {
			return true
		}
	}
	return strings.EqualFold(u.Host, host) && trustedName(u.Hostname(), l.names)
}

// trustedName reports whether name, a host name or address a browser
// reached us by, is ours: loopback (localhost, 127.0.0.0/8, ::1) or one of
// names (server_names). A DNS name an attacker points at us (DNS
// rebinding) is not: the page on it is the attacker's.
func trustedName(name string, names []string) bool {
	if strings.EqualFold(name, "localhost") {
		return true
	}
	if ip, err := netip.ParseAddr(name); err == nil && ip.IsLoopback() {
		return true
	}
	for _, n := range names {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

// httpErrorLog receives the HTTP server's error lines: failed TLS
// handshakes are counted like the TCP listener's, and every line goes to
// the log at Debug.
type httpErrorLog struct{ l *wsListener }

func (w httpErrorLog) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("TLS handshake error")) {
		w.l.b.metrics.rejected.WithLabelValues(w.l.name, "tls_handshake").Inc()
	}
	w.l.log.Debug("http server", "message", string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// ID is the listener name.
func (l *wsListener) ID() string { return l.name }

// Address is the bound address.
func (l *wsListener) Address() string {
	if l.ln == nil {
		return l.address
	}
	return l.ln.Addr().String()
}

// Protocol is "ws" or "wss".
func (l *wsListener) Protocol() string { return l.kind() }

func (l *wsListener) kind() string {
	if l.tlsConfig != nil {
		return "wss"
	}
	return "ws"
}

func (l *wsListener) addr() net.Addr {
	if l.ln == nil {
		return nil
	}
	return l.ln.Addr()
}

// Close stops accepting; see tcpListener.Close for why closeClients is not called.
func (l *wsListener) Close(listeners.CloseFn) { l.stopAccepting() }

// stopAccepting closes the socket and every connection still in its HTTP
// phase. Upgraded (hijacked) connections are not the http.Server's any more:
// the broker ends those.
func (l *wsListener) stopAccepting() {
	l.gate.close()
	if l.srv != nil {
		_ = l.srv.Close()
	}
	if l.ln != nil {
		_ = l.ln.Close()
	}
}

func (l *wsListener) wait(ctx context.Context, started bool) error {
	if started {
		if err := waitDone(ctx, l.served); err != nil {
			return err
		}
	}
	return l.gate.wait(ctx)
}
