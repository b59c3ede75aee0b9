// Package qos holds edgemq's delivery bookkeeping with no network code and
// no storage of its own: what the broker writes to its log, how the log is
// read back into state, and the queues that hand messages to consumers.
//
// # Entry points
//
//   - Message, Session, Disconnect, Subscribe, Unsubscribe, Deliver,
//     PacketRef, Checkpoint: the records, with Encode, EncodeRef, EncodeEnd,
//     EncodeCheckpoint and Decode. Every record starts with its Kind and a
//     version byte; kinds are never renumbered.
//   - State and State.Apply: the state after a sequence of records (sessions
//     with their subscriptions, positions, unacknowledged packet ids and
//     wills; retained messages; inbound QoS 2 messages awaiting PUBREL).
//     Replaying the log through Apply gives what a restart must restore.
//   - WriteSnapshot and ReadSnapshot: a State with the offset it stands for,
//     checksummed, so a restart replays only what came after.
//   - Queue: one consumer's backlog as log offsets, in RAM up to a bound, a
//     position in the log beyond it or while the consumer is offline.
//   - Match and SplitShared: MQTT topic filter matching [MQTT-4.7].
//   - Log, LogReader, Cursor, Snapshots and Conn: what the delivery engine
//     needs from the durable log, from checkpoint storage and from one
//     client connection (edge adapts *wal.Log and mochi's client), with the
//     error sentinels ErrHole, ErrTrimmed, ErrLogClosed and ErrTooLarge.
//
// # What it guarantees
//
//   - Decoders never panic and never return garbage for malformed input:
//     every error wraps ErrBadRecord or ErrBadSnapshot (fuzzed).
//   - Apply is deterministic: the same records give the same State.
//   - A Queue fed by one dispatcher (offers in log order) and drained by one
//     consumer yields every offered offset once, in order, across overflow,
//     parking and resuming, as long as the dispatcher moves its position
//     before it offers (see Queue.CatchUp).
//
// # What it does not
//
//   - It does no I/O and keeps no lock across calls but a Queue's own; State
//     is not safe for concurrent use.
//   - It does not match subscriptions against topics for fan-out (the broker
//     uses mochi's topic index); Match serves scans of one session's few
//     filters.
package qos
