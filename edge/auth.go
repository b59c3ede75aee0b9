package edge

import (
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// authHook authenticates clients and applies the ACL.
//
// Authentication happens in OnConnect rather than OnConnectAuthenticate so
// that each refusal gets its own CONNACK code: mochi answers a failed
// OnConnectAuthenticate with one fixed code, and maps it to v3 0x05 where
// 0x04 (bad user name or password) is the right one.
//
// Who gets in:
//   - a client on a TLS listener with use_cn_as_username and a verified
//     client certificate: its username is the certificate's CN, no password;
//   - with a password file: a username whose password matches its bcrypt
//     hash; no username only with allow_anonymous;
//   - without a password file: everyone (either allow_anonymous, or no
//     authentication at all, in which case the listeners are on loopback).
//     Usernames are then unverified, and ACL rules for a user trust them.
type authHook struct {
	mqtt.HookBase
	b              *Broker
	allowAnonymous bool
	// policy is what a reload replaces: the password file and the ACL.
	policy atomic.Pointer[authPolicy]
	// guard bounds what password checks cost (see loginGuard).
	guard *loginGuard
	// useUsernameAsClientID and clientIDPrefix are their AuthConfig fields
	// (cross_user_takeover is the delivery hook's).
	useUsernameAsClientID bool
	clientIDPrefix        string
}

// authPolicy is the password file and the ACL in force.
type authPolicy struct {
	passwords Passwords // nil: no password file
	acl       *acl
}

func newAuthHook(b *Broker, a AuthConfig, files configFiles) *authHook {
	h := &authHook{b: b, allowAnonymous: a.AllowAnonymous, guard: newLoginGuard(a),
		useUsernameAsClientID: a.UseUsernameAsClientID, clientIDPrefix: a.ClientIDPrefix}
	h.policy.Store(&authPolicy{passwords: files.passwords, acl: files.acl})
	return h
}

// setPolicy puts a reloaded password file and ACL in force. Verified
// credentials are forgotten: a password may have changed or gone.
func (h *authHook) setPolicy(p *authPolicy) {
	h.policy.Store(p)
	if h.guard.cache != nil {
		h.guard.cache.clear()
	}
}

// verify checks a username and password within the loginGuard's bounds
// and returns "" when they are right, or why not: bad_credentials,
// backoff (the source failed too often, no bcrypt run) or busy (no bcrypt
// slot before the connect deadline).
func (h *authHook) verify(cl *mqtt.Client, pw Passwords, user string, password []byte) string {
	g, now := h.guard, time.Now()
	if g.cache != nil && g.cache.hit(user, password, now) {
		h.b.metrics.authCacheHits.Inc()
		return ""
	}
	src := sourceOf(cl.Net.Remote)
	if g.failures != nil && g.failures.blocked(src, now) {
		return "backoff"
	}
	deadline := now.Add(h.b.connectTimeout())
	if wc, ok := cl.Net.Conn.(*conn); ok && !wc.connectBy.IsZero() {
		deadline = wc.connectBy
	}
	if !g.acquire(deadline) {
		return "busy"
	}
	ok := pw.Check(user, password)
	g.release()
	if ok {
		if g.cache != nil {
			g.cache.add(user, password, time.Now())
		}
		return ""
	}
	if g.failures != nil {
		g.failures.fail(src, time.Now())
	}
	return "bad_credentials"
}

// ID names the hook.
func (h *authHook) ID() string { return "edge-auth" }

// Provides lists the events handled.
func (h *authHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck:
		return true
	}
	return false
}

// fixRead lets a CONNECT carry an empty password. MQTT allows one
// (3.1.1 §3.1.3.5, 5 §3.1.3.6), but mochi refuses it as a protocol
// violation before any hook can judge it. An empty password is taken as no
// password: no user of a password file has an empty one (SetPassword
// refuses it), so it fails authentication either way.
//
// The read loop calls it for every packet it reads (Broker.fixRead): as
// mochi's OnPacketRead hook it cost two copies of every packet.
func (h *authHook) fixRead(pk *packets.Packet) {
	if pk.FixedHeader.Type == packets.Connect && pk.Connect.PasswordFlag && len(pk.Connect.Password) == 0 {
		pk.Connect.PasswordFlag = false
	}
}

