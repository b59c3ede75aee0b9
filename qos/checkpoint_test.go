package qos_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// retainedAfterRestart returns the payloads of the retained messages a new
// subscriber to filter gets.
func retainedAfterRestart(t *testing.T, h *harness, filter string) map[string]bool {
	t.Helper()
	sub := h.connect("probe", false)
	sub.subscribe(filter, 0)
	got := map[string]bool{}
	for _, p := range sub.conn.settle() {
		if p.Type == qos.PacketPublish {
			got[string(p.Message.Payload)] = true
		}
	}
	sub.cl.Disconnect(false, nil)
	return got
}

// TestCheckpointKeepsWhatTheOlderSnapshotNeeds: recovery falls back to
// the older of the two snapshots kept when the newest reads back damaged,
// and replays the log from its offset; the log must still hold that. A
// retained message set between the two snapshots, which no session
// position holds, is the state only that replay brings back.
func TestCheckpointKeepsWhatTheOlderSnapshotNeeds(t *testing.T) {
	h := newHarness(t, nil)
	pub := h.connect("pub", false)
	pub.cl.Publish(&qos.Message{Topic: "keep/a", QoS: 1, Retain: true, Payload: []byte("a")}, 1)
	pub.conn.waitFor(t, 1)
	h.e.WaitDispatched()
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	pub.cl.Publish(&qos.Message{Topic: "keep/b", QoS: 1, Retain: true, Payload: []byte("b")}, 2)
	pub.conn.waitFor(t, 1)
	for i := range 20 { // more records, so that the trim point has somewhere to go
		pub.publish("other", 1, uint16(3+i), "x")
	}
	pub.conn.waitFor(t, 20)
	h.e.WaitDispatched()
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	h.log.mu.Lock()
	first := h.log.first
	h.log.mu.Unlock()

	h.snaps.mu.Lock()
	newest := h.snaps.snaps[len(h.snaps.snaps)-1]
	newest[len(newest)/2] ^= 0xff // damaged
	h.snaps.mu.Unlock()
	h.crash()
	got := retainedAfterRestart(t, h, "keep/#")
	if !got["a"] || !got["b"] {
		t.Fatalf("retained messages after a restart from the older snapshot: %v, want a and b (the log was trimmed to %d)", got, first)
	}
}

// TestSnapshotAheadOfTheLogIsRemoved: a power cut under sync "interval"
// can leave a snapshot past the end of the log (the log's tail was lost).
// Recovery refuses it, and it must go: the offsets it passed are handed
// out again, and once the log grows past it, a later start would take it
// for valid, bringing back what the cut lost and skipping what came since.
func TestSnapshotAheadOfTheLogIsRemoved(t *testing.T) {
	h := newHarness(t, nil)
	holder := h.connect("holder", true) // its backlog keeps the log untrimmed
	holder.subscribe("t/#", 1)
	holder.cl.Disconnect(false, nil)
	pub := h.connect("pub", false)
	retained := func(topic string, pid uint16) {
		pub.cl.Publish(&qos.Message{Topic: topic, QoS: 1, Retain: true, Payload: []byte(topic)}, pid)
		pub.conn.waitFor(t, 1)
	}
	retained("t/kept", 1)
	kept := h.log.LastOffset()
	retained("t/lost", 2)
	h.e.WaitDispatched()
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	snap := h.log.LastOffset()

	// The power cut: the log keeps only what came up to t/kept.
	h.e.Crash()
	cut := newMemLog()
	h.log.mu.Lock()
	cut.recs, cut.first = slices.Clone(h.log.recs[:kept]), h.log.first
	h.log.mu.Unlock()
	h.log = cut
	h.start()
	pub = h.connect("pub", false)
	retained("t/new", 1)
	for i := 0; h.log.LastOffset() <= snap+1; i++ {
		pub.publish("filler", 1, uint16(2+i), "x")
		pub.conn.waitFor(t, 1)
	}
	h.crash()
	got := retainedAfterRestart(t, h, "t/#")
	if !got["t/kept"] || !got["t/new"] || got["t/lost"] {
		t.Fatalf("retained after the restarts: %v, want t/kept and t/new (snapshot at %d, log cut after %d)", got, snap, kept)
	}
}

// TestIdleEngineStopsCheckpointing: a checkpoint appends its own record,
// which must not count as something new: an idle broker would otherwise
// write a record, a snapshot and their fsyncs every interval, for ever
// (SD cards wear). After activity it takes one more snapshot (so that the
// older one kept no longer holds the busy period's records), then only
// trims.
func TestIdleEngineStopsCheckpointing(t *testing.T) {
	h := newHarness(t, func(c *qos.Config) { c.CheckpointInterval = 5 * time.Millisecond })
	pub := h.connect("pub", false)
	pub.publish("t", 1, 1, "x")
	pub.conn.waitFor(t, 1)
	for h.log.count(qos.KindCheckpoint) < 2 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // twenty intervals, or as many as a busy machine gives
	if n := h.log.count(qos.KindCheckpoint); n > 3 {
		t.Fatalf("%d checkpoint records after one publish, want at most 3 (the publish's, one more, and one racing it)", n)
	}
}

// TestCheckpointKeepsGroupScanFinds: what a shared group's backlog scan
// found for a member and the member has not taken yet (its window is
// full) is the group's still: a checkpoint must hold the group's position
// below it, or a crash after the checkpoint loses it for every member.
// The position moved past the finds with the scan, and only the trim
// point counted them.
func TestCheckpointKeepsGroupScanFinds(t *testing.T) {
	h := newHarness(t, func(c *qos.Config) { c.QueueLimit = 4 })
	a := h.connect("a", true, func(i *qos.ConnectInfo) { i.ReceiveMaximum = 1 })
	a.subscribe("$share/g/s/#", 1)
	src := h.connect("src", false)
	const n = 40
	for i := range n {
		src.publish("s/t", 1, uint16(i+1), fmt.Sprint(i))
	}
	src.conn.waitFor(t, n)
	h.e.WaitDispatched()
	seen := map[string]bool{}
	// Acknowledge until the group's queue overflowed into the log and a
	// scan found the rest: then hold one unacknowledged, the finds wait.
	for len(seen) < 10 {
		got := a.conn.waitFor(t, 1)
		for _, m := range a.ackAll(got) {
			seen[string(m.Payload)] = true
		}
	}
	a.conn.waitFor(t, 1) // the next one, not acknowledged
	h.e.WaitDispatched()
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	h.crash()
	a.reconnect()
	if got := receiveAll(a, seen, n); got < n {
		t.Fatalf("a got %d of %d after the crash", got, n)
	}
}

