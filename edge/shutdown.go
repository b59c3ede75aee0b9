package edge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// shutdownSlack is what Run gives Shutdown beyond the grace period, for the
// last batch's writes and mochi's own close.
const shutdownSlack = 5 * time.Second

// Shutdown stops the broker:
//
//  1. /readyz turns 503 and every listener stops accepting; the bridges
//     stop;
//  2. connected clients are disconnected in batches of
//     cfg.Shutdown.BatchSize, spread over cfg.Shutdown.Grace, so that they do
//     not all reconnect elsewhere at the same instant. v5 clients get
//     DISCONNECT 0x8B (server shutting down); v3 has no server DISCONNECT, so
//     their connection is closed. When ctx ends, the rest go at once;
//  3. connections that never finished CONNECT are cut;
//  4. mochi stops (persistent sessions live on in storage);
//  5. the HTTP side stops, and storage is closed last.
//
// Shutdown honours ctx: past its deadline it stops waiting and returns the
// context's error. Calling it again, or before Start, does nothing.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return nil
	}
	b.stopped = true
	if !b.started {
		return nil
	}
	b.stopping.Store(true)
	b.ready.Store(false)
	b.log.Info("shutting down")

	for _, l := range b.listeners {
		l.stopAccepting()
	}
	b.storageStopping()
	var errs []error
	if bs := b.bridges.Load(); bs != nil { // before the log closes: each rule commits how far it got
		if err := bs.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("bridges: %w", err))
		}
	}
	b.disconnectClients(ctx)
	b.cutConns()

	for _, l := range b.listeners {
		if err := l.wait(ctx, true); err != nil {
			errs = append(errs, fmt.Errorf("listener %s: %w", l.ID(), err))
		}
	}
	if len(errs) == 0 {
		// Every client goroutine is gone, so mochi's Close (which waits for
		// them) cannot hang; it still runs aside so that ctx bounds it.
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = b.srv.Close()
		}()
		if err := waitDone(ctx, done); err != nil {
			errs = append(errs, fmt.Errorf("mqtt engine close: %w", err))
		}
	}
	if b.http != nil {
		if err := b.http.shutdown(ctx, true); err != nil {
			errs = append(errs, fmt.Errorf("http: %w", err))
		}
	}
	if b.storage != nil {
		if err := b.storage.Close(); err != nil {
			errs = append(errs, fmt.Errorf("storage: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("edge: shutdown: %w", err)
	}
	b.log.Info("stopped")
	return nil
}

// waitDone waits for done until ctx ends. done wins when both are ready,
// and a goroutine that is merely finishing (its connection was cut) gets a
// last moment even past the deadline, so that an expired context does not
// turn a clean stop into a leak.
func waitDone(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	default:
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	t := time.NewTimer(finishingGrace)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return ctx.Err()
	}
}

// finishingGrace is waitDone's last moment past the deadline.
const finishingGrace = 200 * time.Millisecond

// disconnectClients ends every connected client, in batches spread over the
// grace period; when ctx ends, the remaining batches go at once.
func (b *Broker) disconnectClients(ctx context.Context) {
	var clients []*mqtt.Client
	for _, cl := range b.srv.Clients.GetAll() {
		if !cl.Net.Inline && cl.Net.Conn != nil && !cl.Closed() {
			clients = append(clients, cl)
		}
	}
	if len(clients) == 0 {
		return
	}
	size := max(b.cfg.Shutdown.BatchSize, 1)
	batches := (len(clients) + size - 1) / size
	var interval time.Duration
	if batches > 1 {
		interval = b.cfg.Shutdown.Grace / time.Duration(batches)
	}
	b.log.Info("disconnecting clients", "clients", len(clients), "batches", batches, "interval", interval)
	for i := 0; i < len(clients); i += size {
		if i > 0 && ctx.Err() == nil {
			t := time.NewTimer(interval)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
		var wg sync.WaitGroup
		for _, cl := range clients[i:min(i+size, len(clients))] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.disconnect(cl)
			}()
		}
		// Each disconnect is bounded by goodbyeTimeout (disconnectClient).
		wg.Wait()
	}
}

// disconnect ends one client: DISCONNECT 0x8B for v5 [MQTT-3.14.2], a plain
// close for v3, which has no server-sent DISCONNECT. (Wills at shutdown are
// the engine's: it does not publish them while the broker stops.)
func (b *Broker) disconnect(cl *mqtt.Client) {
	_ = disconnectClient(b.srv, cl, packets.ErrServerShuttingDown)
}

// cutConns closes every connection still open (mid-CONNECT, or accepted
// after the client list was taken) and refuses new ones.
func (b *Broker) cutConns() {
	b.connsMu.Lock()
	b.connsClosed = true
	conns := make([]*conn, 0, len(b.conns))
	for c := range b.conns {
		conns = append(conns, c)
	}
	b.connsMu.Unlock()
	for _, c := range conns {
		c.cut()
	}
}
