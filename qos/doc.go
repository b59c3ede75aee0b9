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
// # Snapshot encoding
//
// A snapshot is a header (magic "EDGESNP", a version byte, the offset, the
// body length, a CRC-32C of offset and body) and a body in the records' own
// binary encoding: sessions, retained messages, inbound QoS 2 packet ids and
// shared-group positions, each section a count and its entries in key order.
// A session is embedded as its Session record, a subscription as its
// Subscribe record, a retained message as its Message record, each followed
// by the few fields only the state has (positions, flags, packet ids).
//
// Version 1 was encoding/gob, and gob was the wrong choice: it failed on any
// State holding a retained message (Retained holds Message by value and its
// MarshalBinary has a pointer receiver), so one retained message stopped
// every checkpoint and the log was never trimmed. A hand-written encoding
// built on the records has one definition of each entity on disk, fails
// only for values Apply cannot produce, is deterministic (equal states give
// equal bytes), and is fuzzed (FuzzSnapshotBody) and round-trip tested
// against states built from every kind of record. Version 1 files are still
// read, so an upgrade keeps what its last snapshot holds; they are never
// written. A file of any other version, or damaged, is refused with
// ErrBadSnapshot, and the broker falls back to an older snapshot or a
// longer replay of the log.
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
