package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// target is where and how the generator connects.
type target struct {
	// addr is host:port of the listener.
	addr string
	// transport is "tcp" or "ws" (MQTT over WebSocket, subprotocol "mqtt").
	transport string
	// wsPath is the HTTP path of a "ws" listener, e.g. "/mqtt".
	wsPath string
	// version is proto311 or proto5.
	version byte
}

// rawConn is the byte stream under a client: a TCP connection or a
// WebSocket adapted to a stream.
type rawConn interface {
	io.ReadWriteCloser
	SetReadDeadline(time.Time) error
}

func dial(ctx context.Context, t target) (rawConn, error) {
	switch t.transport {
	case "tcp", "":
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", t.addr)
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	case "ws":
		d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second}
		path := t.wsPath
		if path == "" {
			path = "/mqtt"
		}
		ws, resp, err := d.DialContext(ctx, "ws://"+t.addr+path, http.Header{})
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if err != nil {
			return nil, err
		}
		return &wsStream{ws: ws}, nil
	}
	return nil, fmt.Errorf("unknown transport %q", t.transport)
}

// wsStream adapts a WebSocket to a byte stream: Read concatenates incoming
// messages, and Write sends each MQTT packet of its (whole-packet) input as
// one binary message. MQTT allows several packets per message
// [MQTT-6.0.0-2], but Mosquitto 2.0.11 then handles one packet per incoming
// message and leaves the rest waiting (measured: a few msg/s), and real
// clients (paho, MQTT.js) send one packet per message, so the generator does too.
type wsStream struct {
	ws  *websocket.Conn
	cur io.Reader
}

func (s *wsStream) Read(p []byte) (int, error) {
	for {
		if s.cur == nil {
			_, r, err := s.ws.NextReader()
			if err != nil {
				return 0, err
			}
			s.cur = r
		}
		n, err := s.cur.Read(p)
		if errors.Is(err, io.EOF) {
			s.cur = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (s *wsStream) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		size, m, err := readVarint(p[n+1:])
		if err != nil || n+1+m+size > len(p) {
			return n, errMalformed
		}
		end := n + 1 + m + size
		if err := s.ws.WriteMessage(websocket.BinaryMessage, p[n:end]); err != nil {
			return n, err
		}
		n = end
	}
	return n, nil
}

func (s *wsStream) Close() error                      { return s.ws.Close() }
func (s *wsStream) SetReadDeadline(t time.Time) error { return s.ws.SetReadDeadline(t) }

// batchWriter gives a connection one writer goroutine that coalesces what
// the publisher and the ack path append while the previous write is in the
// kernel: one syscall carries many packets under load, one packet when idle.
// Appenders block while more than maxPending bytes wait (bounded memory).
type batchWriter struct {
	w          io.Writer
	mu         sync.Mutex
	cond       *sync.Cond
	buf, spare []byte
	err        error
	closed     bool
	kick       chan struct{} // capacity 1: a pending wake-up; extra kicks merge
	done       chan struct{}
}

const maxPending = 256 << 10

func newBatchWriter(w io.Writer) *batchWriter {
	bw := &batchWriter{w: w, kick: make(chan struct{}, 1), done: make(chan struct{}),
		buf: make([]byte, 0, 16<<10), spare: make([]byte, 0, 16<<10)}
	bw.cond = sync.NewCond(&bw.mu)
	go bw.loop()
	return bw
}

// write copies the encoded packets p to the pending buffer; the writer
// goroutine sends them.
func (bw *batchWriter) write(p []byte) error {
	bw.mu.Lock()
	for len(bw.buf) > maxPending && bw.err == nil && !bw.closed {
		bw.cond.Wait()
	}
	if bw.err != nil || bw.closed {
		err := bw.err
		bw.mu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		return err
	}
	bw.buf = append(bw.buf, p...)
	bw.mu.Unlock()
	select {
	case bw.kick <- struct{}{}:
	default:
	}
	return nil
}

func (bw *batchWriter) loop() {
	defer close(bw.done)
	for range bw.kick {
		bw.mu.Lock()
		b := bw.buf
		bw.buf = bw.spare[:0]
		closed := bw.closed
		bw.mu.Unlock()
		var err error
		if len(b) > 0 {
			_, err = bw.w.Write(b)
		}
		bw.mu.Lock()
		bw.spare = b[:0]
		if err != nil && bw.err == nil {
			bw.err = err
		}
		bw.cond.Broadcast()
		stop := closed || bw.err != nil
		bw.mu.Unlock()
		if stop {
			return
		}
	}
}

// close writes what is pending, then stops the writer goroutine and waits for it.
func (bw *batchWriter) close() {
	bw.mu.Lock()
	bw.closed = true
	bw.cond.Broadcast()
	bw.mu.Unlock()
	select {
	case bw.kick <- struct{}{}:
	default:
	}
	<-bw.done
}

// client is one MQTT connection of the generator. Its writer goroutine is
// owned by the client (stopped in close); its read loop is run by whoever
// uses the client.
type client struct {
	conn    rawConn
	version byte
	pr      *packetReader
	w       *batchWriter
	connack connackInfo
}

// connect dials and completes the MQTT handshake.
func connect(ctx context.Context, t target, o connectOptions) (*client, error) {
	o.version = t.version
	conn, err := dial(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", t.transport, t.addr, err)
	}
	if _, err := conn.Write(appendConnect(nil, o)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("write CONNECT: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetReadDeadline(deadline)
	pr := newPacketReader(conn)
	p, err := pr.read()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read CONNACK for %s: %w", o.clientID, err)
	}
	ci, err := parseConnack(p, t.version)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect %s: %w", o.clientID, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	return &client{conn: conn, version: t.version, pr: pr, w: newBatchWriter(conn), connack: ci}, nil
}

// subscribe sends SUBSCRIBE and waits for its SUBACK; call it before the
// read loop starts.
func (c *client) subscribe(filter string, qos byte) error {
	if err := c.w.write(appendSubscribe(nil, c.version, 1, filter, qos)); err != nil {
		return err
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.conn.SetReadDeadline(time.Time{})
	p, err := c.pr.read()
	if err != nil {
		return fmt.Errorf("read SUBACK: %w", err)
	}
	if p.typ != pktSuback {
		// A persistent session may deliver its backlog before the SUBACK;
		// the backlog scenario subscribes only on a clean session.
		return fmt.Errorf("expected SUBACK, got packet type %d", p.typ)
	}
	codes := p.body[2:]
	if c.version == proto5 {
		pl, n, err := readVarint(codes)
		if err != nil {
			return err
		}
		codes = codes[n+pl:]
	}
	if len(codes) != 1 || codes[0] >= 0x80 {
		return fmt.Errorf("subscribe %q refused: % x", filter, codes)
	}
	return nil
}

// close sends DISCONNECT when graceful, then closes the connection and
// stops the writer goroutine.
func (c *client) close(graceful bool) {
	if graceful {
		_ = c.w.write(appendDisconnect(nil))
	}
	c.w.close()
	c.conn.Close()
}
