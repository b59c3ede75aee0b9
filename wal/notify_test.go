package wal_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgemq/edgemq/wal"
)

// At a durability event (NotifyDurable) the records it is for are on disk
// and no longer queued: a consumer that answers them there (the engine
// writes PUBACKs from the event) and a publisher that then appends again
// at once must see the disk budget as it is, not with the batch counted
// twice (a spurious refusal near the watermark).
func TestDurableEventSeesBatchUnqueued(t *testing.T) {
	for _, pol := range []string{"always", "never"} {
		t.Run(pol, func(t *testing.T) {
			cfg := testConfig()
			cfg.Sync = wal.SyncPolicy(pol)
			l := mustOpen(t, t.TempDir(), cfg)
			defer l.Close()
			var last atomic.Uint64
			events := make(chan int64, 16)
			l.NotifyDurable(func() {
				if l.LastOffset() >= last.Load() && last.Load() > 0 {
					select {
					case events <- l.Stats().QueuedBytes:
					default:
					}
				}
			})
			defer l.NotifyDurable(nil)
			last.Store(l.LastOffset() + 1) // the one appender: its offset
			off, err := l.AppendAsync(make([]byte, 4096))
			if err != nil {
				t.Fatal(err)
			}
			if err := l.WaitDurable(context.Background(), off); err != nil {
				t.Fatal(err)
			}
			select {
			case q := <-events:
				if q != 0 {
					t.Fatalf("queued bytes at the durability event: %d, want 0 (the batch is on disk)", q)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no durability event")
			}
		})
	}
}
