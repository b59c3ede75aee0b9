package edge

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// attach runs one client's connection, as mochi's EstablishConnection
// (attachClient, v2.7.9) does and in its order, with three differences
// that make an idle connection cheap: it is one goroutine, and a small one.
//
//   - No write loop. mochi starts a goroutine per client that drains the
//     client's outbound channel; only mochi's own fan-out fills it, and it
//     fans out nothing of ours (the engine writes every message,
//     acknowledgement and PUBLISH of ours on its sender). What mochi still
//     fans out are its $SYS topics, to filters that start with "$"
//     (mochi's shared groups match $SYS too): the write loop starts when a
//     client subscribes to one (sysWriter), and lives as long as the
//     connection.
//   - A fresh goroutine after CONNACK. The handshake (TLS, CONNECT, the
//     hooks, CONNACK) runs on the caller's goroutine, whose stack grows to
//     16 KB doing it; the connection then goes on on a goroutine of its
//     own (serve), which starts small, and the big stack goes back to the
//     runtime for the next handshake.
//   - A shallow read loop. Waiting for its next packet, that goroutine
//     holds little more than a fixed header on its stack (readLoop): 2 KB
//     for a connection idle since CONNACK (BenchmarkIdleConnMemory), and
//     a stack a busy spell grew shrinks back at the GCs to a few KB, as a
//     goroutine stack shrinks while it uses less than a quarter. mochi's
//     attachClient and Read hold whole packets in their frames (4.5 KB),
//     which kept every idle connection at 16 KB.
//
// Everything else is mochi's: the CONNECT checks and hooks (the same
// hooks, run through b.lifecycle), the session takeover, SendConnack,
// and every packet after CONNECT processed by mochi (InjectPacket).
// mochi's attachClient does not run its OnDisconnect hooks when CONNACK
// cannot be written; attach does, once the session was established.
// wc.end is called once the connection is over.
func (b *Broker) attach(listener string, wc *conn) {
	s := b.srv
	s.Listeners.ClientsWg.Add(1)
	cl := s.NewClient(wc, listener, "", false)
	counted, present, err := b.open(cl, listener)
	if !counted || err != nil {
		b.detach(cl, wc, nil, counted, err)
		return
	}
	a := &attached{cl: cl, wc: wc, hc: b.hookClient(cl)}
	if present {
		for filter := range cl.State.Subscriptions.GetAll() {
			a.w.need(cl, filter)
		}
	}
	go b.serve(a)
}

// attached is a connection past CONNACK: what its goroutine holds.
type attached struct {
	cl *mqtt.Client
	wc *conn
	w  sysWriter
	// hc is the connection in the delivery hook, looked up once: every
	// publish and acknowledgement it reads goes to its engine client.
	hc *hookClient
	// hdr is readFixedHeader's scratch, on the heap: the read escapes;
	// then the body of a short acknowledgement (bodyFor).
	hdr [8]byte
}

// serve is a connection's goroutine from CONNACK to its end.
func (b *Broker) serve(a *attached) {
	err := b.readLoop(a)
	if keepAliveExpired(a.cl, err) {
		// Closed as if the network had failed (the will is published)
		// [MQTT-3.1.2-22], after a DISCONNECT 0x8D Keep Alive timeout
		// that tells an MQTT 5 client why (§3.14.2.1; mochi sends none).
		// On WebSocket the deadline's timer said it already, if the read
		// was waiting when it passed (wsConn).
		a.wc.keepAliveTimeout()
	}
	b.detach(a.cl, a.wc, &a.w, true, err)
}

// keepAliveExpired reports whether the read loop ended with err because
// the client sent nothing for 1.5 keepalives: the read deadline after
// CONNACK is refreshDeadline's alone. Every transport's read says
// os.ErrDeadlineExceeded (WebSocket's: wsConn).
func keepAliveExpired(cl *mqtt.Client, err error) bool {
	return cl.State.Keepalive > 0 && errors.Is(err, os.ErrDeadlineExceeded)
}

