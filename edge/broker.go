package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/wal"
)

// Errors returned by the Broker.
var (
	// ErrStarted is returned by a second Start: a Broker runs once.
	ErrStarted = errors.New("edge: broker already started")
	// ErrStopped is returned by Start after Shutdown.
	ErrStopped = errors.New("edge: broker stopped")
)

// Options are the parts of a broker that come from its embedder rather than
// the config file.
type Options struct {
	// Logger is the root logger; the broker narrows it with
	// component=edge. nil: slog.Default().
	Logger *slog.Logger
	// Registry receives the broker's metrics and is served on /metrics.
	// nil: a new registry. A registry serves one broker: registering a
	// second one on it fails.
	Registry *prometheus.Registry
	// Ready, when set, is called once by Run after Start has returned, that
	// is when every listener accepts connections and the log is open (cmd
	// tells systemd then). It runs on Run's goroutine and must return at once.
	Ready func(*Broker)
	// LogFS is the file-system seam of the log (wal.Config.FS), for tests
	// that inject faults or simulate a power cut. Zero: the operating
	// system.
	LogFS wal.FS
}

// Broker is the MQTT broker: mochi's engine behind our listeners, hooks and
// HTTP side. Build it with New, run it with Start and Shutdown (or Run).
type Broker struct {
	cfg     Config
	log     *slog.Logger
	root    *slog.Logger // the embedder's, for other components
	reg     *prometheus.Registry
	logFS   wal.FS // Options.LogFS
	metrics *metrics
	srv     *mqtt.Server
	// lifecycle holds the same hooks as srv, in the same order (addHook),
	// for the connection events attach runs itself: mochi keeps its own
	// list unexported.
	lifecycle    *mqtt.Hooks
	listeners    []edgeListener
	byName       map[string]edgeListener
	auth         *authHook
	limits       *limitsHook
	http         *httpSide // nil: HTTP disabled
	throttledLog *logThrottle
	noAuth       bool           // neither a password file nor allow_anonymous
	loopback     []loopbackMove // listeners (and "http") forced onto loopback

	// storage is the durable log. The durability work opens it in Start,
	// before the listeners, and Shutdown closes it last. nil until then.
	storage io.Closer
	// bridges are the links to upstream brokers, on the log; nil until Start.
	bridges atomic.Pointer[bridge.Set]

	connsMu     sync.Mutex
	conns       map[*conn]struct{}
	connsClosed bool

	// given is the configuration as New got it (before listener names and
	// loopback moves): Reload compares the next one with it. Guarded by
	// reloadMu, which serialises Reload.
	given    Config
	reloadMu sync.Mutex

	mu       sync.Mutex
	started  bool // Start bound everything and mochi serves
	stopped  bool // Shutdown ran
	ready    atomic.Bool
	stopping atomic.Bool
}

