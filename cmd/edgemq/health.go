package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/edgemq/edgemq/edge"
)

// runHealth is `edgemq health [-c FILE] [-url URL]`: GET the broker's
// /healthz and exit 0 on 200, 1 otherwise. It needs no shell and no curl,
// so a distroless container's HEALTHCHECK can run it. The address comes
// from the config's http.address (the embedded default without -c).
func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("health", stderr)
	var path, url string
	fs.StringVar(&path, "c", "", "config file `FILE` whose http.address to ask; empty: embedded defaults")
	fs.StringVar(&path, "config", "", "same as -c")
	fs.StringVar(&url, "url", "", "ask this URL instead of the config's http.address")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: health takes no arguments (got %q)", errUsage, fs.Args())
	}
	if url == "" {
		cfg := edge.DefaultConfig()
		if path != "" {
			var err error
			if cfg, err = edge.LoadConfig(path); err != nil {
				return err
			}
		}
		if cfg.HTTP.Address == "" {
			return fmt.Errorf("health: %s disables the HTTP side (http.address is empty): nothing to ask", configSource(path))
		}
		url = healthURL(cfg.HTTP.Address)
	}
	if err := checkHealth(ctx, url, *timeout); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "ok", url)
	return nil
}

// configSource names where a config came from, for messages.
func configSource(path string) string {
	if path == "" {
		return "the embedded default config"
	}
	return path
}

// checkHealth is nil when GET url answers 200 within timeout.
func checkHealth(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health: %s answered %s", url, resp.Status)
	}
	return nil
}