// detach ends a connection as mochi's attachClient does: the will
// cleared after a DISCONNECT [MQTT-3.14.4-3] [MQTT-3.1.2-10], the
// disconnect hooks, mochi's copy of a clean session gone; counted says
// the client reached the session (open).
func (b *Broker) detach(cl *mqtt.Client, wc *conn, w *sysWriter, counted bool, err error) {
	s := b.srv
	if counted {
		if err != nil {
			cl.Stop(err)
		} else {
			cl.Properties.Will = mqtt.Will{}
		}
		s.Log.Debug("client disconnected", "error", err, "client", cl.ID, "remote", cl.Net.Remote, "listener", cl.Net.Listener)
		expire := (cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryInterval == 0) ||
			(cl.Properties.ProtocolVersion < 5 && cl.Properties.Clean)
		b.lifecycle.OnDisconnect(cl, err, expire)
		if expire && !takenOver(cl) {
			cl.ClearInflights()
			s.UnsubscribeClient(cl)
			if cur, ok := s.Clients.Get(cl.ID); ok && cur == cl {
				s.Clients.Delete(cl.ID) // [MQTT-4.1.0-2]
			}
		}
		atomic.AddInt64(&s.Info.ClientsConnected, -1)
	}
	cl.Stop(nil)
	if w != nil {
		w.wait()
	}
	s.Listeners.ClientsWg.Done()
	wc.end(err)
}

// errMaxClients ends a connection refused because limits.max_clients were
// connected. It is not packets.ErrServerBusy alone: a login refused for
// want of a bcrypt slot ends with that too, and is no max_clients refusal.
var errMaxClients = fmt.Errorf("limits.max_clients reached: %w", packets.ErrServerBusy)

// open reads CONNECT and runs the handshake: mochi's checks and hooks,
// the session, CONNACK. counted says the client counts as connected in
// mochi's Info (the caller uncounts it); present, that it took over a
// session mochi knew. Its frame holds the CONNECT packet, and is gone
// before the read loop waits.
func (b *Broker) open(cl *mqtt.Client, listener string) (counted, present bool, err error) {
	s := b.srv
	caps := s.Options.Capabilities
	pk, err := readConnect(s, cl)
	if err != nil {
		return false, false, fmt.Errorf("read connection: %w", err)
	}
	b.fixRead(&pk)
	cl.ParseConnect(listener, pk)
	if atomic.LoadInt64(&s.Info.ClientsConnected) >= caps.MaximumClients {
		code := packets.ErrServerBusy
		if cl.Properties.ProtocolVersion < 5 {
			code = packets.ErrServerUnavailable
		}
		_ = s.SendConnack(cl, code, false, nil)
		return false, false, errMaxClients
	}
	if code := validateConnect(caps, cl, &pk); code != packets.CodeSuccess {
		if err := s.SendConnack(cl, code, false, nil); err != nil {
			return false, false, fmt.Errorf("invalid connection send ack: %w", err)
		}
		return false, false, code // [MQTT-3.2.2-7] [MQTT-3.1.4-6]
	}
	if err := b.lifecycle.OnConnect(cl, pk); err != nil {
		return false, false, err
	}
	refreshDeadline(cl)
	if !b.lifecycle.OnConnectAuthenticate(cl, pk) { // [MQTT-3.1.4-2]
		if err := s.SendConnack(cl, packets.ErrBadUsernameOrPassword, false, nil); err != nil {
			return false, false, fmt.Errorf("invalid connection send ack: %w", err)
		}
		return false, false, packets.ErrBadUsernameOrPassword
	}

	atomic.AddInt64(&s.Info.ClientsConnected, 1)
	b.lifecycle.OnSessionEstablish(cl, pk)
	if !b.sessionRefused(cl) {
		// A connection refused its session (another user's, or not
		// durable) must not close the one holding it.
		present = b.inheritSession(cl, &pk)
		s.Clients.Add(cl) // [MQTT-4.1.0-1]
	}
	// The delivery hook sets session present from the engine (OnPacketEncode).
	if err := s.SendConnack(cl, packets.CodeSuccess, present, nil); err != nil { // [MQTT-3.2.0-1]
		return true, present, fmt.Errorf("ack connection packet: %w", err)
	}
	// mochi's attachClient would now cancel a delayed will and resend its
	// inflight messages: mochi holds no will (takeWill) and no flight of
	// ours (the engine resends them).
	b.lifecycle.OnSessionEstablished(cl, pk)
	return true, present, nil
}

// sessionRefused reports whether the engine refused cl's session in
// OnSessionEstablish.
func (b *Broker) sessionRefused(cl *mqtt.Client) bool {
	ds, ok := b.storage.(*durableStorage)
	return ok && ds.hook.refused(cl)
}

// fixRead corrects what mochi's packet decoder refuses that MQTT allows
// (limitsHook.fixRead, authHook.fixRead), for every packet read, before
// mochi validates or processes it.
func (b *Broker) fixRead(pk *packets.Packet) {
	b.limits.fixRead(pk)
	b.auth.fixRead(pk)
}

