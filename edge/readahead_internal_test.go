package edge

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

// TestReadAhead: every byte arrives once and in order, whatever the sizes
// of the writes and of the reads; a quiet connection holds no buffer; the
// read deadline and the end of the stream come through.
func TestReadAhead(t *testing.T) {
	for _, plain := range []bool{true, false} {
		name := "tcp"
		if !plain {
			name = "no raw socket (TLS, WebSocket)"
		}
		t.Run(name, func(t *testing.T) {
			server, client := tcpPair(t)
			var r readAhead
			if plain {
				r.setRaw(server)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			want := make([]byte, 200_000)
			for i := range want {
				want[i] = byte(rng.IntN(256))
			}
			go func() {
				for rest := want; len(rest) > 0; {
					n := min(len(rest), 1+rng.IntN(5000))
					if _, err := client.Write(rest[:n]); err != nil {
						return
					}
					rest = rest[n:]
					if rng.IntN(10) == 0 {
						time.Sleep(time.Millisecond)
					}
				}
			}()
			var got []byte
			sizes := rand.New(rand.NewPCG(3, 4))
			for len(got) < len(want) {
				p := make([]byte, 1+sizes.IntN(3000))
				n, err := r.read(server, p)
				if err != nil {
					t.Fatalf("after %d bytes: %v", len(got), err)
				}
				got = append(got, p[:n]...)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("bytes differ")
			}
			if r.buf != nil {
				t.Error("a buffer is held with nothing pending")
			}

			_ = server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if _, err := r.read(server, make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("past the deadline: %v, want a timeout", err)
			}
			if plain && r.buf != nil {
				t.Error("a buffer is held after a wait that read nothing")
			}
			_ = server.SetReadDeadline(time.Time{})
			_ = client.Close()
			if _, err := r.read(server, make([]byte, 16)); !errors.Is(err, io.EOF) {
				t.Errorf("after the peer closed: %v, want EOF", err)
			}
		})
	}
}

// After a read that returned less than it asked for, the socket was empty
// at that moment, yet the next read must still ask the socket before it
// waits: bytes that came in between, and that the runtime's netpoller saw
// while no one waited, would otherwise wait for the next bytes to arrive.
// RawConn.Read starts by clearing the readiness the netpoller recorded
// (internal/poll's prepareRead, runtime.poll_runtime_pollReset), so a wait
// without that read first sleeps through them (here until the deadline).
func TestReadAheadReadsWhatCameAfterAShortRead(t *testing.T) {
	server, client := tcpPair(t)
	var r readAhead
	r.setRaw(server)
	p := make([]byte, 64)
	for i, msg := range []string{"first", "second", "third"} {
		if _, err := client.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			// Every goroutine asleep: the scheduler waits in the
			// netpoller, which sees the socket readable with no reader.
			time.Sleep(50 * time.Millisecond)
		}
		_ = server.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := r.read(server, p)
		if err != nil || string(p[:n]) != msg {
			t.Fatalf("read %d: %q, %v; want %q", i, p[:n], err, msg)
		}
	}
}
