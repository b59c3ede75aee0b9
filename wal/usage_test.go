package wal_test

import (
	"bytes"
	"context"
	"testing"
)

// TestUsageCountsADurableBatchOnce: once records are durable, their bytes
// count on disk and no longer as queued, already for the durability
// callback (the edge writes its PUBACKs from it) and the appenders it
// wakes. Counted twice, a publisher that got the PUBACK of its last message
// had the next one refused at the disk budget's high watermark, which
// admitted it a moment later (TestBudgetRecoversWhenConsumerLeaves, under
// load).
func TestUsageCountsADurableBatchOnce(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testConfig())
	defer l.Close()
	type usage struct{ disk, queued int64 }
	seen := make(chan usage, 1)
	l.NotifyDurable(func() {
		d, q := l.Usage()
		select {
		case seen <- usage{d, q}:
		default:
		}
	})
	start, _ := l.Usage()
	rec := bytes.Repeat([]byte{'x'}, 4096)
	for i := range 20 {
		if _, err := l.Append(context.Background(), rec); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		// Nothing else is appended before the callback of this one ran.
		u := <-seen
		want := start + int64(l.Stats().AppendBytes)
		if u.queued != 0 || u.disk != want {
			t.Fatalf("append %d: at its durability, %d bytes on disk and %d queued; want %d and 0", i, u.disk, u.queued, want)
		}
		if d, q := l.Usage(); q != 0 || d != want {
			t.Fatalf("append %d: after it, %d bytes on disk and %d queued; want %d and 0", i, d, q, want)
		}
	}
}
