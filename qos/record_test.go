package qos_test

import (
	"errors"
	"math"
	"reflect"
	"testing"

	"github.com/edgemq/edgemq/qos"
)

func sampleRecords() [][]byte {
	must := func(b []byte, err error) []byte {
		if err != nil {
			panic(err)
		}
		return b
	}
	will := &qos.Message{Topic: "dev/1/status", Payload: []byte("offline"), QoS: 1, Retain: true}
	return [][]byte{
		must(qos.Encode(&qos.Message{Topic: "a", Payload: []byte("x"), QoS: 2, Origin: "c", OriginPacketID: 3})),
		must(qos.Encode(&qos.Session{Client: "c1", ProtocolVersion: 5, ExpiryInterval: math.MaxUint32})),
		must(qos.Encode(&qos.Session{Client: "c2", ProtocolVersion: 4, ExpiryInterval: 60, Will: will, WillDelay: 30})),
		must(qos.Encode(&qos.Session{Client: "c3", ProtocolVersion: 5, ExpiryInterval: 60, Username: "alice"})),
		must(qos.Encode(&qos.Session{Client: "c4", ProtocolVersion: 5, ExpiryInterval: 60, Will: will, Username: "bob"})),
		must(qos.Encode(&qos.Disconnect{Client: "c1", At: 1700000000, ExpiryInterval: 10})),
		must(qos.Encode(&qos.Disconnect{Client: "c2", At: 1700000001, ExpiryInterval: 60, WillPending: true})),
		must(qos.Encode(&qos.Message{Topic: "dev/1/status", Payload: []byte("gone"), Will: true, Origin: "c2"})),
		must(qos.Encode(&qos.Subscribe{Client: "c1", Filter: "$share/g/a/#", QoS: 2, NoLocal: true, RetainAsPublished: true, RetainHandling: 2, Identifier: 268435455})),
		must(qos.Encode(&qos.Unsubscribe{Client: "c1", Filter: "a/+"})),
		must(qos.Encode(&qos.Deliver{Client: "c1", PacketID: 65535, Offset: 1 << 40, QoS: 1, Group: "g"})),
		qos.EncodeRef(qos.KindRelease, qos.PacketRef{Client: "c1", PacketID: 1}),
		qos.EncodeRef(qos.KindComplete, qos.PacketRef{Client: "c1", PacketID: 2}),
		qos.EncodeRef(qos.KindInboundRelease, qos.PacketRef{Client: "c1", PacketID: 3}),
		qos.EncodeEnd(qos.ClientRef{Client: "c1"}),
		qos.EncodeCheckpoint(1 << 33),
		qos.EncodeGroupHandout(qos.GroupHandout{Group: "$share/g/a/#", Below: 1 << 35}),
		qos.EncodeGroupReturn(qos.GroupReturn{Group: "$share/g/a/#", Offset: 1 << 36}),
		// Version 2: a session's records name it by its Ref.
		must(qos.Encode(&qos.Session{Client: "c5", Ref: 1, ProtocolVersion: 5, ExpiryInterval: 60, Username: "carol"})),
		must(qos.Encode(&qos.Session{Client: "c6", Ref: 1 << 40, ProtocolVersion: 4, ExpiryInterval: 60, Will: will})),
		must(qos.Encode(&qos.Disconnect{Ref: 1, At: 1700000000, ExpiryInterval: 10, WillPending: true})),
		must(qos.Encode(&qos.Subscribe{Ref: 1, Filter: "a/#", QoS: 1, Identifier: 7})),
		must(qos.Encode(&qos.Unsubscribe{Ref: 1, Filter: "a/#"})),
		must(qos.Encode(&qos.Deliver{Ref: 300, PacketID: 9, Offset: 12, QoS: 2})),
		must(qos.Encode(&qos.Deliver{Ref: 300, PacketID: 10, Offset: 13, QoS: 1, Retain: true})),
		must(qos.Encode(&qos.Deliver{Ref: 300, PacketID: 11, Offset: 14, QoS: 2, Retain: true, AtSubscribe: true})),
		qos.EncodeRef(qos.KindRelease, qos.PacketRef{Ref: 1, PacketID: 1}),
		qos.EncodeRef(qos.KindComplete, qos.PacketRef{Ref: 1, PacketID: 2}),
		qos.EncodeRef(qos.KindInboundRelease, qos.PacketRef{Ref: 1, PacketID: 3}),
		qos.EncodeEnd(qos.ClientRef{Ref: 1}),
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	for i, rec := range sampleRecords() {
		k, v, err := qos.Decode(rec)
		if err != nil {
			t.Fatalf("%d: decode: %v", i, err)
		}
		if k != qos.KindOf(rec) {
			t.Fatalf("%d: kind %d, want %d", i, k, qos.KindOf(rec))
		}
		var again []byte
		switch r := v.(type) {
		case *qos.PacketRef:
			again = qos.EncodeRef(k, *r)
		case *qos.ClientRef:
			again = qos.EncodeEnd(*r)
		case *qos.Checkpoint:
			again = qos.EncodeCheckpoint(r.Offset)
		case *qos.GroupHandout:
			again = qos.EncodeGroupHandout(*r)
		case *qos.GroupReturn:
			again = qos.EncodeGroupReturn(*r)
		default:
			again, err = qos.Encode(v)
		}
		if err != nil || !reflect.DeepEqual(again, rec) {
			t.Fatalf("%d: re-encode of %+v differs (err %v)", i, v, err)
		}
		for n := 0; n < len(rec); n++ {
			if _, _, err := qos.Decode(rec[:n]); !errors.Is(err, qos.ErrBadRecord) {
				t.Fatalf("%d: prefix %d/%d: err = %v, want ErrBadRecord", i, n, len(rec), err)
			}
		}
	}
}

// TestDeliverWrittenBeforeRetain: a Deliver record written before the
// retain flag (its QoS byte 0..2) still reads, as sent without RETAIN, and
// one without the flag is written as before, byte for byte.
func TestDeliverWrittenBeforeRetain(t *testing.T) {
	old := []byte{byte(qos.KindDeliver), 2, 1, 0, 9, 12, 0xac, 0x02, 0} // QoS 1, packet id 9, offset 12, ref 300, no group
	_, v, err := qos.Decode(old)
	want := &qos.Deliver{Ref: 300, PacketID: 9, Offset: 12, QoS: 1}
	if err != nil || !reflect.DeepEqual(v, want) {
		t.Fatalf("decode: %+v (err %v), want %+v", v, err, want)
	}
	if again, err := qos.Encode(want); err != nil || !reflect.DeepEqual(again, old) {
		t.Fatalf("encode: % x (err %v), want % x", again, err, old)
	}
	bad := append([]byte(nil), old...)
	bad[2] = 3 | 4 // QoS 3 with the retain bit
	if _, _, err := qos.Decode(bad); !errors.Is(err, qos.ErrBadRecord) {
		t.Fatalf("deliver flags %#x: err = %v, want ErrBadRecord", bad[2], err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, rec := range sampleRecords() {
		f.Add(rec)
	}
	f.Fuzz(func(t *testing.T, rec []byte) {
		k, v, err := qos.Decode(rec)
		if err != nil {
			if !errors.Is(err, qos.ErrBadRecord) {
				t.Fatalf("error does not wrap ErrBadRecord: %v", err)
			}
			return
		}
		if k != qos.KindOf(rec) || v == nil {
			t.Fatalf("kind %d body %v", k, v)
		}
	})
}