// hookClient is cl's connection in the delivery hook, nil if it has none.
func (b *Broker) hookClient(cl *mqtt.Client) *hookClient {
	if ds, ok := b.storage.(*durableStorage); ok {
		return ds.hook.client(cl)
	}
	return nil
}

// readConnect reads the first packet, which must be CONNECT [MQTT-3.1.0-1].
func readConnect(s *mqtt.Server, cl *mqtt.Client) (packets.Packet, error) {
	var fh packets.FixedHeader
	hdr := make([]byte, 2)
	if err := readFixedHeader(s, cl.Net.Conn, hdr, &fh); err != nil {
		return packets.Packet{}, err
	}
	if fh.Type != packets.Connect {
		return packets.Packet{}, packets.ErrProtocolViolationRequireFirstConnect
	}
	return readPacket(s, cl, cl.Net.Conn, &fh)
}

// validateConnect is mochi's check of a CONNECT against the capabilities.
func validateConnect(caps *mqtt.Capabilities, cl *mqtt.Client, pk *packets.Packet) packets.Code {
	if code := pk.ConnectValidate(); code != packets.CodeSuccess { // [MQTT-3.1.4-1] [MQTT-3.1.4-2]
		return code
	}
	switch {
	case cl.Properties.ProtocolVersion < 5 && !pk.Connect.Clean && pk.Connect.ClientIdentifier == "":
		return packets.ErrUnspecifiedError
	case cl.Properties.ProtocolVersion < caps.MinimumProtocolVersion:
		return packets.ErrUnsupportedProtocolVersion // [MQTT-3.1.2-2]
	case cl.Properties.Will.Qos > caps.MaximumQos:
		return packets.ErrQosNotSupported // [MQTT-3.2.2-12]
	case cl.Properties.Will.Retain && caps.RetainAvailable == 0x00:
		return packets.ErrRetainNotSupported // [MQTT-3.2.2-13]
	case !pk.Connect.WillFlag && pk.Connect.WillQos != 0:
		return packets.ErrProtocolViolationQosOutOfRange // [MQTT-3.1.2-11] (3.1.1: [MQTT-3.1.2-13])
	case cl.Properties.ProtocolVersion < 5 && pk.Connect.PasswordFlag && !pk.Connect.UsernameFlag:
		// MQTT 5 allows a password alone; 3.1.1 does not [MQTT-3.1.2-22].
		return packets.ErrProtocolViolationFlagNoUsername
	case cl.Properties.ProtocolVersion == 5 && pk.Properties.AuthenticationMethod != "":
		// edgemq has no enhanced authentication: a method it does not
		// support is refused and the connection closed [MQTT-4.12.0-1].
		return packets.ErrBadAuthenticationMethod
	}
	return packets.CodeSuccess
}

// refreshDeadline gives the next read 1.5 keepalives [MQTT-3.1.2-22]
// (our conn applies it to reads only); keepalive 0: none.
func refreshDeadline(cl *mqtt.Client) {
	var t time.Time
	if k := cl.State.Keepalive; k > 0 {
		// In milliseconds: k+k/2 seconds cut an odd keepalive half a
		// second short (1 s for a Keep Alive of 1).
		t = time.Now().Add(time.Duration(k) * 1500 * time.Millisecond)
	}
	_ = cl.Net.Conn.SetDeadline(t)
}

// inheritSession is mochi's session takeover: the client connected
// before with the same id is disconnected (0x8E) [MQTT-3.1.4-3], and
// unless the new connection starts clean [MQTT-3.1.2-4], its mochi
// subscriptions ($SYS) move to the new one. It reports whether they did.
// The engine keeps the session itself; mochi's inflight holds nothing.
func (b *Broker) inheritSession(cl *mqtt.Client, pk *packets.Packet) bool {
	s := b.srv
	existing, ok := s.Clients.Get(cl.ID)
	if !ok {
		if atomic.LoadInt64(&s.Info.ClientsConnected) > atomic.LoadInt64(&s.Info.ClientsMaximum) {
			atomic.AddInt64(&s.Info.ClientsMaximum, 1)
		}
		return false
	}
	closeTakenOver(s, existing)
	if pk.Connect.Clean || (existing.Properties.Clean && existing.Properties.ProtocolVersion < 5) {
		s.UnsubscribeClient(existing)
		existing.ClearInflights()
		markTakenOver(existing)
		return false
	}
	// Marked first: the old connection, ending, must not unsubscribe the
	// client id the new one now holds.
	markTakenOver(existing)
	for filter, sub := range existing.State.Subscriptions.GetAll() {
		if s.Topics.Subscribe(cl.ID, sub) { // [MQTT-3.8.4-3]
			atomic.AddInt64(&s.Info.Subscriptions, 1)
		}
		cl.State.Subscriptions.Add(sub.Filter, sub)
		existing.State.Subscriptions.Delete(filter)
	}
	existing.ClearInflights()
	return true
}