// reservedTopic is the refusal of a topic no client may publish to, in a
// PUBLISH or as its will, past the check for wildcards [MQTT-3.3.2-2];
// ok is false when there is none:
//   - $SYS is the broker's [MQTT-4.7.2-1] (compared without case, as mochi
//     does): 0x87 Not authorized.
//   - "$share", "$share/<group>" or "$share/<group>/" with no topic after
//     it is the start of a shared subscription's filter, no topic
//     [MQTT-4.8.2-1] [MQTT-4.8.2-2]: 0x90 Topic Name invalid, the code of
//     a name that is not malformed but not accepted (in PUBACK, PUBREC
//     and CONNACK alike). In lower case only: "$SHARE/g" is an ordinary
//     topic [MQTT-4.7.3-4], which the filter "$SHARE/g" matches
//     (mochiSharesWithoutCase).
//
// Both begin with '$': any other topic passes at once.
func reservedTopic(topic string) (code packets.Code, ok bool) {
	switch {
	case topic == "" || topic[0] != '$':
		return packets.Code{}, false
	case len(topic) >= len(mqtt.SysPrefix) && strings.EqualFold(topic[:len(mqtt.SysPrefix)], mqtt.SysPrefix):
		return packets.ErrNotAuthorized, true
	case shareWithoutTopic(topic):
		return packets.ErrTopicNameInvalid, true
	}
	return packets.Code{}, false
}

// shareWithoutTopic reports whether topic is "$share", or "$share/"
// and a group with no topic after it.
func shareWithoutTopic(topic string) bool {
	if topic == "$share" {
		return true
	}
	rest, ok := strings.CutPrefix(topic, "$share/")
	if !ok {
		return false
	}
	_, inner, _ := strings.Cut(rest, "/")
	return inner == ""
}

// refuseReserved answers a PUBLISH to a reserved topic, which mochi would
// drop unanswered (Broker.publish), as refused with code
// (hookClient.refuse). It is counted and logged.
func (h *authHook) refuseReserved(a *attached, pk *packets.Packet, code packets.Code) {
	cl := a.cl
	h.b.metrics.dropped.reservedTopic.Add(1)
	h.b.throttledLog.info(h.b.log, "publish to a reserved topic dropped",
		"client", cl.ID, "username", string(cl.Properties.Username), "topic", pk.TopicName, "qos", pk.FixedHeader.Qos)
	a.hc.refuse(pk, code)
}

