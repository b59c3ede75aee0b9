package qos_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgemq/edgemq/internal/cputime"
	"github.com/edgemq/edgemq/qos"
)

// countConn counts PUBLISH packets and acknowledges them at once, as a
// fast client would: the engine's cost per delivery without a socket.
type countConn struct {
	cl        atomic.Pointer[qos.Client]
	published atomic.Int64
	acks      atomic.Int64
}

func (c *countConn) Write(p *qos.Packet) error {
	switch p.Type {
	case qos.PacketPublish:
		c.published.Add(1)
		if p.QoS == 1 {
			// Acknowledged from another goroutine, as a read loop would.
			pid := p.PacketID
			go c.cl.Load().Puback(pid)
		}
	case qos.PacketPuback:
		c.acks.Add(1)
	}
	return nil
}

func (c *countConn) Flush() error { return nil }

func (c *countConn) WriteNow(p *qos.Packet) (bool, error) { return true, c.Write(p) }

func (c *countConn) FlushNow() (bool, error) { return true, nil }

func (c *countConn) Close(byte) {}

func benchEngine(b *testing.B) *qos.Engine {
	b.Helper()
	c := qos.DefaultConfig(newMemLog())
	c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	c.CheckpointInterval = time.Hour
	e, err := qos.New(c)
	if err != nil {
		b.Fatal(err)
	}
	e.Start()
	b.Cleanup(func() { e.Close() })
	return e
}

func benchConnect(b *testing.B, e *qos.Engine, id string) (*qos.Client, *countConn) {
	b.Helper()
	return benchConnectInfo(b, e, qos.ConnectInfo{ClientID: id, ProtocolVersion: 5})
}

func benchConnectInfo(b *testing.B, e *qos.Engine, info qos.ConnectInfo) (*qos.Client, *countConn) {
	b.Helper()
	conn := &countConn{}
	cl, _, err := e.Connect(conn, info)
	if err != nil {
		b.Fatal(err)
	}
	conn.cl.Store(cl)
	cl.Established()
	return cl, conn
}

// BenchmarkFanoutQoS1 is one QoS 1 publish to n clean subscribers: append,
// publisher's PUBACK, dispatch, n deliveries and their PUBACKs, over the
// in-memory log (no fsync, no socket).
func BenchmarkFanoutQoS1(b *testing.B) { benchFanoutQoS1(b, 0) }

// BenchmarkFanoutQoS1Persistent is BenchmarkFanoutQoS1 to persistent
// subscribers: each delivery logs its Deliver and Complete records too.
func BenchmarkFanoutQoS1Persistent(b *testing.B) { benchFanoutQoS1(b, math.MaxUint32) }

func benchFanoutQoS1(b *testing.B, expiry uint32) {
	for _, n := range []int{1, 50} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			e := benchEngine(b)
			subs := make([]*countConn, n)
			for i := range subs {
				cl, conn := benchConnectInfo(b, e, qos.ConnectInfo{ClientID: fmt.Sprint("sub", i), ProtocolVersion: 5, ExpiryInterval: expiry})
				if err := cl.Subscribe([]qos.Subscribe{{Filter: "bench/#", QoS: 1}}); err != nil {
					b.Fatal(err)
				}
				cl.Suback()
				subs[i] = conn
			}
			pub, pconn := benchConnect(b, e, "pub")
			payload := make([]byte, 256)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cputime.Self()
			publishWindowed(b, pub, pconn, payload)
			want := int64(b.N)
			for _, s := range subs {
				for s.published.Load() < want {
					time.Sleep(50 * time.Microsecond)
				}
			}
			// The loop waits for acknowledgements, so wall time is latency;
			// the process's CPU time per delivery is the cost.
			b.ReportMetric(float64((cputime.Self()-cpu0).Nanoseconds())/float64(b.N*n), "cpu-ns/delivery")
		})
	}
}

// publishWindowed publishes b.N QoS 1 messages on bench/t with at most
// 100 unacknowledged, like a real publisher's window.
func publishWindowed(b *testing.B, pub *qos.Client, pconn *countConn, payload []byte) {
	for i := range b.N {
		pub.Publish(&qos.Message{Topic: "bench/t", QoS: 1, Payload: payload}, uint16(i%60000+1))
		for pconn.acks.Load() < int64(i+1)-100 {
			time.Sleep(10 * time.Microsecond)
		}
	}
}

