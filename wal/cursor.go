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

// Cursors live in a small table kept in two files, cursors.0 and cursors.1,
// written alternately: each write goes to the file not holding the newest
// good copy, in place, then fsyncs (one fsync, no rename, no directory
// fsync). Each copy carries a sequence number and a CRC-32C, so a torn write
// leaves the other copy as the answer. Concurrent commits share one write:
// a committer that finds its change already written by another returns at
// once (group commit for cursors). The names are not 20 digits, so
// tidwall/wal ignores them.
const (
	cursorMagic   = "EMQC"
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
// write, and retention fsyncs before acting on it). next may move backwards
// (a replay) but not beyond LastOffset()+1.
func (c *Cursor) Commit(next uint64) error {
	if last := c.l.LastOffset(); next > last+1 || next == 0 {
		return fmt.Errorf("%w: commit %s to %d: beyond the log (last offset %d)", ErrCursor, c.name, next, last)
	}
	c.off.Store(next)
	t := &c.l.cursors
	return t.flush(c.l, t.changed(), c.l.cfg.Sync == SyncAlways)
}

type cursorTable struct {
	mu sync.Mutex // guards m
	m  map[string]*Cursor

	gen atomic.Uint64 // bumped after every change

	fmu        sync.Mutex // guards what follows; held while writing
	files      [2]File
	active     int    // file holding the newest good copy
	seq        uint64 // its sequence number
	written    uint64 // gen of the newest write
	synced     uint64 // gen of the newest fsynced write
	writtenMin uint64 // smallest offset in the newest write (0: no cursors)
	syncedMin  uint64 // smallest offset in the newest fsynced write
	buf        []byte
}

// changed marks a change of the table and returns its generation.
func (t *cursorTable) changed() uint64 { return t.gen.Add(1) }

// Cursor returns the named cursor, creating it at FirstOffset if it does not
// exist.
func (l *Log) Cursor(name string) (*Cursor, error) {
	return l.CursorFrom(name, 0)
}

// CursorFrom returns the named cursor, creating it at from (0: FirstOffset)
// if it does not exist. An existing cursor keeps its position.
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
	if from == 0 {
		from = l.FirstOffset()
	}
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

// flush writes the table unless a write covering generation gen is done,
// and fsyncs it if doSync and not yet synced. Concurrent callers share one
// write: whoever holds fmu writes everything changed so far.
func (t *cursorTable) flush(l *Log, gen uint64, doSync bool) error {
	t.fmu.Lock()
	defer t.fmu.Unlock()
	if t.written < gen {
		cur := t.gen.Load()
		var min uint64
		t.buf, min = t.encode(t.buf[:0], t.seq+1)
		next := 1 - t.active
		if t.files[next] == nil {
			f, err := l.fs.OpenFile(cursorPath(l.dir, next), os.O_CREATE|os.O_RDWR, 0o640)
			if err != nil {
				return ioError("open cursor table", err)
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
		t.active, t.seq, t.written, t.writtenMin = next, t.seq+1, cur, min
	}
	if doSync && t.synced < t.written {
		if err := t.files[t.active].Sync(); err != nil {
			return ioError("fsync cursor table", err)
		}
		t.synced, t.syncedMin = t.written, t.writtenMin
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

// encode appends the table: magic, seq, count, (uvarint name length, name,
// offset)..., CRC-32C of all that. It also returns the smallest offset.
func (t *cursorTable) encode(dst []byte, seq uint64) ([]byte, uint64) {
	var min uint64
	t.mu.Lock()
	names := make([]string, 0, len(t.m))
	for n := range t.m {
		names = append(names, n)
	}
	sort.Strings(names)
	dst = append(dst, cursorMagic...)
	dst = binary.LittleEndian.AppendUint64(dst, seq)
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

func decodeTable(b []byte) (seq uint64, m map[string]uint64, err error) {
	if len(b) < 20 || string(b[:4]) != cursorMagic {
		return 0, nil, errBadTable
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return 0, nil, errBadTable
	}
	seq = binary.LittleEndian.Uint64(body[4:])
	n := binary.LittleEndian.Uint32(body[12:])
	p := body[16:]
	m = make(map[string]uint64, n)
	for i := uint32(0); i < n; i++ {
		ln, k := binary.Uvarint(p)
		if k <= 0 || uint64(len(p)-k) < ln+8 {
			return 0, nil, errBadTable
		}
		name := string(p[k : k+int(ln)])
		m[name] = binary.LittleEndian.Uint64(p[k+int(ln):])
		p = p[k+int(ln)+8:]
	}
	return seq, m, nil
}

// load reads the newest good copy of the table.
func (t *cursorTable) load(l *Log) error {
	t.m = map[string]*Cursor{}
	var best map[string]uint64
	found, bad := 0, 0
	for i := 0; i < 2; i++ {
		f, err := l.fs.OpenFile(cursorPath(l.dir, i), os.O_RDWR, 0o640)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wal: open cursor table: %w", err)
		}
		t.files[i] = f
		found++
		info, err := f.Stat()
		if err != nil {
			return fmt.Errorf("wal: stat cursor table: %w", err)
		}
		data := make([]byte, info.Size())
		if _, err := f.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("wal: read cursor table: %w", err)
		}
		seq, m, err := decodeTable(data)
		if err != nil {
			bad++
			continue
		}
		if best == nil || seq > t.seq {
			best, t.seq, t.active = m, seq, i
		}
	}
	if best == nil && bad > 0 {
		if found == 2 {
			return &CorruptError{Segment: "cursors", Reason: "both copies of the cursor table are damaged"}
		}
		// The very first write was torn: there was no table before it.
		l.log.Warn("wal: cursor table damaged with no older copy; starting without cursors")
	}
	last := l.durable
	for name, off := range best {
		c := &Cursor{l: l, name: name}
		if off > last+1 {
			l.log.Warn("wal: cursor beyond the log; moved back", "cursor", name, "offset", off, "last_offset", last)
			off = last + 1
		}
		c.off.Store(off)
		t.m[name] = c
	}
	return nil
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
