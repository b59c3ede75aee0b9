package qos

import (
	"context"
	"errors"
	"io"
)

// Errors a Log reports, by meaning. An implementation wraps its own error
// with one of them (fmt.Errorf("%w: %w", qos.ErrHole, err)) so that the
// engine can tell what to do without knowing the implementation.
var (
	// ErrHole is returned by Log.Read for an offset that holds no record:
	// never written, or an append that failed. The engine skips it.
	ErrHole = errors.New("qos: no record at offset")

	// ErrTrimmed is returned by Log.Read and LogReader.Next for an offset
	// below Log.FirstOffset: retention removed it. A reader goes on from
	// FirstOffset; what was lost is counted.
	ErrTrimmed = errors.New("qos: record removed from the log")

	// ErrLogClosed is returned by every Log call after the log closed. The
	// engine stops.
	ErrLogClosed = errors.New("qos: log closed")

	// ErrFull is returned (wrapped) by Log.AppendAsync and by
	// Config.Admit when there is no room: the publish is refused with
	// 0x97 Quota exceeded (MQTT 5) and may be sent again later.
	ErrFull = errors.New("qos: log full")

	// ErrTooLarge is returned by Conn.Write for a packet larger than the
	// client's Maximum Packet Size [MQTT-3.1.2-24]: nothing was written and
	// the connection is fine. The engine drops the message for that client
	// (counted) and goes on with the next one.
	ErrTooLarge = errors.New("qos: packet larger than the client accepts")
)

// Log is the durable, ordered record log the engine keeps everything in:
// messages, sessions, subscriptions and delivery state (edge adapts
// *wal.Log). Offsets are consecutive from 1, never reused; a failed append
// leaves holes. All methods must be safe for concurrent use.
type Log interface {
	// AppendAsync queues records and returns the offset of the first (the
	// others follow it consecutively) without waiting for them to be
	// durable. The records of one call are durable together or not at
	// all (a failed write makes holes of all of them). It may block
	// briefly while the log's queue is full. An error means nothing was
	// queued; ErrFull (wrapped) means no room. It keeps neither recs nor
	// the records: the caller may reuse them.
	AppendAsync(recs ...[]byte) (first uint64, err error)
	// AppendAsyncLead is AppendAsync for a caller that holds no lock of
	// the engine's: when the log's writer is idle and the log quiet, the
	// log may write and fsync the records on the caller's goroutine, and
	// deliver its durability event (NotifyDurable) there, before it
	// returns (wal: a low rate on a fast disk), saving the hand-off to
	// the log's goroutine. The engine uses it for a client's publish, on
	// the connection's read goroutine.
	AppendAsyncLead(recs ...[]byte) (first uint64, err error)
	// WaitDurable waits until the record at offset is durable under the
	// log's sync policy, and returns the append's error if it failed. When
	// it returns nil for an offset, every record below it is either durable
	// or a hole. With a ctx already done it does not wait: ctx's error then
	// means the record is neither durable nor failed yet.
	WaitDurable(ctx context.Context, offset uint64) error
	// Resolved reports, without waiting, whether WaitDurable(offset)
	// would return at once: the record at offset (one AppendAsync
	// returned) is durable or failed, or the log failed or closed. The
	// engine asks it for every acknowledgement it queues, so it must be
	// cheap (wal: an atomic load while no append failed).
	Resolved(offset uint64) bool
	// NotifyDurable sets fn, which the log calls each time appended
	// records became durable or failed (WaitDurable stops waiting for
	// them), and when the log fails. It may run on the log's own
	// goroutine, which waits for it: fn must not block. The engine sets it
	// in Start and starts there the senders whose acknowledgements waited.
	NotifyDurable(fn func())
	// Idle reports whether nothing appended waits to be made durable:
	// every record AppendAsync returned is durable or failed (at a
	// durability event: nothing was queued behind the records it made
	// durable). The engine asks it at each event before it does more work
	// on the log's goroutine (dispatchQuiet), work that would delay the
	// next batch; it must be cheap (wal: an atomic load).
	Idle() bool
	// Read returns the durable record at offset (the caller's to keep:
	// the log never writes to it again). The engine reads single records
	// so (a resent message); a run of them it reads with a LogReader,
	// which is cheaper per record (wal: Read fetches a window of the log
	// for each one).
	// Errors wrap ErrHole, ErrTrimmed or ErrLogClosed; any other error is a
	// damaged record, which the engine skips and counts.
	Read(offset uint64) ([]byte, error)
	// NewReader returns a reader whose first record is at from (0: the
	// first record of the log).
	NewReader(from uint64) LogReader
	// FirstOffset is the oldest record still in the log.
	FirstOffset() uint64
	// LastOffset is the newest durable record (0 if none): readers see
	// exactly the records up to it.
	LastOffset() uint64
	// Sync makes every record appended so far durable, whatever the sync
	// policy (under "interval" an append returns before any fsync). A
	// checkpoint calls it before it saves a snapshot, so that a power cut
	// never leaves a snapshot past the end of the log.
	Sync(ctx context.Context) error
	// Cursor returns the named durable read position, created at the
	// first record if it does not exist. The log keeps every record at or
	// after the oldest cursor. The engine keeps one ("engine") as its trim
	// point; bridges keep one per forward rule.
	Cursor(name string) (Cursor, error)
}

