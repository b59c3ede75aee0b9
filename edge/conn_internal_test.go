package edge

import (
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
