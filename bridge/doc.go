// Package bridge links the broker to upstream brokers (the central
// cluster): forward rules take local messages up from the durable log,
// downlink rules bring upstream messages down into the broker. It imports
// qos and wal's contracts (through qos.Log) and the paho clients: paho.golang
// for MQTT 5, with its in-memory session state, which lives as long as one
// connection and keeps no copy of what the bridge sends, and
// paho.mqtt.golang for 3.1.1, with no store at all.
//
// # Entry points
//
// Config (with DefaultConfig, DefaultForward, DefaultDownlink, Validate and
// Check) describes one bridge. New, Start, Shutdown and Status run one; Set
// runs the broker's list of them (Apply starts, reloads and stops bridges,
// Wants tells the broker which QoS 0 publishes to log). The broker provides
// a Log (its log with cursor placement) and a Local (durable publishing for
// downlink messages). CountBacklogs counts each forward rule's backlog from
// the cursor positions and a scan of the log on disk, for `edgemq check`.
//
// # Guarantees
//
//   - Each forward rule has its own durable cursor (one reader per
//     connection reads the log for all rules of a bridge, each record once),
//     "bridge/<name>/<rule key>", which moves only past messages the upstream
//     acknowledged (PUBACK for QoS 1, PUBCOMP for QoS 2) or refused, and past
//     records the rule does not forward. Retention never removes what a
//     cursor still needs, unless the disk budget or max age forces it
//     (counted, reason "retention").
//   - After a connection, or a restart of the broker, each rule sends from its
//     cursor at once: oldest first, in log order (so in order per topic), as
//     many at a time as the window allows (max_inflight, lowered by an MQTT 5
//     upstream's Receive Maximum). Nothing waits for new traffic.
//   - Delivery upstream is at least once: what was sent and not acknowledged
//     when a link failed is sent again, and a crash loses at most the last
//     20 ms of cursor commits, sent again too. The tests count the duplicates.
//   - A link that delivers nothing for 1.5 keepalives is closed and
//     reconnected (a half-open TCP connection never acknowledges).
//     Reconnects back off exponentially, capped, with full jitter; the
//     upstreams are tried in order, then round again.
//   - A downlink message is acknowledged upstream only after the broker has
//     it durably (Local.Publish and its wait), in the order they came. The
//     messages are stored one append at a time, each durable or failed as a
//     whole, so local subscribers get them in the order the upstream sent
//     them, also when a write fails and is retried. The broker's record of
//     a QoS 2 packet id makes a resend after a restart a duplicate it drops,
//     and the PUBREL is recorded before the PUBCOMP goes out, so a QoS 2
//     downlink message is delivered locally once across restarts (MQTT 5
//     only: paho.mqtt.golang answers a 3.1.1 PUBREL itself).
//   - The downlink filters a bridge subscribed are remembered durably
//     (Options.StateDir); on a resumed upstream session (Session Present)
//     the ones no rule has any more are unsubscribed, after a reload or a
//     restart alike.
//   - Loops: a forward rule never sends a message a downlink rule of the same
//     bridge brought in (their Origin is "$bridge/<name>"); MQTT 5 downlink
//     subscriptions set No Local, and every forwarded MQTT 5 message carries
//     the user property edgemq-bridge=<client id>, so one that comes back by
//     another path is dropped (counted, reason "loop").
//
// # What it does not guarantee
//
//   - Exactly once upstream. A QoS 2 forward is exactly once within one
//     connection; after a reconnect the bridge sends unacknowledged messages
//     again under new packet ids, which the upstream sees as new messages.
//   - Order across rules after a reconnect: the rules share one reader and
//     send in log order, but a rule resends what it had unacknowledged from
//     its own position.
//   - Loop prevention across two bridges of different brokers over MQTT
//     3.1.1, which has neither No Local nor user properties: do not forward
//     and bring down overlapping topics there.
//   - QoS 0 downlink messages go to local subscribers from memory, as any
//     QoS 0 publish does; they are not logged.
//   - Status.BacklogRecords counts log records, not only the messages the
//     rules forward: it is an upper bound (BacklogMessages is exact, half a
//     second late at most).
package bridge
