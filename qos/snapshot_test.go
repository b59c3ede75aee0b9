package qos_test

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/edgemq/edgemq/qos"
)

// randomState applies a random run of every kind of record to a new State:
// sessions with wills, subscriptions (shared ones too), deliveries at each
// QoS, releases and completions, retained messages, inbound QoS 2.
func randomState(t testing.TB, seed uint64, n int) *qos.State {
	rng := rand.New(rand.NewPCG(seed, seed))
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	clients := []string{"c1", "c2", "dev/ü", ""}
	filters := []string{"a/#", "a/+", "$share/g/a/#", "$share/h/#", "b"}
	topics := []string{"a/1", "a/2", "b", "dev/1/status"}
	msg := func() *qos.Message {
		m := &qos.Message{Topic: pick(topics...), QoS: byte(rng.IntN(3)), Retain: rng.IntN(2) == 0,
			Origin: pick(clients...), OriginPacketID: uint16(rng.IntN(4)), Created: rng.Int64(), Expiry: int64(rng.IntN(3))}
		if rng.IntN(4) > 0 {
			m.Payload = []byte(fmt.Sprint("p", rng.IntN(100)))
		}
		if rng.IntN(3) == 0 {
			m.ContentType, m.ResponseTopic, m.CorrelationData = "text/plain", "re/1", []byte{1, 2}
			m.PayloadFormat, m.PayloadFormatFlag = 1, true
			m.User = []qos.Property{{Key: "k", Value: "v"}, {Key: "k", Value: ""}}
		}
		return m
	}
	st := qos.NewState()
	for off := uint64(1); off <= uint64(n); off++ {
		var rec []byte
		var err error
		c := pick(clients...)
		// Half the records name c1's and c2's sessions by their Ref.
		var ref uint64
		if rng.IntN(2) == 0 {
			ref = map[string]uint64{"c1": 1, "c2": 1 << 20}[c]
		}
		switch rng.IntN(11) {
		case 0, 1:
			m := msg()
			m.Will = rng.IntN(5) == 0
			rec, err = qos.Encode(m)
		case 2:
			s := &qos.Session{Client: c, Ref: ref, ProtocolVersion: byte(3 + rng.IntN(3)), ExpiryInterval: uint32(rng.IntN(3)) * 1 << 31, WillDelay: uint32(rng.IntN(60))}
			if rng.IntN(2) == 0 {
				s.Will = msg()
			}
			rec, err = qos.Encode(s)
		case 3:
			rec, err = qos.Encode(&qos.Disconnect{Client: c, Ref: ref, At: rng.Int64N(1 << 40), ExpiryInterval: uint32(rng.IntN(100)), WillPending: rng.IntN(2) == 0})
		case 4:
			if rng.IntN(4) == 0 {
				rec = qos.EncodeEnd(qos.ClientRef{Client: c, Ref: ref})
			} else {
				rec, err = qos.Encode(&qos.Unsubscribe{Client: c, Ref: ref, Filter: pick(filters...)})
			}
		case 5, 6:
			rec, err = qos.Encode(&qos.Subscribe{Client: c, Ref: ref, Filter: pick(filters...), QoS: byte(rng.IntN(3)), NoLocal: rng.IntN(2) == 0,
				RetainAsPublished: rng.IntN(2) == 0, RetainHandling: byte(rng.IntN(3)), Identifier: rng.IntN(3)})
		case 7, 8:
			rec, err = qos.Encode(&qos.Deliver{Client: c, Ref: ref, PacketID: uint16(rng.IntN(8)), Offset: rng.Uint64N(off), QoS: byte(rng.IntN(3)), Retain: rng.IntN(2) == 0, Group: pick("", "$share/g/a/#")})
		case 9:
			rec = qos.EncodeRef([]qos.Kind{qos.KindRelease, qos.KindComplete, qos.KindInboundRelease}[rng.IntN(3)], qos.PacketRef{Client: c, Ref: ref, PacketID: uint16(rng.IntN(8))})
		case 10:
			rec = qos.EncodeCheckpoint(off)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Apply(off, rec); err != nil {
			t.Fatal(err)
		}
	}
	// What a group owes below its position comes from a checkpoint of
	// the live group, not from records: some, below each position.
	for key, next := range st.GroupNext {
		if next > 2 && rng.IntN(2) == 0 {
			st.GroupOwed[key] = map[uint64]bool{1: true, next - 1: true}
		}
		if rng.IntN(2) == 0 {
			st.GroupHandout[key] = next + uint64(rng.IntN(2000))
		}
	}
	return st
}

func snapshotBytes(t testing.TB, st *qos.State, off uint64) []byte {
	var buf bytes.Buffer
	if err := qos.WriteSnapshot(&buf, st, off); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestSnapshotRoundTrip: every kind of state reads back equal, and equal
// states give equal bytes.
func TestSnapshotRoundTrip(t *testing.T) {
	kinds := map[string]bool{}
	for seed := range uint64(300) {
		st := randomState(t, seed, 1+int(seed))
		b := snapshotBytes(t, st, seed+1)
		got, off, err := qos.ReadSnapshot(bytes.NewReader(b))
		if err != nil || off != seed+1 {
			t.Fatalf("seed %d: read: offset %d, %v", seed, off, err)
		}
		if !reflect.DeepEqual(got, st) {
			t.Fatalf("seed %d: round trip differs:\n got %+v\nwant %+v", seed, got, st)
		}
		if again := snapshotBytes(t, st.Clone(), seed+1); !bytes.Equal(again, b) {
			t.Fatalf("seed %d: the same state encodes differently", seed)
		}
		kinds["retained"] = kinds["retained"] || len(st.Retained) > 0
		kinds["inbound"] = kinds["inbound"] || len(st.Inbound) > 0
		kinds["groups"] = kinds["groups"] || len(st.GroupNext) > 0
		kinds["group taken"] = kinds["group taken"] || len(st.GroupTaken) > 0
		for _, s := range st.Sessions {
			kinds["subs"] = kinds["subs"] || len(s.Subs) > 0
			kinds["wills"] = kinds["wills"] || s.WillDue > 0
			for _, in := range s.Inflight {
				kinds[fmt.Sprint("inflight qos ", in.QoS, " released ", in.Released)] = true
			}
		}
	}
	for _, k := range []string{"retained", "inbound", "groups", "group taken", "subs", "wills", "inflight qos 1 released false", "inflight qos 2 released true"} {
		if !kinds[k] {
			t.Errorf("no random state had %s", k)
		}
	}
}

// TestSnapshotDamage: truncated or damaged files are refused with
// ErrBadSnapshot.
func TestSnapshotDamage(t *testing.T) {
	buf := snapshotBytes(t, randomState(t, 7, 200), 42)
	for _, n := range []int{0, 10, 27, len(buf) / 2, len(buf) - 1} {
		if _, _, err := qos.ReadSnapshot(bytes.NewReader(buf[:n])); !errors.Is(err, qos.ErrBadSnapshot) {
			t.Fatalf("truncated to %d: %v", n, err)
		}
	}
	for i := range buf {
		b := bytes.Clone(buf)
		b[i] ^= 0x10
		if _, _, err := qos.ReadSnapshot(bytes.NewReader(b)); err == nil {
			t.Fatalf("flipped bit in byte %d accepted", i)
		}
	}
}

// TestSnapshotVersion1: a gob snapshot written by an older edgemq (one
// without retained messages: gob could not encode those) still reads.
func TestSnapshotVersion1(t *testing.T) {
	st := randomState(t, 3, 300)
	clear(st.Retained)
	// As a snapshot reads it back: the index of the retained messages by
	// offset follows Retained.
	st, _, err := qos.ReadSnapshot(bytes.NewReader(snapshotBytes(t, st, 9)))
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	if err := gob.NewEncoder(&body).Encode(st); err != nil {
		t.Fatal(err)
	}
	b := frame(1, 9, body.Bytes())
	got, off, err := qos.ReadSnapshot(bytes.NewReader(b))
	if err != nil || off != 9 {
		t.Fatalf("read: offset %d, %v", off, err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Fatalf("version 1 differs:\n got %+v\nwant %+v", got, st)
	}
}

// TestSnapshotVersion2: a snapshot of the version before GroupTaken (its
// body ends with the group positions) still reads, with nothing taken.
func TestSnapshotVersion2(t *testing.T) {
	st := randomState(t, 5, 300)
	clear(st.GroupTaken)
	if len(st.GroupNext) == 0 {
		t.Fatal("no group in the state")
	}
	clear(st.GroupOwed)
	clear(st.GroupHandout)
	body := snapshotBytes(t, st, 9)[28:]
	if !bytes.HasSuffix(body, []byte{0, 0, 0}) {
		t.Fatal("the body does not end with empty GroupTaken, GroupOwed and GroupHandout sections")
	}
	got, off, err := qos.ReadSnapshot(bytes.NewReader(frame(2, 9, body[:len(body)-3])))
	if err != nil || off != 9 {
		t.Fatalf("read: offset %d, %v", off, err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Fatalf("version 2 differs:\n got %+v\nwant %+v", got, st)
	}
}

// TestSnapshotVersion3: a snapshot of the version before GroupOwed and
// GroupHandout (its body ends with the groups' taken offsets) still reads,
// with nothing owed or handed out.
func TestSnapshotVersion3(t *testing.T) {
	st := randomState(t, 5, 300)
	clear(st.GroupOwed)
	clear(st.GroupHandout)
	body := snapshotBytes(t, st, 9)[28:]
	if !bytes.HasSuffix(body, []byte{0, 0}) {
		t.Fatal("the body does not end with empty GroupOwed and GroupHandout sections")
	}
	got, off, err := qos.ReadSnapshot(bytes.NewReader(frame(3, 9, body[:len(body)-2])))
	if err != nil || off != 9 {
		t.Fatalf("read: offset %d, %v", off, err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Fatalf("version 3 differs:\n got %+v\nwant %+v", got, st)
	}
}

// frame wraps a body in a snapshot header of the given version.
func frame(version byte, off uint64, body []byte) []byte {
	b := append([]byte("EDGESNP"), version)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint64(b, uint64(len(body)))
	c := crc32.MakeTable(crc32.Castagnoli)
	sum := crc32.Checksum(body, c)
	if version > 1 { // the offset is covered too
		sum = crc32.Update(crc32.Checksum(b[8:16], c), c, body)
	}
	b = binary.BigEndian.AppendUint32(b, sum)
	return append(b, body...)
}

// FuzzSnapshotBody feeds bodies behind a valid header and checksum: the
// decoder never panics, refuses with ErrBadSnapshot, and what it accepts
// reads back the same after a rewrite.
func FuzzSnapshotBody(f *testing.F) {
	for seed := range uint64(8) {
		b := snapshotBytes(f, randomState(f, seed, 40), 1)
		f.Add(b[28:])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		st, _, err := qos.ReadSnapshot(bytes.NewReader(frame(4, 1, body)))
		if err != nil {
			if !errors.Is(err, qos.ErrBadSnapshot) {
				t.Fatalf("error does not wrap ErrBadSnapshot: %v", err)
			}
			return
		}
		again, _, err := qos.ReadSnapshot(bytes.NewReader(snapshotBytes(t, st, 1)))
		if err != nil || !reflect.DeepEqual(again, st) {
			t.Fatalf("rewrite differs (%v):\n got %+v\nwant %+v", err, again, st)
		}
	})
}
