package wal_test

import (
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/edgemq/edgemq/wal"
)

// simFS is an in-memory file system that knows what a power cut keeps. Every
// file has a volatile image (what reads see: the page cache) and a durable
// image (what the disk holds), and the 512-byte sectors written since its
// last fsync; every directory has volatile and durable entries and the
// operations (create, rename, unlink) since its last fsync. A power cut
// (materialise) keeps the durable images plus any subset of what was not
// synced: each dirty sector may or may not have reached the disk (a lost
// one keeps the old bytes, or zeros past the old size), a file's size may
// be its old one, its new one or a sector boundary between, and each
// directory operation may or may not have reached the disk.
//
// The log directory must exist on the real file system too: the log takes
// its flock on dir/LOCK with the os package. Everything else lives here.
type simFS struct {
	mu   sync.Mutex
	dirs map[string]*simDir // volatile namespace, by path
	root string

	// Tracing (nil hooks: a plain file system).
	ops      int               // mutating operations so far
	onSync   func(before bool) // called around every fsync, under mu
	onOp     func()            // called after every other mutating operation, under mu
	syncs    int               // file fsyncs so far
	synced   []string          // the base name of each file fsynced, in order
	failSync int               // this file fsync (1-based) fails with EIO and drops the file's dirty pages
	// failIf, if set, picks the failing fsync instead: the first one it
	// returns true for, given the file's name.
	failIf  func(name string) bool
	failed  bool     // the failing fsync happened
	trace   []string // with traceOn: every operation, numbered as ops counts them
	traceOn bool
}

type simObj struct {
	dir  *simDir
	file *simFile
}

type simDir struct {
	vol, dur map[string]*simObj
	pending  []dirOp
}

type dirOp struct {
	kind     byte // 'c' create, 'r' rename, 'u' unlink
	name, to string
	obj      *simObj
}

type simFile struct {
	vol, dur  []byte
	dirty     map[int64]bool // sector numbers written since the last fsync
	sizeDirty bool
	mtime     time.Time
}

const sectorSize = 512

func newSimFS(root string) *simFS {
	d := &simDir{vol: map[string]*simObj{}, dur: map[string]*simObj{}}
	return &simFS{dirs: map[string]*simDir{filepath.Clean(root): d}, root: filepath.Clean(root)}
}

// fs returns the seam the log uses.
func (s *simFS) fs() wal.FS {
	return wal.FS{
		OpenFile: s.openFile,
		Remove:   s.remove,
		Rename:   s.rename,
		MkdirAll: s.mkdirAll,
		ReadDir:  s.readDir,
	}
}

// op counts a mutating operation other than an fsync, and traces it.
func (s *simFS) op(format string, args ...any) {
	s.ops++
	s.note(format, args...)
	if s.onOp != nil {
		s.onOp()
	}
}

// note traces the operation just counted.
func (s *simFS) note(format string, args ...any) {
	if s.traceOn {
		s.trace = append(s.trace, fmt.Sprintf("%d ", s.ops)+fmt.Sprintf(format, args...))
	}
}

func (s *simFS) parent(name string) (*simDir, string, error) {
	name = filepath.Clean(name)
	d := s.dirs[filepath.Dir(name)]
	if d == nil {
		return nil, "", syscall.ENOENT
	}
	return d, filepath.Base(name), nil
}

