package edge_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/edge"
	"github.com/edgemq/edgemq/wal"
)

// heldSyncFS is the log's file-system seam with a gate on fsync: while
// held, every Sync of a file of the log waits until release, so a record
// appended meanwhile is not durable and its PUBACK waits.
type heldSyncFS struct {
	mu   sync.Mutex
	gate chan struct{} // nil: not held
}

func (h *heldSyncFS) hold() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gate == nil {
		h.gate = make(chan struct{})
	}
}

func (h *heldSyncFS) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gate != nil {
		close(h.gate)
		h.gate = nil
	}
}

func (h *heldSyncFS) fs() wal.FS {
	return wal.FS{OpenFile: func(name string, flag int, perm os.FileMode) (wal.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		return heldSyncFile{File: f, h: h}, nil
	}}
}

type heldSyncFile struct {
	*os.File
	h *heldSyncFS
}

func (f heldSyncFile) Sync() error {
	f.h.mu.Lock()
	gate := f.h.gate
	f.h.mu.Unlock()
	if gate != nil {
		<-gate
	}
	return f.File.Sync()
}

// TestRefusalAckOrder: the acknowledgement of a publish refused at the
// edge (write ACL denied, a $SYS topic, a topic too long, a $share topic
// name without a topic after its group) is written in
// the order the PUBLISHes were received [MQTT-4.6.0-2], after the PUBACK
// of an earlier publish still waiting for its fsync, never before it: a
// 3.1.1 client (paho's) matches acknowledgements by order.
func TestRefusalAckOrder(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.ACL = []edge.ACLRule{{Topic: "ok/#", Access: "readwrite"}, {Topic: "$SYS/#", Access: "readwrite"}}
	cfg.Limits.MaxTopicLength = 32
	disk := &heldSyncFS{}
	b, err := edge.New(cfg, edge.Options{Logger: testLogger(t), Registry: prometheus.NewRegistry(), LogFS: disk.fs()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		disk.release()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	addr := b.Addr("tcp").String()
	long := "ok/" + string(make([]byte, 40))
	for i := 3; i < len(long); i++ {
		long = long[:i] + "x" + long[i+1:]
	}
	for _, tc := range []struct {
		name, topic string
		v5          byte
	}{{"acl", "denied/x", 0x87}, {"sys", "$SYS/x", 0x87}, {"long", long, 0x90}, {"share", "$share/g", 0x90}} {
		for _, version := range []byte{5, 4} {
			for q := byte(1); q <= 2; q++ {
				rc := dialRaw(t, addr, version)
				rc.connect(fmt.Sprintf("order-%s-%d-%d", tc.name, version, q), true, 30)
				disk.hold()
				rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: q}, PacketID: 1, TopicName: "ok/a", Payload: []byte("a")})
				rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: q}, PacketID: 2, TopicName: tc.topic, Payload: []byte("b")})
				if pk, err := rc.read(300 * time.Millisecond); err == nil {
					t.Errorf("%s v%d qos %d: type %d id %d (reason %#x) while the first publish waits for its fsync, want nothing before its acknowledgement [MQTT-4.6.0-2]",
						tc.name, version, q, pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode)
				}
				disk.release()
				want := map[byte]byte{1: packets.Puback, 2: packets.Pubrec}[q]
				for _, id := range []uint16{1, 2} {
					pk, err := rc.read(5 * time.Second)
					if err != nil || pk.FixedHeader.Type != want || pk.PacketID != id {
						t.Errorf("%s v%d qos %d: got type %d id %d (%v), want type %d id %d", tc.name, version, q, pk.FixedHeader.Type, pk.PacketID, err, want, id)
						continue
					}
					code := byte(0)
					if id == 2 && version == 5 {
						code = tc.v5
					}
					if pk.ReasonCode != code {
						t.Errorf("%s v%d qos %d id %d: reason %#x, want %#x", tc.name, version, q, id, pk.ReasonCode, code)
					}
				}
				_ = rc.c.Close()
			}
		}
	}
}