// BenchmarkSharedQoS1 is one QoS 1 publish to a shared group of 3
// persistent members: append, publisher's PUBACK, dispatch, one member's
// delivery with its Deliver record and its PUBACK with its Complete
// record, over the in-memory log. The shadow state notes each delivery
// among what the group's members took.
func BenchmarkSharedQoS1(b *testing.B) {
	e := benchEngine(b)
	members := make([]*countConn, 3)
	for i := range members {
		conn := &countConn{}
		cl, _, err := e.Connect(conn, qos.ConnectInfo{ClientID: fmt.Sprint("member", i), ProtocolVersion: 5, ExpiryInterval: 1 << 31})
		if err != nil {
			b.Fatal(err)
		}
		conn.cl.Store(cl)
		cl.Established()
		if err := cl.Subscribe([]qos.Subscribe{{Filter: "$share/g/bench/#", QoS: 1}}); err != nil {
			b.Fatal(err)
		}
		cl.Suback()
		members[i] = conn
	}
	pub, pconn := benchConnect(b, e, "pub")
	payload := make([]byte, 256)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cputime.Self()
	publishWindowed(b, pub, pconn, payload)
	for {
		var n int64
		for _, m := range members {
			n += m.published.Load()
		}
		if n >= int64(b.N) {
			break
		}
		time.Sleep(50 * time.Microsecond)
	}
	b.ReportMetric(float64((cputime.Self()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/delivery")
}

// BenchmarkFanoutQoS0 is one QoS 0 publish (not logged) to n subscribers.
func BenchmarkFanoutQoS0(b *testing.B) {
	e := benchEngine(b)
	const n = 50
	subs := make([]*countConn, n)
	for i := range subs {
		cl, conn := benchConnect(b, e, fmt.Sprint("sub", i))
		if err := cl.Subscribe([]qos.Subscribe{{Filter: "bench/+", QoS: 0}}); err != nil {
			b.Fatal(err)
		}
		subs[i] = conn
	}
	pub, _ := benchConnect(b, e, "pub")
	m := &qos.Message{Topic: "bench/t", Payload: make([]byte, 256)}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cputime.Self()
	for range b.N {
		pub.Publish(m, 0)
	}
	b.ReportMetric(float64((cputime.Self()-cpu0).Nanoseconds())/float64(b.N*n), "cpu-ns/delivery")
}

// BenchmarkIndexMatch is one walk of the index with 1,000 sessions subscribed
// to distinct topics and 10 to wildcards.
func BenchmarkIndexMatch(b *testing.B) {
	e := benchEngine(b)
	for i := range 1000 {
		cl, _ := benchConnect(b, e, fmt.Sprint("dev", i))
		if err := cl.Subscribe([]qos.Subscribe{{Filter: fmt.Sprintf("site/%d/temp", i), QoS: 0}}); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 10 {
		cl, _ := benchConnect(b, e, fmt.Sprint("wild", i))
		if err := cl.Subscribe([]qos.Subscribe{{Filter: "site/+/temp", QoS: 0}}); err != nil {
			b.Fatal(err)
		}
	}
	pub, _ := benchConnect(b, e, "pub")
	m := &qos.Message{Topic: "site/500/temp", Payload: []byte("21.5")}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		pub.Publish(m, 0) // match + 11 QoS 0 offers
	}
}

// BenchmarkPersistentConnects is a reconnect storm on a slow disk: n
// devices connect at once with persistent sessions (new ones; each
// Session record must be durable before its CONNACK) and subscribe (the
// same for its SUBACK), over a log whose fsync takes 5 ms with group
// commit. Reported: the storm's wall time per device, and the fsyncs it
// took as fsyncs/device (the ideal is a few for the whole storm; one per
// device is a storm that waits in line).
func BenchmarkPersistentConnects(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			syncs := 0
			for range b.N {
				b.StopTimer()
				l := newMemLog()
				l.slowSync(b, 5*time.Millisecond)
				c := qos.DefaultConfig(l)
				c.Logger = slog.New(slog.DiscardHandler)
				c.CheckpointInterval = time.Hour
				e, err := qos.New(c)
				if err != nil {
					b.Fatal(err)
				}
				e.Start()
				b.StartTimer()
				var wg sync.WaitGroup
				for i := range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						id := fmt.Sprintf("dev-%d", i)
						cl, _, err := e.Connect(&countConn{}, qos.ConnectInfo{ClientID: id, ProtocolVersion: 5, ExpiryInterval: 3600})
						if err != nil {
							b.Error(err)
							return
						}
						cl.Established()
						if err := cl.Subscribe([]qos.Subscribe{{Filter: "cmd/" + id, QoS: 1}}); err != nil {
							b.Error(err)
						}
						cl.Suback()
					}()
				}
				wg.Wait()
				b.StopTimer()
				l.mu.Lock()
				syncs += l.syncs
				l.mu.Unlock()
				e.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/device")
			b.ReportMetric(float64(syncs)/float64(b.N*n), "fsyncs/device")
		})
	}
}

