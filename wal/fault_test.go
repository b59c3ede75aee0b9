package wal_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgemq/edgemq/wal"
)

// faults is a file-system seam that fails chosen write, fsync and truncate
// calls on segment files and directories.
type faults struct {
	mu      sync.Mutex
	calls   map[string]int // by op: "write", "sync", "truncate", "create"
	failAt  map[string]int // op -> call number (1-based) that fails first
	failFor int            // how many calls fail from failAt on (0: until healed)
	healed  bool
	err     error
	failed  atomic.Int64
}

func newFaults(err error) *faults {
	return &faults{calls: map[string]int{}, failAt: map[string]int{}, err: err, failFor: 1}
}

// hit counts a call to op and says whether it fails.
func (f *faults) hit(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	n := f.calls[op]
	at, ok := f.failAt[op]
	if !ok || f.healed || n < at || (f.failFor > 0 && n >= at+f.failFor) {
		return nil
	}
	f.failed.Add(1)
	return f.err
}

func (f *faults) heal() {
	f.mu.Lock()
	f.healed = true
	f.mu.Unlock()
}

func (f *faults) fs() wal.FS {
	return wal.FS{
		OpenFile: func(name string, flag int, perm os.FileMode) (wal.File, error) {
			if flag&os.O_CREATE != 0 {
				if err := f.hit("create"); err != nil {
					return nil, &os.PathError{Op: "open", Path: name, Err: err}
				}
			}
			file, err := os.OpenFile(name, flag, perm)
			if err != nil {
				return nil, err
			}
			return &faultyFile{File: file, f: f}, nil
		},
	}
}

type faultyFile struct {
	*os.File
	f *faults
}

func (ff *faultyFile) WriteAt(p []byte, off int64) (int, error) {
	if err := ff.f.hit("write"); err != nil {
		// A failing write may still have written part of its data, as a
		// full disk does: write half, then fail.
		n, _ := ff.File.WriteAt(p[:len(p)/2], off)
		return n, &os.PathError{Op: "write", Path: ff.Name(), Err: err}
	}
	return ff.File.WriteAt(p, off)
}

func (ff *faultyFile) Sync() error {
	if err := ff.f.hit("sync"); err != nil {
		return &os.PathError{Op: "sync", Path: ff.Name(), Err: err}
	}
	return ff.File.Sync()
}

func (ff *faultyFile) Truncate(size int64) error {
	if err := ff.f.hit("truncate"); err != nil {
		return &os.PathError{Op: "truncate", Path: ff.Name(), Err: err}
	}
	return ff.File.Truncate(size)
}

// payload makes a self-checking record: crc32 | id | filler.
func payload(id uint64) []byte {
	body := []byte(fmt.Sprintf("id=%d;%s", id, bytes.Repeat([]byte{'a' + byte(id%26)}, 64+int(id%200))))
	sum := crc32.ChecksumIEEE(body)
	return append([]byte{byte(sum >> 24), byte(sum >> 16), byte(sum >> 8), byte(sum)}, body...)
}

// wellFormed reports whether rec is a whole record made by payload.
func wellFormed(rec []byte) bool {
	if len(rec) < 4 {
		return false
	}
	sum := uint32(rec[0])<<24 | uint32(rec[1])<<16 | uint32(rec[2])<<8 | uint32(rec[3])
	return crc32.ChecksumIEEE(rec[4:]) == sum
}

// TestFaultInjection fails the n-th write, fsync, truncate or segment
// creation, for every n the workload reaches, with ENOSPC and with EIO. In
// every case: appends that returned an offset are readable after reopen
// with their exact bytes, every other readable record is whole, the failed
// append's error says why, and appends work again once the fault is gone.
func TestFaultInjection(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EIO} {
		for _, op := range []string{"write", "sync", "create"} {
			// Count the calls of a clean run to know every injection point.
			total := countCalls(t, op, wal.SyncAlways)
			for at := 1; at <= total; at++ {
				name := fmt.Sprintf("%s/%s/%d", errno, op, at)
				t.Run(name, func(t *testing.T) { runFault(t, wal.SyncAlways, op, at, 1, errno) })
			}
		}
	}
}

