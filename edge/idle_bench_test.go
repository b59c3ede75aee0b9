//go:build linux

package edge_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkIdleConnMemory measures what an idle MQTT 3.1.1 connection costs
// the broker in this process: EDGEMQ_CONNS connections (default 10,000)
// connect with a clean session and keepalive 600 s and say nothing more
// ("since-connack"), or publish one QoS 1 message first and then say
// nothing ("after-publish": the stack its processing grew is shrunk by the
// GCs, one halving each).
// It reports the Go heap, the goroutine stacks and the goroutines per
// connection, after two GCs. The clients are raw blocking sockets (an fd
// each, no Go object), so every byte counted is the broker's. With
// EDGEMQ_HEAPPROFILE=file it writes the heap profile with the connections
// open (go tool pprof -sample_index=inuse_space). Run it once:
//
//	go test ./edge -run '^$' -bench IdleConnMemory -benchtime 1x
//
// The bench tool's conns scenario measures the whole process's RSS instead
// (docs/benchmarks.md); this one says where the bytes go.
func BenchmarkIdleConnMemory(b *testing.B) {
	conns := 10000
	if s := os.Getenv("EDGEMQ_CONNS"); s != "" {
		var err error
		if conns, err = strconv.Atoi(s); err != nil {
			b.Fatalf("EDGEMQ_CONNS: %v", err)
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	if most := (int(lim.Cur) - 200) / 2; conns > most {
		// Both ends of every connection are in this process.
		b.Logf("ulimit -n is %d: %d connections, not %d", lim.Cur, most, conns)
		conns = most
	}
	b.Run("since-connack", func(b *testing.B) { idleConnMemory(b, conns, false) })
	b.Run("after-publish", func(b *testing.B) { idleConnMemory(b, conns, true) })
}

func idleConnMemory(b *testing.B, conns int, publish bool) {
	for range b.N {
		cfg := testConfig(b)
		cfg.Limits.MaxClients = conns + 100
		tb := startBroker(b, cfg)
		addr := tb.Addr("tcp").(*net.TCPAddr)
		before := memNow()

		fds := make([]int, conns)
		var wg sync.WaitGroup
		next := make(chan int)
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					fd, err := rawConnect(addr, "idle-"+strconv.Itoa(i))
					if err == nil && publish {
						err = rawPublishQoS1(fd)
					}
					if err != nil {
						b.Errorf("connection %d: %v", i, err)
						continue
					}
					fds[i] = fd
				}
			}()
		}
		for i := range conns {
			next <- i
		}
		close(next)
		wg.Wait()
		b.Cleanup(func() {
			for _, fd := range fds {
				if fd > 0 {
					_ = syscall.Close(fd)
				}
			}
		})
		time.Sleep(2 * time.Second) // as the bench tool: let the broker settle
		after := memNow()
		if publish {
			runtime.GC() // two more halvings of a grown stack
			runtime.GC()
			after = memNow()
		}
		if p := os.Getenv("EDGEMQ_HEAPPROFILE"); p != "" {
			f, err := os.Create(p)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
				b.Fatal(err)
			}
			_ = f.Close()
		}
		n := float64(conns)
		heapB := float64(after.heap-before.heap) / n
		stackB := float64(after.stack-before.stack) / n
		g := float64(after.goroutines-before.goroutines) / n
		b.ReportMetric(heapB, "heap-B/conn")
		b.ReportMetric(stackB, "stack-B/conn")
		b.ReportMetric(g, "goroutines/conn")
		b.Logf("%d idle connections: %.0f B heap + %.0f B stacks per connection, %.2f goroutines each (heap in use %d -> %d, stacks %d -> %d)",
			conns, heapB, stackB, g, before.heap, after.heap, before.stack, after.stack)
	}
}

type memSample struct {
	heap, stack uint64
	goroutines  int
}

func memNow() memSample {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memSample{heap: m.HeapAlloc, stack: m.StackInuse, goroutines: runtime.NumGoroutine()}
}

// rawConnect opens a blocking socket to addr, sends an MQTT 3.1.1 CONNECT
// (clean session, keepalive 600 s) and reads the CONNACK.
func rawConnect(addr *net.TCPAddr, id string) (int, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	sa := &syscall.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	if err := syscall.Connect(fd, sa); err != nil {
		_ = syscall.Close(fd)
		return 0, err
	}
	vh := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0x02, 0x58} // clean session, keepalive 600
	body := binary.BigEndian.AppendUint16(vh, uint16(len(id)))
	body = append(body, id...)
	pk := append([]byte{0x10, byte(len(body))}, body...)
	if _, err := syscall.Write(fd, pk); err != nil {
		_ = syscall.Close(fd)
		return 0, err
	}
	ack := make([]byte, 4)
	for got := 0; got < len(ack); {
		n, err := syscall.Read(fd, ack[got:])
		if err != nil || n == 0 {
			_ = syscall.Close(fd)
			return 0, fmt.Errorf("read CONNACK: %v (%d bytes)", err, got)
		}
		got += n
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		_ = syscall.Close(fd)
		return 0, fmt.Errorf("CONNACK % x", ack)
	}
	return fd, nil
}

// rawPublishQoS1 sends a QoS 1 PUBLISH (packet id 1, 16-byte payload) on
// fd and reads its PUBACK.
func rawPublishQoS1(fd int) error {
	topic := "idle/t"
	body := binary.BigEndian.AppendUint16(nil, uint16(len(topic)))
	body = append(body, topic...)
	body = append(body, 0, 1)
	body = append(body, make([]byte, 16)...)
	pk := append([]byte{0x32, byte(len(body))}, body...)
	if _, err := syscall.Write(fd, pk); err != nil {
		return err
	}
	ack := make([]byte, 4)
	for got := 0; got < len(ack); {
		n, err := syscall.Read(fd, ack[got:])
		if err != nil || n == 0 {
			return fmt.Errorf("read PUBACK: %v (%d bytes)", err, got)
		}
		got += n
	}
	if ack[0] != 0x40 {
		return fmt.Errorf("PUBACK % x", ack)
	}
	return nil
}