// receiveAll acknowledges what c is sent, noting each payload in seen,
// until seen holds n or nothing comes for a second; it returns len(seen).
func receiveAll(c *client, seen map[string]bool, n int) int {
	for quiet := time.Now(); len(seen) < n && time.Since(quiet) < time.Second; {
		got := c.conn.take()
		if len(got) == 0 {
			time.Sleep(time.Millisecond)
			continue
		}
		quiet = time.Now()
		for _, m := range c.ackAll(got) {
			seen[string(m.Payload)] = true
		}
	}
	return len(seen)
}

// TestCheckpointFloorSeesGroupFindsMove: a checkpoint's walk of the
// sessions and of the shared groups must see one state: a group's backlog
// scan that ends between the two walks moved the group's position past
// its finds after the walk passed the member that holds them, so neither
// counted them, the checkpoint held the group's position above them and
// a crash lost them. Here the walk is held at another session's lock (its
// PUBREC's Release record is appended under it) while the scan ends; a
// walk that passed the scanning member first (map order, so the test
// tries several times) used to lose what the scan found.
func TestCheckpointFloorSeesGroupFindsMove(t *testing.T) {
	for round := range 8 {
		checkpointDuringGroupScan(t, round)
	}
}

func checkpointDuringGroupScan(t *testing.T, round int) {
	h := newHarness(t, func(c *qos.Config) { c.QueueLimit = 4 })
	b := h.connect("b", true)
	b.subscribe("b", 2)
	a := h.connect("a", true, func(i *qos.ConnectInfo) { i.ReceiveMaximum = 1 })
	a.subscribe("$share/g/s/#", 1)
	src := h.connect("src", false)
	src.publish("b", 2, 100, "b")
	held := b.conn.waitFor(t, 1)[0] // b's QoS 2 flight, PUBREC held back
	const n = 40
	for i := range n {
		src.publish("s/t", 1, uint16(i+1), fmt.Sprint(i))
	}
	src.conn.waitFor(t, n+1)
	h.e.WaitDispatched()

	// a takes the group's queue in RAM, then scans the log for the rest:
	// its first read stops until released.
	scanning, scanGo := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.log.mu.Lock()
	h.log.onScan = func(uint64) {
		once.Do(func() { close(scanning); <-scanGo })
	}
	h.log.mu.Unlock()
	seen := map[string]bool{}
	for waiting := true; waiting; {
		select {
		case <-scanning:
			waiting = false
		default:
			for _, m := range a.ackAll(a.conn.take()) {
				seen[string(m.Payload)] = true
			}
			time.Sleep(time.Millisecond)
		}
	}
	finish := checkpointHeldAt(h, b, held)
	close(scanGo)
	// The scan ends and a takes its first find, unless the walk holds a's
	// lock (then both wait for the walk).
	deadline := time.Now().Add(200 * time.Millisecond)
	for a.conn.written() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := finish(); err != nil {
		t.Fatal(err)
	}
	h.log.mu.Lock()
	h.log.onScan, h.log.beforeAppend = nil, nil
	h.log.mu.Unlock()
	for _, m := range a.ackAll(a.conn.take()) {
		seen[string(m.Payload)] = true
	}
	h.crash()
	a.reconnect()
	if got := receiveAll(a, seen, n); got < n {
		t.Fatalf("round %d: a got %d of %d after the crash", round, got, n)
	}
}

// checkpointHeldAt starts a checkpoint whose walk waits at b's lock:
// b's PUBREC of held appends its Release record under that lock, and the
// append waits until finish, which then waits for the PUBREC and the
// checkpoint and returns the checkpoint's error. It returns once the
// walk had 20 ms to reach b's lock.
func checkpointHeldAt(h *harness, b *client, held qos.Packet) (finish func() error) {
	appending, appendGo := make(chan struct{}), make(chan struct{})
	h.log.mu.Lock()
	h.log.beforeAppend = func(recs [][]byte) {
		if qos.KindOf(recs[0]) == qos.KindRelease {
			close(appending)
			<-appendGo
		}
	}
	h.log.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); b.cl.Pubrec(held.PacketID, 0) }()
	<-appending
	var cerr error
	go func() { defer wg.Done(); cerr = h.e.Checkpoint() }()
	time.Sleep(20 * time.Millisecond) // the walk reaches b's lock
	return func() error {
		close(appendGo)
		wg.Wait()
		return cerr
	}
}

// TestCheckpointFloorSeesGroupTakes: a message a shared group's member
// takes while the checkpoint's walk is between that member and the group
// is in neither when each is read: the member did not hold it yet, the
// group's position is past it. A clean member's take is not logged, so
// the checkpoint must hold the group's position below it, or a crash
// after the checkpoint loses it for the group: its persistent member,
// back after the crash, never gets it. Here the walk is held at another
// session's lock (its PUBREC's Release record is appended under it)
// while the message is published and taken; a walk that passed the
// taking member first (map order, so the test tries several times)
// would lose it without the group's note of what it lent.
func TestCheckpointFloorSeesGroupTakes(t *testing.T) {
	for round := range 8 {
		checkpointDuringGroupTake(t, round)
	}
}

