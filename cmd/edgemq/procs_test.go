package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The rule: one P only after procsQuiet quiet looks in a row; back to the
// default at the first busy or late one.
func TestProcsRule(t *testing.T) {
	p := procsState{}
	for i := 1; i < procsQuiet; i++ {
		if p = p.next(0.1, 0); p.one {
			t.Fatalf("one P after %d quiet looks, want %d", i, procsQuiet)
		}
	}
	if p.next(procsDown+0.01, 0).quiet != 0 {
		t.Fatal("a look above procsDown does not start the count again")
	}
	if p = p.next(0.1, 0); !p.one {
		t.Fatalf("not on one P after %d quiet looks", procsQuiet)
	}
	if !p.next(procsUp-0.01, procsLate).one {
		t.Fatal("left one P below both thresholds")
	}
	if p.next(procsUp+0.01, 0).one {
		t.Fatal("stayed on one P using more than procsUp of a core")
	}
	if p.next(0.1, procsLate+0.01).one {
		t.Fatal("stayed on one P with goroutines waiting to run")
	}
}

// On a real process: it starts on one P, busy goes back to the default,
// quiet again to one P, and the end restores the default.
func TestAdaptProcs(t *testing.T) {
	def := runtime.GOMAXPROCS(0)
	if def < 2 || os.Getenv("GOMAXPROCS") != "" {
		t.Skip("needs a default GOMAXPROCS of 2 or more, not set in the environment")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		adaptProcs(ctx, 10*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	defer func() {
		cancel()
		<-done
		if n := runtime.GOMAXPROCS(0); n != def {
			t.Errorf("GOMAXPROCS %d after the end, want the default %d", n, def)
		}
	}()
	waitProcs(t, 1, "while the process is quiet")
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range def {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
			}
		}()
	}
	waitProcs(t, def, "while the process is busy")
	stop.Store(true)
	wg.Wait()
	waitProcs(t, 1, "once the process is quiet again")
}

func waitProcs(t *testing.T, want int, when string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.GOMAXPROCS(0) != want {
		if time.Now().After(deadline) {
			t.Fatalf("GOMAXPROCS %d %s, want %d", runtime.GOMAXPROCS(0), when, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
