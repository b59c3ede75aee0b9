package edge

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/edgemq/edgemq/bridge"
	"github.com/edgemq/edgemq/wal"
)

// backlogWarn is the share of max_backlog_bytes or max_backlog_age a
// rule's backlog reaches when `edgemq check` warns.
const backlogWarn = 0.8

// CheckBridges reports, for each bridge of the checked configuration, the
// downlink filters it recorded as subscribed upstream, and each
// forward rule's place in the log under storage.dir as it is on disk (the
// broker stopped or running): the cursor's offset, and behind it the
// messages the rule still has to send, their bytes, the log it holds back
// and the age of the oldest. One line per rule goes to lines; a rule whose
// backlog reaches 80% of max_backlog_bytes or max_backlog_age gets a
// warning on the bridge's field. It reads the log once, whatever the
// number of rules.
func CheckBridges(c *ConfigCheck, now time.Time) (lines []string, warnings []*ConfigError, err error) {
	bs := c.Config.Bridges
	if len(bs) == 0 {
		return nil, nil, nil
	}
	dir := filepath.Join(c.Config.Storage.Dir, "log")
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil // CheckStorage said so
	}
	cursors, err := wal.Cursors(dir)
	if err != nil {
		return nil, nil, err
	}
	backlogs, err := bridge.CountBacklogs(bridgeConfigs(bs), cursors, func(from uint64, fn func(uint64, []byte) error) error {
		return wal.Scan(dir, from, fn)
	}, now)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", dir, err)
	}
	for i, bc := range bs {
		if l := subscribedLine(c.Config.Storage.Dir, bc); l != "" {
			lines = append(lines, l)
		}
		for _, rb := range backlogs[i] {
			rule := fmt.Sprintf("bridge %s forward[%d] %q", bc.Name, rb.Rule, bc.Forward[rb.Rule].Filter)
			if !rb.Placed {
				lines = append(lines, rule+": no cursor yet (it starts at the end of the log)")
				continue
			}
			age := time.Duration(0)
			if !rb.Oldest.IsZero() {
				age = max(now.Sub(rb.Oldest), 0).Round(time.Second)
			}
			l := fmt.Sprintf("%s: cursor at offset %d; %d messages (%d bytes) to forward, %d bytes of log held back",
				rule, rb.Offset, rb.Messages, rb.MessageBytes, rb.LogBytes)
			if rb.Messages > 0 {
				l += fmt.Sprintf(", the oldest %s old", age)
			}
			lines = append(lines, l)
			if limit := int64(bc.MaxBacklogBytes); limit > 0 && float64(rb.LogBytes) >= backlogWarn*float64(limit) {
				warnings = append(warnings, c.At(fmt.Sprintf("bridges[%d].max_backlog_bytes", i),
					"warning: forward[%d] holds back %d bytes of log, %.0f%% of %d: while the link is down the oldest messages beyond it are dropped",
					rb.Rule, rb.LogBytes, 100*float64(rb.LogBytes)/float64(limit), limit))
			}
			if limit := bc.MaxBacklogAge; limit > 0 && rb.Messages > 0 && float64(age) >= backlogWarn*float64(limit) {
				warnings = append(warnings, c.At(fmt.Sprintf("bridges[%d].max_backlog_age", i),
					"warning: forward[%d]'s oldest message waits for %s, %.0f%% of %s: older messages are dropped",
					rb.Rule, age, 100*float64(age)/float64(limit), limit))
			}
		}
	}
	return lines, warnings, nil
}

// subscribedLine says which downlink filters the bridge recorded as
// subscribed upstream, and which of them no rule has any more (the bridge
// unsubscribes them when it next connects to a resumed session); "" for a
// bridge with no downlink, then or now.
func subscribedLine(storageDir string, bc BridgeConfig) string {
	held, err := bridge.Subscribed(filepath.Join(storageDir, "bridges"), bc.Name)
	if err != nil {
		return fmt.Sprintf("bridge %s downlink: %v", bc.Name, err)
	}
	var stale []string
	for _, f := range held {
		if !slices.ContainsFunc(bc.Downlink, func(d DownlinkRule) bool { return d.Filter == f }) {
			stale = append(stale, f)
		}
	}
	if len(held) == 0 {
		if len(bc.Downlink) == 0 {
			return ""
		}
		return fmt.Sprintf("bridge %s downlink: no subscription recorded yet (it subscribes when it connects)", bc.Name)
	}
	l := fmt.Sprintf("bridge %s downlink: subscribed upstream %q", bc.Name, held)
	if len(stale) > 0 {
		l += fmt.Sprintf("; no rule any more for %q: unsubscribed at the next connection to a resumed session", stale)
	}
	return l
}
