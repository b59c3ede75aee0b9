package qos

import (
	"fmt"
	"testing"
)

// BenchmarkIndexWalk is one walk of the topic index for a 4-level topic
// among 1,000 exact filters, 10 with '+' and one '#' (the fan-in
// subscriber's): what the dispatcher pays per message to find its
// subscriptions.
func BenchmarkIndexWalk(b *testing.B) {
	var x index
	for i := range 1000 {
		x.add(fmt.Sprintf("site/%d/dev/temp", i), &sub{})
	}
	for range 10 {
		x.add("site/+/dev/temp", &sub{})
	}
	x.add("site/#", &sub{})
	out := make([]*sub, 0, 16)
	b.ReportAllocs()
	for b.Loop() {
		if out = x.match("site/500/dev/temp", out[:0]); len(out) != 12 {
			b.Fatalf("%d matches, want 12", len(out))
		}
	}
}
