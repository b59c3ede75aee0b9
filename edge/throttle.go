package edge

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// logThrottle rate-limits repeating log lines: at most one line per message
// text per interval; the next line that passes says how many were suppressed.
// Messages are constant strings, so the map stays small.
type logThrottle struct {
	every time.Duration
	mu    sync.Mutex
	seen  map[string]*throttled
}

type throttled struct {
	at         time.Time
	suppressed int
}

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

func (t *logThrottle) log(l *slog.Logger, level slog.Level, msg string, args ...any) {
	ctx := context.Background()
	if !l.Enabled(ctx, level) {
		return
	}
	ok, n := t.allow(msg)
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.Log(ctx, level, msg, args...)
}
