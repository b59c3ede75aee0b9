package wal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A quiet log (one appender at a time, a fast disk) writes and fsyncs
// holding the writer's P (quiet, fsyncHolding): the records are durable
// and read back as written, and a reopened log has them all. On any other
// File than *os.File (a fault-injecting or simulated FS, which must see
// every call) it never holds.
func TestQuietWriterHoldsItsP(t *testing.T) {
	defer func(d time.Duration) { quietFsync = d }(quietFsync)
	quietFsync = time.Hour // the test's disk may be slow; the rule is not what is tested here
	for _, wrapped := range []bool{false, true} {
		t.Run(fmt.Sprintf("wrapped=%v", wrapped), func(t *testing.T) {
			dir := t.TempDir()
			cfg := DefaultConfig()
			cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
			if wrapped {
				cfg.FS = FS{OpenFile: func(name string, flag int, perm os.FileMode) (File, error) {
					f, err := os.OpenFile(name, flag, perm)
					if err != nil {
						return nil, err
					}
					return struct{ *os.File }{f}, nil
				}}
			}
			l, err := Open(dir, cfg)
			if err != nil {
				t.Fatal(err)
			}
			const n = 3 * quietAfter
			for i := 1; i <= n; i++ {
				start := time.Now()
				off, err := l.Append(context.Background(), quietPayload(i))
				if err != nil || off != uint64(i) {
					t.Fatalf("append %d: offset %d, %v", i, off, err)
				}
				// Idle longer than the fsync took: a low rate.
				time.Sleep(2 * time.Since(start))
			}
			held := l.stats.heldFsyncs.Load()
			switch {
			case wrapped && held != 0:
				t.Fatalf("%d fsyncs held on a File that is not an *os.File", held)
			case !wrapped && held < n-quietAfter:
				t.Fatalf("%d of %d fsyncs held, want at least %d (after %d fast ones)", held, n, n-quietAfter, quietAfter)
			}
			rereadAfterClose(t, l, dir, cfg, n)
		})
	}
}

// quiet holds only under SyncAlways, for a small batch when the batches'
// first records came at least an fsync's time after the batch before, on
// average (idle), after quietAfter fast fsyncs in a row.
func TestQuietRule(t *testing.T) {
	const fsync = 300 * time.Microsecond
	for _, tc := range []struct {
		sync    SyncPolicy
		fast    int
		records int
		bytes   int
		idle    time.Duration
		want    bool
	}{
		{SyncAlways, quietAfter, 1, 300, fsync, true},
		{SyncAlways, quietAfter, quietRecords, quietBytes, 2 * fsync, true},
		{SyncAlways, quietAfter, 1, quietBytes + 1, fsync, false},
		{SyncAlways, quietAfter, quietRecords + 1, 300, fsync, false},
		{SyncAlways, quietAfter, 1, 300, fsync - 1, false}, // the batches came at once: load
		{SyncAlways, quietAfter - 1, 1, 300, fsync, false},
		{SyncInterval, quietAfter, 1, 300, fsync, false},
		{SyncNever, quietAfter, 1, 300, fsync, false},
	} {
		l := &Log{cfg: Config{Sync: tc.sync}, fastFsyncs: tc.fast, idle: tc.idle}
		l.lastFsync.Store(int64(fsync))
		if got := l.quiet(tc.records, tc.bytes); got != tc.want {
			t.Errorf("%s, %d fast fsyncs, %d records, %d bytes, idle %v: quiet %v, want %v", tc.sync, tc.fast, tc.records, tc.bytes, tc.idle, got, tc.want)
		}
	}
}

// At a low rate one batch that comes at once after the one before (two
// publishes close together, a client's retry) does not end holding: the
// gap quiet looks at is the mean over about quietSpan batches (sawGap). A
// run of batches that come at once (load) ends it within 2 x quietSpan of
// them, after a low rate or after a long quiet spell (a gap counts as at
// most quietFsync).
func TestQuietRuleMeanGap(t *testing.T) {
	const fsync = 300 * time.Microsecond
	l := &Log{cfg: Config{Sync: SyncAlways}, fastFsyncs: quietAfter}
	l.lastFsync.Store(int64(fsync))
	for _, quietGap := range []time.Duration{time.Millisecond, time.Hour} {
		for range 4 * quietSpan {
			l.sawGap(quietGap)
		}
		l.sawGap(20 * time.Microsecond)
		if !l.quiet(1, 300) {
			t.Fatalf("after gaps of %v, one batch at once ended holding", quietGap)
		}
		n := 1
		for ; l.quiet(1, 300) && n <= 4*quietSpan; n++ {
			l.sawGap(20 * time.Microsecond)
		}
		if n > 2*quietSpan {
			t.Fatalf("after gaps of %v, holding lasted %d batches into load, want at most %d", quietGap, n, 2*quietSpan)
		}
	}
}

