package main

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	systemd "github.com/coreos/go-systemd/v22/daemon"

	"github.com/edgemq/edgemq/edge"
)

// systemdNotifier speaks systemd's notify protocol for a unit with
// Type=notify (deploy/edgemq.service): READY=1 once the broker listens,
// WATCHDOG=1 every half WatchdogSec while the broker's own /healthz answers,
// STOPPING=1 when the shutdown begins. Without $NOTIFY_SOCKET (not under
// systemd) every call does nothing. A broker whose HTTP side is disabled
// has nothing to ask, so its watchdog pings prove only that the process runs.
type systemdNotifier struct {
	log *slog.Logger
	wg  sync.WaitGroup
}

// ready is the edge.Options.Ready callback. It starts the goroutine that
// pings the watchdog (when WatchdogSec is set) and says STOPPING=1 when ctx
// is done; wait waits for it.
func (n *systemdNotifier) ready(ctx context.Context) func(*edge.Broker) {
	return func(b *edge.Broker) {
		ok, err := systemd.SdNotify(false, systemd.SdNotifyReady)
		if err != nil {
			n.log.Warn("systemd notify failed", "state", systemd.SdNotifyReady, "err", err)
			return
		}
		if !ok {
			return // not under systemd, or not Type=notify
		}
		interval, err := systemd.SdWatchdogEnabled(false)
		if err != nil {
			n.log.Warn("systemd watchdog settings unreadable; watchdog not served", "err", err)
		}
		url := ""
		if a := b.HTTPAddr(); a != nil {
			url = healthURL(a.String())
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if interval > 0 {
				n.watchdog(ctx, interval, url)
			} else {
				<-ctx.Done()
			}
			_, _ = systemd.SdNotify(false, systemd.SdNotifyStopping)
		}()
	}
}

// watchdog pings systemd every interval/2 while url (when set) answers 200.
// A broker that stops answering is left unpinged, and systemd restarts it
// after the interval (Restart=on-failure).
func (n *systemdNotifier) watchdog(ctx context.Context, interval time.Duration, url string) {
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	healthy := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var err error
		if url != "" {
			err = checkHealth(ctx, url, interval/4)
		}
		if err != nil {
			if healthy {
				n.log.Error("own health check failed: systemd watchdog not pinged", "url", url, "err", err)
			}
			healthy = false
			continue
		}
		if !healthy {
			n.log.Info("own health check passes again", "url", url)
		}
		healthy = true
		_, _ = systemd.SdNotify(false, systemd.SdNotifyWatchdog)
	}
}

// wait returns once the notifier's goroutine, if any, has stopped.
func (n *systemdNotifier) wait() { n.wg.Wait() }

// healthURL is the /healthz URL of an HTTP side bound to hostport: an
// unspecified or empty host (0.0.0.0, ::) is reached on loopback.
func healthURL(hostport string) string {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, "80"
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz"
}
