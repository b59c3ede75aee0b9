//go:build linux

package edge_test

import (
	"net"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestIdleConnectionIsOneGoroutine: an idle connection costs the broker
// one goroutine, the one that waits for its next packet; mochi's write
// loop does not run for it, nor does a sender of the engine.
func TestIdleConnectionIsOneGoroutine(t *testing.T) {
	const n = 100
	tb := startBroker(t, testConfig(t))
	before := runtime.NumGoroutine()
	for i := range n {
		fd, err := rawConnect(tcpAddr(t, tb), "idle-"+strconv.Itoa(i))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		t.Cleanup(func() { _ = syscall.Close(fd) })
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		extra := runtime.NumGoroutine() - before
		if extra <= n+2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d idle connections hold %d goroutines, want %d", n, extra, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSysTopicsWithoutIdleWriter: mochi's write loop starts for a client
// that subscribes to $SYS, which then gets mochi's $SYS messages, and its
// own acknowledgements are not held back behind them; a client subscribed
// to a mochi shared group (which mochi gives $SYS messages too) keeps
// getting its acknowledgements at once.
func TestSysTopicsWithoutIdleWriter(t *testing.T) {
	tb := startBroker(t, testConfig(t))
	addr := tb.Addr("tcp").String()
	for i, filter := range []string{"$SYS/broker/uptime", "$share/g/#"} {
		t.Run(filter, func(t *testing.T) {
			rc := dialRaw(t, addr, 4)
			rc.connect("sys-"+strconv.Itoa(i), true, 60)
			rc.subscribe(1, filter, 0)
			gotSys := false
			next := func() packets.Packet {
				t.Helper()
				pk, err := rc.read(time.Second)
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				if pk.FixedHeader.Type == packets.Publish && pk.TopicName == "$SYS/broker/uptime" {
					gotSys = true
				}
				return pk
			}
			for pid := uint16(10); pid < 30; pid++ {
				rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
					PacketID: pid, TopicName: "sys/t", Payload: []byte("x")})
				for pk := next(); pk.FixedHeader.Type != packets.Puback || pk.PacketID != pid; pk = next() {
				}
			}
			if filter[0:4] != "$SYS" {
				return
			}
			for deadline := time.Now().Add(3 * time.Second); !gotSys; next() {
				if time.Now().After(deadline) {
					t.Fatal("no $SYS message in 3 s")
				}
			}
		})
	}
}

func tcpAddr(t *testing.T, tb *testBroker) *net.TCPAddr {
	t.Helper()
	return tb.Addr("tcp").(*net.TCPAddr)
}