// OnConnect authenticates the client, applies the client id rules and
// checks its will topic. Whether the session it asks for is its own is
// the engine's to decide (qos.ErrNotOwner, refusedTakeover).
func (h *authHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	certAuth := false
	if wc, ok := cl.Net.Conn.(*conn); ok {
		if cn, ok := wc.certUsername(); ok {
			cl.Properties.Username = []byte(cn)
			certAuth = true
		}
	}
	user := string(cl.Properties.Username)
	pol := h.policy.Load()
	if !certAuth && pol.passwords != nil {
		reason := ""
		switch {
		case !pk.Connect.UsernameFlag || user == "":
			if !h.allowAnonymous {
				reason = "anonymous"
			}
		default:
			reason = h.verify(cl, pol.passwords, user, pk.Connect.Password)
		}
		if reason != "" {
			h.b.metrics.authFailures.WithLabelValues(reason).Inc()
			// Rate-limited per source: one flooding address does not hide
			// the failures of others.
			h.b.throttledLog.infoBy(h.b.log, sourceOf(cl.Net.Remote), "authentication failed",
				"reason", reason, "client", cl.ID, "username", user, "remote", cl.Net.Remote, "listener", cl.Net.Listener)
			if reason == "busy" {
				return refuseConnect(cl, packets.ErrServerBusy, packets.Err3ServerUnavailable.Code)
			}
			return refuseConnect(cl, packets.ErrBadUsernameOrPassword, packets.ErrMalformedUsernameOrPassword.Code)
		}
	}
	if h.useUsernameAsClientID && user != "" {
		cl.ID = user
	}
	if code, ok := reservedTopic(pk.Connect.WillTopic); pk.Connect.WillFlag && ok {
		h.b.metrics.dropped.reservedTopic.Add(1)
		h.b.log.Debug("will topic reserved", "client", cl.ID, "username", user, "topic", pk.Connect.WillTopic)
		return refuseConnect(cl, code, packets.Err3NotAuthorized.Code)
	}
	// Authorization before the payload's check, as for a PUBLISH
	// (Broker.publish).
	if pk.Connect.WillFlag && !pol.acl.allowed(user, cl.ID, pk.Connect.WillTopic, true) {
		h.b.metrics.aclDenials.WithLabelValues("write").Inc()
		h.b.log.Debug("will topic denied by acl", "client", cl.ID, "username", user, "topic", pk.Connect.WillTopic)
		return refuseConnect(cl, packets.ErrNotAuthorized, packets.Err3NotAuthorized.Code)
	}
	if pk.Connect.WillFlag && payloadFormatInvalid(&pk.Connect.WillProperties, pk.Connect.WillPayload) {
		// CONNACK 0x99 (§3.1.3.2.3, payloadFormatInvalid).
		h.b.metrics.dropped.payloadFormat.Add(1)
		h.b.log.Debug("will payload is not the UTF-8 its payload format indicator says", "client", cl.ID, "username", user)
		return refuseConnect(cl, packets.ErrPayloadFormatInvalid, packets.Err3ServerUnavailable.Code) // v3: never (no properties)
	}
	if h.clientIDPrefix != "" && !strings.HasPrefix(cl.ID, strings.ReplaceAll(h.clientIDPrefix, "%u", user)) {
		h.b.metrics.authFailures.WithLabelValues("client_id").Inc()
		h.b.throttledLog.info(h.b.log, "client id refused: it does not start with auth.client_id_prefix",
			"client", cl.ID, "username", user, "remote", cl.Net.Remote, "listener", cl.Net.Listener)
		return refuseConnect(cl, packets.ErrClientIdentifierNotValid, packets.Err3ClientIdentifierNotValid.Code)
	}
	return nil
}

// refusedTakeover counts and logs a connection refused because the
// session of its client id belongs to another user: taking it over would
// hand that user what the session holds and, with a clean start, destroy it.
func (h *authHook) refusedTakeover(cl *mqtt.Client) {
	h.b.metrics.authFailures.WithLabelValues("session_owner").Inc()
	h.b.throttledLog.info(h.b.log, "session takeover by another user refused",
		"client", cl.ID, "username", string(cl.Properties.Username), "remote", cl.Net.Remote, "listener", cl.Net.Listener)
}

// OnConnectAuthenticate lets through what OnConnect let through.
func (h *authHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnACLCheck decides read access: subscriptions (a filter, refused with
// SUBACK 0x87, or 0x80 for v3) and each delivery (a topic name, silently
// skipped). Write access always passes here and is decided by mayWrite
// (Broker.publish): mochi checks it before resolving topic aliases, and for
// v3 it would disconnect the client, which then resends the same message
// forever.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if write || cl.Net.Inline {
		return true
	}
	if h.policy.Load().acl.allowed(string(cl.Properties.Username), cl.ID, topic, false) {
		return true
	}
	h.b.metrics.aclDenials.WithLabelValues("read").Inc()
	return false
}

// refuseConnect sends a refusing CONNACK and returns the error that makes
// mochi drop the connection. v3 clients get v3Code (MQTT 3.1.1 §3.2.2.3).
func refuseConnect(cl *mqtt.Client, code packets.Code, v3Code byte) error {
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connack},
		ReasonCode:  code.Code,
	}
	if cl.Properties.ProtocolVersion < 5 {
		ack.ReasonCode = v3Code
	} else {
		ack.Properties.ReasonString = code.Reason
	}
	_ = cl.WritePacket(ack) // [MQTT-3.2.2-6] session present 0; the connection closes next
	return code
}