// New validates cfg and builds a broker. It reads the password file and the
// TLS files, and binds nothing. Problems with the configuration are
// *ConfigError (errors.Is(err, ErrConfig)).
func New(cfg Config, opts Options) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	b := &Broker{
		log:          logger.With("component", "edge"),
		root:         logger,
		reg:          reg,
		logFS:        opts.LogFS,
		byName:       map[string]edgeListener{},
		throttledLog: newLogThrottle(time.Second),
		conns:        map[*conn]struct{}{},
	}
	b.given = cfg
	b.given.Listeners = append([]ListenerConfig(nil), cfg.Listeners...)
	cfg.Listeners = append([]ListenerConfig(nil), cfg.Listeners...)
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		if lc.Name == "" {
			lc.Name = lc.Type + strconv.Itoa(i)
		}
		if lc.Type == "ws" && lc.Path == "" {
			lc.Path = "/mqtt"
		}
	}
	b.noAuth = noAuthentication(cfg.Auth)
	b.loopback = moveToLoopback(&cfg)
	b.cfg = cfg

	files, problems := readFiles(cfg)
	if len(problems) > 0 {
		return nil, joinConfigErrors(problems)
	}
	auth := newAuthHook(b, cfg.Auth, files)
	b.auth = auth

	for i, lc := range cfg.Listeners {
		if _, dup := b.byName[lc.Name]; dup {
			return nil, &ConfigError{Path: fmt.Sprintf("listeners[%d].name", i), Reason: fmt.Sprintf("duplicate (got %q)", lc.Name)}
		}
		tlsConfig := files.tls[i]
		var l edgeListener
		switch lc.Type {
		case "tcp":
			l = newTCPListener(b, lc, tlsConfig)
		case "ws":
			l = newWSListener(b, lc, tlsConfig)
		default:
			return nil, &ConfigError{Path: fmt.Sprintf("listeners[%d].type", i), Reason: fmt.Sprintf("must be tcp or ws (got %q)", lc.Type)}
		}
		b.listeners = append(b.listeners, l)
		b.byName[lc.Name] = l
	}

	caps := capabilities(cfg.Limits)
	b.srv = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		// The read-ahead under it buffers (readahead.go).
		ClientNetReadBufferSize: mochiReadBuffer,
		Logger: slog.New(&mochiHandler{
			inner:    logger.With("component", "mochi").Handler(),
			throttle: b.throttledLog,
		}),
	})
	// Metrics last among what can fail on the configuration, so that a
	// refused config leaves the caller's registry as it was.
	var err error
	if b.metrics, err = newMetrics(reg, b.srv, func() int { return b.blockedWriters(time.Second) }); err != nil {
		return nil, err
	}
	if err := reg.Register(newBridgeCollector(b.Bridges)); err != nil {
		return nil, fmt.Errorf("edge: bridge metrics: %w", err)
	}
	b.lifecycle = &mqtt.Hooks{Log: b.srv.Log}
	b.limits = newLimitsHook(b, caps)
	for _, h := range []mqtt.Hook{&metricsHook{m: b.metrics}, b.limits, auth} {
		if err := b.addHook(h); err != nil {
			return nil, err
		}
	}

	if cfg.HTTP.Address != "" {
		b.http = newHTTPSide(b, cfg.HTTP, reg)
	}
	return b, nil
}

// addHook adds h to mochi's hooks and to b.lifecycle, the one list for the
// connection events attach runs itself.
func (b *Broker) addHook(h mqtt.Hook) error {
	if err := b.srv.AddHook(h, nil); err != nil {
		return fmt.Errorf("edge: add hook %s: %w", h.ID(), err)
	}
	if err := b.lifecycle.Add(h, nil); err != nil {
		return fmt.Errorf("edge: add hook %s: %w", h.ID(), err)
	}
	return nil
}

// Start binds every listener and the HTTP side, starts serving, and logs
// where it listens. It returns once every listener accepts connections.
func (b *Broker) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return ErrStopped
	}
	if b.started {
		return ErrStarted
	}
	b.log.Info("authentication", b.authSummary()...)
	if b.noAuth {
		b.log.Warn("no authentication configured (auth.password_file and auth.allow_anonymous unset): anonymous clients allowed, every listener on loopback only")
	}
	for _, m := range b.loopback {
		b.log.Warn("listener moved to loopback: no authentication configured", "listener", m.listener, "configured", m.from, "address", m.to)
	}
	for _, i := range anonymousExposed(b.cfg) {
		lc := b.cfg.Listeners[i]
		b.log.Warn("anonymous clients allowed on a listener that is not loopback", "listener", lc.Name, "address", lc.Address)
	}
	// Storage opens here, before any client can connect.
	ds, err := b.openStorage()
	if err != nil {
		b.stopped = true
		return err
	}
	b.storage = ds
	bridges := bridge.NewSet(bridgeLog{walLog{ds.log}}, bridgeLocal{b}, bridge.Options{Logger: b.root, DialWebSocket: dialWebSocket, StateDir: filepath.Join(b.cfg.Storage.Dir, "bridges")})
	b.bridges.Store(bridges)
	ds.engine.LogQoS0(bridges.Wants)
	// The bridges before any client: a forward rule's new cursor starts at
	// the end of the log, so a message accepted before it was placed would
	// never be forwarded.
	if err := bridges.Apply(ctx, bridgeConfigs(b.cfg.Bridges)); err != nil {
		b.log.Error("bridges not all started", "error", err)
	}
	bound := 0
	fail := func(err error) error {
		b.stopped = true // half-bound: a Broker is not restartable
		for _, l := range b.listeners[:bound] {
			l.stopAccepting()
		}
		return errors.Join(err, bridges.Shutdown(ctx), ds.Close())
	}
	for _, l := range b.listeners {
		if err := b.srv.AddListener(l); err != nil {
			return fail(err)
		}
		bound++
	}
	if b.http != nil {
		if err := b.http.listen(); err != nil {
			return fail(err)
		}
	}
	if err := b.srv.Serve(); err != nil {
		if b.http != nil {
			_ = b.http.ln.Close()
		}
		return fail(fmt.Errorf("edge: start mqtt engine: %w", err))
	}
	b.started = true
	ds.engine.Start()
	if b.http != nil {
		b.http.serve()
	}
	for _, l := range b.listeners {
		b.log.Info("listening", "listener", l.ID(), "type", l.kind(), "address", l.Address())
	}
	if b.http != nil {
		b.log.Info("listening", "listener", "http", "type", "http", "address", b.http.ln.Addr().String())
	}
	b.ready.Store(true)
	return nil
}

