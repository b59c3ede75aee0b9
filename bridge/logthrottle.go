package bridge

import (
	"sync"
	"time"
)

// logThrottle lets a repeating log line through at most once per
// logThrottleEvery, and counts the occurrences it held back, so that a
// flood (every record of a damaged stretch, every message on a stale
// subscription) costs one line a minute, not one per message. Its zero
// value is ready.
type logThrottle struct {
	mu   sync.Mutex
	last time.Time
	held int
}

const logThrottleEvery = time.Minute

// allow reports whether to log now; n is how many occurrences since the
// last line, this one included.
func (t *logThrottle) allow(now time.Time) (n int, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.held++
	if !t.last.IsZero() && now.Sub(t.last) < logThrottleEvery {
		return 0, false
	}
	n, t.last, t.held = t.held, now, 0
	return n, true
}
