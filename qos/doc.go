// Package qos is edgemq's delivery engine, with no network code, no mochi
// and no storage of its own: it keeps MQTT's delivery promises on top of a
// durable log (Log) and writes to client connections (Conn).
//
// # Entry points
//
//   - Engine (New, Start, Close): owns sessions and their expiry (a timer
//     heap), subscriptions (its own topic index: one walk per message),
//     outbound packet ids and QoS 1/2 flights, inbound QoS 2 state,
//     shared groups, retained messages, the dispatcher, recovery from the
//     newest snapshot plus the log after it, and checkpoints that trim the
//     log. Engine.Connect attaches a Conn and returns the Client handle the
//     connection's owner feeds with what it reads (Publish, Puback, Pubrec,
//     Pubrel, Pubcomp, Subscribe, Suback, Unsubscribe, Disconnect).
//     Engine.Publish and Release serve sources that are not connections (a
//     bridge's downlink).
//   - Log, LogReader, Cursor, Snapshots and Conn: what the engine needs from
//     the durable log, from checkpoint storage and from one client
//     connection (edge adapts *wal.Log and mochi's client), with the error
//     sentinels ErrHole, ErrTrimmed, ErrLogClosed, ErrFull and ErrTooLarge.
//   - Message, Session, Disconnect, Subscribe, Unsubscribe, Deliver,
//     PacketRef, Checkpoint, GroupHandout, GroupReturn: the records, with Encode (which fails for a
//     body that has no encoding) and the encoders of the bodies that
//     always encode (EncodeDisconnect, EncodeUnsubscribe, EncodeRef,
//     EncodeEnd, EncodeCheckpoint, EncodeGroupHandout, EncodeGroupReturn), and Decode. Every record starts with its Kind and a
//     version byte; kinds are never renumbered. A record about a session
//     names it by its Ref (version 2), a short id given at its creation
//     that its Session record and every snapshot map to the client id;
//     version 1 records, which name it by client id, are still read.
//   - State and State.Apply: the state after a sequence of records;
//     WriteSnapshot and ReadSnapshot: a State with the offset it stands for.
//   - Queue: one consumer's backlog as log offsets, in RAM up to a bound, a
//     position in the log beyond it or while the consumer is offline.
//   - Match and SplitShared: MQTT topic filter matching [MQTT-4.7].
//
// # The path of one QoS 1 message
//
// The publisher's connection calls Client.Publish on its read goroutine:
// the message is appended without waiting (Log.AppendAsyncLead: a quiet
// log may write it on this goroutine, durability event included, before
// it returns) and its PUBACK queued; one already durable is written there
// and then when the socket takes it at once (ackNow). The publisher's sender (a goroutine that runs only while its
// connection has work) writes the PUBACK once the record is durable; a
// window of publishes shares one group commit. A connection whose only
// work is such a PUBACK starts no sender to wait for it: the log's
// durability event (Log.NotifyDurable) writes it on the log's goroutine
// when the socket takes it at once (Conn.WriteNow, Conn.FlushNow, which
// never wait), or starts the sender. The dispatcher reads durable records
// in log order, matches each message once against the index and offers
// it to every matching session's queue (a shared message, no copy) and
// kicks their senders; each sender takes what its client's window allows,
// assigns the engine's packet ids, logs a Deliver record for a persistent
// session (under the session's lock, so that it precedes the flight's end
// in the log even when the next connection resends the flight; waited
// for at QoS 2 before the PUBLISH, a resend's too, as the Release record
// is before a PUBREL) and writes the PUBLISH.
// At a low rate the dispatcher writes a clean session's message itself,
// the same way and never waiting for the socket. While the log is quiet
// (nothing queued behind the batch, Log.Idle) and the dispatcher
// goroutine is parked with nothing left, the durability event itself
// dispatches the few records it made durable, on the log's goroutine, so
// that such a message goes from the log's writer to the subscriber's
// socket with no goroutine woken in between (the batch's messages for one
// connection in one write, once all are offered); a large fan-out, a
// retained message, a shared group or a lock held leave the rest to the
// dispatcher goroutine, and what a socket does not take at once goes to
// the connection's sender (dispatch.go says why no record is dispatched
// twice or left behind). The subscriber's PUBACK
// (Client.Puback) frees the packet id and logs a Complete record for a
// persistent session.
//
// # What it guarantees
//
//   - An acknowledged QoS 1/2 publish is durable, and reaches every session
//     and shared group subscribed before it was read (persistent ones
//     across disconnects, crashes and restarts; a group at least once:
//     see below); a QoS 2 one reaches each session at most once; each
//     publisher's messages arrive in order (a model-based randomized test
//     checks this, see model_test.go).
//   - A retained message sent at a SUBSCRIBE is a flight that holds its
//     message, also in the snapshots (State's Inflight.Msg): it is resent
//     after a restart though the log was trimmed past its record and a
//     newer retained message replaced it, and it holds no trim point.
//   - No more unacknowledged QoS 1/2 deliveries than the client's Receive
//     Maximum and the engine's MaxInflight, retained messages included
//     [MQTT-3.3.4-9]; a client exceeding the Receive Maximum it was given
//     gets DISCONNECT 0x93 [MQTT-3.3.4-8].
//   - Decoders never panic and never return garbage for malformed input:
//     every error wraps ErrBadRecord or ErrBadSnapshot (fuzzed).
//   - A connection that is idle has no goroutine of the engine.
//   - A checkpoint is the state after exactly the records below its
//     offset, brought up to what only the live sessions know (queue
//     positions, flights whose records may not be durable yet): recovery
//     from it and the log after it gives every persistent session the
//     subscriptions and the messages due that a replay of the whole log
//     gives, and the log keeps them (TestCheckpointDuringChurnRecoversAsReplay,
//     with connects, subscriptions and disconnects during checkpoints).
//   - No Connect, Subscribe, Unsubscribe, Disconnect or publish waits for
//     a checkpoint's walk of the sessions: it takes one lock at a time
//     (Engine.mu only to list the sessions and groups and to start the
//     groups' notes of what they lend), and the dispatcher's
//     state is copied on write (State.Clone: a copy of the session list
//     under the shadow's lock, which the dispatcher, on the log's
//     goroutine too, waits for), not whole. BenchmarkCheckpointSessions
//     reports the longest call during a checkpoint.
//
// # What it does not
//
//   - QoS 0 messages that are neither retained nor logged for a bridge go
//     from the publisher's goroutine to the matching connections, bounded by
//     QoS0Limit per connection, and are not kept for offline sessions (at
//     most once [MQTT-4.3.1]).
//   - A shared group gets its messages at least once across a crash, not
//     exactly once. Its durable state is the offset its backlog starts at,
//     the messages from there on that members took with a logged delivery
//     (a persistent member's, a clean member's QoS 2 one) and did not give
//     back, and the messages below it the group owes (State.GroupNext,
//     State.GroupTaken, State.GroupOwed; a member going away gives its QoS
//     1 flights back, and so does a replay of its Disconnect or end
//     record); a checkpoint moves the offset up to where the group's
//     backlog stands and notes as owed what the group lent out below it
//     and may have to hand out again, so the taken set holds the logged
//     deliveries since the last checkpoint and the owed set what was lent
//     out and not finished then: a member that never acknowledges a
//     message holds one offset, not every later delivery's (without
//     Snapshots the offset stays at the group's start). Recovery hands out
//     the owed messages and everything from the offset on again: what a
//     member gave back, what its scan found and it did not take, and the
//     deliveries no record names (a clean member's QoS 1 ones,
//     acknowledged or not). What the group handed out at QoS 0 it hands
//     out at QoS 0 once at most [MQTT-4.3.1]: a GroupHandout record, one
//     per 1,024 log offsets, is durable before such a PUBLISH, and
//     recovery hands nothing below it out at QoS 0 again (a crash may lose
//     those not handed out yet, counted: Stats.DroppedAtMostOnce; a QoS
//     1/2 member still gets them). A QoS 2 message a member took stays its
//     own, a clean member's too once its session ended [MQTT-4.8.2-5]: its
//     take is logged, and the PUBLISH written only once the record is
//     durable (one the full log refuses is tried again once a second). A
//     member that goes before its PUBLISH was written (flight.written,
//     set under the session's lock before the write) gives it back, with
//     a GroupReturn record when its take was logged, so that a replay
//     gives it back too; the record comes before any other member's take
//     in the log. A crash before that record is durable keeps it the
//     member's, lost with its session, and this is the rule, not a
//     shortcut: the log then holds exactly what it holds when the PUBLISH
//     was written and the crash came after (the take's Deliver record and
//     nothing of the member after it: a clean member logs nothing more),
//     so recovery cannot tell the two apart, and in the second another
//     member getting it would get it twice, which [MQTT-4.8.2-5] forbids
//     (the message ends with the member's session, and a clean session
//     does not survive the restart [MQTT-3.1.2-5]). Only a GroupReturn
//     record proves a durable take was never written. No other record
//     would close the gap: one proving the PUBLISH was about to be
//     written must be durable before it, so a member going away while
//     that one waits for its fsync needs a record again
//     (TestGroupReturnLostKeepsTheTake). So the group gets such a
//     message once at most across a crash, not at least once.
//   - Order between different publishers is log order, not arrival order
//     across connections; QoS 0 and QoS 1/2 messages of one publisher are
//     not ordered against each other.
//   - The engine trusts its caller for protocol validation (topic names,
//     packet ids, QoS values): edge's mochi does it.
package qos
