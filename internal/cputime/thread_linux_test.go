package cputime

import (
	"runtime"
	"testing"
	"time"
)

// TestThreadCountsThisThreadOnly: a thread that sleeps gains (almost) no
// CPU time while other threads spin, and one that spins gains it.
func TestThreadCountsThisThreadOnly(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // another thread busy meanwhile: not ours to count
		for {
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	c0, ok := Thread()
	if !ok {
		t.Fatal("Thread: not available on Linux")
	}
	time.Sleep(100 * time.Millisecond)
	c1, _ := Thread()
	if d := c1 - c0; d > 20*time.Millisecond {
		t.Errorf("a sleeping thread gained %v of CPU", d)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c2, _ := Thread()
		if c2-c1 >= 20*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a spinning thread gained only %v of CPU in 10 s", c2-c1)
		}
	}
}