// closeTakenOver ends the connection of cl, whose client id a new
// connection took: DISCONNECT 0x8E Session taken over to an MQTT 5
// client, then the close [MQTT-3.1.4-3] (3.1.1: the close alone,
// [MQTT-3.1.4-2]), within the goodbye's bound (goodbyeTimeout): an old
// client that reads nothing more, a write of ours blocked on its full
// socket, would hold the new connection's CONNACK back for
// limits.write_timeout.
func closeTakenOver(s *mqtt.Server, cl *mqtt.Client) {
	_ = disconnectClient(s, cl, packets.ErrSessionTakenOver)
}

// markTakenOver and takenOver keep, on our conn, what mochi keeps in its
// unexported isTakenOver flag: another connection took this client's
// session.
func markTakenOver(cl *mqtt.Client) {
	if c, ok := cl.Net.Conn.(*conn); ok {
		c.takenOver.Store(true)
	}
}

func takenOver(cl *mqtt.Client) bool {
	c, ok := cl.Net.Conn.(*conn)
	return ok && c.takenOver.Load()
}

// readLoop reads and processes the client's packets until it leaves (nil)
// or a read or a packet fails. Waiting for a packet it holds only a fixed
// header in its frame; the packet lives in receive's.
func (b *Broker) readLoop(a *attached) error {
	cl := a.cl
	for {
		if cl.Closed() {
			return nil
		}
		refreshDeadline(cl)
		var fh packets.FixedHeader
		if err := readFixedHeader(b.srv, a.wc, a.hdr[:], &fh); err != nil {
			return err
		}
		if err := b.receive(a, &fh); err != nil {
			return err
		}
	}
}

// receive reads the rest of one packet and has it processed: an
// acknowledgement by the engine (takeAck), a PUBLISH by Broker.publish,
// any other packet by mochi, as mochi's receivePacket does; a v5 client
// whose packet fails with a reason code gets DISCONNECT with it. It is
// never inlined: its frame holds a whole packet, and must not become
// part of readLoop's, which is on the stack of every idle connection.
//
//go:noinline
func (b *Broker) receive(a *attached, fh *packets.FixedHeader) error {
	s, cl := b.srv, a.cl
	buf, bd := bodyFor(fh, s.Options.Capabilities.MaximumQos, a.hdr[:])
	if bd != nil {
		// Nothing keeps the packet's bytes after this call (bodyFor): a
		// topic alias it sets keeps a copy of the topic (publish).
		defer putBody(bd)
	}
	var pk packets.Packet
	body, err := readPacketInto(s, cl, a.wc, fh, &pk, buf)
	if bd != nil {
		bd.b = body[:cap(body)] // as far as it grew
	}
	if err != nil {
		if errors.As(err, new(packets.Code)) {
			// Malformed, or a protocol error its decoding found: a v5
			// client gets DISCONNECT with the reason code before the close
			// [MQTT-4.13.1-1], as a server SHOULD do (MQTT 5 §4.13.1, a
			// statement without a number); mochi closed without.
			return b.packetFailed(cl, &pk, err)
		}
		return err
	}
	b.fixRead(&pk)
	if a.hc.takeAck(&pk) {
		return nil // the engine's, never mochi's
	}
	switch pk.FixedHeader.Type {
	case packets.Publish:
		// Ours from mochi's decoder on (Broker.publish).
		if err := b.publish(a, &pk); err != nil {
			return b.packetFailed(cl, &pk, err)
		}
		return nil
	case packets.Auth:
		// No CONNECT had an Authentication Method (validateConnect), so
		// no client may send AUTH [MQTT-3.1.2-31]: a protocol error
		// [MQTT-4.13.1-1], which mochi, without an auth hook, ignored.
		return disconnectClient(s, cl, packets.ErrProtocolViolation)
	case packets.Subscribe:
		if sharedNoLocal(&pk) {
			// A protocol error, which closes the connection [MQTT-3.8.3-4]
			// [MQTT-4.13.1-1]; mochi would answer with a SUBACK 0x82, a
			// code SUBACK does not have.
			return disconnectClient(s, cl, packets.ErrProtocolViolationInvalidSharedNoLocal)
		}
		if slices.Contains(pk.Properties.SubscriptionIdentifier, 0) {
			// A Subscription Identifier is 1 to 268,435,455; 0 is a
			// protocol error [MQTT-3.8.2.1.2], which mochi took as none.
			return disconnectClient(s, cl, packets.ErrProtocolViolation)
		}
		// Before mochi processes it: the SUBSCRIBE may fan out $SYS's
		// retained values at once.
		for _, f := range pk.Filters {
			a.w.need(cl, f.Filter)
		}
	case packets.Disconnect:
		keepWill(&pk)
	}
	if err := s.InjectPacket(cl, pk); err != nil {
		return b.packetFailed(cl, &pk, err)
	}
	// InjectPacket counts the packet again, as if it came from an inline
	// client: readPacket counted it already.
	atomic.AddInt64(&s.Info.PacketsReceived, -1)
	return nil
}