// BenchmarkCheckpointSessions is a checkpoint of n persistent sessions, a
// fleet of devices offline with one message waiting each and a quarter
// online. Reported: the checkpoint's walk of the sessions and groups
// (walk-ms), the whole checkpoint (checkpoint-ms: the shadow state
// copied, the walk, the snapshot encoded into memory, the cursor
// committed), and the longest call of each kind made one after the other
// during a checkpoint: a connected device's QoS 1 Client.Publish (stall-ms:
// it takes its session's lock) all along, and, one kind per checkpoint,
// offline devices coming back (connect-ms) and going again
// (disconnect-ms), as a fleet does after an outage, and a connected device
// subscribing to new filters (subscribe-ms: it waits for the dispatcher
// too) and unsubscribing them (unsubscribe-ms). The devices that come and
// go are a pool of n/10 of the n with nothing waiting: each comes back to
// a short backlog to read, as it would after a short outage.
func BenchmarkCheckpointSessions(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			c := qos.DefaultConfig(newMemLog())
			c.Logger = slog.New(slog.DiscardHandler)
			c.CheckpointInterval = time.Hour
			c.Snapshots = &memSnaps{}
			e, err := qos.New(c)
			if err != nil {
				b.Fatal(err)
			}
			e.Start()
			defer e.Close()
			var online []*qos.Client
			var pool []string // offline, nothing waiting
			expiry := uint32(3600)
			connect := func(id string) *qos.Client {
				conn := &countConn{}
				cl, _, err := e.Connect(conn, qos.ConnectInfo{ClientID: id, ProtocolVersion: 5, ExpiryInterval: expiry})
				if err != nil {
					b.Fatal(err)
				}
				conn.cl.Store(cl)
				cl.Established()
				return cl
			}
			device := func(i int) {
				id := fmt.Sprintf("dev-%d", i)
				cl := connect(id)
				if err := cl.Subscribe([]qos.Subscribe{{Filter: "cmd/" + id, QoS: 1}}); err != nil {
					b.Fatal(err)
				}
				cl.Suback()
				if i%4 == 0 {
					online = append(online, cl)
					return
				}
				cl.Disconnect(false, &expiry)
			}
			waiting := n - n/10
			for i := range waiting {
				device(i)
			}
			for i := range waiting {
				if err := e.Publish(context.Background(), &qos.Message{Topic: fmt.Sprintf("cmd/dev-%d", i), Payload: []byte("x"), QoS: 1}); err != nil {
					b.Fatal(err)
				}
			}
			e.WaitDispatched()
			for i := waiting; i < n; i++ {
				device(i)
				if i%4 != 0 {
					pool = append(pool, fmt.Sprintf("dev-%d", i))
				}
			}
			e.WaitDispatched()
			sub := online[1]
			filter := func(i int) string { return fmt.Sprintf("extra/%d", i) }
			// Each kind of call: what it needs ready (the calls it may
			// make), the call, and what puts things back.
			var back []*qos.Client // devices that came back
			kinds := []struct {
				unit     string
				setup    func()
				call     func(i int) bool // false: nothing more to do
				teardown func()
			}{
				{"connect-ms", func() { back = back[:0] }, func(i int) bool {
					if i >= len(pool) {
						return false
					}
					back = append(back, connect(pool[i]))
					return true
				}, func() {
					for _, cl := range back {
						cl.Disconnect(false, &expiry)
					}
				}},
				{"disconnect-ms", func() {
					back = back[:0]
					for _, id := range pool {
						back = append(back, connect(id))
					}
				}, func(i int) bool {
					if i >= len(back) {
						return false
					}
					back[i].Disconnect(false, &expiry)
					return true
				}, func() {
					for _, cl := range back {
						cl.Disconnect(false, &expiry) // those left; again is nothing
					}
				}},
				{"subscribe-ms", func() {}, func(i int) bool {
					if err := sub.Subscribe([]qos.Subscribe{{Filter: filter(i), QoS: 1}}); err != nil {
						b.Error(err)
						return false
					}
					sub.Suback()
					return true
				}, func() {}},
				{"unsubscribe-ms", func() {
					for i := range len(pool) {
						if err := sub.Subscribe([]qos.Subscribe{{Filter: filter(i), QoS: 1}}); err != nil {
							b.Fatal(err)
						}
						sub.Suback()
					}
				}, func(i int) bool {
					if i >= len(pool) {
						return false
					}
					if _, err := sub.Unsubscribe([]string{filter(i)}); err != nil {
						b.Error(err)
						return false
					}
					return true
				}, func() {}},
			}
			// repeat calls f one after the other until stop is closed (or
			// f has nothing more to do) and sends the longest call.
			repeat := func(stop <-chan struct{}, done chan<- time.Duration, f func(i int) bool) {
				var worst time.Duration
				defer func() { done <- worst }()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					t0 := time.Now()
					more := f(i)
					worst = max(worst, time.Since(t0))
					if !more {
						return
					}
					time.Sleep(500 * time.Microsecond)
				}
			}
			pid := uint16(0)
			publish := func(int) bool { // one device publishing all along
				pid = pid%60000 + 1
				if err := online[0].Publish(&qos.Message{Topic: "up/dev-0", Payload: []byte("y"), QoS: 1}, pid); err != nil {
					b.Error(err)
				}
				return true
			}
			var walk, total, stall time.Duration
			worst := make([]time.Duration, len(kinds))
			for range b.N {
				walk += e.FloorWalk()
				for k, kind := range kinds {
					kind.setup()
					e.WaitDispatched()
					stop := make(chan struct{})
					pubDone, callDone := make(chan time.Duration, 1), make(chan time.Duration, 1)
					go repeat(stop, pubDone, publish)
					go repeat(stop, callDone, kind.call)
					t0 := time.Now()
					if err := e.Checkpoint(); err != nil {
						b.Fatal(err)
					}
					total += time.Since(t0)
					close(stop)
					stall = max(stall, <-pubDone)
					worst[k] = max(worst[k], <-callDone)
					kind.teardown()
				}
			}
			b.ReportMetric(float64(walk.Microseconds())/1000/float64(b.N), "walk-ms")
			b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N*len(kinds)), "checkpoint-ms")
			b.ReportMetric(float64(stall.Microseconds())/1000, "stall-ms")
			for k, kind := range kinds {
				b.ReportMetric(float64(worst[k].Microseconds())/1000, kind.unit)
			}
		})
	}
}

