package qos_test

import (
	"testing"

	"github.com/edgemq/edgemq/qos"
)

// TestStateApply replays a short history and checks what a restart would see.
func TestStateApply(t *testing.T) {
	st := qos.NewState()
	var off uint64
	apply := func(rec []byte, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Apply(off, rec); err != nil {
			t.Fatalf("apply at %d: %v", off, err)
		}
		off++
	}
	apply(qos.Encode(&qos.Session{Client: "s", ProtocolVersion: 5, ExpiryInterval: 100}))              // 0
	apply(qos.Encode(&qos.Subscribe{Client: "s", Filter: "a/#", QoS: 2}))                              // 1
	apply(qos.Encode(&qos.Subscribe{Client: "s", Filter: "$share/g/b", QoS: 1}))                       // 2
	apply(qos.Encode(&qos.Message{Topic: "a/1", QoS: 2, Origin: "p", OriginPacketID: 7}))              // 3
	apply(qos.Encode(&qos.Message{Topic: "a/r", QoS: 1, Retain: true, Payload: []byte("x")}))          // 4
	apply(qos.Encode(&qos.Deliver{Client: "s", PacketID: 1, Offset: 3, QoS: 2}))                       // 5
	apply(qos.Encode(&qos.Deliver{Client: "s", PacketID: 2, Offset: 4, QoS: 1}))                       // 6
	apply(qos.EncodeRef(qos.KindRelease, qos.PacketRef{Client: "s", PacketID: 1}), nil)                // 7
	apply(qos.EncodeRef(qos.KindComplete, qos.PacketRef{Client: "s", PacketID: 2}), nil)               // 8
	apply(qos.Encode(&qos.Disconnect{Client: "s", At: 1000, ExpiryInterval: 50}))                      // 9
	apply(qos.Encode(&qos.Message{Topic: "b", QoS: 1, Origin: "p", OriginPacketID: 8}))                // 10
	apply(qos.Encode(&qos.Deliver{Client: "s", PacketID: 3, Offset: 10, QoS: 1, Group: "$share/g/b"})) // 11
	apply(qos.EncodeRef(qos.KindInboundRelease, qos.PacketRef{Client: "p", PacketID: 9}), nil)         // 12: unknown, ignored

	s := st.Sessions["s"]
	if s == nil || s.Connected || s.DisconnectedAt != 1000 || s.ExpiryInterval != 50 {
		t.Fatalf("session = %+v", s)
	}
	if s.Expired(1049) || !s.Expired(1050) {
		t.Fatal("expiry is not DisconnectedAt + ExpiryInterval")
	}
	if len(s.Subs) != 2 || s.Subs["a/#"].Since != 1 {
		t.Fatalf("subs = %+v", s.Subs)
	}
	if in := s.Inflight[1]; !in.Released || in.Offset != 3 || len(s.Inflight) != 2 {
		t.Fatalf("inflight = %+v", s.Inflight)
	}
	if s.Next != 5 {
		t.Fatalf("next = %d, want 5 (after the last message delivered)", s.Next)
	}
	if st.GroupNext["$share/g/b"] != 3 || !st.GroupTaken["$share/g/b"][10] || len(st.GroupTaken["$share/g/b"]) != 1 {
		t.Fatalf("group next = %v, taken %v, want 3 (after its Subscribe) and 10 taken", st.GroupNext, st.GroupTaken)
	}
	if st.Inbound["p"][7] != 3 {
		t.Fatalf("inbound = %v", st.Inbound)
	}
	if r := st.Retained["a/r"]; r.Offset != 4 || string(r.Message.Payload) != "x" {
		t.Fatalf("retained = %+v", st.Retained)
	}

	apply(qos.Encode(&qos.Message{Topic: "a/r", QoS: 0, Retain: true})) // clears
	apply(qos.EncodeRef(qos.KindInboundRelease, qos.PacketRef{Client: "p", PacketID: 7}), nil)
	apply(qos.EncodeEnd(qos.ClientRef{Client: "s"}), nil)
	if len(st.Retained) != 0 || len(st.Inbound) != 0 || len(st.Sessions) != 0 {
		t.Fatalf("after clear, release and end: %+v %+v %+v", st.Retained, st.Inbound, st.Sessions)
	}
}

// TestStateWill: a will waits for its delay from the disconnect, is
// cancelled by a reconnect, and is gone once published.
func TestStateWill(t *testing.T) {
	st := qos.NewState()
	will := &qos.Message{Topic: "w", Payload: []byte("gone"), Will: true, Origin: "c"}
	recs := []any{
		&qos.Session{Client: "c", ProtocolVersion: 5, ExpiryInterval: 60, Will: will, WillDelay: 30},
		&qos.Disconnect{Client: "c", At: 1000, ExpiryInterval: 20, WillPending: true},
	}
	for i, r := range recs {
		b, _ := qos.Encode(r)
		if err := st.Apply(uint64(i+1), b); err != nil {
			t.Fatal(err)
		}
	}
	if s := st.Sessions["c"]; s.Will == nil || s.WillDue != 1020 {
		t.Fatalf("will due %d (%v), want 1020: the session expiry comes first", s.WillDue, s.Will)
	}
	b, _ := qos.Encode(will)
	_ = st.Apply(3, b)
	if s := st.Sessions["c"]; s.Will != nil || s.WillDue != 0 {
		t.Fatalf("published will still pending: %+v", s)
	}
	b, _ = qos.Encode(&qos.Disconnect{Client: "c", At: 2000, ExpiryInterval: 60})
	_ = st.Apply(4, b)
	if s := st.Sessions["c"]; s.Will != nil {
		t.Fatal("a normal disconnect kept the will")
	}
}

