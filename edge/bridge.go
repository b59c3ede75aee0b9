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
	"github.com/edgemq/edgemq/wal"
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

// bridgeLocal publishes downlink messages into the broker: QoS 1/2 through
// the log (durable, then fanned out by the dispatcher), QoS 0 from memory
// like any QoS 0 publish.
type bridgeLocal struct{ b *Broker }

var _ bridge.Local = bridgeLocal{}

// Publish makes m durable and delivers it (see bridge.Local).
func (l bridgeLocal) Publish(ctx context.Context, m *qos.Message) error {
	ds, ok := l.b.storage.(*durableStorage)
	if !ok {
		return errors.New("edge: storage closed")
	}
	s := ds.store
	if m.QoS == 0 {
		return l.b.srv.Publish(m.Topic, m.Payload, m.Retain, 0)
	}
	if m.QoS == 2 {
		s.mu.Lock()
		_, dup := s.inbound[m.Origin][m.OriginPacketID]
		s.mu.Unlock()
		if dup { // sent again before our PUBREC reached the upstream [MQTT-4.3.3-9]
			s.m.duplicates.Inc()
			return nil
		}
	}
	rec, err := qos.Encode(m)
	if err != nil {
		return err
	}
	if !s.admit(len(rec)) {
		s.m.refused.WithLabelValues("storage_full").Inc()
		return wal.ErrFull
	}
	off, err := s.appendAsync(rec)
	if err != nil {
		return err
	}
	if m.QoS == 2 {
		s.mu.Lock()
		if s.inbound[m.Origin] == nil {
			s.inbound[m.Origin] = map[uint16]uint64{}
		}
		s.inbound[m.Origin][m.OriginPacketID] = off
		s.mu.Unlock()
	}
	if m.Retain {
		s.srv.Topics.RetainMessage(retainedPacket(m))
	}
	if err := s.log.WaitDurable(ctx, off); err != nil {
		if m.QoS == 2 { // not taken: the resend must be appended
			s.mu.Lock()
			delete(s.inbound[m.Origin], m.OriginPacketID)
			s.mu.Unlock()
		}
		return err
	}
	return nil
}

// Release ends a downlink QoS 2 exchange, durably, before the bridge's
// PUBCOMP: otherwise a restart would take the next message on that packet
// id for a resend.
func (l bridgeLocal) Release(ctx context.Context, origin string, id uint16) error {
	ds, ok := l.b.storage.(*durableStorage)
	if !ok {
		return errors.New("edge: storage closed")
	}
	s := ds.store
	s.mu.Lock()
	_, ok = s.inbound[origin][id]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	off, err := s.appendAsync(qos.EncodeRef(qos.KindInboundRelease, qos.PacketRef{Client: origin, PacketID: id}))
	if err != nil {
		return err
	}
	if err := s.log.WaitDurable(ctx, off); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.inbound[origin], id)
	if len(s.inbound[origin]) == 0 {
		delete(s.inbound, origin)
	}
	s.mu.Unlock()
	return nil
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
