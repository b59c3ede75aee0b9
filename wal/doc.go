// Package wal is edgemq's durable append log: every message someone must
// still receive lives here. It imports nothing of edgemq's.
//
// # Entry points
//
// Open(dir, Config) and Close. Append(ctx, records...) returns the offset of
// the first record once all are durable under the sync policy; AppendAsync
// returns at once and WaitDurable waits later (AppendAsyncLead is
// AppendAsync that, on a quiet log, writes the batch on the caller's
// goroutine: see below; Resolved says, without a
// lock, whether it would wait; NotifyDurable sets a function the writer
// calls at each durability event, and Idle says, with an atomic load,
// whether anything is queued behind the batch it made durable, so a
// consumer knows whether work it does on the writer's goroutine delays
// another batch); Sync makes everything
// acknowledged so far durable under any policy. Read(offset) is safe from any
// number of goroutines; NewReader(from) iterates and waits for new records.
// Cursor(name) is a named durable read position that a consumer advances
// with Commit; cursors drive retention. Stats() returns the figures for
// metrics. Check(dir), Repair(dir, logger), Cursors(dir) and Scan(dir, from,
// fn) are for `edgemq check`; Check, Cursors and Scan read without a lock.
// WriteFile replaces a small file durably (temporary file, fsync, rename,
// directory fsync), for state other packages keep beside the log;
// WriteFileFunc does the same for what a function writes (a snapshot).
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
//     cut at most the interval, and appends never wait for an fsync; Sync
//     makes everything acknowledged before it durable at once (a checkpoint
//     calls it before writing anything that refers to an offset). "never":
//     fsync only at Close and Sync.
//   - A power cut keeps every record acknowledged under "always" (and under
//     the other policies every record a completed fsync covered: a Sync or
//     a Close that returned; a tick of the sync goroutine runs the same
//     fsyncs), with its exact bytes, and every cursor commit acknowledged
//     under the same rule. After one, Open
//     succeeds, Check finds no damage, cursors lie within the log, nothing
//     that was not appended reads back as data, and the log goes on. What
//     makes it so: the names of the log's directory and its parents, of
//     each new segment and of each new cursor-table file are fsynced before
//     anything depends on them; a segment is fsynced before its successor is
//     created, so only the last one can be torn (not under "never": see
//     below), and the segments a failed batch created are unlinked, with
//     a directory fsync, before the old tail is cut back; retention
//     unlinks oldest
//     first with a directory fsync after each, so a lost unlink only brings
//     back whole old segments; the cursor table is never written over its
//     durable copy. TestPowerLoss proves it on a simulated disk at every
//     fsync, TestPowerLossFsyncEIO and TestPowerLossFailedBatchAcrossSegments
//     after a failed one (see README.md).
//   - A failed fsync is never retried as if nothing happened: the kernel
//     may have dropped the pages it could not write and report success to a
//     retry ("fsyncgate"). Under "always" the batch fails and is cut off;
//     under the other policies, which acknowledged the data before the
//     fsync, the log takes no more appends (ErrFailed) until reopened, and
//     Open writes the unconfirmed tail again before trusting it. A failed
//     cursor-table fsync makes the next flush write the copy again.
//   - Readers see exactly the records that are durable under the policy,
//     never one that a failed write or fsync could still take back.
//   - One Log per directory: Open and Repair take an exclusive flock on
//     dir/LOCK and fail with ErrLocked if it is held. Check only reads.
//   - Every record is framed with a length and a CRC-32C that also covers its
//     offset. Open cuts a torn tail of the last segment (what a crash in the
//     middle of a write leaves: see "torn or damaged" below) and logs it at
//     Warn. It never cuts at or below the durable mark, the offset the
//     cursor table records as fsynced: damage there, and damage followed by
//     valid records, fails Open with a *CorruptError naming segment, byte
//     position and offset; damage in an older segment is returned by Read.
//     Repair turns damaged records into holes and keeps every other record
//     at its offset, resynchronising on the next valid record even when a
//     length prefix is damaged, and fills with holes the offsets up to the
//     durable mark that the last segment lost.
//   - A failed write or fsync (ENOSPC, EIO) fails the appends of that batch,
//     and the log removes the segments the batch created and cuts the old
//     tail back to its last durable record, so no half record remains; the next appends work as soon as the disk does.
//     ENOSPC errors match both ErrFull and syscall.ENOSPC. If the cut itself
//     fails, the log takes no more appends (ErrFailed) until reopened.
//   - Config.MaxBytes is checked before an offset is handed out: an append
//     over budget fails with ErrFull and leaves no trace, unless OnFull is
//     FullDropOldest.
//   - Retention removes whole segment files, oldest first, never copying: a
//     segment goes when every cursor is past it, or when MaxAge or
//     FullDropOldest force it (counted in Stats.DroppedRecords and each
//     cursor's Dropped, logged at Warn; lagging cursors move up, durably,
//     before the segment goes). Without cursors and limits the log keeps
//     everything.
//   - Cursor commits are durable when Commit returns under "always" (an
//     fsync); under the other policies when a later fsync covers them
//     (Sync, Close; retention fsyncs the cursor table before acting on it).
//     Concurrent commits share one write. A commit or a creation below
//     the first offset puts the cursor at it (nothing below it is left to
//     need), so Dropped counts only records removed while a cursor needed
//     them; a cursor Open reads below it stays there (its segments went
//     outside the log: its consumer sees ErrTruncated, the next removal
//     counts them).
//
// # What it does not guarantee
//
//   - Damage to the last records of the last segment above the durable mark
//     (which moves with cursor commits, Sync and Close, not with every
//     batch) that leaves no valid record after it, or that sits next to a
//     512-byte sector of zeros, looks like a torn write and is cut, with a
//     Warn naming the bytes cut. The CRC still keeps any wrong data out.
//   - Under "interval" and "never", a cursor can be durable past records
//     that are not: after a power cut Open moves it back to the end of the
//     log (Warn).
//   - Under "interval" and "never", once an fsync failed the log takes no
//     appends, but what that fsync may have lost is written again only
//     when the log is reopened: a power cut before that loses what was
//     acknowledged since the last good fsync, however long ago.
//   - If both copies of the cursor table are damaged (not a torn write:
//     one copy is always whole), Open logs an Error and starts without
//     cursors, so consumers start again from the first offset; Check
//     reports it, Repair removes the copies.
//   - Under "never", a power cut can tear an older segment too (a roll does
//     not wait for an fsync of the old one); Check finds it, Repair mends it.
//   - Under "interval", a roll waits for the fsync of what was written to
//     the old segment since the last tick.
//   - Segments other than the last are not read at Open (so Open time does
//     not grow with the log): their damage shows on Read, or with Check.
//   - A record is at most SegmentSize (minus framing) bytes.
//   - If the process stops between a failed append and the next successful
//     one, the failed offsets were never written and the next process hands
//     them out again (nothing durable can refer to them). A failed append's
//     records may still read back after a crash (the caller was told it
//     failed: it may send again).
//   - Directories above the log's own parent are fsynced on a best-effort
//     basis at Open.
//
// # The writer and the Go scheduler
//
// While the log is quiet under "always" (nothing was appended for at
// least an fsync's time after the previous batches, on average over about
// the last 8, so that two publishes close together at a low rate do not
// count as load; the batch holds at most
// 4 records and 16 KiB, nothing is queued behind it, the last 8 fsyncs
// each took under 2 ms), the writer makes its
// pwrite and fsync as raw system calls on Linux (64-bit for the pwrite),
// keeping its P: at 1,000 msg/s the runtime's hand-off of a blocking call
// (sysmon woken and polling, the P taken and given back) cost more CPU
// than the kernel's fsync. The price, paid only while quiet: nothing else
// runs on that P during the fsync (with GOMAXPROCS=1, nothing at all), and
// a stop-the-world of the garbage collector waits for it, about as long as
// the recent fsyncs took. An fsync that turns slow without warning holds
// the P for its whole time, once; after it the writer hands the P off
// again until the disk is fast again. Under load and on slow disks the
// calls are the ordinary blocking ones. See quiet in writer.go.
//
// On such a quiet log an appender of AppendAsyncLead (qos's engine, for a
// client's publish, on the connection's read goroutine) writes and fsyncs
// the batch itself when no batch is being written, and calls
// NotifyDurable's function there: the writer goroutine is not woken, and
// at 1,000 msg/s the publish goes from the socket to the disk and to the
// subscriber on one goroutine. The writer goroutine and such an appender
// take turns through one mutex (writeMu), held for a whole batch, so
// exactly one writes at a time, in offset order, with the same code
// (flush): the bytes, the fsyncs, the holes and the rollback of a failed
// batch are the same whoever writes, and so is everything above about
// power cuts (TestPowerLoss has such an appender). Under load the
// appender finds the log not quiet, or a batch being written, and the
// writer goroutine writes its records (group commit). An appender never
// leads under "interval" or "never", nor when the writer would linger for
// more appenders, nor once Close began.
//
// # Torn or damaged: the frame, and why it stays tidwall's
//
// The length prefix is outside the CRC (tidwall's format: uvarint length,
// then the entry), so a damaged length makes the rest of the file unparsable
// by walking lengths, and a scanner cannot tell a torn tail from damage by
// the frame alone. etcd solves this in its format (records padded so a
// length is never torn across sectors, and a bad frame called torn only
// when an all-zero sector is involved). Changing the frame would cost the
// tidwall compatibility this package keeps (tested), so the log decides
// with what it has:
//
//   - The CRC covers the record's offset, so a frame that checks out for
//     offset o is the record of o, wherever it is found: after a bad entry
//     the scanner resynchronises by trying every later byte position for
//     the entry of each later offset that could fit (resync, bounded work).
//     A valid record after bad bytes, with no zero sector between, is
//     damage, never a tear: a write cut short leaves nothing valid after
//     it, and sectors lost out of order leave zeros (zeroSector).
//   - The durable mark: every offset up to it was fsynced before the copy
//     of the cursor table holding it was written, so no tear can reach it.
//     Open refuses damage at or below it instead of cutting.
//
// The remaining gap is the first bullet of "What it does not guarantee".
//
// # On-disk format, and why the package writes tidwall/wal's files itself
//
// The directory holds segment files named by their first offset in 20
// digits, each a run of uvarint(length)+entry, which is exactly
// github.com/tidwall/wal v1.2.1's binary format: tidwall.Open reads an
// edgemq log (tested), and each entry is our frame,
// crc32c(offset|kind|payload) (4 bytes) | kind (1 byte) | payload. Overhead
// per record: 5 bytes plus the uvarint (1 byte up to 122 bytes of payload,
// 2 bytes up to 16378): 7 bytes for a 256-byte record. Cursors and the
// durable mark live in cursors.0 and cursors.1, which tidwall ignores.
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
//     directory fsync; under "interval" the roll fsyncs only what the old
//     file got since the sync goroutine's last tick.
//   - Reads: tidwall's concurrent Reads of older segments race and panic
//     (tidwall/wal#34), and each read of an uncached segment loads the whole
//     file. Here every segment has a sparse index (8 bytes per 4 KiB, kept
//     for all segments) and a read is one pread of about 4 KiB, or none for
//     the newest records: the last 64-128 KiB written to the tail are kept
//     in memory (tailcache.go), so a reader that keeps up reads no file.
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
