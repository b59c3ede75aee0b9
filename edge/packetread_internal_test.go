package edge

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"reflect"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// readFixedHeader and readPacket decode what mochi's ReadFixedHeader and
// ReadPacket decode, from every packet of mochi's own codec cases (valid
// and malformed, MQTT 3.1, 3.1.1 and 5), with the same errors and the
// same counts in the server's Info; and a maximum packet size refuses the
// same packets.
func TestReadPacketAsMochi(t *testing.T) {
	for _, maxSize := range []uint32{0, 64} {
		for typ, cases := range packets.TPacketData {
			for _, tc := range cases {
				if len(tc.RawBytes) == 0 {
					continue
				}
				version := byte(4)
				if tc.Packet != nil && tc.Packet.ProtocolVersion != 0 {
					version = tc.Packet.ProtocolVersion
				}
				wantPk, wantErr, wantInfo := mochiRead(t, tc.RawBytes, version, maxSize)
				gotPk, gotErr, gotInfo := ourRead(tc.RawBytes, version, maxSize)
				name := packets.PacketNames[typ] + " " + tc.Desc
				var code packets.Code
				switch {
				case (wantErr == nil) != (gotErr == nil):
					t.Errorf("%s (max %d): error %v, mochi's %v", name, maxSize, gotErr, wantErr)
				case errors.As(wantErr, &code) && !errors.Is(gotErr, code):
					t.Errorf("%s (max %d): error %v, mochi's %v", name, maxSize, gotErr, wantErr)
				case wantErr == nil && !reflect.DeepEqual(gotPk, wantPk):
					t.Errorf("%s (max %d): packet\n got %+v\nwant %+v", name, maxSize, gotPk, wantPk)
				case wantErr == nil && gotInfo != wantInfo:
					t.Errorf("%s (max %d): counted %v, mochi %v", name, maxSize, gotInfo, wantInfo)
				}
			}
		}
	}
}

// readCounts are the server counters the two readers keep.
type readCounts struct{ bytes, packets, messages int64 }

func countsOf(s *mqtt.Server) readCounts {
	return readCounts{s.Info.BytesReceived, s.Info.PacketsReceived, s.Info.MessagesReceived}
}

func testServer(maxSize uint32) *mqtt.Server {
	s := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s.Options.Capabilities.MaximumPacketSize = maxSize
	return s
}

// mochiRead reads one packet of raw with mochi's client, over a pipe.
func mochiRead(t *testing.T, raw []byte, version byte, maxSize uint32) (packets.Packet, error, readCounts) {
	s := testServer(maxSize)
	server, client := net.Pipe()
	defer server.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = client.Write(raw)
		_ = client.Close()
	}()
	defer func() { <-done }()
	cl := s.NewClient(server, "t", "c", false)
	cl.Properties.ProtocolVersion = version
	var fh packets.FixedHeader
	if err := cl.ReadFixedHeader(&fh); err != nil {
		_ = server.Close()
		return packets.Packet{}, err, countsOf(s)
	}
	pk, err := cl.ReadPacket(&fh)
	_ = server.Close()
	return pk, err, countsOf(s)
}

// ourRead reads one packet of raw with readFixedHeader and readPacket.
func ourRead(raw []byte, version byte, maxSize uint32) (packets.Packet, error, readCounts) {
	s := testServer(maxSize)
	cl := s.NewClient(nil, "t", "c", false)
	cl.Properties.ProtocolVersion = version
	r := bytes.NewReader(raw)
	var fh packets.FixedHeader
	if err := readFixedHeader(s, r, make([]byte, 2), &fh); err != nil {
		return packets.Packet{}, err, countsOf(s)
	}
	pk, err := readPacket(s, cl, r, &fh)
	return pk, err, countsOf(s)
}

// A Remaining Length is at most four bytes [MQTT-1.5.5]: a fifth is a
// malformed packet, not the start of a length (mochi's DecodeLength reads
// 0x80 0x80 0x80 0x80 0x00 as 0, and 0x80 for ever as 0).
func TestReadFixedHeaderLengthAtMostFourBytes(t *testing.T) {
	for _, raw := range [][]byte{
		{0x30, 0x80, 0x80, 0x80, 0x80, 0x00},
		append([]byte{0x30}, bytes.Repeat([]byte{0x80}, 64)...),
	} {
		var fh packets.FixedHeader
		err := readFixedHeader(testServer(0), bytes.NewReader(raw), make([]byte, 2), &fh)
		if !errors.Is(err, packets.ErrMalformedVariableByteInteger) {
			t.Errorf("% x: %v (remaining %d), want %v", raw[:6], err, fh.Remaining, packets.ErrMalformedVariableByteInteger)
		}
	}
	var fh packets.FixedHeader // the largest, four bytes, still reads
	if err := readFixedHeader(testServer(0), bytes.NewReader([]byte{0x30, 0xff, 0xff, 0xff, 0x7f}), make([]byte, 2), &fh); err != nil || fh.Remaining != 268435455 {
		t.Errorf("ff ff ff 7f: %v, remaining %d", err, fh.Remaining)
	}
}

// Every test of the package reads its pooled packet bodies poisoned once
// handled (putBody): a reference kept past the packet reads 0xA5 bytes.
func init() { poisonBodies = true }

// BenchmarkReadPacket is the read loop's read of one packet (fixed header,
// body, mochi's decoder) as receive does it, with the body's buffer from
// bodyFor: a QoS 1 PUBLISH and a PUBACK read into reused buffers, a QoS 0
// PUBLISH into one of its own (the engine keeps its payload).
func BenchmarkReadPacket(b *testing.B) {
	publish := func(q byte) []byte {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: q}, TopicName: "bench/t", Payload: make([]byte, 256), ProtocolVersion: 4}
		if q > 0 {
			pk.PacketID = 7
		}
		var buf bytes.Buffer
		if err := pk.PublishEncode(&buf); err != nil {
			b.Fatal(err)
		}
		return buf.Bytes()
	}
	for _, c := range []struct {
		name string
		raw  []byte
	}{
		{"publish-qos1", publish(1)},
		{"publish-qos0", publish(0)},
		{"puback", []byte{0x40, 2, 0, 7}},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := testServer(0)
			cl := s.NewClient(nil, "t", "c", false)
			cl.Properties.ProtocolVersion = 4
			a := &attached{}
			r := bytes.NewReader(c.raw)
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(c.raw)
				var fh packets.FixedHeader
				if err := readFixedHeader(s, r, a.hdr[:], &fh); err != nil {
					b.Fatal(err)
				}
				buf, bd := bodyFor(&fh, 2, a.hdr[:])
				var pk packets.Packet
				body, err := readPacketInto(s, cl, r, &fh, &pk, buf)
				if err != nil {
					b.Fatal(err)
				}
				if bd != nil {
					bd.b = body[:cap(body)]
					bodies.Put(bd)
				}
			}
		})
	}
}
