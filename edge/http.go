package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpSide is the operator endpoint:
//
//	/metrics  Prometheus exposition of the broker's registry
//	/healthz  200 while the process serves HTTP at all
//	/readyz   200 once every listener is up (and, later, storage is open);
//	          503 before that and during shutdown
//
// Every request must name us in its Host (hostAllowed), or it gets 403.
type httpSide struct {
	b       *Broker
	address string
	names   []string // http.server_names and http.address's host
	srv     *http.Server
	ln      net.Listener
	served  chan struct{}
}

func newHTTPSide(b *Broker, c HTTPConfig, gatherer prometheus.Gatherer) *httpSide {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(b.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if reason := b.notReady(); reason != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %s\n", reason)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	h := &httpSide{
		b:       b,
		address: c.Address,
		names:   c.ServerNames,
		served:  make(chan struct{}),
	}
	// The name it binds is one it is reached by (the service manager's
	// health check uses it).
	if host, _, err := net.SplitHostPort(c.Address); err == nil && host != "" {
		h.names = append(slices.Clip(h.names), host)
	}
	h.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !h.hostAllowed(r.Host) {
				b.metrics.rejected.WithLabelValues("http", "http_host").Inc()
				b.throttledLog.warn(b.log, "http request refused for its host: add it to http.server_names",
					"host", r.Host, "path", r.URL.Path, "remote", r.RemoteAddr)
				http.Error(w, "host not allowed", http.StatusForbidden)
				return
			}
			mux.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: httpTimeout,
		ReadTimeout:       httpTimeout,
		WriteTimeout:      httpTimeout,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(b.log.Handler(), slog.LevelDebug),
	}
	return h
}

// httpTimeout bounds the HTTP side's reading of a request (its headers,
// and its body, which net/http reads to its end after the handler
// answered, to reuse the connection) and the writing of its answer: a
// client that declares a body and never sends it, or stops reading a
// /metrics answer, holds its connection and goroutine no longer (without
// it, as long as it kept the socket open). Prometheus gives up on a
// scrape after 10 s by default too.
const httpTimeout = 10 * time.Second

// hostAllowed decides a request by its Host header: an IP address (a
// scraper by address; a page on an IP address is on its own origin, which
// DNS rebinding cannot give an attacker) or a trusted name (trustedName,
// as the WebSocket listener decides browsers). None (HTTP/1.0) is not a
// browser: allowed.
func (h *httpSide) hostAllowed(host string) bool {
	if host == "" {
		return true
	}
	name := host
	if n, _, err := net.SplitHostPort(host); err == nil {
		name = n
	}
	name = strings.TrimSuffix(strings.TrimPrefix(name, "["), "]")
	if _, err := netip.ParseAddr(name); err == nil {
		return true
	}
	return trustedName(name, h.names)
}

func (h *httpSide) listen() error {
	ln, err := net.Listen("tcp", h.address)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	h.ln = ln
	return nil
}

// serve runs until shutdown; its goroutine is waited for in shutdown.
func (h *httpSide) serve() {
	go func() {
		defer close(h.served)
		if err := h.srv.Serve(h.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.b.log.Error("http server stopped", "error", err)
		}
	}()
}

// shutdown lets requests in flight finish until ctx ends, then cuts them.
func (h *httpSide) shutdown(ctx context.Context, served bool) error {
	err := h.srv.Shutdown(ctx)
	if err != nil {
		_ = h.srv.Close()
	}
	if h.ln != nil {
		_ = h.ln.Close()
	}
	if served {
		if werr := waitDone(ctx, h.served); werr != nil {
			return werr
		}
	}
	return err
}
