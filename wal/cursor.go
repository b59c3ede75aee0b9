package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
)

// Cursors live in a small table kept in two files, cursors.0 and cursors.1.
// One of them holds the newest copy known durable (fsynced); every write
// goes to the other one, in place, so a torn write, or a power cut before
// its fsync, leaves the durable copy as the answer. Under SyncAlways each
// write is fsynced at once and the roles swap; under the other policies
// the same file is overwritten until an fsync makes it the durable one.
// After a failed fsync the copy is written again, never trusted to a
// retried fsync: the kernel may have dropped the pages the first one
// failed to write. Each copy carries a sequence number, the log's durable
// mark (every offset up to it was fsynced before the copy was written, so
// Open never takes damage at or below it for a torn tail) and a CRC-32C.
// Concurrent commits share one write: a committer that finds its change
// already written by another returns at once (group commit for cursors).
// The names are not 20 digits, so tidwall/wal ignores them.
const (
	cursorMagic   = "EMQD" // with the durable mark
	cursorMagicV1 = "EMQC" // before it: still read
	maxCursorName = 255
)

// Cursor is a named, durable read position: the next offset its consumer
// needs. Retention never removes a record at or after the oldest cursor,
// unless MaxAge or FullDropOldest force it (counted as dropped).
type Cursor struct {
	l       *Log
	name    string
	off     atomic.Uint64
	dropped atomic.Uint64
}

// Name returns the cursor's name.
func (c *Cursor) Name() string { return c.name }

// Offset returns the next offset the consumer needs: every record before it
// is done.
func (c *Cursor) Offset() uint64 { return c.off.Load() }

// Commit records that every record before next is done, durably (under
// SyncAlways it returns after an fsync; under the other policies after the
// write, and Sync, Close and retention fsync it). next may move backwards
// (a replay) but not beyond LastOffset()+1. A next below FirstOffset()
// (a position from before retention removed what it pointed at) commits
// FirstOffset(): nothing below it is left to need, and a cursor below it
// would count records removed before the commit as dropped by the next
// removal.
func (c *Cursor) Commit(next uint64) error {
	if last := c.l.LastOffset(); next > last+1 || next == 0 {
		return fmt.Errorf("%w: commit %s to %d: beyond the log (last offset %d)", ErrCursor, c.name, next, last)
	}
	t := &c.l.cursors
	t.mu.Lock()
	c.off.Store(max(next, t.first))
	t.mu.Unlock()
	return t.flush(c.l, t.changed(), c.l.cfg.Sync == SyncAlways)
}

type cursorTable struct {
	mu sync.Mutex // guards m and first
	m  map[string]*Cursor
	// first is the log's first offset as retention last moved the
	// cursors up to it (advance; FirstOffset at Open): no commit puts a
	// cursor below it. Under mu, so that a commit racing a segment's
	// removal cannot land below it once advance ran.
	first uint64

	gen atomic.Uint64 // bumped after every change

	fmu         sync.Mutex // guards what follows; held while writing
	files       [2]File
	durable     int    // file holding the newest fsynced copy (-1: none)
	active      int    // file holding the newest copy written
	seq         uint64 // its sequence number
	written     uint64 // gen of the newest write
	synced      uint64 // gen of the newest fsynced write
	writtenMin  uint64 // smallest offset in the newest write (0: no cursors)
	syncedMin   uint64 // smallest offset in the newest fsynced write
	writtenMark uint64 // durable mark in the newest write
	mark        uint64 // durable mark read at Open
	buf         []byte
}

// changed marks a change of the table and returns its generation.
func (t *cursorTable) changed() uint64 { return t.gen.Add(1) }

// Cursor returns the named cursor, creating it at FirstOffset if it does not
// exist.
func (l *Log) Cursor(name string) (*Cursor, error) {
	return l.CursorFrom(name, 0)
}

