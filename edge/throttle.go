package edge

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// logThrottle rate-limits repeating log lines: at most one line per message
// text (or per message and key, see infoBy) per interval; the next line
// that passes says how many were suppressed. At most maxThrottled keys are
// tracked.
type logThrottle struct {
	every time.Duration
	mu    sync.Mutex
	seen  map[string]*throttled
}

type throttled struct {
	at         time.Time
	suppressed int
}

// maxThrottled bounds the keys a logThrottle tracks.
const maxThrottled = 4096

func newLogThrottle(every time.Duration) *logThrottle {
	return &logThrottle{every: every, seen: map[string]*throttled{}}
}

// allow reports whether a line with this message may be logged now, and how
// many were suppressed since the last one.
func (t *logThrottle) allow(msg string) (bool, int) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.seen[msg]
	if !ok {
		if len(t.seen) >= maxThrottled {
			// Keyed lines (per source) could grow the map without end:
			// forget the quiet ones; their suppressed counts go unreported.
			for k, o := range t.seen {
				if now.Sub(o.at) >= t.every {
					delete(t.seen, k)
				}
			}
			if len(t.seen) >= maxThrottled {
				return false, 0
			}
		}
		t.seen[msg] = &throttled{at: now}
		return true, 0
	}
	if now.Sub(s.at) < t.every {
		s.suppressed++
		return false, 0
	}
	n := s.suppressed
	s.at, s.suppressed = now, 0
	return true, n
}

func (t *logThrottle) warn(l *slog.Logger, msg string, args ...any) {
	t.log(l, slog.LevelWarn, msg, args...)
}

func (t *logThrottle) info(l *slog.Logger, msg string, args ...any) {
	t.log(l, slog.LevelInfo, msg, args...)
}

// infoBy is info rate-limited per key (a source address) as well as per
// message: one noisy source does not silence the others.
func (t *logThrottle) infoBy(l *slog.Logger, key, msg string, args ...any) {
	t.logKeyed(l, slog.LevelInfo, msg+"\x00"+key, msg, args...)
}

func (t *logThrottle) log(l *slog.Logger, level slog.Level, msg string, args ...any) {
	t.logKeyed(l, level, msg, msg, args...)
}

func (t *logThrottle) logKeyed(l *slog.Logger, level slog.Level, key, msg string, args ...any) {
	ctx := context.Background()
	if !l.Enabled(ctx, level) {
		return
	}
	ok, n := t.allow(key)
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.Log(ctx, level, msg, args...)
}
