// Package edge assembles the broker: mochi's MQTT engine (MQTT 3.1, 3.1.1
// and 5) behind our own TCP, TLS, WebSocket and secure WebSocket listeners,
// authentication and ACL, limits, Prometheus metrics and the HTTP side.
//
// # Entry points
//
//	cfg, err := edge.LoadConfig(path)          // or edge.DefaultConfig()
//	err = edge.Run(ctx, cfg, edge.Options{...}) // serve until ctx ends, then shut down
//
// or New, Start and Shutdown for finer control; Addr and HTTPAddr report
// the bound addresses (useful with port 0).
//
// # What it guarantees
//
//   - A slow or stuck subscriber never stalls publishers for longer than
//     limits.write_timeout. Every accepted connection is wrapped (conn.go) so
//     that each socket write has its own deadline; a subscriber whose write
//     misses it is disconnected at once, counted in
//     edgemq_mqtt_slow_consumer_disconnects_total, and its persistent session
//     keeps what it was owed. mochi alone holds the subscriber's lock across
//     the write, which blocks every QoS 1/2 publisher to it for as long as
//     the socket stays blocked.
//   - With neither auth.password_file nor auth.allow_anonymous, every
//     listener and the HTTP side are bound to loopback whatever their
//     configured host, and a warning says so.
//   - Authentication failures get CONNACK 0x86 (v5) or 0x04 (v3) and are
//     counted. A denied subscription gets SUBACK 0x87 (v5) or 0x80 (v3); a
//     denied publish is neither delivered nor retained (PUBACK/PUBREC 0x87
//     for v5, a normal acknowledgement for v3, which cannot refuse); read
//     access is checked again on each delivery, so deny rules hold inside
//     wildcard subscriptions.
//   - Limits: packet size (announced to v5 clients in CONNACK), clients,
//     topic length, keepalive bounds (v5 clients are told the server keep
//     alive), inbound and outbound QoS 1/2 windows, the per-client outbound
//     queue, and a connect timeout for connections that never send CONNECT.
//   - Shutdown stops accepting, disconnects clients in batches over the
//     grace period (v5: DISCONNECT 0x8B), closes storage last, honours its
//     context, and leaves no goroutine behind.
//   - Logs never carry payloads or passwords; repeating lines are
//     rate-limited, mochi's included.
//
// # What it does not (yet) guarantee
//
//   - Durability: messages, sessions and retained messages live in mochi's
//     memory. The durable log (package wal) is wired in by the durability
//     work: it opens in Start before the listeners, readiness waits for it,
//     and Shutdown closes it last.
//   - Without a password file, usernames are not verified, so ACL rules
//     for a user trust whatever name a client sends.
//   - A client whose queued backlog is large gets all of it written at
//     reconnect before mochi reads from it again (mochi's resend); one that
//     does not read meanwhile is cut by the write timeout.
//   - MQTT 5 enhanced authentication (AUTH packets) is not supported.
package edge
