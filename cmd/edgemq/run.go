package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/edge"
)

// runBroker is `edgemq run [-c FILE]`: load the config (or take the embedded
// defaults), build the logger and the metrics registry, and run the broker
// until ctx is cancelled, reloading the config on SIGHUP (see reloader).
func runBroker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("run", stderr)
	var path string
	fs.StringVar(&path, "c", "", "config file `FILE` (YAML); empty: embedded defaults")
	fs.StringVar(&path, "config", "", "same as -c")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: run takes no arguments (got %q); use -c FILE", errUsage, fs.Args())
	}
	cfg := edge.DefaultConfig()
	source := edge.EmbeddedDefaults
	if path != "" {
		// The same checks as edgemq check, so that a broken file is reported
		// the same way: every problem, one a line, file:line: field.path: reason.
		c := edge.CheckConfig(path)
		if len(c.Problems) > 0 {
			return reportProblems(stderr, c.Name, c.Problems)
		}
		cfg, source = c.Config, path
	}
	logger := newLogger(stderr, cfg.Log)
	logger.Info("edgemq starting", "version", version, "config", source,
		"storage", cfg.Storage.Dir, "sync", cfg.Storage.Sync)
	stop := context.AfterFunc(ctx, func() {
		logger.Info("shutting down gracefully; a second signal exits at once",
			"cause", context.Cause(ctx), "grace", cfg.Shutdown.Grace)
	})
	defer stop()
	if cfg.MemoryLimit > 0 {
		debug.SetMemoryLimit(int64(cfg.MemoryLimit))
		logger.Info("memory limit set (GOMEMLIMIT)", "bytes", int64(cfg.MemoryLimit))
	}
	// The environment's GOGC is the operator's choice, and wins over the floor.
	if gogc := os.Getenv("GOGC"); gogc != "" {
		logger.Info("GOGC set in the environment: no garbage collection floor", "GOGC", gogc)
	} else if cfg.GCHeadroom > 0 {
		memory := processMemory()
		defer startGCFloor(int64(cfg.GCHeadroom), memory)()
		logger.Info("garbage collection floor set", "headroom_bytes", int64(cfg.GCHeadroom), "process_memory_bytes", memory)
	}
	pctx, cancelProcs := context.WithCancel(ctx)
	procsDone := make(chan struct{})
	go func() {
		defer close(procsDone)
		adaptProcs(pctx, procsEvery, logger)
	}()
	defer func() {
		cancelProcs()
		<-procsDone
	}()
	sd := &systemdNotifier{log: logger}
	defer sd.wait()
	rl := newReloader(path, logger)
	defer rl.stop()
	ready := func(b *edge.Broker) {
		sd.ready(ctx)(b)
		rl.ready(ctx)(b)
	}
	if err := edge.Run(ctx, cfg, edge.Options{Logger: logger, Registry: prometheus.NewRegistry(), Ready: ready}); err != nil {
		return err
	}
	logger.Info("edgemq exited cleanly")
	return nil
}

// newLogger is the root logger: text or JSON lines on w at the configured level.
func newLogger(w io.Writer, c edge.LogConfig) *slog.Logger {
	level := slog.LevelInfo
	switch c.Level {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