func checkpointDuringGroupTake(t *testing.T, round int) {
	h := newHarness(t, nil)
	b := h.connect("b", true)
	b.subscribe("b", 2)
	keeper := h.connect("keeper", true) // the group's persistent member, offline
	keeper.subscribe("$share/g/s/#", 1)
	keeper.cl.Disconnect(false, nil)
	a := h.connect("a", false) // clean: its takes are not logged
	a.subscribe("$share/g/s/#", 1)
	src := h.connect("src", false)
	src.publish("b", 2, 1, "b")
	held := b.conn.waitFor(t, 1)[0] // b's QoS 2 flight, PUBREC held back
	src.conn.waitFor(t, 1)
	h.e.WaitDispatched()

	finish := checkpointHeldAt(h, b, held)
	src.publish("s/t", 1, 2, "m")
	a.conn.waitFor(t, 1) // taken, not acknowledged
	if err := finish(); err != nil {
		t.Fatal(err)
	}
	h.log.mu.Lock()
	h.log.beforeAppend = nil
	h.log.mu.Unlock()
	h.crash()
	keeper.reconnect()
	if got := receiveAll(keeper, map[string]bool{}, 1); got < 1 {
		t.Fatalf("round %d: the group's message lost in the crash after the checkpoint", round)
	}
}

// TestGroupGivenBackAfterLaterDelivery: a QoS 1 message a shared group's
// member held unacknowledged when it left goes back to the group; should
// another member's later delivery be logged before it is taken again, a
// checkpoint and a crash must not lose it for the group. A group's
// position was one offset past every delivery logged: the message given
// back lay below it.
func TestGroupGivenBackAfterLaterDelivery(t *testing.T) {
	h := newHarness(t, nil)
	one := func(i *qos.ConnectInfo) { i.ReceiveMaximum = 1 }
	a := h.connect("a", true, one)
	a.subscribe("$share/g/s/#", 1)
	b := h.connect("b", true, one)
	b.subscribe("$share/g/s/#", 1)
	src := h.connect("src", false)
	src.publish("s/t", 1, 1, "0")
	src.publish("s/t", 1, 2, "1")
	src.conn.waitFor(t, 2)
	got := map[*client]string{}
	for len(got) < 2 {
		for _, c := range []*client{a, b} {
			for _, p := range c.conn.take() {
				if p.Type == qos.PacketPublish {
					got[c] = string(p.Message.Payload)
				}
			}
		}
		time.Sleep(time.Millisecond)
	}
	holder, other := a, b
	if got[b] == "0" {
		holder, other = b, a
	}
	holder.cl.Disconnect(false, nil) // "0" back to the group; other's window is full
	h.e.WaitDispatched()
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	h.crash()
	other.reconnect()
	seen := map[string]bool{}
	if n := receiveAll(other, seen, 2); n < 2 {
		t.Fatalf("after the crash the group's other member got %v, want 0 and 1", seen)
	}
}

// TestGroupCleanMemberFlightAfterLaterDelivery: a clean member's delivery
// is not logged; a message it holds unacknowledged at a crash must go to
// the group again, also when a persistent member's later delivery was
// logged (no checkpoint between).
func TestGroupCleanMemberFlightAfterLaterDelivery(t *testing.T) {
	h := newHarness(t, nil)
	one := func(i *qos.ConnectInfo) { i.ReceiveMaximum = 1 }
	p := h.connect("p", true, one)
	p.subscribe("$share/g/s/#", 1)
	p.cl.Disconnect(false, nil)
	c := h.connect("c", false, one) // clean: its take is not logged
	c.subscribe("$share/g/s/#", 1)
	src := h.connect("src", false)
	src.publish("s/t", 1, 1, "0")
	c.conn.waitFor(t, 1) // held, not acknowledged
	p.reconnect()
	src.publish("s/t", 1, 2, "1")
	p.conn.waitFor(t, 1) // c's window is full: p's, logged
	h.e.WaitDispatched()
	h.crash()
	p.reconnect()
	seen := map[string]bool{}
	if n := receiveAll(p, seen, 2); n < 2 {
		t.Fatalf("after the crash the group's persistent member got %v, want 0 and 1", seen)
	}
}

var (
	churnFor = flag.Duration("qos.churn", 500*time.Millisecond, "how long each seed of TestCheckpointDuringChurnRecoversAsReplay runs")
	// With a small limit the shared group's queue overflows into scans of
	// the log, whose finds a member going away gives back: see the test.
	churnQueue = flag.Int("qos.churnqueue", 4, "QueueLimit of TestCheckpointDuringChurnRecoversAsReplay")
	churnSeeds = flag.Int("qos.churnseeds", 4, "how many seeds TestCheckpointDuringChurnRecoversAsReplay runs")
)

// TestCheckpointDuringChurnRecoversAsReplay: checkpoints taken while
// persistent devices connect (resuming, or starting clean), subscribe,
// unsubscribe, publish, acknowledge or hold their deliveries back and
// disconnect, shared group members among them, and clean devices come
// and go, beside many idle sessions (so that the walk takes a while),
// each record what recovery needs: recovery from the newest
// snapshot and the log after it gives every persistent session the same
// session, subscriptions and messages due (its flights, and the backlog
// its position and subscriptions leave) as a replay of the whole log, and
// the same retained and inbound QoS 2 state; the shared group gets every
// message of its filter no member completed or released (the log says
// which), those a member gave back (a QoS 1 flight as it went, what its
// scan found and it did not take) below a later logged delivery included;
// and the log, trimmed to the engine's cursor, still holds every message
// due but those of released flights (only their PUBREL is due). The walk
// holds no lock for long, so all of that goes on during it.
//
// Longer: go test ./qos -run TestCheckpointDuringChurn -qos.churn 5s
// -qos.churnseeds 16.
func TestCheckpointDuringChurnRecoversAsReplay(t *testing.T) {
	for seed := range uint64(*churnSeeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { churnCheckpoints(t, seed) })
	}
}

