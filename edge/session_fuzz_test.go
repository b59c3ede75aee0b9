package edge_test

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgemq/edgemq/edge"
)

// fuzzPackets frames data as MQTT packets after a good CONNECT: each packet
// is a fixed-header byte, a body length byte and that many body bytes (cut
// short at the end of data), with the remaining length written properly.
// The broker's framing is FuzzMQTTInput's subject; here every packet is
// well framed and the fuzzer reaches the states after CONNECT: publishes
// at each QoS, their acknowledgements in any order, subscriptions, topic
// aliases, properties, DISCONNECT.
func fuzzPackets(data []byte) []byte {
	var out []byte
	for len(data) >= 2 {
		header, n := data[0], int(data[1])
		data = data[2:]
		n = min(n, len(data))
		out = append(out, header)
		out = binary.AppendUvarint(out, uint64(n)) // MQTT's variable byte integer [MQTT-1.5.5]
		out = append(out, data[:n]...)
		data = data[n:]
	}
	return out
}

// FuzzSession drives the connection state machine: a valid CONNECT (MQTT
// 3.1.1 or 5, clean or persistent, picked by the first byte), then any
// sequence of packets (fuzzPackets), written whole or split in two. After
// each input the broker must still serve a good client: no crash, hang or
// leak, whatever the sequence. The broker has an ACL, a subscription limit
// and a small packet limit, so their paths are in reach.
// Run: go test -run='^$' -fuzz=FuzzSession ./edge (make fuzz runs it).
func FuzzSession(f *testing.F) {
	pub1 := []byte{0x32, 7, 0, 3, 'a', '/', 'b', 0, 1}      // QoS 1 PUBLISH (body cut to 7)
	pub2 := []byte{0x34, 8, 0, 3, 'a', '/', 'b', 0, 2, 'x'} // QoS 2 PUBLISH
	pubrel := []byte{0x62, 2, 0, 2}
	sub := []byte{0x82, 8, 0, 1, 0, 3, 'a', '/', '#', 1}
	sys := []byte{0x32, 8, 0, 4, '$', 'S', 'Y', 'S', 0, 3}
	disc := []byte{0xe0, 0}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	for _, v := range []byte{0, 1, 2, 3} {
		f.Add(append([]byte{v}, cat(sub, pub1, pub2, pubrel, disc)...), uint16(5))
		f.Add(append([]byte{v}, cat(pub2, pub2, pubrel, pubrel, sys)...), uint16(9))
	}
	// v5: a SUBSCRIBE with two Subscription Identifiers, a PUBLISH with a
	// topic alias and no topic.
	f.Add(append([]byte{1}, 0x82, 11, 0, 1, 4, 0x0b, 1, 0x0b, 2, 0, 1, 'a', 0), uint16(3))
	f.Add(append([]byte{1}, 0x30, 6, 0, 0, 3, 0x23, 0, 1), uint16(1))

	cfg := testConfig(f)
	cfg.Auth.AllowAnonymous = true
	cfg.Auth.ACL = []edge.ACLRule{{Topic: "a/#", Access: "readwrite"}, {Topic: "c/%c/#", Access: "readwrite"}, {Topic: "a/deny", Access: "deny"}}
	cfg.Limits.MaxPacketSize = 4096
	cfg.Limits.MaxSubscriptions = 4
	cfg.Storage.Sync = "never"
	addr := fuzzBroker(f, cfg)
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		if len(data) == 0 {
			return
		}
		version := byte(4)
		if data[0]&1 == 1 {
			version = 5
		}
		clean := data[0]&2 == 0
		connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}}
		connect.Connect.ProtocolName = []byte("MQTT")
		connect.Connect.ClientIdentifier = "fuzz"
		connect.Connect.Clean = clean
		connect.Connect.Keepalive = 30
		if version == 5 && !clean {
			connect.Properties.SessionExpiryInterval, connect.Properties.SessionExpiryIntervalFlag = 60, true
		}
		first, err := encodePacket(version, connect)
		if err != nil {
			t.Fatal(err)
		}
		stream := append(first, fuzzPackets(data[1:])...)
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("broker stopped accepting: %v", err)
		}
		defer c.Close()
		cut := len(first) + int(split)%(len(stream)-len(first)+1)
		_ = c.SetDeadline(time.Now().Add(50 * time.Millisecond))
		_, _ = c.Write(stream[:cut])
		_, _ = c.Write(stream[cut:])
		_, _ = io.Copy(io.Discard, c) // until the broker closes or the deadline

		rc := dialRaw(t, addr, 5)
		if ack := rc.connect("fuzz-check", true, 30); ack.ReasonCode != 0 {
			t.Fatalf("broker refused a good client after the input: %#x", ack.ReasonCode)
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		if pk, err := rc.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Pingresp {
			t.Fatalf("no PINGRESP after the input: %v %v", pk.FixedHeader.Type, err)
		}
	})
}