// TestFaultInjectionInterval does the same under sync interval, where the
// fsyncs run beside the writer and a failed one stops the log (ErrFailed)
// until it is reopened: an append is acknowledged after its write, and no
// fault may lose it.
func TestFaultInjectionInterval(t *testing.T) {
	for _, op := range []string{"write", "sync", "create"} {
		total := countCalls(t, op, wal.SyncInterval)
		for at := 1; at <= total; at++ {
			t.Run(fmt.Sprintf("%s/%d", op, at), func(t *testing.T) {
				runFault(t, wal.SyncInterval, op, at, 1, syscall.EIO)
			})
		}
	}
}

const faultRecords = 120

// faultWorkload appends faultRecords records from 4 goroutines into small
// segments, and returns the acknowledged offsets and their payload ids.
func faultWorkload(t *testing.T, l *wal.Log, idBase uint64) (acked map[uint64]uint64, errs []error) {
	t.Helper()
	var mu sync.Mutex
	acked = map[uint64]uint64{}
	cur, err := l.Cursor("consumer")
	if err != nil {
		errs = append(errs, err)
	}
	var wg sync.WaitGroup
	for w := uint64(0); w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(0); i < faultRecords/4; i++ {
				id := idBase + w*1000 + i
				off, err := l.Append(context.Background(), payload(id))
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					acked[off] = id
				}
				mu.Unlock()
				if err == nil && cur != nil && w == 0 && i%5 == 0 {
					// The cursor table's writes and fsyncs are fault points
					// too. The cursor stays at 1, so retention keeps all.
					if err := cur.Commit(1); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				}
			}
		}()
	}
	wg.Wait()
	return acked, errs
}

func faultConfig(f *faults, pol ...wal.SyncPolicy) wal.Config {
	cfg := testConfig()
	cfg.SegmentSize = 4 << 10
	if len(pol) > 0 {
		cfg.Sync = pol[0]
		cfg.SyncInterval = time.Millisecond
	}
	if f != nil {
		cfg.FS = f.fs()
	}
	return cfg
}

