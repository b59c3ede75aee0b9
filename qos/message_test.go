package qos_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/edgemq/edgemq/qos"
)

func sampleMessages() []qos.Message {
	return []qos.Message{
		{},
		{Topic: "a/b", Payload: []byte("hello"), QoS: 1, Origin: "dev-1", OriginPacketID: 7, Created: 1700000000123456789},
		{Topic: "t", QoS: 2, Retain: true, Expiry: 1700000600, Origin: "c", OriginPacketID: 65535,
			PayloadFormat: 1, PayloadFormatFlag: true, ContentType: "application/json", ResponseTopic: "r/1",
			CorrelationData: []byte{0, 1, 2}, User: []qos.Property{{"k", "v"}, {"", ""}, {"k", "v2"}},
			Payload: make([]byte, 4096), Created: -5},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for i, m := range sampleMessages() {
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("%d: marshal: %v", i, err)
		}
		var got qos.Message
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatalf("%d: unmarshal: %v", i, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%d: round trip\n got %+v\nwant %+v", i, got, m)
		}
		// The decoded message must not alias the record buffer.
		for j := range b {
			b[j] = 0xff
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%d: decoded message aliases its input", i)
		}
	}
}

// The dispatcher's decoding of a record it owns gives the same message, in
// the record's own bytes, and refuses what UnmarshalBinary refuses.
func TestMessageOwnedDecoding(t *testing.T) {
	for i, m := range sampleMessages() {
		b, _ := m.MarshalBinary()
		var got qos.Message
		if err := got.UnmarshalOwned(b); err != nil {
			t.Fatalf("%d: unmarshal: %v", i, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%d: owned decoding\n got %+v\nwant %+v", i, got, m)
		}
		if len(m.Payload) > 0 && &got.Payload[0] != &b[len(b)-len(m.Payload)] {
			t.Errorf("%d: the payload is a copy, not the record's bytes", i)
		}
		for n := 0; n < len(b); n++ {
			if err := new(qos.Message).UnmarshalOwned(b[:n]); !errors.Is(err, qos.ErrBadRecord) {
				t.Fatalf("%d: prefix of %d/%d bytes: err = %v, want ErrBadRecord", i, n, len(b), err)
			}
		}
	}
}

func TestMessageRejectsEveryTruncation(t *testing.T) {
	m := sampleMessages()[2]
	b, _ := m.MarshalBinary()
	for n := 0; n < len(b); n++ {
		var got qos.Message
		if err := got.UnmarshalBinary(b[:n]); !errors.Is(err, qos.ErrBadRecord) {
			t.Fatalf("prefix of %d/%d bytes: err = %v, want ErrBadRecord", n, len(b), err)
		}
	}
	var got qos.Message
	if err := got.UnmarshalBinary(append(b, 0)); !errors.Is(err, qos.ErrBadRecord) {
		t.Fatalf("trailing byte: err = %v, want ErrBadRecord", err)
	}
}

func TestMessageRejectsBadQoS(t *testing.T) {
	m := qos.Message{QoS: 3}
	if _, err := m.MarshalBinary(); !errors.Is(err, qos.ErrBadRecord) {
		t.Fatalf("marshal qos 3: err = %v", err)
	}
	b, _ := (&qos.Message{QoS: 1}).MarshalBinary()
	b[2] = 3
	if err := new(qos.Message).UnmarshalBinary(b); !errors.Is(err, qos.ErrBadRecord) {
		t.Fatalf("unmarshal qos 3: err = %v", err)
	}
}

func FuzzMessageDecode(f *testing.F) {
	for _, m := range sampleMessages() {
		b, _ := m.MarshalBinary()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m qos.Message
		if err := m.UnmarshalBinary(b); err != nil {
			if !errors.Is(err, qos.ErrBadRecord) {
				t.Fatalf("error does not wrap ErrBadRecord: %v", err)
			}
			return
		}
		// Whatever decodes must encode back to the same bytes.
		again, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		var m2 qos.Message
		if err := m2.UnmarshalBinary(again); err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-decode differs: %v", err)
		}
	})
}

func BenchmarkMessageEncode(b *testing.B) {
	m := qos.Message{Topic: "site/7/device/42/telemetry", Payload: make([]byte, 256), QoS: 1, Origin: "device-42", OriginPacketID: 9, Created: 1700000000123456789}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	b.SetBytes(int64(len(m.Payload)))
	for b.Loop() {
		buf, _ = m.AppendBinary(buf[:0])
	}
}

func BenchmarkMessageDecode(b *testing.B) {
	m := qos.Message{Topic: "site/7/device/42/telemetry", Payload: make([]byte, 256), QoS: 1, Origin: "device-42", OriginPacketID: 9, Created: 1700000000123456789}
	rec, _ := m.MarshalBinary()
	for _, tc := range []struct {
		name   string
		decode func(*qos.Message, []byte) error
	}{{"copy", (*qos.Message).UnmarshalBinary}, {"owned", (*qos.Message).UnmarshalOwned}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(m.Payload)))
			var out qos.Message
			for b.Loop() {
				if err := tc.decode(&out, rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
