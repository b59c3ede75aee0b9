package edge_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/edge"
	"github.com/edgemq/edgemq/qos"
	"github.com/edgemq/edgemq/wal"
)

// BenchmarkOfflineSessionMemory measures what offline persistent sessions
// cost in RAM, and what their backlog adds: EDGEMQ_SESSIONS sessions
// (default 10,000) subscribe, go offline, and 1,000 QoS 1 messages match
// every one of them. Run it once:
//
//	go test ./edge -run '^$' -bench OfflineSessionMemory -benchtime 1x
func BenchmarkOfflineSessionMemory(b *testing.B) {
	const sessions, messages = 10000, 1000
	for range b.N {
		cfg := testConfig(b)
		cfg.Storage.Sync = "interval" // RAM is measured here, not fsyncs
		cfg.Limits.MaxClients = sessions + 100
		tb := startBroker(b, cfg)
		addr := tb.Addr("tcp").String()
		before := heap()

		var wg sync.WaitGroup
		ids := make(chan int)
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range ids {
					// crashSub's raw client: no per-connection test cleanup
					// that would count as the broker's memory.
					s := &crashSub{id: "mem-" + strconv.Itoa(i), version: 4, qos: 1}
					s.init()
					if err := s.session(addr, nil, true, "mem/#"); err != nil {
						b.Errorf("session %d: %v", i, err)
					}
				}
			}()
		}
		for i := range sessions {
			ids <- i
		}
		close(ids)
		wg.Wait()
		eventually(b, "sessions offline", func() bool { return tb.metric(b, "edgemq_sessions_delivering") == 0 })
		time.Sleep(2 * time.Second) // the dispatcher applies the session records to its shadow state
		withSessions := heap()

		p, _ := connectV5(b, dialNet(b, "tcp", addr, nil), v5Opts{id: "mem-pub"})
		body := make([]byte, 256)
		for i := range messages {
			if _, err := p.publish(b, "mem/t", 1, false, body); err != nil {
				b.Fatalf("publish %d: %v", i, err)
			}
		}
		fanStart := time.Now()
		for tb.metric(b, "edgemq_messages_dispatched_total") < messages {
			if time.Since(fanStart) > 5*time.Minute {
				b.Fatalf("fan-out not done after 5 min: %v", tb.metric(b, "edgemq_messages_dispatched_total"))
			}
			time.Sleep(10 * time.Millisecond)
		}
		b.Logf("fan-out of %d messages to %d sessions done %.1f s after the last publish", messages, sessions, time.Since(fanStart).Seconds())
		withBacklog := heap()

		perSession := float64(withSessions-before) / sessions
		perBacklog := float64(withBacklog-withSessions) / sessions
		b.ReportMetric(perSession, "B/session")
		b.ReportMetric(perBacklog, "B/session-backlog")
		b.Logf("%d offline sessions: %.0f B each; a backlog of %d messages each adds %.0f B per session (heap %d -> %d -> %d)",
			sessions, perSession, messages, perBacklog, before, withSessions, withBacklog)
	}
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkRestart measures how long a broker takes to start on a log of
// EDGEMQ_RESTART_BYTES (default 1 GiB) holding 100,000 persistent sessions:
// first with no snapshot (the whole log is replayed), then again after the
// clean stop wrote one. Run it once:
//
//	go test ./edge -run '^$' -bench Restart -benchtime 1x
func BenchmarkRestart(b *testing.B) {
	const sessions = 100000
	logBytes := int64(1 << 30)
	if v, err := strconv.ParseInt(os.Getenv("EDGEMQ_RESTART_BYTES"), 10, 64); err == nil && v > 0 {
		logBytes = v
	}
	for range b.N {
		b.StopTimer()
		dir := b.TempDir()
		writeSyntheticLog(b, filepath.Join(dir, "log"), sessions, logBytes)
		cfg := testConfig(b)
		cfg.Storage.Dir = dir
		cfg.Storage.MaxDiskBytes = 0
		cfg.Limits.MaxClients = 100
		b.StartTimer()
		for _, round := range []string{"replay", "snapshot"} {
			started := time.Now()
			br, err := edge.New(cfg, edge.Options{Logger: testLogger(b)})
			if err != nil {
				b.Fatal(err)
			}
			if err := br.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			took := time.Since(started)
			b.ReportMetric(took.Seconds(), "s/start-"+round)
			b.Logf("start with %s: %.2f s", round, took.Seconds())
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := br.Shutdown(ctx); err != nil {
				b.Fatal(err)
			}
			cancel()
		}
	}
}

