package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
type httpSide struct {
	b       *Broker
	address string
	srv     *http.Server
	ln      net.Listener
	served  chan struct{}
}

func newHTTPSide(b *Broker, address string, gatherer prometheus.Gatherer) *httpSide {
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
	return &httpSide{
		b:       b,
		address: address,
		served:  make(chan struct{}),
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(b.log.Handler(), slog.LevelDebug),
		},
	}
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
