package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/edgemq/edgemq/edge"
)

// reloader reloads the broker's configuration on SIGHUP (what `systemctl
// reload` sends): the file is checked as `edgemq check` checks it, and only
// a file without problems reaches edge.Broker.Reload. A bad file keeps the
// running configuration, and each problem is logged.
type reloader struct {
	path string // "": the embedded defaults, nothing to read again
	log  *slog.Logger
	hups chan os.Signal
	wg   sync.WaitGroup
}

// newReloader starts receiving SIGHUP; stop ends that.
func newReloader(path string, log *slog.Logger) *reloader {
	r := &reloader{path: path, log: log, hups: make(chan os.Signal, 1)}
	signal.Notify(r.hups, syscall.SIGHUP)
	return r
}

// ready is chained into edge.Options.Ready: it starts the goroutine that
// reloads b until ctx ends.
func (r *reloader) ready(ctx context.Context) func(*edge.Broker) {
	return func(b *edge.Broker) {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-r.hups:
					r.reload(b)
				}
			}
		}()
	}
}

func (r *reloader) reload(b *edge.Broker) {
	if r.path == "" {
		r.log.Info("SIGHUP: running on the embedded defaults, nothing to reload")
		return
	}
	c := edge.CheckConfig(r.path)
	if len(c.Problems) > 0 {
		for _, p := range c.Problems {
			r.log.Error("reload refused: the running configuration stays", "config", r.path, "problem", p.Error())
		}
		return
	}
	if err := b.Reload(c.Config); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			r.log.Error("reload refused: the running configuration stays", "config", r.path, "problem", line)
		}
	}
}

// stop stops receiving SIGHUP and waits for the goroutine (ctx must be done).
func (r *reloader) stop() {
	signal.Stop(r.hups)
	r.wg.Wait()
}