// Addr returns the bound address of the listener called name, or nil when
// there is no such listener or it is not bound. With port 0 in the config it
// tells the port the system chose.
func (b *Broker) Addr(name string) net.Addr {
	l, ok := b.byName[name]
	if !ok {
		return nil
	}
	return l.addr()
}

// HTTPAddr returns the bound address of the HTTP side, or nil.
func (b *Broker) HTTPAddr() net.Addr {
	if b.http == nil || b.http.ln == nil {
		return nil
	}
	return b.http.ln.Addr()
}

// notReady says why /readyz fails, or "" when ready.
func (b *Broker) notReady() string {
	switch {
	case b.stopping.Load():
		return "shutting down"
	case !b.ready.Load():
		return "starting"
	}
	return ""
}

// Run starts a broker on cfg, serves until ctx is done, then shuts down
// gracefully: clients are disconnected over cfg.Shutdown.Grace, and the
// whole shutdown is cut off a few seconds after that.
func Run(ctx context.Context, cfg Config, opts Options) error {
	b, err := New(cfg, opts)
	if err != nil {
		return err
	}
	if err := b.Start(ctx); err != nil {
		return err
	}
	if opts.Ready != nil {
		opts.Ready(b)
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.Grace+shutdownSlack)
	defer cancel()
	return b.Shutdown(sctx)
}

// connectTimeout bounds the TLS handshake, the WebSocket upgrade and the wait
// for CONNECT.
func (b *Broker) connectTimeout() time.Duration {
	if d := b.cfg.Limits.ConnectTimeout; d > 0 {
		return d
	}
	return defaultConnectTimeout
}

// writeTimeout bounds each socket write (see conn).
func (b *Broker) writeTimeout() time.Duration {
	if d := b.cfg.Limits.WriteTimeout; d > 0 {
		return d
	}
	return defaultWriteTimeout
}

// blockedWriters counts connections whose current write has been blocked
// for longer than d: subscribers that are not keeping up right now.
func (b *Broker) blockedWriters(d time.Duration) int {
	now := time.Now()
	b.connsMu.Lock()
	defer b.connsMu.Unlock()
	n := 0
	for c := range b.conns {
		if c.blockedFor(now) > d {
			n++
		}
	}
	return n
}

// track registers an accepted connection; false once shutdown has cut all.
func (b *Broker) track(c *conn) bool {
	b.connsMu.Lock()
	defer b.connsMu.Unlock()
	if b.connsClosed {
		return false
	}
	b.conns[c] = struct{}{}
	return true
}

func (b *Broker) untrack(c *conn) {
	b.connsMu.Lock()
	defer b.connsMu.Unlock()
	delete(b.conns, c)
}