// BenchmarkFaninSlowFsync is QoS 1 publishing from 100 connections at
// once, each with a window of 8, over a log whose fsync takes 500 µs
// (group commit): each durability event finds many connections waiting
// for their PUBACKs, some of them for the next batch. Reported: the
// process's CPU time per publish.
func BenchmarkFaninSlowFsync(b *testing.B) {
	const pubs, window = 100, 8
	l := newMemLog()
	l.slowSync(b, 500*time.Microsecond)
	c := qos.DefaultConfig(l)
	c.Logger = slog.New(slog.DiscardHandler)
	c.CheckpointInterval = time.Hour
	e, err := qos.New(c)
	if err != nil {
		b.Fatal(err)
	}
	e.Start()
	defer e.Close()
	cls := make([]*qos.Client, pubs)
	conns := make([]*countConn, pubs)
	for i := range pubs {
		cls[i], conns[i] = benchConnect(b, e, fmt.Sprint("pub", i))
	}
	payload := make([]byte, 256)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cputime.Self()
	var wg sync.WaitGroup
	per := b.N/pubs + 1
	for i := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range per {
				cls[i].Publish(&qos.Message{Topic: "up/t", QoS: 1, Payload: payload}, uint16(j%60000+1))
				for conns[i].acks.Load() < int64(j+1)-window {
					time.Sleep(20 * time.Microsecond)
				}
			}
			for conns[i].acks.Load() < int64(per) {
				time.Sleep(20 * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64((cputime.Self()-cpu0).Nanoseconds())/float64(per*pubs), "cpu-ns/publish")
}

// BenchmarkBacklogScan is a persistent session's backlog read from the
// log as it comes back: one message in every n of the log matches its
// subscription (QoS 0: no acknowledgements in the way), each record read
// and matched by its sender's scan. Per op: one message delivered, n
// records scanned (allocs/op: the fake log's Read copies each record).
func BenchmarkBacklogScan(b *testing.B) {
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			e := benchEngine(b)
			info := qos.ConnectInfo{ClientID: "sub", ProtocolVersion: 5, ExpiryInterval: math.MaxUint32}
			cl, _ := benchConnectInfo(b, e, info)
			if err := cl.Subscribe([]qos.Subscribe{{Filter: "bench/cmd/#", QoS: 0}}); err != nil {
				b.Fatal(err)
			}
			cl.Suback()
			cl.Disconnect(false, nil)
			pub, pconn := benchConnect(b, e, "pub")
			payload := make([]byte, 256)
			user := []qos.Property{{Key: "k", Value: "v"}}
			for i := range b.N * n {
				topic := "bench/telemetry/line/3/machine/17"
				if i%n == 0 {
					topic = "bench/cmd/line/3/machine/17"
				}
				pub.Publish(&qos.Message{Topic: topic, QoS: 1, Payload: payload, User: user}, uint16(i%60000+1))
				for pconn.acks.Load() < int64(i+1)-100 {
					time.Sleep(10 * time.Microsecond)
				}
			}
			for pconn.acks.Load() < int64(b.N*n) {
				time.Sleep(10 * time.Microsecond)
			}
			e.WaitDispatched()
			b.ReportAllocs()
			b.ResetTimer()
			_, conn := benchConnectInfo(b, e, info)
			for conn.published.Load() < int64(b.N) {
				time.Sleep(50 * time.Microsecond)
			}
		})
	}
}
