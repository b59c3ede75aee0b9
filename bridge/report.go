package bridge

import (
	"cmp"
	"slices"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// RuleBacklog is what one forward rule has not had acknowledged yet, read
// from the log on disk (CountBacklogs): what `edgemq check` reports,
// whether the broker runs or not.
type RuleBacklog struct {
	// Rule is the index in Config.Forward; Cursor the rule's cursor name.
	Rule   int
	Cursor string
	// Placed is false when the rule has no cursor yet (it never ran): it
	// starts at the end of the log, with nothing behind it.
	Placed bool
	// Offset is the cursor's position: the next record the rule reads.
	Offset uint64
	// Messages and MessageBytes are the messages from Offset on that the
	// rule sends (its filter matches, not brought down by this bridge, not
	// expired at now), and the size of their records.
	Messages     uint64
	MessageBytes int64
	// LogBytes is the size of every record from Offset on: the rule holds
	// that much of the log back, and it is what MaxBacklogBytes limits.
	LogBytes int64
	// Oldest is when the oldest of the messages was accepted; zero if none.
	Oldest time.Time
}

// ScanFunc calls fn with every record of the log from offset from on, in
// order (wal.Scan over the log's directory).
type ScanFunc func(from uint64, fn func(offset uint64, rec []byte) error) error

// CountBacklogs returns, for each of cfgs (in order), its forward rules'
// backlogs, with the cursor positions in cursors (by name, as the log's
// cursor table has them) and one scan of the log from the lowest of them.
func CountBacklogs(cfgs []Config, cursors map[string]uint64, scan ScanFunc, now time.Time) ([][]RuleBacklog, error) {
	out := make([][]RuleBacklog, len(cfgs))
	type counting struct {
		cfg    Config
		origin string // cfg.origin()
		rb     *RuleBacklog
	}
	var all []counting
	for i, c := range cfgs {
		out[i] = make([]RuleBacklog, len(c.Forward))
		for j, f := range c.Forward {
			rb := &out[i][j]
			rb.Rule, rb.Cursor = j, c.cursorName(f)
			rb.Offset, rb.Placed = cursors[rb.Cursor]
			if rb.Placed {
				all = append(all, counting{c, c.origin(), rb})
			}
		}
	}
	if len(all) == 0 {
		return out, nil
	}
	from := slices.MinFunc(all, func(a, b counting) int {
		return cmp.Compare(a.rb.Offset, b.rb.Offset)
	}).rb.Offset
	err := scan(from, func(off uint64, rec []byte) error {
		h, ok := qos.PeekMessage(rec)
		for _, c := range all {
			rb := c.rb
			if off < rb.Offset {
				continue
			}
			rb.LogBytes += int64(len(rec))
			if !ok || string(h.Origin) == c.origin || !qos.Match(c.cfg.Forward[rb.Rule].Filter, string(h.Topic)) ||
				(h.Expiry > 0 && now.Unix() >= h.Expiry) {
				continue
			}
			rb.Messages++
			rb.MessageBytes += int64(len(rec))
			if rb.Oldest.IsZero() {
				rb.Oldest = time.Unix(0, h.Created)
			}
		}
		return nil
	})
	return out, err
}
