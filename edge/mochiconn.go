package edge

import (
	"errors"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/qos"
)

// mochiConn is one mochi client as the engine's qos.Conn. The engine
// decides what to write; mochiConn encodes it (appendPacket) on the
// engine's sender goroutine straight into our conn, corked until Flush: a
// round of the sender is one write, and a delivery allocates nothing.
// mochi's WritePacket is not used for them: it allocates a buffer per
// packet and runs hooks that have nothing to do for these packets; what
// it would do besides, mochiConn does: the closed check, the Maximum
// Packet Size [MQTT-3.1.2-24], mochi's byte and packet counters, and the
// sent-messages metric (which the metrics hook counts for mochi's own).
type mochiConn struct {
	srv  *mqtt.Server
	cl   *mqtt.Client
	wc   *conn                  // cl's connection
	sent *[3]prometheus.Counter // edgemq_mqtt_messages_sent_total by QoS
}

var _ qos.Conn = mochiConn{}

// errNotOurConn is returned by writes to a client whose connection is not
// one of our listeners' (none is).
var errNotOurConn = errors.New("edge: client connection not from our listeners")

// newMochiConn is cl as a qos.Conn.
func newMochiConn(srv *mqtt.Server, cl *mqtt.Client, sent *[3]prometheus.Counter) mochiConn {
	wc, _ := cl.Net.Conn.(*conn)
	return mochiConn{srv: srv, cl: cl, wc: wc, sent: sent}
}

// Write encodes p into the connection, corked until Flush. A packet
// larger than the client's Maximum Packet Size is qos.ErrTooLarge:
// nothing was written [MQTT-3.1.2-24].
func (c mochiConn) Write(p *qos.Packet) error {
	_, err := c.write(p, false)
	return err
}

// WriteNow is Write, or false while another write holds the connection
// or when it cannot write without waiting (TLS, WebSocket).
func (c mochiConn) WriteNow(p *qos.Packet) (bool, error) { return c.write(p, true) }

// write is Write, and WriteNow when now is set.
func (c mochiConn) write(p *qos.Packet, now bool) (bool, error) {
	if c.cl.Closed() {
		return false, mqtt.ErrConnectionClosed
	}
	if c.wc == nil {
		return false, errNotOurConn
	}
	version, maxSize := c.cl.Properties.ProtocolVersion, c.cl.Properties.Props.MaximumPacketSize
	var unix int64 // for a message's remaining expiry; the clock is not free
	if p.Message != nil && p.Message.Expiry > 0 {
		unix = time.Now().Unix()
	}
	add := func(b []byte) ([]byte, error) {
		start := len(b)
		b = appendPacket(b, p, version, unix)
		if maxSize > 0 && uint32(len(b)-start) > maxSize {
			return b[:start], qos.ErrTooLarge
		}
		return b, nil
	}
	var n int
	var err error
	if now {
		var ok bool
		if n, ok, err = c.wc.appendCorkedNow(add); !ok {
			return false, nil
		}
	} else {
		n, err = c.wc.appendCorked(add)
	}
	if err != nil {
		return false, err
	}
	info := c.srv.Info
	atomic.AddInt64(&info.BytesSent, int64(n))
	atomic.AddInt64(&info.PacketsSent, 1)
	if p.Type == qos.PacketPublish {
		atomic.AddInt64(&info.MessagesSent, 1)
		if c.sent != nil {
			c.sent[p.QoS].Inc()
		}
	}
	return true, nil
}

// Flush writes the packets Write corked.
func (c mochiConn) Flush() error {
	if c.wc == nil {
		return nil
	}
	return c.wc.flush()
}

// FlushNow writes what Write corked as far as the socket takes it at once.
func (c mochiConn) FlushNow() (bool, error) {
	if c.wc == nil {
		return true, nil
	}
	return c.wc.flushNow()
}

// Close writes DISCONNECT with reason (MQTT 5), then closes the
// connection (disconnectClient). A takeover (0x8E) is attach's: it
// disconnects the old client when the new one connects (inheritSession).
func (c mochiConn) Close(reason byte) {
	if reason == 0x8E {
		return
	}
	_ = disconnectClient(c.srv, c.cl, packets.Code{Code: reason, Reason: reasonText(reason)})
}

// reasonText names the reason the engine ends a connection with, for the
// client's stop cause (the disconnect's log line); the DISCONNECT carries
// the code alone (conn.disconnect).
func reasonText(reason byte) string {
	switch reason {
	case 0x93:
		return packets.ErrReceiveMaximum.Reason
	case 0x82:
		return packets.ErrProtocolViolation.Reason
	case 0x97:
		return packets.ErrQuotaExceeded.Reason
	}
	return packets.ErrUnspecifiedError.Reason
}