func churnCheckpoints(t *testing.T, seed uint64) {
	h := newHarness(t, func(c *qos.Config) {
		c.QueueLimit = *churnQueue
		c.MaxInflight = 4
	})
	if _, err := h.log.Cursor("replay"); err != nil { // keeps the whole log for the replay
		t.Fatal(err)
	}
	// Offline sessions with nothing to do, for the walk to take a while.
	// Each goes at once: none may hold the log's trim point where the
	// dispatcher was when it came (it subscribed to nothing).
	for i := range 2000 {
		cl, _, err := h.e.Connect(newFakeConn(), qos.ConnectInfo{ClientID: fmt.Sprint("idle", i), ProtocolVersion: 5, ExpiryInterval: math.MaxUint32})
		if err != nil {
			t.Fatal(err)
		}
		cl.Established()
		cl.Disconnect(false, nil)
	}
	idleEnd := h.log.LastOffset()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var checkpoints atomic.Int64
	device := func(n int, id string, persistent, shared bool) {
		defer wg.Done()
		r := rand.New(rand.NewPCG(seed, uint64(n)))
		c := &client{t: t, h: h, id: id, rec: map[uint16]bool{}}
		c.info = qos.ConnectInfo{ClientID: id, ProtocolVersion: 5}
		if persistent {
			c.info.ExpiryInterval = math.MaxUint32
		}
		online, pid := false, uint16(0)
		for {
			select {
			case <-stop:
				return
			default:
			}
			time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
			if !online {
				// A shared group's members stay: the group is one group
				// from its first member's SUBSCRIBE on, for the check below.
				c.info.CleanStart = !shared && r.IntN(8) == 0
				c.conn = newFakeConn()
				cl, _, err := h.e.Connect(c.conn, c.info)
				if err != nil {
					t.Errorf("connect %s: %v", id, err)
					return
				}
				c.cl, online = cl, true
				cl.Established()
				continue
			}
			filter := fmt.Sprintf("t/%d", r.IntN(4))
			if shared {
				filter = "$share/g/t/#"
			}
			switch n := r.IntN(20); {
			case n < 4:
				if err := c.cl.Subscribe([]qos.Subscribe{{Filter: filter, QoS: byte(1 + r.IntN(2))}}); err != nil {
					t.Errorf("subscribe %s: %v", id, err)
					return
				}
				c.cl.Suback()
			case n < 5 && !shared:
				if _, err := c.cl.Unsubscribe([]string{filter}); err != nil {
					t.Errorf("unsubscribe %s: %v", id, err)
					return
				}
			case n < 10:
				pid = pid%60000 + 1
				m := &qos.Message{Topic: fmt.Sprintf("t/%d", r.IntN(4)), QoS: byte(1 + r.IntN(2)), Payload: []byte(fmt.Sprint(id, ":", pid))}
				if err := c.cl.Publish(m, pid); err != nil {
					t.Errorf("publish %s: %v", id, err)
					return
				}
			case n < 18:
				if r.IntN(4) > 0 { // else held back a while
					c.ackAll(c.conn.take())
				}
			default:
				c.cl.Disconnect(false, nil)
				online = false
			}
		}
	}
	n := 0
	for i := range 6 {
		wg.Add(1)
		go device(n, fmt.Sprint("p", i), true, false)
		n++
	}
	for i := range 3 {
		wg.Add(1)
		go device(n, fmt.Sprint("g", i), true, true)
		n++
	}
	for i := range 2 {
		wg.Add(1)
		go device(n, fmt.Sprint("c", i), false, false)
		n++
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := h.e.Checkpoint(); err != nil {
				t.Errorf("checkpoint: %v", err)
				return
			}
			checkpoints.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(*churnFor)
	close(stop)
	wg.Wait()
	h.e.Crash()
	if t.Failed() {
		return
	}

	h.snaps.mu.Lock()
	newest := h.snaps.snaps[len(h.snaps.snaps)-1]
	h.snaps.mu.Unlock()
	cp, from, err := qos.ReadSnapshot(bytes.NewReader(newest))
	if err != nil {
		t.Fatal(err)
	}
	h.log.mu.Lock()
	recs := slices.Clone(h.log.recs)
	trimmed := h.log.cursors[qos.DefaultConfig(nil).CursorName].off
	h.log.mu.Unlock()
	replay := qos.NewState()
	for i, rec := range recs {
		off := uint64(i + 1)
		if off >= from {
			if err := cp.Apply(off, rec); err != nil {
				t.Fatal(err)
			}
		}
		if err := replay.Apply(off, rec); err != nil {
			t.Fatal(err)
		}
	}
	topics := map[uint64]string{} // the messages' offsets: their topics
	for i, rec := range recs {
		if qos.KindOf(rec) == qos.KindMessage {
			var m qos.Message
			if err := m.UnmarshalBinary(rec); err != nil {
				t.Fatal(err)
			}
			topics[uint64(i+1)] = m.Topic
		}
	}
	// A flight's Deliver record precedes its end (Complete, or Release) in
	// the log, even when the flight is resent on a newer connection and
	// acknowledged before the sender that made it went on: one after it
	// is a flight a replay holds open (a message delivered again after a
	// restart, at QoS 2 too).
	late := 0
	{
		open, ended := map[string]bool{}, map[string]bool{}
		for i, rec := range recs {
			k, v, _ := qos.Decode(rec)
			switch r := v.(type) {
			case *qos.Deliver:
				id := fmt.Sprint(r.Ref, "/", r.PacketID)
				if ended[id] {
					late++
					t.Errorf("seed %d: the Deliver record at %d (session %d, packet id %d, message %d) follows its flight's end", seed, i+1, r.Ref, r.PacketID, r.Offset)
				}
				open[id], ended[id] = true, false
			case *qos.PacketRef:
				if id := fmt.Sprint(r.Ref, "/", r.PacketID); (k == qos.KindComplete || k == qos.KindRelease) && !open[id] {
					ended[id] = true
				} else if k == qos.KindComplete {
					delete(open, id)
				}
			}
		}
	}
	// due returns the messages due to the session of id through its own
	// subscriptions, and those due to each shared group.
	due := func(st *qos.State, id string) map[uint64]bool {
		ss := st.Sessions[id]
		out := map[uint64]bool{}
		for _, in := range ss.Inflight {
			if in.Group == "" { // a retained message sent at a SUBSCRIBE holds its message
				out[in.Offset] = !in.Released && !(in.AtSubscribe && in.Msg != nil)
			}
		}
		for off, topic := range topics {
			for f, sub := range ss.Subs {
				if name, _ := qos.SplitShared(f); name == "" && off >= ss.Next && off >= sub.Since && qos.Match(f, topic) {
					out[off] = true
				}
			}
		}
		return out
	}
	groupDue := func(st *qos.State, key string) map[uint64]bool {
		out := map[uint64]bool{}
		_, inner := qos.SplitShared(key)
		since := uint64(math.MaxUint64)
		for _, ss := range st.Sessions {
			if sub, ok := ss.Subs[key]; ok {
				since = min(since, sub.Since)
			}
			for _, in := range ss.Inflight {
				if in.Group == key {
					out[in.Offset] = out[in.Offset] || !in.Released
				}
			}
		}
		for off, topic := range topics {
			if off >= st.GroupNext[key] && !st.GroupTaken[key][off] && off >= since && qos.Match(inner, topic) {
				out[off] = true
			}
		}
		for off := range st.GroupOwed[key] {
			out[off] = true
		}
		return out
	}
	kept := func(what string, offs map[uint64]bool) {
		for off, needed := range offs {
			if needed && off < trimmed {
				t.Errorf("seed %d: %s: the message at %d is due, the log is trimmed to %d", seed, what, off, trimmed)
			}
		}
	}
	if !slices.Equal(slices.Sorted(maps.Keys(cp.Sessions)), slices.Sorted(maps.Keys(replay.Sessions))) {
		t.Fatalf("seed %d: sessions %v after recovery from the checkpoint at %d, %v after a replay", seed, slices.Sorted(maps.Keys(cp.Sessions)), from, slices.Sorted(maps.Keys(replay.Sessions)))
	}
	for id, want := range replay.Sessions {
		got := cp.Sessions[id]
		if !reflect.DeepEqual(got.Session, want.Session) || got.Connected != want.Connected || got.DisconnectedAt != want.DisconnectedAt ||
			got.WillDue != want.WillDue || !reflect.DeepEqual(got.Subs, want.Subs) {
			t.Errorf("seed %d: session %s after recovery from the checkpoint at %d:\n%+v\nafter a replay:\n%+v", seed, id, from, got, want)
			continue
		}
		g, w := due(cp, id), due(replay, id)
		if !slices.Equal(slices.Sorted(maps.Keys(g)), slices.Sorted(maps.Keys(w))) {
			t.Errorf("seed %d: session %s: due after recovery from the checkpoint at %d %v, after a replay %v", seed, id, from, slices.Sorted(maps.Keys(g)), slices.Sorted(maps.Keys(w)))
		}
		kept("session "+id, g)
	}
	if !reflect.DeepEqual(cp.Retained, replay.Retained) {
		t.Errorf("seed %d: retained after recovery from the checkpoint differ from a replay's", seed)
	}
	if !reflect.DeepEqual(cp.Inbound, replay.Inbound) {
		t.Errorf("seed %d: inbound QoS 2 after recovery from the checkpoint %v, after a replay %v", seed, cp.Inbound, replay.Inbound)
	}
	// The group's messages no member completed or released, from the
	// log: its deliveries, and their ends, named by session and packet id.
	const key = "$share/g/t/#"
	_, inner := qos.SplitShared(key)
	first := uint64(0) // the first member's SUBSCRIBE
	names := map[uint64]string{}
	open := map[string]uint64{} // client id and packet id: the message
	done := map[uint64]bool{}
	for i, rec := range recs {
		k, v, err := qos.Decode(rec)
		if err != nil {
			t.Fatal(err)
		}
		name := func(client string, ref uint64) string {
			if ref != 0 {
				return names[ref]
			}
			return client
		}
		switch r := v.(type) {
		case *qos.Session:
			names[r.Ref] = r.Client
		case *qos.Subscribe:
			if r.Filter == key && first == 0 {
				first = uint64(i + 1)
			}
		case *qos.Deliver:
			if r.Group == key {
				open[fmt.Sprint(name(r.Client, r.Ref), "/", r.PacketID)] = r.Offset
			}
		case *qos.PacketRef:
			id := fmt.Sprint(name(r.Client, r.Ref), "/", r.PacketID)
			if off, ok := open[id]; ok && (k == qos.KindComplete || k == qos.KindRelease) {
				done[off] = true
				delete(open, id)
			}
		}
	}
	g := groupDue(cp, key)
	for off, topic := range topics {
		if first > 0 && off > first && qos.Match(inner, topic) && !done[off] && !g[off] {
			t.Errorf("seed %d: group %s: the message at %d is due (no member completed it), not after recovery from the checkpoint at %d", seed, key, off, from)
		}
	}
	kept("group "+key, g)
	if trimmed <= idleEnd {
		t.Errorf("seed %d: the log is trimmed to %d, the idle sessions' records end at %d: one of them, or a checkpoint that holds everything (which passes the rest), holds the trim point", seed, trimmed, idleEnd)
	}
	t.Logf("seed %d: %d checkpoints, the newest at %d of %d records, the log trimmed to %d; %d sessions; %d Deliver records after their flight's end", seed, checkpoints.Load(), from, len(recs), trimmed, len(replay.Sessions), late)
}

// TestGroupCleanMemberQoS2NotHandedOutAgain: a shared group's QoS 2
// message goes to one member, and a clean member's session ends with its
// connection [MQTT-3.1.2-6]: the message must not go to another member
// then [MQTT-4.8.2-5] (MQTT 5 §4.8.2: the Server MUST NOT send it to any
// other subscribed Client), not after a crash either. Unlogged, a clean
// member's take was lost at a crash and the group handed the message out
// again, to a second member: a QoS 2 message delivered twice.
func TestGroupCleanMemberQoS2NotHandedOutAgain(t *testing.T) {
	for _, complete := range []bool{false, true} {
		t.Run(fmt.Sprint("complete=", complete), func(t *testing.T) {
			h := newHarness(t, nil)
			p := h.offlineMember("p", "$share/g/s/#")
			c := h.connect("c", false)
			c.subscribe("$share/g/s/#", 2)
			src := h.connect("src", false)
			src.publish("s/t", 2, 1, "m")
			got := c.conn.waitFor(t, 1)
			n := 0
			if complete {
				n += len(c.ackAll(got))
				n += len(c.ackAll(c.conn.waitFor(t, 1))) // PUBREL
			} else {
				n++ // its PUBLISH reached the client
			}
			h.e.WaitDispatched()
			h.crash()
			p.reconnect()
			n += len(p.settled())
			if n != 1 {
				t.Fatalf("the group's QoS 2 message delivered %d times, want once", n)
			}
		})
	}
}

// TestGroupQoS2OnFullLogBacksOff: a member's QoS 2 take from a shared
// group whose Deliver record the full log refuses waits, trying the
// record again after a pause, and is delivered once the log takes it:
// handed back to the group at once, it was taken again at once, a sender
// spinning on the full log.
func TestGroupQoS2OnFullLogBacksOff(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("a", true)
	a.subscribe("$share/g/s/#", 2)
	var mu sync.Mutex
	refused, full := 0, true
	h.log.mu.Lock()
	h.log.fail = func(recs [][]byte) error {
		mu.Lock()
		defer mu.Unlock()
		if full && qos.KindOf(recs[0]) == qos.KindDeliver {
			refused++
			return qos.ErrFull
		}
		return nil
	}
	h.log.mu.Unlock()
	src := h.connect("src", false)
	src.publish("s/t", 2, 1, "m")
	src.conn.waitFor(t, 1)
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	tries := refused
	full = false
	mu.Unlock()
	if tries == 0 || tries > 5 {
		t.Fatalf("the Deliver record was tried %d times in 300 ms on a full log, want a few", tries)
	}
	got := payloads(a.ackAll(a.conn.waitFor(t, 1))) // within its second's pause
	a.ackAll(a.conn.waitFor(t, 1))                  // PUBREL
	if got = append(got, payloads(a.ackAll(a.conn.settle()))...); len(got) != 1 || got[0] != "m" {
		t.Fatalf("after the log took records again, got %q", got)
	}
}

// TestGroupTakenBoundedByCheckpoints: a member that holds one QoS 1
// message of its shared group unacknowledged while it acknowledges every
// later one must not hold the group's durable state back: a checkpoint
// moves the group's position past what was delivered, the message held
// owed to the group should the member go, and what the group holds taken
// (in the snapshot and in RAM) stays small, however many messages pass.
// Held back at the message, the taken set grew by one offset per
// delivery until the member acknowledged it. Then the member goes and a
// crash follows: the message held goes to the group's other member, and
// nothing acknowledged comes again.
func TestGroupTakenBoundedByCheckpoints(t *testing.T) {
	const key = "$share/g/s/#"
	h := newHarness(t, nil)
	a := h.connect("a", true)
	a.subscribe(key, 1)
	b := h.connect("b", true)
	b.subscribe(key, 1)
	b.cl.Disconnect(false, nil)
	src := h.connect("src", false)
	src.publish("s/t", 1, 1, "held")
	if got := a.conn.waitFor(t, 1); string(got[0].Message.Payload) != "held" {
		t.Fatalf("got %+v", got)
	}
	const n = 300
	for i := range n {
		src.publish("s/t", 1, uint16(i+2), fmt.Sprint(i))
		if i%100 == 99 {
			a.drain(100)
			h.e.WaitDispatched()
			if err := h.e.Checkpoint(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if held := h.e.GroupTakenHeld(key); held > 10 {
		t.Errorf("the group holds %d offsets taken in RAM after %d deliveries, want a few", held, n)
	}
	st, _, err := qos.ReadSnapshot(bytes.NewReader(h.snaps.snaps[len(h.snaps.snaps)-1]))
	if err != nil {
		t.Fatal(err)
	}
	if taken := len(st.GroupTaken[key]); taken > 10 {
		t.Errorf("the snapshot holds %d offsets taken after %d deliveries, want a few", taken, n)
	}
	a.cl.Disconnect(false, nil) // "held" goes back to the group
	h.crash()
	b.reconnect()
	if seen := b.drain(1); len(seen) != 1 || seen["held"] != 1 {
		t.Fatalf("after the crash the other member got %v, want only the message held", seen)
	}
	if got := b.conn.settle(); len(got) > 0 {
		t.Fatalf("and then %d packets more: %+v", len(got), got)
	}
}

// TestGroupQoS0HandOutAtMostOnce: a shared group's message that a member
// got at QoS 0 (its subscription's) is not handed out again after a
// crash, to it or to another member: QoS 0 is at most once [MQTT-4.3.1].
// Its take was not logged, and recovery scanned the group's backlog from
// its position, handing the message out again.
func TestGroupQoS0HandOutAtMostOnce(t *testing.T) {
	const key = "$share/g/s/#"
	h := newHarness(t, nil)
	p := h.connect("p", true)
	p.subscribe(key, 0)
	src := h.connect("src", false)
	src.publish("s/t", 1, 1, "m")
	got := payloads(p.ackAll(p.conn.waitFor(t, 1)))
	h.e.WaitDispatched()
	h.crash()
	p.reconnect()
	got = append(got, payloads(p.ackAll(p.conn.settle()))...)
	if len(got) != 1 {
		t.Fatalf("the group's member got %q at QoS 0, want m once", got)
	}
	// And later ones still flow, once each.
	src = h.connect("src", false)
	src.publish("s/t", 1, 1, "n")
	if got := payloads(p.ackAll(p.conn.waitFor(t, 1))); len(got) != 1 || got[0] != "n" {
		t.Fatalf("then got %q, want n", got)
	}
	if got := p.conn.settle(); len(got) > 0 {
		t.Fatalf("and then %+v", got)
	}
	// The hand-outs cost a record per stretch of the log, not one each.
	for i := range 50 {
		src.publish("s/t", 1, uint16(i+2), fmt.Sprint(i))
	}
	if seen := p.drain(50); len(seen) != 50 {
		t.Fatalf("got %d of 50", len(seen))
	}
	if n := h.log.count(qos.KindGroupHandout); n > 3 {
		t.Fatalf("%d GroupHandout records for 52 QoS 0 hand-outs across a restart, want at most 3", n)
	}
}

// TestRetainedFlightOutlivesItsRecord: a retained message outlives its
// record (the snapshots keep it, the log is trimmed past it), so a
// SUBSCRIBE may get it as a flight whose record is gone, at any time, not
// only in a checkpoint's walk. Unacknowledged at a crash, the flight must
// be resent after the restart [MQTT-4.4.0-1], also when a newer retained
// message has replaced it meanwhile: the replaced one was found by its
// offset among the retained messages, or dropped as unreadable.
func TestRetainedFlightOutlivesItsRecord(t *testing.T) {
	for _, checkpoint := range []bool{false, true} {
		t.Run(fmt.Sprint("checkpoint=", checkpoint), func(t *testing.T) { retainedFlightOutlivesItsRecord(t, checkpoint) })
	}
}

func retainedFlightOutlivesItsRecord(t *testing.T, checkpoint bool) {
	h := newHarness(t, nil)
	pub := h.connect("pub", false)
	pub.cl.Publish(&qos.Message{Topic: "r", QoS: 1, Retain: true, Payload: []byte("old")}, 1)
	for i := range 20 { // more records, so that the trim point has somewhere to go
		pub.publish("other", 1, uint16(2+i), "x")
	}
	pub.conn.waitFor(t, 21)
	h.e.WaitDispatched()
	if err := h.e.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if err := h.e.Checkpoint(); err != nil { // the older snapshot kept is past it too
		t.Fatal(err)
	}
	if _, err := h.log.Read(1); !errors.Is(err, qos.ErrTrimmed) {
		t.Fatalf("the retained message's record: %v, want it trimmed", err)
	}
	sub := h.connect("sub", true)
	sub.subscribe("r", 1)
	if got := sub.conn.waitFor(t, 1); string(got[0].Message.Payload) != "old" {
		t.Fatalf("at SUBSCRIBE got %+v", got)
	}
	sub.cl.Disconnect(false, nil) // not acknowledged
	pub.cl.Publish(&qos.Message{Topic: "r", QoS: 1, Retain: true, Payload: []byte("new")}, 30)
	pub.conn.waitFor(t, 1)
	h.e.WaitDispatched()
	if checkpoint { // the snapshot holds the flight's message
		if err := h.e.Checkpoint(); err != nil {
			t.Fatal(err)
		}
	}
	h.crash()
	sub.reconnect()
	got := map[string]bool{}
	for _, m := range sub.ackAll(sub.conn.settle()) {
		got[string(m.Payload)] = true
	}
	if !got["old"] {
		t.Fatalf("after the restart got %v, want the unacknowledged old one resent", got)
	}
}

// TestRetainedFlightHoldsNoTrimPoint: a retained message sent at a
// SUBSCRIBE holds its message (it outlives its record anyway), so a
// subscriber that never acknowledges it does not keep the log from being
// trimmed; after a crash it is resent all the same.
func TestRetainedFlightHoldsNoTrimPoint(t *testing.T) {
	h := newHarness(t, nil)
	pub := h.connect("pub", false)
	pub.cl.Publish(&qos.Message{Topic: "r", QoS: 1, Retain: true, Payload: []byte("kept")}, 1)
	pub.conn.waitFor(t, 1)
	sub := h.connect("sub", true)
	sub.subscribe("r", 1)
	sub.conn.waitFor(t, 1) // not acknowledged
	for i := range 20 {
		pub.publish("other", 1, uint16(2+i), "x")
	}
	pub.conn.waitFor(t, 20)
	h.e.WaitDispatched()
	for range 2 {
		if err := h.e.Checkpoint(); err != nil {
			t.Fatal(err)
		}
	}
	if first := h.log.FirstOffset(); first <= 1 {
		t.Fatalf("the log is trimmed to %d: the unacknowledged retained flight holds it", first)
	}
	h.crash()
	sub.reconnect()
	if got := payloads(sub.ackAll(sub.conn.settle())); len(got) != 1 || got[0] != "kept" {
		t.Fatalf("after the restart got %q, want kept resent", got)
	}
}

// TestGroupQoS2NeverWrittenGoesBack: a member's QoS 2 take whose Deliver
// record the full log refused was never written (it waits for the
// record), so a clean member going away gives it back to the group
// rather than ending with it [MQTT-4.8.2]: another member gets it.
func TestGroupQoS2NeverWrittenGoesBack(t *testing.T) {
	const key = "$share/g/s/#"
	h := newHarness(t, nil)
	p := h.offlineMember("p", key)
	roomAgain := h.log.refuseKind(qos.KindDeliver)
	c := h.connect("c", false)
	c.subscribe(key, 2)
	src := h.connect("src", false)
	src.publish("s/t", 2, 1, "m")
	src.conn.waitFor(t, 1)
	if got := c.conn.settle(); len(got) > 0 {
		t.Fatalf("written before its record: %+v", got)
	}
	c.cl.Disconnect(false, nil)
	roomAgain()
	p.reconnect()
	got := payloads(p.ackAll(p.conn.waitFor(t, 1)))
	p.ackAll(p.conn.waitFor(t, 1)) // PUBREL
	if len(got) != 1 || got[0] != "m" {
		t.Fatalf("the other member got %q, want m", got)
	}
}

// A clean member going away while its QoS 2 take's Deliver record waits
// for a slow fsync, its PUBLISH not written, gives the message back to
// the group: no client has it, so another member gets it [MQTT-4.8.2]
// (it was lost, with no crash at all). With crash, the crash comes once
// the group has it back, before another member took it: the GroupReturn
// record gives it back in the replay too.
func TestGroupCleanMemberQoS2PendingTakeGoesBack(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%v", crash), func(t *testing.T) {
			const key = "$share/g/s/#"
			h := newHarness(t, nil)
			p := h.offlineMember("p", key)
			h.log.holdAtKind(qos.KindDeliver)
			c := h.connect("c", false)
			c.subscribe(key, 2)
			src := h.connect("src", false)
			src.publish("s/t", 2, 1, "m")
			src.conn.waitFor(t, 1)
			waitKind(t, h.log, qos.KindDeliver, 1)
			if got := c.conn.settle(); len(got) > 0 {
				t.Fatalf("written before its record: %+v", got)
			}
			c.cl.Disconnect(false, nil)
			h.log.release()
			if crash {
				waitKind(t, h.log, qos.KindGroupReturn, 1)
				h.crash()
			}
			p.reconnect()
			got := payloads(p.ackAll(p.conn.waitFor(t, 1)))
			got = append(got, payloads(p.settled())...)
			if len(got) != 1 || got[0] != "m" {
				t.Fatalf("the other member got %q, want m once", got)
			}
			if got := c.conn.settle(); len(got) > 0 {
				t.Fatalf("the member that went away was written %+v", got)
			}
		})
	}
}

// TestGroupReturnLostKeepsTheTake: a clean member's QoS 2 take whose
// GroupReturn record a crash lost (the member went away while the take's
// Deliver record waited for its fsync; the Deliver record was written,
// the GroupReturn still queued) leaves the log as a take whose PUBLISH
// reached the client does (TestGroupCleanMemberQoS2NotHandedOutAgain):
// the same records, record for record. Recovery cannot tell them apart,
// and in the second a second member getting the message would get it
// twice [MQTT-4.8.2-5], so in both the message ends with the member's
// session (a clean one does not survive the restart [MQTT-3.1.2-5]): the
// group gets it once at most, never twice (doc.go, docs/durability.md).
func TestGroupReturnLostKeepsTheTake(t *testing.T) {
	const key = "$share/g/s/#"
	run := func(written bool) (*harness, *client) {
		h := newHarness(t, nil)
		p := h.offlineMember("p", key)
		if !written {
			h.log.holdAtKind(qos.KindDeliver)
		}
		c := h.connect("c", false)
		c.subscribe(key, 2)
		src := h.connect("src", false)
		src.publish("s/t", 2, 1, "m")
		src.conn.waitFor(t, 1)
		waitKind(t, h.log, qos.KindDeliver, 1)
		if written {
			c.conn.waitFor(t, 1) // its PUBLISH reached the client
			h.e.WaitDispatched()
			h.crash()
			return h, p
		}
		c.cl.Disconnect(false, nil)
		waitKind(t, h.log, qos.KindGroupReturn, 1)
		h.crashKeeping(1) // the Deliver record was written, not the GroupReturn
		return h, p
	}
	kinds := func(h *harness) []string {
		h.log.mu.Lock()
		defer h.log.mu.Unlock()
		var out []string
		for _, r := range h.log.recs {
			k, v, err := qos.Decode(r)
			if err != nil {
				t.Fatal(err)
			}
			switch r := v.(type) {
			case *qos.Message:
				v = r.Topic
			case *qos.Disconnect:
				r.At = 0 // the second it came: the runs may straddle one
			}
			out = append(out, fmt.Sprintf("%d %+v", k, v))
		}
		return out
	}
	hw, _ := run(true)
	hb, p := run(false)
	if a, b := kinds(hw), kinds(hb); !slices.Equal(a, b) {
		t.Fatalf("the logs differ, so recovery could tell:\nwritten:    %q\ngiven back: %q", a, b)
	}
	p.reconnect()
	if n := len(p.settled()); n != 0 {
		t.Fatalf("a second member got the message (%d), where the log says it may have reached the first", n)
	}
}

// TestGroupRecoveredQoS2FlightStaysTheMembers: a persistent member's QoS
// 2 take from a shared group whose PUBLISH reached the client before a
// crash is recovered as a flight, and stays the member's [MQTT-4.8.2-5],
// also when the session is resumed with an expiry of 0 (so that it ends
// with this connection, as a clean one does) and goes before the resend
// was written: the recovered flight did not say it had been written, and
// such a session going gave it back to the group, to a second member,
// who got the message the first had (it failed so before).
func TestGroupRecoveredQoS2FlightStaysTheMembers(t *testing.T) {
	const key = "$share/g/s/#"
	h := newHarness(t, nil)
	p := h.offlineMember("p", key)
	a := h.connect("a", true)
	a.subscribe(key, 2)
	src := h.connect("src", false)
	src.publish("s/t", 2, 1, "m")
	a.conn.waitFor(t, 1) // its PUBLISH reached a, not acknowledged yet
	n := 1
	h.e.WaitDispatched()
	h.crash()
	// a comes back for this connection only, and goes before its sender
	// resent anything (no Established: CONNACK not written).
	cl, _, err := h.e.Connect(newFakeConn(), qos.ConnectInfo{ClientID: "a", ProtocolVersion: 5})
	if err != nil {
		t.Fatal(err)
	}
	cl.Disconnect(false, nil)
	p.reconnect()
	n += len(p.settled())
	if n != 1 {
		t.Fatalf("the group's QoS 2 message delivered %d times, want once", n)
	}
}

// TestGroupGivenBackRecoveredFlightGrantsMessageQoS: a QoS 1 message a
// persistent member holds as a flight recovered without its message
// (read from the log when resent) that goes back to its shared group is
// granted to the next member at the lesser of the message's QoS and the
// member's subscription's [MQTT-3.8.4-8] (MQTT 5 §3.3.1.2), with its
// RETAIN as the member asked [MQTT-3.3.1-12]: it was granted the
// subscription's QoS 2, a QoS 1 message delivered at QoS 2 (it failed so
// before). The member's session, resumed on a full log that refused its
// Session record, is offline in the log, so recovery keeps the flight
// its own; a clean start ends the session and gives the flight back.
func TestGroupGivenBackRecoveredFlightGrantsMessageQoS(t *testing.T) {
	const key = "$share/g/s/#"
	h := newHarness(t, nil)
	p := h.offlineMember("p", key)
	a := h.connect("a", true)
	a.subscribe(key, 1)
	a.cl.Disconnect(false, nil)
	roomAgain := h.log.refuseKind(qos.KindSession)
	a.reconnect()
	roomAgain()
	src := h.connect("src", false)
	src.publish("s/t", 1, 1, "m")
	if got := a.conn.waitFor(t, 1); got[0].QoS != 1 {
		t.Fatalf("a got %+v", got)
	}
	h.e.WaitDispatched()
	h.crash()
	a.info.CleanStart = true // ends the session: its flight goes back
	a.reconnect()
	p.reconnect()
	got := p.conn.waitFor(t, 1)
	if len(got) != 1 || got[0].Type != qos.PacketPublish || got[0].QoS != 1 || string(got[0].Message.Payload) != "m" {
		t.Fatalf("the other member got %+v, want m at QoS 1", got)
	}
}
