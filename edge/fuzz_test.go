package edge_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/edgemq/edgemq/edge"
)

// FuzzMQTTInput feeds arbitrary bytes to a running broker's TCP listener,
// whole and split in two writes, then checks that the broker still accepts
// and serves a well-behaved client. Whatever the bytes, the broker must not
// crash, hang or leak. Run: go test -run='^$' -fuzz=FuzzMQTTInput ./edge
func FuzzMQTTInput(f *testing.F) {
	connect := []byte{0x10, 0x0c, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00}
	f.Add(connect, uint16(3))
	f.Add(append(append([]byte{}, connect...), 0x82, 0x06, 0x00, 0x01, 0x00, 0x01, '#', 0x01), uint16(14))
	f.Add(append(append([]byte{}, connect...), 0x32, 0x06, 0x00, 0x01, 'a', 0x00, 0x01, 'x'), uint16(15))
	f.Add([]byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x7f}, uint16(2))
	f.Add([]byte{0x10, 0x10, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3c, 0x03, 0x21, 0x00, 0x00, 0x00, 0x00}, uint16(9))
	f.Add([]byte{0xe0, 0x00}, uint16(1))
	// MQTT 5: a SUBSCRIBE whose filter ends the packet, without its
	// options byte (mochi's decoder panicked on it).
	connect5 := []byte{0x10, 0x0d, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x00}
	f.Add(append(append([]byte{}, connect5...), 0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 'a'), uint16(15))

	addr := fuzzBroker(f, testConfig(f))
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("broker stopped accepting: %v", err)
		}
		defer c.Close()
		cut := int(split) % (len(data) + 1)
		_ = c.SetDeadline(time.Now().Add(20 * time.Millisecond))
		_, _ = c.Write(data[:cut])
		_, _ = c.Write(data[cut:])
		_, _ = c.Read(make([]byte, 256))

		rc := dialRaw(t, addr, 4)
		if ack := rc.connect("fuzz-check", true, 30); ack.ReasonCode != 0 {
			t.Fatalf("broker refused a good client after the input: %#x", ack.ReasonCode)
		}
	})
}

// fuzzBroker starts a broker on cfg for a fuzz target and returns its TCP
// listener's address. Not startBroker: the fuzzing engine forbids logging
// through f from the broker's goroutines.
func fuzzBroker(f *testing.F, cfg edge.Config) string {
	b, err := edge.New(cfg, edge.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Shutdown(ctx)
	})
	return b.Addr("tcp").String()
}