// CursorFrom returns the named cursor, creating it at from (0, or below
// FirstOffset: FirstOffset) if it does not exist. An existing cursor keeps
// its position.
func (l *Log) CursorFrom(name string, from uint64) (*Cursor, error) {
	if name == "" || len(name) > maxCursorName {
		return nil, fmt.Errorf("%w: name must be 1 to %d bytes (got %d)", ErrCursor, maxCursorName, len(name))
	}
	t := &l.cursors
	t.mu.Lock()
	if c, ok := t.m[name]; ok {
		t.mu.Unlock()
		return c, nil
	}
	from = max(from, t.first)
	if last := l.LastOffset(); from > last+1 {
		t.mu.Unlock()
		return nil, fmt.Errorf("%w: create %s at %d: beyond the log (last offset %d)", ErrCursor, name, from, last)
	}
	c := &Cursor{l: l, name: name}
	c.off.Store(from)
	t.m[name] = c
	t.mu.Unlock()
	if err := t.flush(l, t.changed(), l.cfg.Sync != SyncNever); err != nil {
		return nil, err
	}
	return c, nil
}

// DeleteCursor removes a cursor durably. Deleting a missing cursor is not an
// error.
func (l *Log) DeleteCursor(name string) error {
	t := &l.cursors
	t.mu.Lock()
	_, ok := t.m[name]
	delete(t.m, name)
	t.mu.Unlock()
	if !ok {
		return nil
	}
	return t.flush(l, t.changed(), l.cfg.Sync != SyncNever)
}

// Cursors returns the cursor names, sorted.
func (l *Log) Cursors() []string {
	t := &l.cursors
	t.mu.Lock()
	defer t.mu.Unlock()
	names := make([]string, 0, len(t.m))
	for n := range t.m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// minOffset returns the smallest cursor offset, or false without cursors.
func (t *cursorTable) minOffset() (uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var min uint64
	for _, c := range t.m {
		if o := c.off.Load(); min == 0 || o < min {
			min = o
		}
	}
	return min, len(t.m) > 0
}

// advance moves every cursor below first up to first, counting what each
// lost. It returns the largest loss, and whether any cursor moved.
func (t *cursorTable) advance(first uint64) (uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var most uint64
	moved := false
	t.first = max(t.first, first)
	for _, c := range t.m {
		if o := c.off.Load(); o < first {
			c.off.Store(first)
			c.dropped.Add(first - o)
			most = max(most, first-o)
			moved = true
		}
	}
	return most, moved
}

func (t *cursorTable) stats(first, last uint64) []CursorStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]CursorStats, 0, len(t.m))
	for _, c := range t.m {
		o := c.off.Load()
		var lag uint64
		if from := max(o, first); last+1 > from {
			lag = last + 1 - from
		}
		out = append(out, CursorStats{Name: c.name, Offset: o, Lag: lag, Dropped: c.dropped.Load()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// flush writes the table unless a write covering generation gen (and the
// log's current durable mark) is done, and fsyncs it if doSync and not yet
// synced. Concurrent callers share one write: whoever holds fmu writes
// everything changed so far.
func (t *cursorTable) flush(l *Log, gen uint64, doSync bool) error {
	t.fmu.Lock()
	defer t.fmu.Unlock()
	mark := l.syncedOff.Load()
	if t.written < gen || (doSync && t.writtenMark < mark) {
		cur := t.gen.Load()
		var min uint64
		t.buf, min = t.encode(t.buf[:0], t.seq+1, mark)
		next := 1 - t.durable
		if t.durable < 0 {
			next = 0
		}
		if t.files[next] == nil {
			f, err := l.fs.OpenFile(cursorPath(l.dir, next), os.O_CREATE|os.O_RDWR, 0o640)
			if err != nil {
				return ioError("open cursor table", err)
			}
			// The new file's name must be durable before a copy in it
			// counts: until the directory fsync worked, open it again (and
			// fsync the directory again) next time.
			if err := l.fs.syncDir(l.dir); err != nil {
				f.Close()
				return ioError("sync "+l.dir, err)
			}
			t.files[next] = f
		}
		f := t.files[next]
		if _, err := f.WriteAt(t.buf, 0); err != nil {
			return ioError("write cursor table", err)
		}
		if err := f.Truncate(int64(len(t.buf))); err != nil {
			return ioError("write cursor table", err)
		}
		t.active, t.seq, t.written, t.writtenMin, t.writtenMark = next, t.seq+1, cur, min, mark
	}
	if doSync && t.synced < t.written {
		if err := t.files[t.active].Sync(); err != nil {
			// Write the copy again next time rather than retry the fsync.
			t.written = t.synced
			return ioError("fsync cursor table", err)
		}
		t.synced, t.syncedMin, t.durable = t.written, t.writtenMin, t.active
	}
	return nil
}

// retainFrom makes the table durable and returns the offset below which no
// cursor needs anything: the smaller of the durable and the in-memory
// positions (a commit not yet durable does not count, a move backwards
// does). It returns false when there are no cursors.
func (t *cursorTable) retainFrom(l *Log) (uint64, bool, error) {
	if err := t.flush(l, t.gen.Load(), true); err != nil {
		return 0, false, err
	}
	t.fmu.Lock()
	durable := t.syncedMin
	t.fmu.Unlock()
	mem, ok := t.minOffset()
	if !ok {
		return 0, false, nil
	}
	if durable != 0 && durable < mem {
		mem = durable
	}
	return mem, true, nil
}

func cursorPath(dir string, i int) string {
	return filepath.Join(dir, fmt.Sprintf("cursors.%d", i))
}

// encode appends the table: magic, seq, durable mark, count, (uvarint name
// length, name, offset)..., CRC-32C of all that. It also returns the
// smallest offset.
func (t *cursorTable) encode(dst []byte, seq, mark uint64) ([]byte, uint64) {
	var min uint64
	t.mu.Lock()
	names := make([]string, 0, len(t.m))
	for n := range t.m {
		names = append(names, n)
	}
	sort.Strings(names)
	dst = append(dst, cursorMagic...)
	dst = binary.LittleEndian.AppendUint64(dst, seq)
	dst = binary.LittleEndian.AppendUint64(dst, mark)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(names)))
	for _, n := range names {
		dst = binary.AppendUvarint(dst, uint64(len(n)))
		dst = append(dst, n...)
		off := t.m[n].off.Load()
		if min == 0 || off < min {
			min = off
		}
		dst = binary.LittleEndian.AppendUint64(dst, off)
	}
	t.mu.Unlock()
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst, castagnoli)), min
}

