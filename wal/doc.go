// Package wal is edgemq's durable append log: every message someone must
// still receive lives here. It imports nothing of edgemq's.
//
// # Entry points
//
// Open(dir, Config) and Close. Append(ctx, records...) returns the offset of
// the first record once all are durable under the sync policy; AppendAsync
// returns at once and WaitDurable waits later. Read(offset) is safe from any
// number of goroutines; NewReader(from) iterates and waits for new records.
// Cursor(name) is a named durable read position that a consumer advances
// with Commit; cursors drive retention. Stats() returns the figures for
// metrics. Check(dir) and Repair(dir, logger) are for `edgemq check`.
//
// # Guarantees
//
//   - Offsets are consecutive, start at 1, grow monotonically and are never
//     reused within a process, not even after a failed append: the offsets
//     of a failed batch become holes (Read returns ErrHole, Readers skip
//     them). The log is empty when FirstOffset() == LastOffset()+1; a new log
//     has FirstOffset 1, LastOffset 0.
//   - Sync "always": Append returns after an fsync covering its records (and
//     the directory, when the records opened a new segment file). One writer
//     goroutine takes everything queued while the previous fsync ran and
//     writes it with one write() and one fsync (group commit). "interval":
//     Append returns after write(); a second goroutine fsyncs every
//     SyncInterval while the writer goes on, so kill -9 loses nothing, a power
//     cut at most the interval, and appends never wait for an fsync. "never":
//     fsync only at Close.
//   - Readers see exactly the records that are durable under the policy,
//     never one that a failed write or fsync could still take back.
//   - One Log per directory: Open and Repair take an exclusive flock on
//     dir/LOCK and fail with ErrLocked if it is held. Check only reads.
//   - Every record is framed with a length and a CRC-32C that also covers its
//     offset. Open cuts a torn or zero-filled tail of the last segment at the
//     last good record and logs it at Warn; damage anywhere else is never
//     returned as data: Open (for the last segment) or Read (for the others)
//     returns a *CorruptError naming segment, byte position and offset.
//     Repair turns damaged records into holes and keeps every other record
//     at its offset.
//   - A failed write or fsync (ENOSPC, EIO) fails the appends of that batch,
//     and the log cuts the segment back to its last durable record, so no
//     half record remains; the next appends work as soon as the disk does.
//     ENOSPC errors match both ErrFull and syscall.ENOSPC. If the cut itself
//     fails, the log takes no more appends (ErrFailed) until reopened.
//   - Config.MaxBytes is checked before an offset is handed out: an append
//     over budget fails with ErrFull and leaves no trace, unless OnFull is
//     FullDropOldest.
//   - Retention removes whole segment files, oldest first, never copying: a
//     segment goes when every cursor is past it, or when MaxAge or
//     FullDropOldest force it (counted in Stats.DroppedRecords and each
//     cursor's Dropped, logged at Warn; lagging cursors move up). Without
//     cursors and limits the log keeps everything.
//   - Cursor commits are durable when Commit returns (an fsync under "always";
//     retention fsyncs the cursor table before acting on it under the other
//     policies). Concurrent commits share one write.
//
// # What it does not guarantee
//
//   - Damage that hits a length prefix in the last segment leaves nothing
//     after it that parses, so Open takes it for a torn tail and cuts from
//     there (with a Warn naming the bytes cut). The CRC still keeps any wrong
//     data out.
//   - Segments other than the last are not read at Open (so Open time does
//     not grow with the log): their damage shows on Read, or with Check.
//   - Under "interval" and "never", a power cut can tear an older segment too;
//     Check finds it, Repair fixes it.
//   - A record is at most SegmentSize (minus framing) bytes.
//   - If the process stops between a failed append and the next successful
//     one, the failed offsets were never written and the next process hands
//     them out again (nothing durable can refer to them).
//
// # On-disk format, and why the package writes tidwall/wal's files itself
//
// The directory holds segment files named by their first offset in 20
// digits, each a run of uvarint(length)+entry, which is exactly
// github.com/tidwall/wal v1.2.1's binary format: tidwall.Open reads an
// edgemq log (tested), and each entry is our frame,
// crc32c(offset|kind|payload) (4 bytes) | kind (1 byte) | payload. Overhead
// per record: 5 bytes plus the uvarint (1 byte up to 122 bytes of payload,
// 2 bytes up to 16378): 7 bytes for a 256-byte record. Cursors live in
// cursors.0 and cursors.1, which tidwall ignores.
//
// The package reads and writes these files itself instead of through
// tidwall's Log, because the gaps listed in issue 3 cannot be closed from
// outside it:
//
//   - Fault injection: tidwall writes through *os.File directly, so ENOSPC and
//     EIO cannot be injected at its write and fsync points; here every file
//     operation goes through Config.FS.
//   - Recovery from a failed write: tidwall appends the entry to its in-memory
//     tail buffer and index before write() (wal.go:474-506); when write()
//     fails, they stay, LastIndex does not move, and the next write puts
//     entries at the wrong index. Its only way back is Close and Open.
//   - The segment roll: cycle() fsyncs the full segment even with NoSync
//     (wal.go:355-376), 100-300 ms with 20 MiB segments. Here a segment ends
//     at a batch boundary, so under "always" the batches that filled it
//     already fsynced it and a roll costs the new file's creation and a
//     directory fsync; under "interval" the sync goroutine's next tick
//     fsyncs the old file.
//   - Reads: tidwall's concurrent Reads of older segments race and panic
//     (tidwall/wal#34), and each read of an uncached segment loads the whole
//     file. Here every segment has a sparse index (8 bytes per 4 KiB, kept
//     for all segments) and a read is one pread of about 4 KiB.
//   - Memory: tidwall keeps the whole tail segment in memory and grows it by
//     append, copying up to SegmentSize at once.
//   - Retention: TruncateFront rewrites the surviving part of a segment;
//     here whole files are deleted.
//   - A torn tail: tidwall fails Open with ErrCorrupt and has no repair
//     (tidwall/wal#21); zero fill loads silently as empty entries.
//
// Keeping tidwall's format keeps its tooling and lets a log be read by it; the
// benchmarks compare against tidwall's own Write.
package wal
