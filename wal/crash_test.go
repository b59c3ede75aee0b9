package wal_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgemq/edgemq/wal"
)

// The crash test re-executes the test binary as the child: TestMain sees
// crashChildEnv and runs crashChild instead of the tests.
const (
	crashChildEnv = "EDGEMQ_WAL_CRASH_CHILD" // the log directory
	crashBaseEnv  = "EDGEMQ_WAL_CRASH_BASE"  // first payload id of this child
	crashItersEnv = "EDGEMQ_WAL_CRASH_ITERS" // kills in TestCrashSIGKILL (default 20)
	crashSyncEnv  = "EDGEMQ_WAL_CRASH_SYNC"  // the child's sync policy
)

func crashConfig(pol wal.SyncPolicy) wal.Config {
	cfg := testConfig()
	cfg.Sync = pol
	cfg.SegmentSize = 64 << 10
	return cfg
}

// crashChild appends from 8 goroutines under the given policy and prints
// "offset id" for every acknowledged append, until it is killed.
func crashChild() {
	dir := os.Getenv(crashChildEnv)
	base, _ := strconv.ParseUint(os.Getenv(crashBaseEnv), 10, 64)
	l, err := wal.Open(dir, crashConfig(wal.SyncPolicy(os.Getenv(crashSyncEnv))))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "ready")
	out.Flush()
	var wg sync.WaitGroup
	for w := uint64(0); w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(0); ; i++ {
				id := base + w<<32 + i
				off, err := l.Append(context.Background(), payload(id))
				if err != nil {
					fmt.Fprintln(os.Stderr, "child append:", err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Fprintf(out, "%d %d\n", off, id)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestCrashSIGKILL kills a child appending under sync always with SIGKILL at
// random moments, many times over the same log: after each kill, every
// offset the child was told was durable reads back with its exact bytes.
// Set EDGEMQ_WAL_CRASH_ITERS for more kills than the default 20 (5 with
// -short).
func TestCrashSIGKILL(t *testing.T) {
	iters := 20
	if testing.Short() {
		iters = 5
	}
	if v, err := strconv.Atoi(os.Getenv(crashItersEnv)); err == nil && v > 0 {
		iters = v
	}
	crashLoop(t, wal.SyncAlways, iters)
}

// TestCrashSIGKILLInterval: under sync interval an append is acknowledged
// after write(), before any fsync; kill -9 must still lose nothing, since
// the page cache outlives the process.
func TestCrashSIGKILLInterval(t *testing.T) {
	iters := 5
	if v, err := strconv.Atoi(os.Getenv(crashItersEnv)); err == nil && v > 0 {
		iters = v
	}
	crashLoop(t, wal.SyncInterval, iters)
}

func crashLoop(t *testing.T, pol wal.SyncPolicy, iters int) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	acked := map[uint64]uint64{}
	for it := 0; it < iters; it++ {
		t0 := time.Now()
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, crashBaseEnv+"="+strconv.FormatUint(uint64(it)<<48, 10), crashSyncEnv+"="+string(pol))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1)
		var got []string
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(stdout)
			first := true
			for sc.Scan() {
				if first {
					lines <- sc.Text()
					first = false
					continue
				}
				got = append(got, sc.Text())
			}
		}()
		select {
		case <-lines:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			cmd.Wait()
			t.Fatalf("child did not start: %s", stderr.String())
		}
		t1 := time.Now()
		time.Sleep(time.Duration(5+rand.IntN(150)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-done
		werr := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("child exited by itself: %v: %s", werr, stderr.String())
		}
		t2 := time.Now()
		n := 0
		for _, line := range got {
			var off, id uint64
			if _, err := fmt.Sscanf(line, "%d %d", &off, &id); err != nil {
				continue // a line cut by the kill
			}
			acked[off] = id
			n++
		}
		l, err := wal.Open(dir, crashConfig(wal.SyncPolicy(os.Getenv(crashSyncEnv))))
		if err != nil {
			t.Fatalf("kill %d: open: %v", it, err)
		}
		offs := make([]uint64, 0, len(acked))
		for off := range acked {
			offs = append(offs, off)
		}
		slices.Sort(offs) // in order: one window read serves many records
		for _, off := range offs {
			id := acked[off]
			rec, err := l.Read(off)
			if err != nil || !bytes.Equal(rec, payload(id)) {
				l.Close()
				t.Fatalf("kill %d: acknowledged offset %d: %v", it, off, err)
			}
		}
		last := l.LastOffset()
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("kill %d: %d acknowledged this run, %d in all, last offset %d (start %v, kill %v, verify %v)",
			it, n, len(acked), last, t1.Sub(t0), t2.Sub(t1), time.Since(t2))
	}
	if _, err := wal.Check(dir); err != nil {
		t.Fatalf("check: %v", err)
	}
}