// keepWill hands mochi a DISCONNECT with any reason code but 0x00 Normal
// disconnection as 0x04 Disconnect with Will Message: only 0x00 discards
// the will [MQTT-3.1.2-10] [MQTT-3.14.4-3], so a client that disconnects
// with an error code (0x80 and above) leaves it to be published, as for a
// lost connection; mochi discards it for every code but 0x04 (pinned by
// TestMochiDisconnectCodesAndWill). A 3.1.1 DISCONNECT has no code.
func keepWill(pk *packets.Packet) {
	if pk.ReasonCode != packets.CodeSuccess.Code {
		pk.ReasonCode = packets.CodeDisconnectWillMessage.Code
	}
}

// disconnectClient ends cl's connection with code, and returns code: an
// MQTT 5 client gets DISCONNECT with it first [MQTT-3.14.2]; 3.1.1 has
// no DISCONNECT from the server, its connection is closed (mochi's
// DisconnectClient writes a DISCONNECT whatever the version). Every
// DISCONNECT the server sends after CONNACK goes through it or through
// conn.disconnect, which it calls: the goodbye's bound starts before it
// waits for anything (a write of mochi's holding the client's lock, one
// of the engine's holding the connection), so the connection is closed
// within goodbyeTimeout, whatever the client reads.
func disconnectClient(s *mqtt.Server, cl *mqtt.Client, code packets.Code) error {
	if wc, ok := cl.Net.Conn.(*conn); ok {
		_ = wc.disconnect(code.Code)
	} else if cl.Properties.ProtocolVersion == 5 {
		_ = s.DisconnectClient(cl, code)
	}
	cl.Stop(code)
	return code
}

// sharedNoLocal reports whether a SUBSCRIBE asks for No Local on a
// shared subscription [MQTT-3.8.3-4] (only MQTT 5 has the bit): a filter
// that starts with "$share/", in lower case [MQTT-4.8.2-1]; No Local on
// "$SHARE/g/t", an ordinary filter [MQTT-4.7.3-4], is allowed, though
// mochi refuses it (mochiSharesWithoutCase).
func sharedNoLocal(pk *packets.Packet) bool {
	for _, f := range pk.Filters {
		if f.NoLocal && strings.HasPrefix(f.Filter, "$share/") {
			return true
		}
	}
	return false
}

// packetFailed ends a connection whose packet failed as mochi's
// receivePacket does: a v5 client gets DISCONNECT with the reason code.
func (b *Broker) packetFailed(cl *mqtt.Client, pk *packets.Packet, err error) error {
	var code packets.Code
	if errors.As(err, &code) && cl.Properties.ProtocolVersion == 5 && code.Code >= packets.ErrUnspecifiedError.Code {
		_ = disconnectClient(b.srv, cl, code)
	}
	b.srv.Log.Warn("error processing packet", "error", err, "client", cl.ID, "listener", cl.Net.Listener, "pk", *pk)
	return err
}

// sysWriter is mochi's write loop for one client, started only once the
// client subscribes to a filter mochi fans out to (see attach). Without
// it mochi's outbound channel would fill, and mochi would then buffer the
// client's every write (WritePacket's outbuf) until 2 KB are pending.
type sysWriter struct {
	done chan struct{} // nil until started; closed when the loop ends
}

// need starts the write loop, once, for a filter that starts with "$":
// $SYS, or a mochi shared group ($share), whose members mochi gives $SYS
// messages too.
func (w *sysWriter) need(cl *mqtt.Client, filter string) {
	if w.done != nil || !strings.HasPrefix(filter, "$") {
		return
	}
	done := make(chan struct{})
	w.done = done
	go func() {
		defer close(done)
		cl.WriteLoop() // returns when the client stops
	}()
}

// wait waits for the write loop, if it started, after the client stopped.
func (w *sysWriter) wait() {
	if w.done != nil {
		<-w.done
	}
}