// TestStateGroupEndsWithLastMember: a shared group's position goes with its
// last member; a group subscribed again later starts at its new subscription.
func TestStateGroupEndsWithLastMember(t *testing.T) {
	st := qos.NewState()
	recs := [][]byte{
		mustEncode(t, &qos.Session{Client: "a", ExpiryInterval: 100}),
		mustEncode(t, &qos.Session{Client: "b", ExpiryInterval: 100}),
		mustEncode(t, &qos.Subscribe{Client: "a", Filter: "$share/g/x", QoS: 1}), // 3
		mustEncode(t, &qos.Subscribe{Client: "b", Filter: "$share/g/x", QoS: 1}),
		mustEncode(t, &qos.Unsubscribe{Client: "a", Filter: "$share/g/x"}),
	}
	for i, rec := range recs {
		if err := st.Apply(uint64(i+1), rec); err != nil {
			t.Fatal(err)
		}
	}
	if got := st.GroupNext["$share/g/x"]; got != 4 {
		t.Fatalf("group next %d with a member left, want 4", got)
	}
	if err := st.Apply(6, qos.EncodeEnd(qos.ClientRef{Client: "b"})); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.GroupNext["$share/g/x"]; ok {
		t.Fatal("the group's position outlived its last member")
	}
	if err := st.Apply(7, mustEncode(t, &qos.Subscribe{Client: "a", Filter: "$share/g/x", QoS: 1})); err != nil {
		t.Fatal(err)
	}
	if got := st.GroupNext["$share/g/x"]; got != 8 {
		t.Fatalf("group next %d after a new subscription at 7, want 8", got)
	}
}

// TestStateGroupGivenBack: a member that goes gives its QoS 1 flights of a
// shared group back to the group, as the engine does: it no longer holds
// them and they are not among what the group's members took; its QoS 2
// ones stay its own [MQTT-4.8.2]. One below the group's position (a
// checkpoint moved it past what members held) moves the position back.
func TestStateGroupGivenBack(t *testing.T) {
	const key = "$share/g/x"
	st := qos.NewState()
	recs := [][]byte{
		mustEncode(t, &qos.Session{Client: "a", Ref: 1, ExpiryInterval: 100}),
		mustEncode(t, &qos.Session{Client: "b", Ref: 2, ExpiryInterval: 100}),
		mustEncode(t, &qos.Subscribe{Client: "a", Ref: 1, Filter: key, QoS: 2}), // 3
		mustEncode(t, &qos.Subscribe{Client: "b", Ref: 2, Filter: key, QoS: 2}),
		mustEncode(t, &qos.Message{Topic: "x", QoS: 1}), // 5
		mustEncode(t, &qos.Message{Topic: "x", QoS: 2}), // 6
		mustEncode(t, &qos.Message{Topic: "x", QoS: 1}), // 7
		mustEncode(t, &qos.Deliver{Ref: 1, PacketID: 1, Offset: 5, QoS: 1, Group: key}),
		mustEncode(t, &qos.Deliver{Ref: 1, PacketID: 2, Offset: 6, QoS: 2, Group: key}),
		mustEncode(t, &qos.Deliver{Ref: 2, PacketID: 1, Offset: 7, QoS: 1, Group: key}),
		mustEncode(t, &qos.Disconnect{Ref: 1, At: 1, ExpiryInterval: 100}),
	}
	for i, rec := range recs {
		if err := st.Apply(uint64(i+1), rec); err != nil {
			t.Fatal(err)
		}
	}
	if a := st.Sessions["a"]; len(a.Inflight) != 1 || a.Inflight[2].Offset != 6 {
		t.Fatalf("a holds %+v after it went, want its QoS 2 flight only", a.Inflight)
	}
	if got := st.GroupTaken[key]; len(got) != 2 || !got[6] || !got[7] {
		t.Fatalf("taken %v, want 6 and 7", got)
	}
	// A checkpoint put the position past b's flight; b's end gives it back.
	st.GroupNext[key] = 8
	delete(st.GroupTaken, key)
	if err := st.Apply(12, qos.EncodeEnd(qos.ClientRef{Ref: 2})); err != nil {
		t.Fatal(err)
	}
	if got, owed := st.GroupNext[key], st.GroupOwed[key]; got != 8 || len(owed) != 1 || !owed[7] {
		t.Fatalf("group next %d, owed %v after b's end, want 8 and b's flight, 7, owed", got, owed)
	}
	// A member's logged take settles it.
	if err := st.Apply(13, mustEncode(t, &qos.Deliver{Ref: 1, PacketID: 3, Offset: 7, QoS: 1, Group: key})); err != nil {
		t.Fatal(err)
	}
	if owed := st.GroupOwed[key]; len(owed) != 0 {
		t.Fatalf("owed %v after a's take of 7, want none", owed)
	}
}

func mustEncode(t *testing.T, v any) []byte {
	t.Helper()
	b, err := qos.Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