// An appender of AppendAsyncLead on a quiet log writes and fsyncs its
// batch itself: when it returns, the record is durable and the durability
// event (NotifyDurable) has run, on its goroutine. Under any policy but
// SyncAlways, or while the log is not quiet, the writer goroutine writes.
// A reopened log has every record.
func TestAppendLeadWritesOnTheAppendersGoroutine(t *testing.T) {
	defer func(d time.Duration) { quietFsync = d }(quietFsync)
	quietFsync = time.Hour // the test's disk may be slow; the rule is not what is tested here
	for _, pol := range []SyncPolicy{SyncAlways, SyncInterval} {
		t.Run(string(pol), func(t *testing.T) {
			dir := t.TempDir()
			cfg := DefaultConfig()
			cfg.Sync = pol
			cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
			l, err := Open(dir, cfg)
			if err != nil {
				t.Fatal(err)
			}
			var events atomic.Int64
			l.NotifyDurable(func() { events.Add(1) })
			const n = 3 * quietAfter
			led := 0
			for i := 1; i <= n; i++ {
				start := time.Now()
				before, ledBefore := events.Load(), l.Stats().LedBatches
				off, err := l.AppendAsyncLead(quietPayload(i))
				if err != nil || off != uint64(i) {
					t.Fatalf("append %d: offset %d, %v", i, off, err)
				}
				if l.Stats().LedBatches > ledBefore {
					led++
					if !l.Resolved(off) || events.Load() == before {
						t.Fatalf("append %d led, but returned before its record was durable (%v) or its event ran (%d events before, %d after)",
							i, l.Resolved(off), before, events.Load())
					}
				}
				if err := l.WaitDurable(context.Background(), off); err != nil {
					t.Fatal(err)
				}
				time.Sleep(2 * time.Since(start)) // a low rate
			}
			switch {
			case pol == SyncAlways && led < n-quietAfter-1:
				t.Fatalf("%d of %d appends wrote their batch, want at least %d (after %d fast fsyncs)", led, n, n-quietAfter-1, quietAfter)
			case pol != SyncAlways && led != 0:
				t.Fatalf("%d appends wrote their batch under %s", led, pol)
			}
			rereadAfterClose(t, l, dir, cfg, n)
		})
	}
}

// A batch written on a quiet log costs no allocation: the list of
// segments to fsync and the chunks written are reused, and the durability
// event makes no channel when no one waits on one (the caller of
// AppendAsyncLead, told by NotifyDurable, does not).
func TestQuietBatchAllocatesNothing(t *testing.T) {
	defer func(d time.Duration) { quietFsync = d }(quietFsync)
	quietFsync = time.Hour // the test's disk may be slow; the rule is not what is tested here
	cfg := DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	l, err := Open(t.TempDir(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.NotifyDurable(func() {})
	rec := make([]byte, 300)
	appends := func(n int) {
		for range n {
			off, err := l.AppendAsyncLead(rec)
			if err != nil {
				t.Fatal(err)
			}
			for !l.Resolved(off) { // a look takes no channel, as a wait would
				runtime.Gosched()
			}
			// A low rate: idle for twice the fsync the batch took, so that
			// the log is quiet however slow the test's disk is today.
			time.Sleep(2 * time.Duration(l.lastFsync.Load()))
		}
	}
	appends(3 * quietAfter)
	led := l.Stats().LedBatches
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const n = 200
	appends(n)
	runtime.ReadMemStats(&after)
	if led = l.Stats().LedBatches - led; led < n/2 {
		t.Fatalf("%d of %d appends wrote their batch", led, n)
	}
	if per := float64(after.Mallocs-before.Mallocs) / n; per > 0.5 {
		t.Fatalf("%.2f allocations per append on a quiet log, want none", per)
	}
}

// quietPayload is the record the quiet tests append at offset i.
func quietPayload(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 100+i) }

// rereadAfterClose closes l and checks that dir, opened again with cfg,
// has records 1 to n as the quiet tests appended them (quietPayload).
func rereadAfterClose(t *testing.T, l *Log, dir string, cfg Config, n int) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := Open(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 1; i <= n; i++ {
		got, err := l.Read(uint64(i))
		if err != nil || !bytes.Equal(got, quietPayload(i)) {
			t.Fatalf("reopened, offset %d: %d bytes, %v", i, len(got), err)
		}
	}
}

// syncHeld is a segment file whose fsyncs wait while hold is set.
type syncHeld struct {
	*os.File
	hold *atomic.Pointer[chan struct{}]
}

func (f syncHeld) Sync() error {
	if ch := f.hold.Load(); ch != nil {
		<-*ch
	}
	return f.File.Sync()
}

// A look at a record not yet durable (WaitDurable with a context already
// done, a Reader's Next so: qos's engine looks so per acknowledgement and
// per dispatch) takes no durability channel, so the event that makes the
// record durable makes no new one (durableWatched); a wait does take one,
// and that event wakes it.
func TestLookTakesNoDurableChannel(t *testing.T) {
	var hold atomic.Pointer[chan struct{}]
	cfg := DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.FS = FS{OpenFile: func(name string, flag int, perm os.FileMode) (File, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		return syncHeld{f, &hold}, nil
	}}
	l, err := Open(t.TempDir(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{})
	hold.Store(&ch)
	release := sync.OnceFunc(func() { hold.Store(nil); close(ch) })
	defer l.Close()
	defer release() // before Close, which waits for the writer's fsync
	off, err := l.AppendAsync([]byte("r"))
	if err != nil {
		t.Fatal(err)
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.WaitDurable(done, off); !errors.Is(err, context.Canceled) {
		t.Fatalf("a look at a record being written: %v, want context.Canceled", err)
	}
	if _, _, err := l.NewReader(off).Next(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("a reader's look at a record being written: %v, want context.Canceled", err)
	}
	if l.durableWatched.Load() {
		t.Fatal("a look took the durability channel: the next event makes a new one for nobody")
	}
	waited := make(chan error, 1)
	go func() { waited <- l.WaitDurable(context.Background(), off) }()
	for !l.durableWatched.Load() {
		time.Sleep(time.Millisecond)
	}
	release()
	if err := <-waited; err != nil {
		t.Fatalf("the wait: %v", err)
	}
}
