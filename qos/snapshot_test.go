package qos_test

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/edgemq/edgemq/qos"
)

func TestSnapshotRoundTrip(t *testing.T) {
	st := qos.NewState()
	for off, rec := range sampleRecords() {
		if err := st.Apply(uint64(off+1), rec); err != nil {
			t.Fatal(err)
		}
	}
	st.Sessions["empty"] = &qos.SessionState{Subs: map[string]qos.Sub{}, Inflight: map[uint16]qos.Inflight{}}
	var buf bytes.Buffer
	if err := qos.WriteSnapshot(&buf, st, 42); err != nil {
		t.Fatal(err)
	}
	got, off, err := qos.ReadSnapshot(bytes.NewReader(buf.Bytes()))
	if err != nil || off != 42 {
		t.Fatalf("read: offset %d, %v", off, err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Fatalf("round trip differs:\n got %+v\nwant %+v", got, st)
	}
	for _, n := range []int{0, 10, 27, buf.Len() / 2, buf.Len() - 1} {
		if _, _, err := qos.ReadSnapshot(bytes.NewReader(buf.Bytes()[:n])); !errors.Is(err, qos.ErrBadSnapshot) {
			t.Fatalf("truncated to %d: %v", n, err)
		}
	}
	b := bytes.Clone(buf.Bytes())
	b[len(b)-3] ^= 0x10
	if _, _, err := qos.ReadSnapshot(bytes.NewReader(b)); !errors.Is(err, qos.ErrBadSnapshot) {
		t.Fatalf("flipped bit: %v", err)
	}
}
