package edge

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/bridge"
)

// bridgeCollector exports every bridge's Status, labelled by bridge name
// (and, for drops, the reason: a fixed set, bridge.Drop*).
type bridgeCollector struct {
	status func() []bridge.Status

	connected, upstream, since, reconnects, forwarded, received, dropped *prometheus.Desc
	connectFailures, lastError                                           *prometheus.Desc
	backlogRecords, backlogMessages, backlogBytes, backlogSeconds        *prometheus.Desc
}

func newBridgeCollector(status func() []bridge.Status) *bridgeCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("edgemq_bridge_"+name, help, append([]string{"bridge"}, labels...), nil)
	}
	return &bridgeCollector{
		status:          status,
		connected:       d("connected", "1 while the bridge has a connection its upstream accepted, else 0."),
		upstream:        d("upstream", "Index in the bridge's upstreams of the current or last connection (-1: none yet)."),
		since:           d("state_since_timestamp_seconds", "When the bridge last connected or lost its connection (Unix time)."),
		reconnects:      d("reconnects_total", "Connections made after the first."),
		connectFailures: d("connect_failures_total", "Connects that failed: refused, unreachable, TLS, a refused SUBSCRIBE (the log says why)."),
		lastError:       d("last_error_timestamp_seconds", "When the last connect failed or the link was lost (Unix time; 0: never). The log says why."),
		forwarded:       d("forwarded_messages_total", "Messages the upstream acknowledged (QoS 1/2) or was sent (QoS 0)."),
		received:        d("received_messages_total", "Downlink messages made durable locally and acknowledged upstream."),
		dropped:         d("dropped_messages_total", "Messages not forwarded or brought down, by reason.", "reason"),
		backlogRecords:  d("backlog_records", "Log records the slowest forward rule has not passed: an upper bound of its waiting messages."),
		backlogMessages: d("backlog_messages", "Messages the slowest forward rule still has to send."),
		backlogBytes:    d("backlog_bytes", "Bytes of log the slowest forward rule holds back."),
		backlogSeconds:  d("backlog_seconds", "Age of the oldest message a forward rule has not had acknowledged (0: none waits)."),
	}
}

// Describe sends every descriptor.
func (c *bridgeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.connected, c.upstream, c.since, c.reconnects, c.connectFailures, c.lastError, c.forwarded, c.received,
		c.dropped, c.backlogRecords, c.backlogMessages, c.backlogBytes, c.backlogSeconds} {
		ch <- d
	}
}

// Collect reads each bridge's status once.
func (c *bridgeCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.status() {
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, s.Name)
		}
		counter := func(d *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), s.Name)
		}
		connected := 0.0
		if s.Connected {
			connected = 1
		}
		gauge(c.connected, connected)
		gauge(c.upstream, float64(s.Upstream))
		gauge(c.since, float64(s.Since.UnixNano())/1e9)
		counter(c.reconnects, s.Reconnects)
		counter(c.connectFailures, s.ConnectFailures)
		lastErr := 0.0
		if !s.LastErrorAt.IsZero() {
			lastErr = float64(s.LastErrorAt.UnixNano()) / 1e9
		}
		gauge(c.lastError, lastErr)
		counter(c.forwarded, s.Forwarded)
		counter(c.received, s.Received)
		for _, reason := range bridge.DropReasons {
			ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(s.Dropped[reason]), s.Name, reason)
		}
		gauge(c.backlogRecords, float64(s.BacklogRecords))
		gauge(c.backlogMessages, float64(s.BacklogMessages))
		gauge(c.backlogBytes, float64(s.BacklogBytes))
		gauge(c.backlogSeconds, s.BacklogSeconds)
	}
}
