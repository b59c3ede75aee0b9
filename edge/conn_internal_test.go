package edge

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// tcpPair is a connected pair of loopback TCP sockets.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// A corked round of writes reaches the socket as one write, at flush;
// Close writes what a cork still holds (a DISCONNECT among it) first.
func TestConnCorkedWritesLeaveInOneWrite(t *testing.T) {
	server, client := tcpPair(t)
	inner := &countingConn{Conn: server}
	wc := &conn{Conn: inner, writeTimeout: time.Second, closeNow: server.Close}

	wc.cork()
	for _, p := range []string{"puback1", "puback2", "publish"} {
		if n, err := wc.Write([]byte(p)); err != nil || n != len(p) {
			t.Fatalf("corked write: %d, %v", n, err)
		}
	}
	if n := inner.writes.Load(); n != 0 {
		t.Fatalf("%d socket writes before flush", n)
	}
	if err := wc.flush(); err != nil {
		t.Fatal(err)
	}
	if n := inner.writes.Load(); n != 1 {
		t.Fatalf("%d socket writes for a round, want 1", n)
	}
	buf := make([]byte, 64)
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := io.ReadAtLeast(client, buf, len("puback1puback2publish")); err != nil || string(buf[:n]) != "puback1puback2publish" {
		t.Fatalf("client read %q, %v", buf[:n], err)
	}

	// Uncorked, a write goes out at once.
	if _, err := wc.Write([]byte("pingresp")); err != nil || inner.writes.Load() != 2 {
		t.Fatalf("uncorked write: %v, %d socket writes", err, inner.writes.Load())
	}

	wc.cork()
	if _, err := wc.Write([]byte("disconnect")); err != nil {
		t.Fatal(err)
	}
	if err := wc.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "pingrespdisconnect" {
		t.Fatalf("client read %q, %v; want the corked DISCONNECT before EOF", got, err)
	}
}

// deadlineConn records the read deadlines set on the socket.
type deadlineConn struct {
	net.Conn
	set []time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.set = append(c.set, t)
	return c.Conn.SetReadDeadline(t)
}

// mochi asks for a read deadline of 1.5 x keepalive before every packet
// [MQTT-3.1.2-22]: the socket's deadline moves only when the one set is
// more than a sixteenth of that span early, and is never earlier than asked.
func TestConnReadDeadlineMovesRarely(t *testing.T) {
	server, _ := tcpPair(t)
	inner := &deadlineConn{Conn: server}
	wc := &conn{Conn: inner}
	span := 90 * time.Second // keepalive 60 s
	now := time.Now()
	for i := range 1000 { // 1,000 packets within 1 s
		asked := now.Add(span + time.Duration(i)*time.Millisecond)
		if err := wc.SetDeadline(asked); err != nil {
			t.Fatal(err)
		}
		if got := inner.set[len(inner.set)-1]; got.Before(asked) || got.Sub(asked) > span/16 {
			t.Fatalf("packet %d: deadline %v after asked, want 0 to %v", i, got.Sub(asked), span/16)
		}
	}
	if n := len(inner.set); n != 1 {
		t.Fatalf("%d socket deadlines for 1,000 packets in a second, want 1", n)
	}
	later := now.Add(span + span/8) // long after the slack ran out
	if _ = wc.SetDeadline(later); len(inner.set) != 2 || inner.set[1].Before(later) {
		t.Fatalf("deadline not moved past %v: %v", later, inner.set)
	}
	if _ = wc.SetDeadline(time.Time{}); len(inner.set) != 3 || !inner.set[2].IsZero() {
		t.Fatalf("keepalive 0 did not clear the deadline: %v", inner.set)
	}
}

// A packet appendCorked refuses (too large for the client) leaves the
// connection as it was: not corked, so what mochi writes next (a
// PINGRESP) is not held for a Flush that may never come.
func TestConnRefusedAppendDoesNotCork(t *testing.T) {
	server, client := tcpPair(t)
	inner := &countingConn{Conn: server}
	wc := &conn{Conn: inner, writeTimeout: time.Second, closeNow: server.Close}
	refused := errors.New("too large")
	if _, err := wc.appendCorked(func(b []byte) ([]byte, error) { return b, refused }); err != refused {
		t.Fatalf("appendCorked: %v, want the refusal", err)
	}
	if _, err := wc.Write([]byte("pingresp")); err != nil || inner.writes.Load() != 1 {
		t.Fatalf("write after a refused append: %v, %d socket writes, want 1 at once", err, inner.writes.Load())
	}
	buf := make([]byte, 8)
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "pingresp" {
		t.Fatalf("client read %q, %v", buf, err)
	}
}

// flushNow writes a cork's bytes as far as the socket takes them at once
// and never waits: against a client that reads nothing it takes what the
// socket buffers, keeps the rest in order, refuses while another write
// holds the connection, and the next flush, once the client reads,
// writes the rest.
func TestConnFlushNowNeverWaits(t *testing.T) {
	server, client := tcpPair(t)
	wc := &conn{Conn: server, writeTimeout: 5 * time.Second, closeNow: server.Close}
	wc.ra.setRaw(server)
	want := make([]byte, 0, 16<<20)
	for i := 0; len(want) < 16<<20; i++ {
		want = fmt.Appendf(want, "packet %d;", i)
	}
	add := func(p []byte) func(b []byte) ([]byte, error) {
		return func(b []byte) ([]byte, error) { return append(b, p...), nil }
	}
	sent := 0
	for sent < len(want) {
		n := min(4096, len(want)-sent)
		if _, ok, err := wc.appendCorkedNow(add(want[sent : sent+n])); !ok || err != nil {
			t.Fatalf("appendCorkedNow: %v, %v", ok, err)
		}
		sent += n
		all, err := wc.flushNow()
		if err != nil {
			t.Fatal(err)
		}
		if !all {
			break // the socket is full: the rest is kept
		}
	}
	if sent == len(want) {
		t.Fatal("the socket took 16 MiB from a client that reads nothing")
	}
	want = want[:sent]
	wc.wmu.Lock()
	if all, err := wc.flushNow(); all || err != nil {
		t.Errorf("flushNow under another write: %v, %v; want false, nil", all, err)
	}
	wc.wmu.Unlock()
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(client, int64(len(want))))
		got <- b
	}()
	if err := wc.flush(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("client read %d bytes, want the %d written, in order", len(b), len(want))
	}
}

