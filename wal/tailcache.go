package wal

import "sync"

// tailKeep is how many of the last bytes written to the tail segment the
// log keeps in memory, and tailCap the buffer that holds them (the front
// is dropped, by one copy, only when an append would pass it).
const (
	tailKeep = 64 << 10
	tailCap  = 2 * tailKeep
)

// tailCache keeps a copy of the last bytes the writer wrote to the tail
// segment, so that a reader at the end of the log (the engine's
// dispatcher, a bridge that keeps up) takes a new record from memory
// instead of a pread per batch. It holds the file's bytes as written: a
// window read from it is the window the file would give. The writer adds
// after each write, starts again when the tail changes and cuts what a
// batch undone had added; readers copy out under the read lock.
type tailCache struct {
	mu    sync.RWMutex
	seg   *segment
	start int64 // file position of buf[0]
	buf   []byte
}

// add records that p was written to s at file position at. A write that
// does not continue what the cache holds starts it again.
func (c *tailCache) add(s *segment, at int64, p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seg != s || c.start+int64(len(c.buf)) != at {
		c.seg, c.start, c.buf = s, at, c.buf[:0]
	}
	if len(p) > tailKeep {
		c.start += int64(len(c.buf) + len(p) - tailKeep)
		c.buf = append(c.buf[:0], p[len(p)-tailKeep:]...)
		return
	}
	if len(c.buf)+len(p) > tailCap {
		drop := len(c.buf) + len(p) - tailKeep
		c.start += int64(drop)
		c.buf = c.buf[:copy(c.buf, c.buf[drop:])]
	}
	if c.buf == nil {
		c.buf = make([]byte, 0, tailCap)
	}
	c.buf = append(c.buf, p...)
}

// cut forgets what the cache holds of s from file position end on (a
// batch undone: the file was cut there).
func (c *tailCache) cut(s *segment, end int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.seg != s || end < c.start:
		c.seg, c.buf = nil, c.buf[:0]
	case end < c.start+int64(len(c.buf)):
		c.buf = c.buf[:end-c.start]
	}
}

// readAt fills p with s's bytes from file position off when the cache
// holds all of them, and reports whether it did.
func (c *tailCache) readAt(s *segment, p []byte, off int64) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.seg != s || off < c.start || off+int64(len(p)) > c.start+int64(len(c.buf)) {
		return false
	}
	copy(p, c.buf[off-c.start:])
	return true
}