// writeSyntheticLog writes what a broker would have logged: sessions each
// with a subscription, then 256-byte QoS 1 messages up to size bytes.
func writeSyntheticLog(b *testing.B, dir string, sessions int, size int64) {
	cfg := wal.DefaultConfig()
	cfg.Sync = wal.SyncNever
	l, err := wal.Open(dir, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	batch := make([][]byte, 0, 256)
	flush := func() {
		if _, err := l.AppendAsync(batch...); err != nil {
			b.Fatal(err)
		}
		batch = batch[:0]
	}
	add := func(v any) {
		rec, err := qos.Encode(v)
		if err != nil {
			b.Fatal(err)
		}
		batch = append(batch, rec)
		if len(batch) == cap(batch) {
			flush()
		}
	}
	for i := range sessions {
		id := fmt.Sprintf("device-%06d", i)
		add(&qos.Session{Client: id, ProtocolVersion: 4, ExpiryInterval: 1<<32 - 1})
		add(&qos.Subscribe{Client: id, Filter: "cmd/" + id, QoS: 1})
		add(&qos.Disconnect{Client: id, At: time.Now().Unix(), ExpiryInterval: 1<<32 - 1})
	}
	body := make([]byte, 256)
	for i := 0; l.Stats().DiskBytes < size; i++ {
		for range 4096 {
			add(&qos.Message{Topic: fmt.Sprintf("telemetry/device-%06d", i%sessions), Payload: body, QoS: 1,
				Origin: "device", Created: time.Now().UnixNano()})
		}
	}
	flush()
}

// BenchmarkDeliveryDiskBytes: the storage directory's growth per 1-byte
// QoS 1 message delivered to one persistent subscriber (v5), by the length
// of the subscriber's client id: the message's record, its Deliver and
// Complete records and the log's framing (no checkpoint during the run).
// The subscriber's id does not count (records name its session by its
// Ref): 60.9 bytes for 8-, 256- and 65,535-byte ids, against 76.9, 576.9
// and 131,139 when records named it by client id:
//
//	go test ./edge -run '^$' -bench DeliveryDiskBytes -benchtime 1x
func BenchmarkDeliveryDiskBytes(b *testing.B) {
	const n = 1000
	for _, idLen := range []int{8, 256, 65535} {
		b.Run(fmt.Sprintf("id=%d", idLen), func(b *testing.B) {
			for range b.N {
				dir := b.TempDir()
				br := benchBroker(b, "never", func(c *edge.Config) {
					c.Storage.Dir = dir
					c.Storage.CheckpointInterval = time.Hour
					c.Limits.MaxClientIDLength = 65535
				})
				addr := br.Addr("tcp").String()
				sub := dialRaw(b, addr, 5)
				sub.connect(strings.Repeat("s", idLen), false, 60)
				sub.subscribe(1, "t", 1)
				if _, err := sub.read(5 * time.Second); err != nil { // SUBACK
					b.Fatal(err)
				}
				pub := dialRaw(b, addr, 4) // 3.1.1: no Receive Maximum to wait for
				pub.connect("pub", true, 60)
				before := dirBytes(b, dir)
				for i := range n {
					pub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
						TopicName: "t", PacketID: uint16(i + 1), Payload: []byte("x")})
				}
				for range n { // acknowledged as they come: the window is 128
					pk := sub.readPublishes(1, 10*time.Second)[0]
					sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
				}
				// The Complete records are appended after the PUBACKs are
				// read: wait until the directory stops growing.
				after := dirBytes(b, dir)
				for range 50 {
					time.Sleep(100 * time.Millisecond)
					now := dirBytes(b, dir)
					if now == after {
						break
					}
					after = now
				}
				b.ReportMetric(float64(after-before)/n, "disk-B/message")
			}
		})
	}
}

// dirBytes is the size of the files under dir.
func dirBytes(b *testing.B, dir string) int64 {
	var total int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			total += fi.Size()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return total
}