func (s *simFS) mkdirAll(path string, perm os.FileMode) error {
	if err := os.MkdirAll(path, perm); err != nil { // for the LOCK file
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	path = filepath.Clean(path)
	if s.dirs[path] != nil {
		return nil
	}
	if len(path) <= len(s.root) {
		return &os.PathError{Op: "mkdir", Path: path, Err: syscall.EACCES}
	}
	s.mu.Unlock()
	err := s.mkdirAll(filepath.Dir(path), perm)
	s.mu.Lock()
	if err != nil {
		return err
	}
	p, base, _ := s.parent(path)
	d := &simDir{vol: map[string]*simObj{}, dur: map[string]*simObj{}}
	o := &simObj{dir: d}
	p.vol[base] = o
	p.pending = append(p.pending, dirOp{kind: 'c', name: base, obj: o})
	s.dirs[path] = d
	s.op("mkdir %s", path)
	return nil
}

func (s *simFS) openFile(name string, flag int, perm os.FileMode) (wal.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name = filepath.Clean(name)
	if d := s.dirs[name]; d != nil {
		return &simHandle{s: s, name: name, dir: d}, nil
	}
	p, base, err := s.parent(name)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	o := p.vol[base]
	if o == nil {
		if flag&os.O_CREATE == 0 {
			return nil, &os.PathError{Op: "open", Path: name, Err: syscall.ENOENT}
		}
		o = &simObj{file: &simFile{dirty: map[int64]bool{}, mtime: time.Now()}}
		p.vol[base] = o
		p.pending = append(p.pending, dirOp{kind: 'c', name: base, obj: o})
		s.op("create %s", base)
	} else if o.dir != nil {
		return &simHandle{s: s, name: name, dir: o.dir}, nil
	} else if flag&os.O_TRUNC != 0 {
		o.file.truncate(0)
		s.op("open %s O_TRUNC", base)
	}
	return &simHandle{s: s, name: name, file: o.file}, nil
}

func (s *simFS) remove(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, base, err := s.parent(name)
	if err == nil && p.vol[base] == nil {
		err = syscall.ENOENT
	}
	if err != nil {
		return &os.PathError{Op: "remove", Path: name, Err: err}
	}
	delete(p.vol, base)
	p.pending = append(p.pending, dirOp{kind: 'u', name: base})
	s.op("unlink %s", base)
	return nil
}

func (s *simFS) rename(from, to string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, base, err := s.parent(from)
	q, tbase, err2 := s.parent(to)
	if err == nil && (err2 != nil || p != q) {
		err = syscall.EXDEV // one directory is all the log needs
	}
	if err == nil && p.vol[base] == nil {
		err = syscall.ENOENT
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	p.vol[tbase] = p.vol[base]
	delete(p.vol, base)
	p.pending = append(p.pending, dirOp{kind: 'r', name: base, to: tbase})
	s.op("rename %s %s", base, tbase)
	return nil
}

func (s *simFS) readDir(name string) ([]os.DirEntry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.dirs[filepath.Clean(name)]
	if d == nil {
		return nil, &os.PathError{Op: "readdir", Path: name, Err: syscall.ENOENT}
	}
	var out []os.DirEntry
	for n, o := range d.vol {
		e := simEntry{name: n, dir: o.dir != nil}
		if o.file != nil {
			e.size, e.mtime = int64(len(o.file.vol)), o.file.mtime
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b os.DirEntry) int {
		if a.Name() < b.Name() {
			return -1
		}
		return 1
	})
	return out, nil
}

func (f *simFile) truncate(size int64) {
	if size < int64(len(f.vol)) {
		f.vol = f.vol[:size]
	} else {
		f.vol = append(f.vol, make([]byte, size-int64(len(f.vol)))...)
	}
	f.sizeDirty = true
	if size%sectorSize != 0 {
		f.dirty[size/sectorSize] = true
	}
}

func (f *simFile) writeAt(p []byte, off int64) {
	if end := off + int64(len(p)); end > int64(len(f.vol)) {
		f.vol = append(f.vol, make([]byte, end-int64(len(f.vol)))...)
		f.sizeDirty = true
	}
	copy(f.vol[off:], p)
	for sec := off / sectorSize; sec*sectorSize < off+int64(len(p)); sec++ {
		f.dirty[sec] = true
	}
	f.mtime = time.Now()
}

// flush is a successful fsync: the dirty sectors and the size reach the
// disk. Only those: sectors whose pages an earlier failed fsync dropped
// stay as the disk has them.
func (f *simFile) flush() {
	size := int64(len(f.vol))
	dur := make([]byte, size)
	copy(dur, f.dur)
	for sec := range f.dirty {
		from, to := sec*sectorSize, min((sec+1)*sectorSize, size)
		if from < to {
			copy(dur[from:to], f.vol[from:to])
		}
	}
	f.dur = dur
	f.dirty = map[int64]bool{}
	f.sizeDirty = false
}

// simHandle is an open file or directory.
type simHandle struct {
	s      *simFS
	name   string
	file   *simFile
	dir    *simDir
	closed bool
}

func (h *simHandle) check() error {
	if h.closed {
		return os.ErrClosed
	}
	if h.file == nil {
		return syscall.EISDIR
	}
	return nil
}

func (h *simHandle) ReadAt(p []byte, off int64) (int, error) {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	if err := h.check(); err != nil {
		return 0, &os.PathError{Op: "read", Path: h.name, Err: err}
	}
	if off >= int64(len(h.file.vol)) {
		return 0, io.EOF
	}
	n := copy(p, h.file.vol[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (h *simHandle) WriteAt(p []byte, off int64) (int, error) {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	if err := h.check(); err != nil {
		return 0, &os.PathError{Op: "write", Path: h.name, Err: err}
	}
	h.file.writeAt(p, off)
	h.s.op("write %s [%d,%d)", filepath.Base(h.name), off, off+int64(len(p)))
	return len(p), nil
}

func (h *simHandle) Truncate(size int64) error {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	if err := h.check(); err != nil {
		return &os.PathError{Op: "truncate", Path: h.name, Err: err}
	}
	h.file.truncate(size)
	h.s.op("truncate %s %d", filepath.Base(h.name), size)
	return nil
}

func (h *simHandle) Sync() error {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.closed {
		return &os.PathError{Op: "sync", Path: h.name, Err: os.ErrClosed}
	}
	if s.onSync != nil {
		s.onSync(true)
	}
	s.ops++
	if h.dir != nil {
		s.note("fsync dir %s", filepath.Base(h.name))
		h.dir.dur = cloneEntries(h.dir.vol)
		h.dir.pending = nil
	} else {
		s.syncs++
		s.synced = append(s.synced, filepath.Base(h.name))
		f := h.file
		if s.syncs == s.failSync || (s.failIf != nil && !s.failed && s.failIf(filepath.Base(h.name))) {
			s.note("fsync %s: EIO (fsync %d)", filepath.Base(h.name), s.syncs)
			// fsyncgate: the kernel reports the error once and marks the
			// pages clean; they never reach the disk, and a retried fsync
			// succeeds. The size change may still reach it.
			s.failed = true
			f.dirty = map[int64]bool{}
			if s.onSync != nil {
				s.onSync(false)
			}
			return &os.PathError{Op: "sync", Path: h.name, Err: syscall.EIO}
		}
		s.note("fsync %s (fsync %d)", filepath.Base(h.name), s.syncs)
		f.flush()
	}
	if s.onSync != nil {
		s.onSync(false)
	}
	return nil
}

func (h *simHandle) Stat() (os.FileInfo, error) {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	if h.closed {
		return nil, &os.PathError{Op: "stat", Path: h.name, Err: os.ErrClosed}
	}
	e := simEntry{name: filepath.Base(h.name), dir: h.dir != nil}
	if h.file != nil {
		e.size, e.mtime = int64(len(h.file.vol)), h.file.mtime
	}
	return e, nil
}

func (h *simHandle) Close() error {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	if h.closed {
		return &os.PathError{Op: "close", Path: h.name, Err: os.ErrClosed}
	}
	h.closed = true
	return nil
}

// simEntry is both the os.DirEntry and the os.FileInfo of a simulated file.
type simEntry struct {
	name  string
	dir   bool
	size  int64
	mtime time.Time
}

func (e simEntry) Name() string { return e.name }
func (e simEntry) IsDir() bool  { return e.dir }
func (e simEntry) Type() fs.FileMode {
	if e.dir {
		return fs.ModeDir
	}
	return 0
}
func (e simEntry) Info() (fs.FileInfo, error) { return e, nil }
func (e simEntry) Size() int64                { return e.size }
func (e simEntry) Mode() fs.FileMode          { return e.Type() | 0o640 }
func (e simEntry) ModTime() time.Time         { return e.mtime }
func (e simEntry) Sys() any                   { return nil }

func cloneEntries(m map[string]*simObj) map[string]*simObj {
	out := make(map[string]*simObj, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// clone returns a deep copy of the file system's state, volatile and
// durable, without the tracing hooks: the state a kill -9 at this moment
// leaves, from which materialise makes the states a power cut leaves.
func (s *simFS) clone() *simFS {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cloneLocked()
}

func (s *simFS) cloneLocked() *simFS {
	dirs := map[*simDir]*simDir{}
	files := map[*simFile]*simFile{}
	var cpDir func(d *simDir) *simDir
	cpObj := func(o *simObj) *simObj {
		if o == nil {
			return nil
		}
		if o.dir != nil {
			return &simObj{dir: cpDir(o.dir)}
		}
		if n := files[o.file]; n != nil {
			return &simObj{file: n}
		}
		f := *o.file
		f.vol, f.dur = slices.Clone(f.vol), slices.Clone(f.dur)
		f.dirty = make(map[int64]bool, len(o.file.dirty))
		for k := range o.file.dirty {
			f.dirty[k] = true
		}
		files[o.file] = &f
		return &simObj{file: &f}
	}
	cpDir = func(d *simDir) *simDir {
		if n := dirs[d]; n != nil {
			return n
		}
		n := &simDir{vol: map[string]*simObj{}, dur: map[string]*simObj{}}
		dirs[d] = n
		for k, v := range d.vol {
			n.vol[k] = cpObj(v)
		}
		for k, v := range d.dur {
			n.dur[k] = cpObj(v)
		}
		for _, op := range d.pending {
			op.obj = cpObj(op.obj)
			n.pending = append(n.pending, op)
		}
		return n
	}
	out := &simFS{dirs: map[string]*simDir{}, root: s.root}
	for path, d := range s.dirs {
		out.dirs[path] = cpDir(d)
	}
	return out
}

// cutMode says which of the unsynced operations a power cut keeps.
type cutMode int

const (
	cutNone   cutMode = iota // only what was fsynced
	cutAll                   // everything (as after kill -9)
	cutRandom                // any subset
)

// materialise returns the file system a power cut leaves from this state:
// every file and directory becomes durable as chosen.
func (s *simFS) materialise(mode cutMode, rng *rand.Rand) *simFS {
	c := s.clone() // private copy to consume
	keep := func() bool {
		switch mode {
		case cutNone:
			return false
		case cutAll:
			return true
		}
		return rng.IntN(2) == 0
	}
	out := &simFS{dirs: map[string]*simDir{}, root: s.root}
	done := map[*simFile]bool{}
	var walk func(path string, d *simDir) *simDir
	walk = func(path string, d *simDir) *simDir {
		ents := cloneEntries(d.dur)
		for _, op := range d.pending {
			if !keep() {
				continue
			}
			switch op.kind {
			case 'c':
				ents[op.name] = op.obj
			case 'u':
				delete(ents, op.name)
			case 'r':
				if o := ents[op.name]; o != nil {
					ents[op.to] = o
					delete(ents, op.name)
				}
			}
		}
		nd := &simDir{}
		out.dirs[path] = nd
		for name, o := range ents {
			if o.dir != nil {
				ents[name] = &simObj{dir: walk(filepath.Join(path, name), o.dir)}
			} else if !done[o.file] {
				done[o.file] = true
				o.file.cut(keep, mode, rng)
			}
		}
		nd.vol, nd.dur = ents, cloneEntries(ents)
		return nd
	}
	walk(c.root, c.dirs[c.root])
	return out
}

// cut makes the file's durable image what a power cut leaves, and that its
// only image.
func (f *simFile) cut(keep func() bool, mode cutMode, rng *rand.Rand) {
	size := int64(len(f.dur))
	if f.sizeDirty {
		switch {
		case mode == cutAll:
			size = int64(len(f.vol))
		case mode == cutRandom:
			lo, hi := min(size, int64(len(f.vol))), max(size, int64(len(f.vol)))
			switch rng.IntN(3) {
			case 0:
				size = int64(len(f.vol))
			case 1:
				if b := (hi - lo) / sectorSize; b > 0 {
					size = lo + rng.Int64N(b+1)*sectorSize
				}
			}
		}
	}
	img := make([]byte, size)
	copy(img, f.dur)
	for sec := range f.dirty {
		if !keep() {
			continue
		}
		from, to := sec*sectorSize, min((sec+1)*sectorSize, size, int64(len(f.vol)))
		if from < to {
			copy(img[from:to], f.vol[from:to])
		}
	}
	f.vol, f.dur = img, slices.Clone(img)
	f.dirty, f.sizeDirty = map[int64]bool{}, false
}
