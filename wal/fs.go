package wal

import (
	"errors"
	"io"
	"os"
	"path/filepath"
)

// File is what the log needs from an open file. *os.File implements it.
type File interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
	Sync() error
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
}

// FS is the file-system seam: every file operation of the log goes through
// it, so tests can inject ENOSPC or EIO at any write, fsync, truncate, rename
// or remove (litestream-style function fields). A nil field means the os
// package's function; the zero FS is the operating system.
type FS struct {
	// OpenFile opens a file (segments, the cursor table, and directories for
	// their fsync). Default: os.OpenFile.
	OpenFile func(name string, flag int, perm os.FileMode) (File, error)
	// Remove removes a file. Default: os.Remove.
	Remove func(name string) error
	// Rename renames a file. Default: os.Rename.
	Rename func(oldpath, newpath string) error
	// MkdirAll creates a directory. Default: os.MkdirAll.
	MkdirAll func(path string, perm os.FileMode) error
	// ReadDir lists a directory. Default: os.ReadDir.
	ReadDir func(name string) ([]os.DirEntry, error)
}

func (fs FS) withDefaults() FS {
	if fs.OpenFile == nil {
		fs.OpenFile = func(name string, flag int, perm os.FileMode) (File, error) {
			f, err := os.OpenFile(name, flag, perm)
			if err != nil {
				return nil, err // never a typed nil in the interface
			}
			return f, nil
		}
	}
	if fs.Remove == nil {
		fs.Remove = os.Remove
	}
	if fs.Rename == nil {
		fs.Rename = os.Rename
	}
	if fs.MkdirAll == nil {
		fs.MkdirAll = os.MkdirAll
	}
	if fs.ReadDir == nil {
		fs.ReadDir = os.ReadDir
	}
	return fs
}

// mkdirDurable creates dir and its missing parents and makes their names
// durable: it fsyncs the parent of every directory on the path, so that a
// log created at first start (or by a process killed before its Open
// returned) does not vanish in a power cut with everything in it. Only
// the fsyncs of directories it created itself can fail it; the others are
// best effort (an fsync of a clean directory costs next to nothing).
func (fs FS) mkdirDurable(dir string) error {
	created := map[string]bool{}
	for d := filepath.Clean(dir); filepath.Dir(d) != d; d = filepath.Dir(d) {
		f, err := fs.OpenFile(d, os.O_RDONLY, 0)
		if err == nil {
			f.Close()
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			break // let MkdirAll say what is wrong
		}
		created[d] = true
	}
	if err := fs.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	for d := filepath.Clean(dir); filepath.Dir(d) != d; d = filepath.Dir(d) {
		if err := fs.syncDir(filepath.Dir(d)); err != nil {
			if created[d] {
				return err
			}
			break
		}
	}
	return nil
}

// syncDir fsyncs a directory, so that a file created or removed in it
// survives a power cut.
func (fs FS) syncDir(dir string) error {
	d, err := fs.OpenFile(dir, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// replace replaces path with what write writes: it writes tmp, fsyncs
// it, renames it over path and fsyncs the directory.
func (fs FS) replace(path, tmp string, write func(io.Writer) error, perm os.FileMode) error {
	f, err := fs.OpenFile(tmp, os.O_CREATE|os.O_RDWR|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if err := write(io.NewOffsetWriter(f, 0)); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fs.Rename(tmp, path); err != nil {
		return err
	}
	return fs.syncDir(filepath.Dir(path))
}

// writeBytes is a write function of replace that writes data.
func writeBytes(data []byte) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}
}

// WriteFile replaces the file at path with data durably, for the small
// state files beside the log: it creates path's directory and its missing
// parents durably (as Open does), writes data to path+".tmp", fsyncs it,
// renames it over path and fsyncs the directory. When it returns nil, data
// survives a power cut; whatever it returns, path holds its old contents
// or data, never a part of data. A failed write removes the temporary file.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return WriteFileFunc(path, perm, writeBytes(data))
}

// WriteFileFunc is WriteFile of what write writes (unbuffered, into the
// temporary file), for a file not to be held in memory whole (a
// snapshot). An error from write is WriteFileFunc's, and path keeps its
// old contents.
func WriteFileFunc(path string, perm os.FileMode, write func(io.Writer) error) error {
	fs := FS{}.withDefaults()
	if err := fs.mkdirDurable(filepath.Dir(path)); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := fs.replace(path, tmp, write, perm); err != nil {
		_ = fs.Remove(tmp)
		return err
	}
	return nil
}