// LogReader reads a Log in offset order from a position, skipping holes,
// and waits for new durable records at the end. It is used by one
// goroutine at a time. It holds nothing the log must release (no file,
// no goroutine): the engine drops one without closing it, as a sender's
// backlog scan does when the scan ends or the connection goes.
type LogReader interface {
	// Next returns the next durable record (the caller's to keep, as
	// Read's: the engine decodes messages into its bytes), waiting for it
	// until ctx ends.
	// Errors wrap ErrTrimmed (Seek to FirstOffset to go on) or ErrLogClosed;
	// any other error is a damaged record at Offset (Seek past it to go on).
	Next(ctx context.Context) (offset uint64, rec []byte, err error)
	// Offset is the offset Next looks at next.
	Offset() uint64
	// Seek makes Next look at offset next.
	Seek(offset uint64)
}

// Cursor is a named durable position in a Log: the next offset its
// consumer needs. Every record before it may be removed.
type Cursor interface {
	// Offset returns the next offset the consumer needs.
	Offset() uint64
	// Commit records durably that every record before next is done. A
	// next below the log's first offset (the engine's floor can be, once
	// retention's age or size limits removed what it still needed)
	// commits the first offset: nothing below it is left.
	Commit(next uint64) error
}

// Snapshots keeps the engine's checkpoints: a State with the offset it
// stands for (see WriteSnapshot). Recovery starts from the newest one that
// reads back whole and replays the log after it.
type Snapshots interface {
	// Save stores the snapshot durably: when it returns nil, a later Load
	// may return it. It keeps the newest snapshot and the one saved before
	// it (recovery falls back to that one when the newest reads back
	// damaged, and the engine keeps the log from its offset for that
	// replay); older ones may be removed.
	Save(offset uint64, write func(w io.Writer) error) error
	// Load calls read with each stored snapshot, newest first, until read
	// returns nil. It returns nil without calling read when there is none,
	// and read's last error when none reads back. A snapshot for which
	// read returns ErrSnapshotAhead is removed, durably, before Load
	// returns.
	Load(read func(r io.Reader) error) error
}

// ErrSnapshotAhead is what recovery returns to Snapshots.Load for a
// snapshot past the end of the log: the log lost records the snapshot
// covers (a power cut under sync "interval" took the log's tail, or a
// snapshot of a version that did not make the log durable first), and
// their offsets are handed out again. Such a snapshot must never be
// loaded: once the log grows past its offset again, it would look valid
// and stand for records the log no longer has.
var ErrSnapshotAhead = errors.New("qos: snapshot ahead of the log")

