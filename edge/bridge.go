package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/coder/websocket"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/qos"
)

// bridgeLog is the log as the bridges take it: the engine's qos.Log and the
// cursor calls a bridge needs to place and remove its rules' cursors.
type bridgeLog struct{ walLog }

var _ bridge.Log = bridgeLog{}

// CursorFrom returns the named cursor, creating it at from.
func (l bridgeLog) CursorFrom(name string, from uint64) (qos.Cursor, error) {
	c, err := l.w.CursorFrom(name, from)
	if err != nil {
		return nil, walError(err)
	}
	return c, nil
}

// DeleteCursor removes a cursor.
func (l bridgeLog) DeleteCursor(name string) error { return walError(l.w.DeleteCursor(name)) }

// Cursors lists the cursors.
func (l bridgeLog) Cursors() []string { return l.w.Cursors() }

// bridgeLocal publishes downlink messages into the broker through the
// engine: QoS 1/2 (and logged QoS 0) appended, durable when the wait
// returns, then fanned out by the dispatcher; other QoS 0 from memory like
// any QoS 0 publish.
type bridgeLocal struct{ b *Broker }

var _ bridge.Local = bridgeLocal{}

// Publish appends ms in one append (see bridge.Local). A QoS 2 message
// sent again before our PUBREC reached the upstream is taken once
// [MQTT-4.3.3-10].
func (l bridgeLocal) Publish(ms ...*qos.Message) (func(context.Context) error, error) {
	ds, ok := l.b.storage.(*durableStorage)
	if !ok {
		return nil, errors.New("edge: storage closed")
	}
	wait, err := ds.engine.PublishAsync(ms...)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		if err := wait(ctx); err != nil && !errors.Is(err, qos.ErrDuplicate) {
			return err
		}
		return nil
	}, nil
}

// Release ends a downlink QoS 2 exchange, durably, before the bridge's
// PUBCOMP: otherwise a restart would take the next message on that packet
// id for a resend.
func (l bridgeLocal) Release(ctx context.Context, origin string, id uint16) error {
	ds, ok := l.b.storage.(*durableStorage)
	if !ok {
		return errors.New("edge: storage closed")
	}
	return ds.engine.Release(ctx, origin, id)
}

// dialWebSocket opens a ws:// or wss:// upstream as a net.Conn carrying
// MQTT in binary messages, subprotocol "mqtt" [MQTT-6.0.0-3].
func dialWebSocket(ctx context.Context, u *url.URL, tc *tls.Config) (net.Conn, error) {
	opts := &websocket.DialOptions{Subprotocols: []string{"mqtt"}}
	if tc != nil {
		opts.HTTPClient = &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	}
	c, _, err := websocket.Dial(ctx, u.String(), opts)
	if err != nil {
		return nil, err
	}
	// The connection outlives the dial: its own context is the background.
	return websocket.NetConn(context.Background(), c, websocket.MessageBinary), nil
}

// checkBridgeFiles reads each bridge's TLS files, as a start or reload
// would.
func checkBridgeFiles(bs []BridgeConfig) []*ConfigError {
	var problems []*ConfigError
	for i, bc := range bs {
		var fe *bridge.FieldError
		if err := bc.bridgeConfig().Check(); errors.As(err, &fe) {
			problems = append(problems, &ConfigError{Path: fmt.Sprintf("bridges[%d].%s", i, fe.Path), Reason: fe.Reason})
		}
	}
	return problems
}

// reloadBridges makes the running bridges those of bs (see Reload, which
// has checked them). Stopping a changed or removed bridge waits at most
// bridgeStopTimeout for it to commit its position.
func (b *Broker) reloadBridges(bs []BridgeConfig) error {
	set := b.bridges.Load()
	if set == nil {
		return nil // not started: Start applies b.cfg.Bridges
	}
	ctx, cancel := context.WithTimeout(context.Background(), bridgeStopTimeout)
	defer cancel()
	return set.Apply(ctx, bridgeConfigs(bs))
}

const bridgeStopTimeout = 10 * time.Second

// bridgeConfigs converts the file's bridges.
func bridgeConfigs(bs []BridgeConfig) []bridge.Config {
	out := make([]bridge.Config, 0, len(bs))
	for _, b := range bs {
		out = append(out, b.bridgeConfig())
	}
	return out
}

// Bridges returns the state of every bridge, sorted by name; none before
// Start.
func (b *Broker) Bridges() []bridge.Status {
	bs := b.bridges.Load()
	if bs == nil {
		return nil
	}
	return bs.Status()
}