func countCalls(t *testing.T, op string, pol wal.SyncPolicy) int {
	f := newFaults(syscall.EIO) // nothing fails: no failAt
	l := mustOpen(t, t.TempDir(), faultConfig(f, pol))
	faultWorkload(t, l, 0)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func runFault(t *testing.T, pol wal.SyncPolicy, op string, at, failFor int, errno syscall.Errno) {
	dir := t.TempDir()
	f := newFaults(errno)
	f.failAt[op] = at
	f.failFor = failFor
	l, err := wal.Open(dir, faultConfig(f, pol))
	if err != nil {
		// The fault hit Open itself (creating the first segment): fine, as
		// long as it says so and a retry works.
		if !errors.Is(err, errno) {
			t.Fatalf("open: %v, want %v", err, errno)
		}
		f.heal()
		l = mustOpen(t, dir, faultConfig(f, pol))
	}
	acked, errs := faultWorkload(t, l, 0)
	for _, err := range errs {
		if !errors.Is(err, errno) && !errors.Is(err, wal.ErrFailed) {
			t.Errorf("append error %v does not wrap %v", err, errno)
		}
		if errno == syscall.ENOSPC && !errors.Is(err, wal.ErrFull) && !errors.Is(err, wal.ErrFailed) {
			t.Errorf("ENOSPC append error %v is not ErrFull", err)
		}
	}
	f.heal()
	// After the fault, appends work again (unless the log failed for good,
	// which only a failed truncate can cause).
	more, errs2 := faultWorkload(t, l, 100000)
	if len(errs2) > 0 && !errors.Is(errs2[0], wal.ErrFailed) {
		t.Fatalf("appends after the fault healed: %v", errs2[0])
	}
	for k, v := range more {
		acked[k] = v
	}
	verifyAcked(t, l, acked)
	if err := l.Close(); err != nil && !errors.Is(err, errno) {
		t.Fatalf("close: %v", err)
	}
	l = mustOpen(t, dir, faultConfig(nil))
	defer l.Close()
	verifyAcked(t, l, acked)
	if _, err := wal.Check(dir); err != nil {
		t.Fatalf("check after reopen: %v", err)
	}
	if _, err := l.Append(context.Background(), payload(7)); err != nil {
		t.Fatalf("append after reopen: %v", err)
	}
}

// verifyAcked checks every acknowledged offset and that every record in the
// log is whole.
func verifyAcked(t *testing.T, l *wal.Log, acked map[uint64]uint64) {
	t.Helper()
	for off, id := range acked {
		got, err := l.Read(off)
		if err != nil || !bytes.Equal(got, payload(id)) {
			t.Fatalf("acknowledged offset %d: %q, %v", off, got, err)
		}
	}
	for off := l.FirstOffset(); off <= l.LastOffset(); off++ {
		got, err := l.Read(off)
		if errors.Is(err, wal.ErrNotFound) {
			continue // a hole left by a failed append
		}
		if err != nil || !wellFormed(got) {
			t.Fatalf("offset %d: %q, %v", off, got, err)
		}
	}
}

// TestDiskFullThenSpaceReturns keeps the disk full for a while: every append
// fails with ErrFull and ENOSPC, nothing written before is touched, and
// appends work again when space returns.
func TestDiskFullThenSpaceReturns(t *testing.T) {
	dir := t.TempDir()
	f := newFaults(syscall.ENOSPC)
	f.failFor = 0 // until healed
	l := mustOpen(t, dir, faultConfig(f))
	acked, errs := faultWorkload(t, l, 0)
	if len(errs) > 0 {
		t.Fatal(errs[0])
	}
	f.mu.Lock()
	f.failAt["write"] = f.calls["write"] + 1
	f.mu.Unlock()
	for i := 0; i < 20; i++ {
		_, err := l.Append(context.Background(), payload(uint64(50000+i)))
		if !errors.Is(err, wal.ErrFull) || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("append on a full disk: %v", err)
		}
	}
	verifyAcked(t, l, acked)
	f.heal()
	more, errs := faultWorkload(t, l, 100000)
	if len(errs) > 0 {
		t.Fatalf("after space returned: %v", errs[0])
	}
	for k, v := range more {
		acked[k] = v
	}
	if s := l.Stats(); s.WriteErrors == 0 {
		t.Fatalf("stats: no write errors counted: %+v", s)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, dir, faultConfig(nil))
	defer l.Close()
	verifyAcked(t, l, acked)
}

// TestFailedTruncate: a write fails and so does the truncate that would undo
// it. The log refuses appends with ErrFailed (it will not bury a half record
// in the middle of the log) and a reopen cuts the half record off.
func TestFailedTruncate(t *testing.T) {
	dir := t.TempDir()
	f := newFaults(syscall.EIO)
	f.failFor = 0
	l := mustOpen(t, dir, faultConfig(f))
	acked, _ := faultWorkload(t, l, 0)
	f.mu.Lock()
	f.failAt["write"] = f.calls["write"] + 1
	f.failAt["truncate"] = f.calls["truncate"] + 1
	f.mu.Unlock()
	if _, err := l.Append(context.Background(), payload(1)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("append: %v", err)
	}
	f.heal()
	if _, err := l.Append(context.Background(), payload(2)); !errors.Is(err, wal.ErrFailed) {
		t.Fatalf("append after a failed truncate: %v, want ErrFailed", err)
	}
	verifyAcked(t, l, acked)
	l.Close()
	l = mustOpen(t, dir, faultConfig(nil))
	defer l.Close()
	verifyAcked(t, l, acked)
	if _, err := l.Append(context.Background(), payload(3)); err != nil {
		t.Fatal(err)
	}
}