// PacketType is an MQTT control packet type, as in the fixed header
// [MQTT-2.1.2]: only the types the engine writes.
type PacketType byte

// The packets the engine writes to a Conn.
const (
	PacketPublish PacketType = 3
	PacketPuback  PacketType = 4
	PacketPubrec  PacketType = 5
	PacketPubrel  PacketType = 6
	PacketPubcomp PacketType = 7
)

// Packet is one packet the engine writes to a connection: a PUBLISH of a
// logged (or QoS 0) message, or an acknowledgement. The engine owns packet
// ids, QoS 1/2 flight state and topic aliases; the Conn only encodes.
type Packet struct {
	Type PacketType
	// PacketID is the packet id: the engine's own for PUBLISH and PUBREL,
	// the client's for PUBACK, PUBREC and PUBCOMP. 0 for a QoS 0 PUBLISH.
	PacketID uint16
	// ReasonCode of an acknowledgement (MQTT 5; 0 is success) [MQTT-3.4.2.1].
	ReasonCode byte

	// The fields below are for PUBLISH only.

	// Message is the message, shared by every delivery of it: read only.
	Message *Message
	// QoS is the delivery QoS: the minimum of the message's and the
	// subscription's [MQTT-3.8.4-8].
	QoS byte
	// Dup is set on a resend [MQTT-3.3.1-1]; Retain on a retained message
	// sent at SUBSCRIBE, or when the subscription asked for Retain As
	// Published [MQTT-3.3.1-12].
	Dup, Retain bool
	// TopicAlias, when not 0, is the outbound topic alias [MQTT-3.3.2-7];
	// with AliasOnly the topic name is left empty because the client
	// already knows the alias [MQTT-3.3.2-12].
	TopicAlias uint16
	AliasOnly  bool
	// SubscriptionIDs are the identifiers of every subscription of the
	// session the message matched [MQTT-3.3.4-3].
	SubscriptionIDs []int
}

// Conn is one network connection of one client, as the engine writes to
// it. The engine writes from one goroutine per connection at a time (its
// sender), so Write and Flush need no ordering of their own; Close may
// come from any goroutine.
type Conn interface {
	// Write encodes p and writes it, or keeps it for the next Flush (so
	// that a round of packets costs one system call). It must return
	// within the connection's write deadline. ErrTooLarge (wrapped) means
	// the packet exceeds what the client accepts: nothing was written or
	// kept. Any other error means the connection is gone (the engine stops
	// writing to it and waits for Client.Disconnect). p is the caller's
	// again when Write returns.
	Write(p *Packet) error
	// Flush writes what Write kept, in order, within the write deadline.
	// The engine calls it after every round of writes and before it waits
	// for the log, so a packet never waits in the buffer for anything but
	// the rest of its round. An error means the connection is gone.
	Flush() error
	// WriteNow is Write without waiting: false, with nothing written or
	// kept, when the connection cannot take p at once (another write holds
	// it). FlushNow is Flush without waiting: it writes what Write kept as
	// far as the connection takes it at once, and reports whether all of
	// it went; what did not go stays kept, in order, for the next Flush. A
	// connection that cannot write without waiting (TLS, WebSocket) may
	// always report false (edge's WriteNow does there, so the sender
	// encodes and writes all of it). An error means the connection is gone. The
	// engine calls them on goroutines that must never wait for a client
	// (the log's, at a durability event), and leaves what they did not
	// take to the connection's sender.
	WriteNow(p *Packet) (bool, error)
	FlushNow() (bool, error)
	// Close ends the connection: for an MQTT 5 client it writes DISCONNECT
	// with reason first [MQTT-3.14.2.1], after the packets already
	// written or kept. The engine calls it for protocol errors it finds (Receive
	// Maximum exceeded, 0x93) and for a session taken over (0x8E).
	Close(reason byte)
}
