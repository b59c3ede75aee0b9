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
//     that each socket write that waits has its own deadline; a subscriber
//     whose write misses it is disconnected at once, counted in
//     edgemq_mqtt_slow_consumer_disconnects_total, and its persistent session
//     keeps what it was owed. mochi alone holds the subscriber's lock across
//     the write, which blocks every QoS 1/2 publisher to it for as long as
//     the socket stays blocked.
//   - A connection the server ends (a DISCONNECT for any reason, a keep
//     alive that expired, a takeover, a shutdown, a refused packet) is
//     closed within 500 ms of that decision (goodbyeTimeout), its
//     DISCONNECT written first when the client's socket takes it: a client
//     that reads nothing more does not hold the read goroutine, the
//     session's disconnect or a takeover for limits.write_timeout.
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
//     A packet being read holds memory for the bytes its client sent of it
//     (at most twice that, and 4 KiB), not for the size it declares.
//   - Shutdown stops accepting, disconnects clients in batches over the
//     grace period (v5: DISCONNECT 0x8B), closes storage last, honours its
//     context, and leaves no goroutine behind.
//   - Logs never carry payloads or passwords; repeating lines are
//     rate-limited, mochi's included.
//   - Where mochi departs from the specification at CONNECT, the hooks put
//     it right: an empty password and a will with an empty payload are
//     accepted (mochi calls both protocol violations); refusals reach 3.1.1
//     clients as 3.1.1 return codes (0x01 for an unsupported level, 0x02 for
//     an empty client id with a persistent session) and v5 clients as v5
//     reasons (0x84); v5 clients learn the Maximum Packet Size and Topic
//     Alias Maximum in CONNACK.
//
// # Durability (the delivery engine, qos.Engine, fed by deliveryhook.go)
//
// The delivery engine (package qos) keeps MQTT's promises across kill -9
// and, under sync always, power cuts, with the log (package wal, adapted
// in wallog.go) as the only store; the delivery hook hands it every
// publish, acknowledgement, subscription and connection event, and mochi
// keeps none of our messages:
//
//   - A QoS 1/2 PUBLISH is appended to the log, and the engine writes its
//     PUBACK or PUBREC only once the append is durable under storage.sync
//     (a window of publishes shares one group commit). A publish the log
//     cannot take is refused: v5 PUBACK/PUBREC 0x97 when the disk budget is
//     full (new messages stop at 90% of it: the tenth left takes the
//     records of draining, deliveries, acknowledgements and checkpoints,
//     and each segment the slowest consumer leaves behind frees more; a
//     QoS 2 delivery whose record does not fit waits for that room), 0x83
//     on an I/O error; a 3.1.1 connection is closed (it has no refusal)
//     and the client sends it again.
//   - The engine delivers every message: a dispatcher reads the log in
//     order, matches each message once against the engine's topic index
//     and offers it to the queues of the sessions and shared groups it
//     matches; each connection's sender (a goroutine only while there is
//     work) writes them within the client's window (the smaller of its
//     Receive Maximum and limits.max_inflight), retained messages at
//     SUBSCRIBE included. A queue holds at most 1024 entries in RAM; past
//     that, and while its session is offline, it holds a position and its
//     backlog is read back from the log.
//   - Deliveries of persistent sessions, their acknowledgements and the QoS
//     2 stages are logged: a QoS 2 PUBLISH or PUBREL leaves only once its
//     record is durable, the inbound QoS 2 state survives restarts, so a
//     QoS 2 message is delivered once and a duplicate PUBLISH is
//     acknowledged and not delivered again.
//   - Sessions with their expiry and owner, granted subscriptions, retained
//     messages, and wills with their delay and properties survive restarts.
//     A will is published through the log when a connection is lost (not
//     at a broker shutdown, which keeps delayed wills pending), after its
//     delay or at session end.
//   - Every storage.checkpoint_interval the state is snapshotted (if it
//     changed, or the last checkpoint failed); a restart replays only the
//     log written since. In the same rhythm the log is trimmed below what
//     no session, group or snapshot needs, whether anything was written or
//     not, so a consumer that moves on or leaves frees the disk budget.
//
// What it does not guarantee: QoS 0 messages are delivered from memory (at
// most once) unless retained or forwarded by a bridge; message order
// between different publishers is log order, and a QoS 1 message may be
// delivered again after a crash (at least once); a session offline forever
// (v3 persistent sessions never expire unless configured) keeps its
// backlog, and the log with it, until the disk budget refuses new messages.
//
// # What the broker core does not guarantee
//
//   - Without a password file, usernames are not verified, so ACL rules
//     for a user trust whatever name a client sends.
//   - MaxClients counts clients past CONNECT; sockets that have not sent
//     CONNECT yet are bounded only by limits.connect_timeout.
//   - MQTT 5 enhanced authentication (AUTH packets) is not supported.
package edge