// flushNow writes at once also once the deadline of the last waiting
// write has passed: a non-blocking write(2) needs none, and the socket
// takes the bytes. (RawConn.Write refuses a connection whose write
// deadline is in the past before it calls the write, so every direct
// write after a quiet write_timeout fell back to the sender.)
func TestConnFlushNowAfterAnOldDeadline(t *testing.T) {
	server, client := tcpPair(t)
	wc := &conn{Conn: server, writeTimeout: 10 * time.Millisecond, closeNow: server.Close}
	wc.ra.setRaw(server)
	if _, err := wc.Write([]byte("a")); err != nil { // the sender's write, with its deadline
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond) // the deadline passes
	add := func(b []byte) ([]byte, error) { return append(b, 'b'), nil }
	if _, ok, err := wc.appendCorkedNow(add); !ok || err != nil {
		t.Fatalf("appendCorkedNow: %v, %v", ok, err)
	}
	if all, err := wc.flushNow(); !all || err != nil {
		t.Fatalf("flushNow after the deadline of an earlier write: %v, %v; want true, nil", all, err)
	}
	buf := make([]byte, 2)
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "ab" {
		t.Fatalf("client read %q, %v; want \"ab\"", buf, err)
	}
}

// A connection that cannot write without waiting (TLS, WebSocket: no raw
// socket under it) takes no direct write at all: appendCorkedNow refuses
// and keeps nothing, so the log's and the dispatcher's goroutines leave
// the packet, unencoded, to the sender, which writes it with a deadline.
func TestConnWithoutRawSocketTakesNoDirectWrite(t *testing.T) {
	server, client := net.Pipe()
	t.Cleanup(func() { server.Close(); client.Close() })
	wc := &conn{Conn: server, writeTimeout: time.Second, closeNow: server.Close}
	wc.ra.setRaw(server) // not a *net.TCPConn: none
	add := func(b []byte) ([]byte, error) { return append(b, 'x'), nil }
	if _, ok, err := wc.appendCorkedNow(add); ok || err != nil {
		t.Fatalf("appendCorkedNow on a connection without a raw socket: %v, %v; want false, nil", ok, err)
	}
	if wc.corked || wc.out != nil {
		t.Fatalf("kept something: corked %v, out %v", wc.corked, wc.out != nil)
	}
}

// writeWatch counts the writes and write deadlines that go through the
// net.Conn, the runtime's blocking path.
type writeWatch struct {
	net.Conn
	writes, deadlines atomic.Int64
}

func (c *writeWatch) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func (c *writeWatch) SetWriteDeadline(t time.Time) error {
	c.deadlines.Add(1)
	return c.Conn.SetWriteDeadline(t)
}

// On plain TCP a write the socket takes at once (Write uncorked, the
// sender's flush) is one non-blocking write(2): no write deadline (a
// runtime timer per write) and no blocking system call, whose entry wakes
// sysmon when the process was idle. Only what a full socket does not take
// waits, with its deadline, and arrives after the rest, in order.
func TestConnWriteTakenAtOnceDoesNotWait(t *testing.T) {
	server, client := tcpPair(t)
	inner := &writeWatch{Conn: server}
	wc := &conn{Conn: inner, writeTimeout: 5 * time.Second, closeNow: server.Close}
	wc.ra.setRaw(server)
	if _, err := wc.Write([]byte("puback")); err != nil {
		t.Fatal(err)
	}
	wc.cork()
	if _, err := wc.Write([]byte("publish")); err != nil {
		t.Fatal(err)
	}
	if err := wc.flush(); err != nil {
		t.Fatal(err)
	}
	if w, d := inner.writes.Load(), inner.deadlines.Load(); w != 0 || d != 0 {
		t.Fatalf("%d blocking writes and %d write deadlines for writes the socket took at once, want none", w, d)
	}
	buf := make([]byte, len("pubackpublish"))
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "pubackpublish" {
		t.Fatalf("client read %q, %v", buf, err)
	}

	// 16 MiB to a client that reads only later: the socket takes part at
	// once, the rest waits with a deadline.
	want := make([]byte, 0, 16<<20)
	for i := 0; len(want) < 16<<20; i++ {
		want = fmt.Appendf(want, "packet %d;", i)
	}
	got := make(chan []byte)
	go func() {
		time.Sleep(100 * time.Millisecond)
		b, _ := io.ReadAll(io.LimitReader(client, int64(len(want))))
		got <- b
	}()
	if n, err := wc.Write(want); n != len(want) || err != nil {
		t.Fatalf("write to a full socket: %d, %v; want %d, nil", n, err, len(want))
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("client read %d bytes, want the %d written, in order", len(b), len(want))
	}
	if w, d := inner.writes.Load(), inner.deadlines.Load(); w != 1 || d < 1 {
		t.Fatalf("%d blocking writes, %d write deadlines for a full socket; want 1 write with a deadline", w, d)
	}
}
