package edge

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsPair is a WebSocket over a loopback TCP connection: the server's side
// as the listener wraps it (wsConn), and the client's.
func wsPair(t *testing.T) (server *wsConn, client net.Conn) {
	t.Helper()
	accepted := make(chan *wsConn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		accepted <- newWSConn(websocket.NetConn(context.Background(), ws, websocket.MessageBinary), ws.CloseNow)
	}))
	t.Cleanup(srv.Close)
	ws, _, err := websocket.Dial(context.Background(), "ws"+srv.URL[len("http"):], nil)
	if err != nil {
		t.Fatal(err)
	}
	client = websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	server = <-accepted
	t.Cleanup(func() { _ = server.closeNow(); _ = client.Close() })
	return server, client
}

// A read deadline's timer that fires for a deadline SetReadDeadline has
// moved since (its callback running after SetReadDeadline, the
// interleaving forced here) does not fail the next read: the deadline in
// force has not passed.
func TestWSConnStaleDeadlineTimer(t *testing.T) {
	server, client := wsPair(t)
	if err := server.SetReadDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	server.rd.fire() // the earlier deadline's timer, fired as the deadline moved
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	n, err := server.Read(buf)
	if err != nil || string(buf[:n]) != "x" {
		t.Fatalf("read %q, %v; want \"x\" (the deadline is an hour away)", buf[:n], err)
	}
}

// The same for a write deadline: a write after a stale firing goes out.
func TestWSConnStaleWriteDeadlineTimer(t *testing.T) {
	server, client := wsPair(t)
	if err := server.SetWriteDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	server.wd.fire()
	if _, err := server.Write([]byte("y")); err != nil {
		t.Fatalf("write: %v (the deadline is an hour away)", err)
	}
	buf := make([]byte, 8)
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := client.Read(buf); err != nil || string(buf[:n]) != "y" {
		t.Fatalf("client read %q, %v", buf[:n], err)
	}
}

// A read deadline that passes while a read waits ends the read with
// os.ErrDeadlineExceeded, after onExpire.
func TestWSConnDeadlinePassesDuringRead(t *testing.T) {
	server, _ := wsPair(t)
	said := make(chan struct{})
	server.onExpire = func() { close(said) }
	if err := server.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	_, err := server.Read(make([]byte, 8))
	if !errors.Is(err, errReadExpired) {
		t.Fatalf("read: %v, want %v", err, errReadExpired)
	}
	select {
	case <-said:
	default:
		t.Fatal("onExpire not called before the read failed")
	}
}
