// Command plainmochi is the baseline broker of the benchmarks: mochi-mqtt
// v2 with its default capabilities, the allow-all auth hook, no storage hook
// and no edgemq code at all. It exists so that `edgemq-bench compare` can
// measure what edgemq's hooks cost over the library it is built on.
//
// It is the one program outside edge/ that imports mochi, because it is the
// baseline. It is not a product: no config file, no TLS, no persistence.
//
//	plainmochi -addr 127.0.0.1:1883 -ws 127.0.0.1:8083
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "plainmochi:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("plainmochi", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:1883", "MQTT over TCP listen address")
	ws := fs.String("ws", "", "MQTT over WebSocket listen address (any path); empty: none")
	level := fs.String("log", "warn", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("-log: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))

	srv := mqtt.New(&mqtt.Options{Logger: logger})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return fmt.Errorf("add auth hook: %w", err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: *addr})); err != nil {
		return fmt.Errorf("add tcp listener: %w", err)
	}
	if *ws != "" {
		if err := srv.AddListener(listeners.NewWebsocket(listeners.Config{ID: "ws", Address: *ws})); err != nil {
			return fmt.Errorf("add ws listener: %w", err)
		}
	}
	if err := srv.Serve(); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	<-ctx.Done()
	// mochi's Close can block for good on a deadlocked client (the MQTT 5
	// inflight deadlock of v2.7.9); a baseline broker must still exit.
	closed := make(chan error, 1)
	go func() { closed <- srv.Close() }()
	select {
	case err := <-closed:
		return err
	case <-time.After(5 * time.Second):
		return errors.New("close: still blocked after 5 s, exiting anyway")
	}
}