var errBadTable = errors.New("bad cursor table")

// table is one decoded copy of the cursor table.
type table struct {
	seq, mark uint64
	cursors   map[string]uint64
	raw       []byte // the copy as read
}

func decodeTable(b []byte) (table, error) {
	var tb table
	if len(b) < 20 || (string(b[:4]) != cursorMagic && string(b[:4]) != cursorMagicV1) {
		return tb, errBadTable
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return tb, errBadTable
	}
	tb.seq = binary.LittleEndian.Uint64(body[4:])
	p := body[12:]
	if string(b[:4]) == cursorMagic {
		if len(p) < 12 {
			return tb, errBadTable
		}
		tb.mark = binary.LittleEndian.Uint64(p)
		p = p[8:]
	}
	n := binary.LittleEndian.Uint32(p)
	p = p[4:]
	tb.cursors = make(map[string]uint64, n)
	for i := uint32(0); i < n; i++ {
		ln, k := binary.Uvarint(p)
		if k <= 0 || uint64(len(p)-k) < ln+8 {
			return tb, errBadTable
		}
		name := string(p[k : k+int(ln)])
		tb.cursors[name] = binary.LittleEndian.Uint64(p[k+int(ln):])
		p = p[k+int(ln)+8:]
	}
	return tb, nil
}

