package edge

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/edgemq/edgemq/qos"
	"github.com/edgemq/edgemq/wal"
)

// snapshotDir keeps the engine's checkpoints as files in a directory,
// each written durably by wal.WriteFileFunc (a temporary file, fsynced,
// renamed into place, the directory fsynced, and the directory itself
// made durable); the newest two are kept.
type snapshotDir struct {
	dir string
	lg  *slog.Logger
}

const snapshotPrefix, snapshotSuffix = "snapshot-", ".bin"

// snapshotName names the snapshot of the state before offset; the fixed
// width keeps names in offset order.
func snapshotName(offset uint64) string {
	return fmt.Sprintf("%s%020d%s", snapshotPrefix, offset, snapshotSuffix)
}

// list returns the snapshot offsets in the directory, newest first.
func (d snapshotDir) list() ([]uint64, error) {
	ents, err := os.ReadDir(d.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var offs []uint64
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, snapshotPrefix) || !strings.HasSuffix(name, snapshotSuffix) {
			continue
		}
		off, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, snapshotPrefix), snapshotSuffix), 10, 64)
		if err == nil {
			offs = append(offs, off)
		}
	}
	slices.Sort(offs)
	slices.Reverse(offs)
	return offs, nil
}

// Save writes the snapshot of offset and removes all but the newest two.
func (d snapshotDir) Save(offset uint64, write func(io.Writer) error) error {
	if err := wal.WriteFileFunc(filepath.Join(d.dir, snapshotName(offset)), 0o600, write); err != nil {
		return fmt.Errorf("write %s: %w", snapshotName(offset), err)
	}
	if offs, err := d.list(); err == nil {
		for _, old := range offs[min(len(offs), 2):] {
			_ = os.Remove(filepath.Join(d.dir, snapshotName(old)))
		}
	}
	return nil
}

// Load calls read with each snapshot, newest first, until one reads back.
// It first removes the temporary files of snapshots a crash left half
// written.
func (d snapshotDir) Load(read func(io.Reader) error) error {
	tmps, _ := filepath.Glob(filepath.Join(d.dir, snapshotPrefix+"*"+snapshotSuffix+".tmp"))
	old, _ := filepath.Glob(filepath.Join(d.dir, "."+snapshotPrefix+"*.tmp-*")) // an older edgemq's
	for _, tmp := range append(tmps, old...) {
		_ = os.Remove(tmp)
	}
	offs, err := d.list()
	if err != nil {
		return err
	}
	var last error
	for _, off := range offs {
		path := filepath.Join(d.dir, snapshotName(off))
		f, err := os.Open(path)
		if err != nil {
			d.lg.Error("snapshot unreadable", "file", path, "error", err)
			last = err
			continue
		}
		err = read(f)
		f.Close()
		if err == nil {
			return nil
		}
		last = err
		if errors.Is(err, qos.ErrSnapshotAhead) {
			// Its offsets are handed out again: once the log passes it,
			// it would read back as if valid. Gone before anything is
			// appended.
			if rerr := d.remove(path); rerr != nil {
				d.lg.Error("snapshot ahead of the log not removed: a later start may load it", "file", path, "error", rerr)
			}
			continue
		}
		d.lg.Error("snapshot damaged: trying an older one", "file", path, "error", err)
	}
	return last
}

// remove removes a snapshot file durably.
func (d snapshotDir) remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	dh, err := os.Open(d.dir)
	if err != nil {
		return err
	}
	defer dh.Close()
	return dh.Sync()
}