// authSummary is what the start log says about authentication: the mode,
// how many users the password file holds, how many ACL rules apply, and the
// listeners that take a client certificate's CN as the username.
func (b *Broker) authSummary() []any {
	mode := "none"
	switch a := b.cfg.Auth; {
	case a.PasswordFile != "" && a.AllowAnonymous:
		mode = "password file, anonymous allowed"
	case a.PasswordFile != "":
		mode = "password file"
	case a.AllowAnonymous:
		mode = "anonymous"
	}
	args := []any{"mode", mode}
	if b.cfg.Auth.PasswordFile != "" {
		args = append(args, "users", len(b.auth.policy.Load().passwords), "password_file", b.cfg.Auth.PasswordFile)
	}
	args = append(args, "acl_rules", len(b.cfg.Auth.ACL))
	var cn []string
	for _, lc := range b.cfg.Listeners {
		if lc.TLS.UseCNAsUsername {
			cn = append(cn, lc.Name)
		}
	}
	if len(cn) > 0 {
		args = append(args, "cert_cn_listeners", strings.Join(cn, ","))
	}
	return args
}

// loopbackMove records a listener whose host New rewrote to loopback.
type loopbackMove struct{ listener, path, from, to string }

// noAuthentication tells whether clients are neither checked nor
// knowingly let in: then every listener is kept on loopback.
func noAuthentication(a AuthConfig) bool {
	return a.PasswordFile == "" && !a.AllowAnonymous
}

// moveToLoopback rewrites the host of every listener and of the HTTP side
// to loopback when no authentication is configured, and returns the moves.
// Listener names must be set.
func moveToLoopback(cfg *Config) []loopbackMove {
	if !noAuthentication(cfg.Auth) {
		return nil
	}
	var moves []loopbackMove
	if cfg.HTTP.Address != "" {
		if a, changed := loopbackAddress(cfg.HTTP.Address); changed {
			moves = append(moves, loopbackMove{"http", "http.address", cfg.HTTP.Address, a})
			cfg.HTTP.Address = a
		}
	}
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		if a, changed := loopbackAddress(lc.Address); changed {
			moves = append(moves, loopbackMove{lc.Name, fmt.Sprintf("listeners[%d].address", i), lc.Address, a})
			lc.Address = a
		}
	}
	return moves
}

// anonymousExposed lists the indices of the listeners that let anonymous
// clients in from beyond loopback.
func anonymousExposed(cfg Config) []int {
	if !cfg.Auth.AllowAnonymous {
		return nil
	}
	var out []int
	for i, lc := range cfg.Listeners {
		if _, exposed := loopbackAddress(lc.Address); exposed {
			out = append(out, i)
		}
	}
	return out
}

// loopbackAddress rewrites addr's host to 127.0.0.1 unless it is loopback
// already.
func loopbackAddress(addr string) (string, bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, false // Validate reports it; Listen will fail on it
	}
	if host == "localhost" {
		return addr, false
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return addr, false
	}
	return net.JoinHostPort("127.0.0.1", port), true
}

// serverTLS builds a listener's TLS configuration; nil without a
// certificate. A problem is a *ConfigError whose path is the field under
// tls it is about ("cert_file").
func serverTLS(c TLSConfig) (*tls.Config, error) {
	if c.CertFile == "" {
		if c.RequireClientCert || c.ClientCAFile != "" || c.UseCNAsUsername {
			return nil, &ConfigError{Path: "cert_file", Reason: "client certificate options need cert_file"}
		}
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, &ConfigError{Path: "cert_file", Reason: fmt.Sprintf("load certificate and key: %v", err)}
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.ClientCAFile == "" {
		if c.RequireClientCert || c.UseCNAsUsername {
			return nil, &ConfigError{Path: "client_ca_file", Reason: "require_client_cert and use_cn_as_username need client_ca_file"}
		}
		return cfg, nil
	}
	pem, err := os.ReadFile(c.ClientCAFile)
	if err != nil {
		return nil, &ConfigError{Path: "client_ca_file", Reason: err.Error()}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, &ConfigError{Path: "client_ca_file", Reason: fmt.Sprintf("no PEM certificate found in %s", c.ClientCAFile)}
	}
	cfg.ClientCAs = pool
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	if c.RequireClientCert {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