// readTables reads both copies of the cursor table in dir. It returns the
// newest good one (best < 0: none) and how many files exist; files holds
// the open files (for Open) when keep is set, else they are closed.
func readTables(fs FS, dir string, keep bool) (tabs [2]*table, files [2]File, found int, err error) {
	for i := 0; i < 2; i++ {
		f, err := fs.OpenFile(cursorPath(dir, i), os.O_RDWR, 0o640)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return tabs, files, found, fmt.Errorf("wal: open cursor table: %w", err)
		}
		files[i] = f
		found++
		info, err := f.Stat()
		if err != nil {
			return tabs, files, found, fmt.Errorf("wal: stat cursor table: %w", err)
		}
		data := make([]byte, info.Size())
		if _, err := f.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
			return tabs, files, found, fmt.Errorf("wal: read cursor table: %w", err)
		}
		if tb, err := decodeTable(data); err == nil {
			tb.raw = data
			tabs[i] = &tb
		}
		if !keep {
			f.Close()
			files[i] = nil
		}
	}
	return tabs, files, found, nil
}

// newest returns the index of the good copy with the highest sequence
// number, or -1.
func newest(tabs [2]*table) int {
	best := -1
	for i, tb := range tabs {
		if tb != nil && (best < 0 || tb.seq > tabs[best].seq) {
			best = i
		}
	}
	return best
}

// read reads the newest good copy of the table and makes it durable (it
// may be only in the page cache, from a process that was killed). Open
// calls it before loading the segments, for the durable mark.
func (t *cursorTable) read(l *Log) (map[string]uint64, error) {
	t.durable, t.active = -1, 0
	tabs, files, found, err := readTables(l.fs, l.dir, true)
	t.files = files
	if err != nil {
		return nil, err
	}
	best := newest(tabs)
	if best < 0 {
		if found == 2 {
			// Not a torn write: one copy is always left whole. Start from
			// the first offset: the consumers replay, nothing is lost.
			l.log.Error("wal: both copies of the cursor table are damaged; every cursor starts again from the first offset (edgemq check -repair removes the copies)")
		} else if found == 1 {
			// The very first write was torn: there was no table before it.
			l.log.Warn("wal: cursor table damaged with no older copy; starting without cursors")
		}
		return nil, nil
	}
	// Written again, not only fsynced: after a failed fsync the kernel may
	// hold the copy in clean pages that no fsync writes (see loadTail).
	if _, err := t.files[best].WriteAt(tabs[best].raw, 0); err != nil {
		return nil, fmt.Errorf("wal: rewrite cursor table: %w", err)
	}
	if err := t.files[best].Sync(); err != nil {
		return nil, fmt.Errorf("wal: sync cursor table: %w", err)
	}
	tb := tabs[best]
	t.seq, t.durable, t.active, t.mark = tb.seq, best, best, tb.mark
	t.writtenMark = tb.mark
	return tb.cursors, nil
}

// load makes the cursors read by read, once the segments are loaded.
func (t *cursorTable) load(l *Log, best map[string]uint64) {
	t.m = map[string]*Cursor{}
	last := l.durable.Load()
	t.first = l.FirstOffset()
	for name, off := range best {
		c := &Cursor{l: l, name: name}
		if off > last+1 {
			l.log.Warn("wal: cursor beyond the log; moved back", "cursor", name, "offset", off, "last_offset", last)
			off = last + 1
		}
		// One below the first offset stays: segments it needed went
		// outside the log (retention moves the cursors first), and its
		// consumer must see the loss (ErrTruncated), as the next
		// removal's count does.
		c.off.Store(off)
		t.m[name] = c
	}
}

func (t *cursorTable) close(l *Log) error {
	err := t.flush(l, t.gen.Load(), true)
	if cerr := t.closeFiles(); err == nil {
		err = cerr
	}
	return err
}

func (t *cursorTable) closeFiles() error {
	t.fmu.Lock()
	defer t.fmu.Unlock()
	var err error
	for i, f := range t.files {
		if f != nil {
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			t.files[i] = nil
		}
	}
	return err
}
