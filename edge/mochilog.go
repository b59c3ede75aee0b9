package edge

import (
	"context"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// mochiHandler is the slog handler given to mochi. mochi logs whole packets
// (payloads included) under the keys "pk", "packet" and "will", logs a Warn
// for every client with a short keepalive, and one line per protocol error:
// this handler redacts those attributes, demotes mochi's lifecycle chatter
// (the broker logs its own) to Debug, and rate-limits what remains at Info
// and above.
type mochiHandler struct {
	inner    slog.Handler
	throttle *logThrottle
}

// mochiDebugMessages are mochi lines demoted to Debug.
var mochiDebugMessages = map[string]bool{
	"added hook":                     true,
	"attached listener":              true,
	"mochi mqtt starting":            true,
	"mochi mqtt server started":      true,
	"gracefully stopping server":     true,
	"stopping hook":                  true,
	"mochi mqtt server stopped":      true,
	mqtt.ErrMinimumKeepalive.Error(): true,
}

// mochiInfoMessages are mochi Warn lines about one client's protocol errors,
// demoted to Info.
var mochiInfoMessages = map[string]bool{
	"error processing packet": true,
}

// Enabled implements slog.Handler; levels are remapped in Handle.
func (h *mochiHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, min(level, slog.LevelDebug)) || h.inner.Enabled(ctx, level)
}

// Handle implements slog.Handler.
func (h *mochiHandler) Handle(ctx context.Context, r slog.Record) error {
	level := r.Level
	switch {
	case mochiDebugMessages[r.Message]:
		level = slog.LevelDebug
	case mochiInfoMessages[r.Message] && level > slog.LevelInfo:
		level = slog.LevelInfo
	}
	if !h.inner.Enabled(ctx, level) {
		return nil
	}
	suppressed := 0
	if level >= slog.LevelInfo {
		ok, n := h.throttle.allow("mochi: " + r.Message)
		if !ok {
			return nil
		}
		suppressed = n
	}
	nr := slog.NewRecord(r.Time, level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		nr.AddAttrs(redact(a))
		return true
	})
	if suppressed > 0 {
		nr.AddAttrs(slog.Int("suppressed", suppressed))
	}
	return h.inner.Handle(ctx, nr)
}

// WithAttrs implements slog.Handler.
func (h *mochiHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		out[i] = redact(a)
	}
	return &mochiHandler{inner: h.inner.WithAttrs(out), throttle: h.throttle}
}

// WithGroup implements slog.Handler.
func (h *mochiHandler) WithGroup(name string) slog.Handler {
	return &mochiHandler{inner: h.inner.WithGroup(name), throttle: h.throttle}
}

func redact(a slog.Attr) slog.Attr {
	switch a.Key {
	case "pk", "packet", "will":
		return slog.String(a.Key, "[redacted]")
	}
	return a
}
