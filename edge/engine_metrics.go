package edge

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/qos"
	"github.com/edgemq/edgemq/wal"
)

// engineCollector exports the delivery engine's figures, read once per
// scrape from qos.Engine.Stats.
type engineCollector struct {
	e *qos.Engine

	delivering, wills, expired, duplicates, appendErrors, acked, dispatched   *prometheus.Desc
	refused, dropped, delivered, redelivered, checkpoints, checkpointFailures *prometheus.Desc
	checkpointLast, sessions, subscriptions, inflight, retained               *prometheus.Desc
	queued, queuedMax, oldestQueued                                           *prometheus.Desc
}

func newEngineCollector(e *qos.Engine) *engineCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &engineCollector{
		e:             e,
		delivering:    d("edgemq_sessions_delivering", "Sessions with a connection."),
		sessions:      d("edgemq_mqtt_sessions", "Sessions, connected or offline (a persistent session outlives its connection until it expires)."),
		subscriptions: d("edgemq_mqtt_subscriptions", "Subscriptions of every session, connected or offline, shared ones included."),
		inflight:      d("edgemq_mqtt_inflight_messages", "Outbound QoS 1/2 messages sent and not yet acknowledged (PUBACK or PUBCOMP), of connected and offline sessions. Messages still waiting to be sent are edgemq_mqtt_queued_messages."),
		retained:      d("edgemq_mqtt_retained_messages", "Retained messages (one per topic)."),
		queued: d("edgemq_mqtt_queued_messages", "Messages waiting to be sent, summed over sessions and shared groups: "+
			"queued in RAM, or, for a queue reading its backlog from the log (offline, or over its RAM bound), the log records it has still to read (an upper bound)."),
		queuedMax:          d("edgemq_mqtt_queued_messages_max", "The longest queue of one session or shared group, counted as edgemq_mqtt_queued_messages."),
		oldestQueued:       d("edgemq_mqtt_oldest_queued_message_age_seconds", "Age of the oldest message some session or shared group still waits for (0: none waits)."),
		wills:              d("edgemq_wills_published_total", "Will messages published (connection lost, will delay passed or session ended)."),
		expired:            d("edgemq_sessions_expired_total", "Offline sessions ended by their expiry interval."),
		duplicates:         d("edgemq_messages_duplicate_total", "Inbound QoS 2 messages received again before their PUBREL, acknowledged and not delivered again."),
		appendErrors:       d("edgemq_store_append_errors_total", "Delivery records the log did not take (disk full, I/O error, closed log)."),
		acked:              d("edgemq_deliveries_acknowledged_total", "Outbound QoS 1/2 messages acknowledged by their subscriber (PUBACK or PUBCOMP)."),
		dispatched:         d("edgemq_messages_dispatched_total", "Logged messages the dispatcher has matched against subscriptions."),
		refused:            d("edgemq_publishes_refused_total", "Publishes refused because the log could not take them, by reason.", "reason"),
		dropped:            d("edgemq_deliveries_dropped_total", "Deliveries not made, by reason (expired, acl, too_large, unreadable, at_most_once: a shared group's QoS 0 hand-out that may have gone out before a restart; QoS 0 over the queue bound is edgemq_mqtt_dropped_messages_total with reason queue_full).", "reason"),
		delivered:          d("edgemq_deliveries_total", "PUBLISH packets written to subscribers by the engine, resends included, by delivery QoS.", "qos"),
		redelivered:        d("edgemq_redeliveries_total", "PUBLISH packets written again (DUP) after a reconnect or restart."),
		checkpoints:        d("edgemq_storage_checkpoints_total", "Checkpoints written (snapshot of the state, then the log trimmed below what is still needed)."),
		checkpointFailures: d("edgemq_storage_checkpoint_failures_total", "Checkpoints that failed. Alert on any increase: without checkpoints the log is never trimmed and fills its disk budget."),
		checkpointLast:     d("edgemq_storage_checkpoint_last_success_timestamp_seconds", "Unix time the snapshot on disk was last known current: its checkpoint succeeded then, or there was nothing new to checkpoint (0: not since start). Alert when it lags far behind storage.checkpoint_interval."),
	}
}

// Describe sends every descriptor.
func (c *engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.delivering, c.sessions, c.subscriptions, c.inflight, c.retained, c.queued, c.queuedMax, c.oldestQueued, c.wills, c.expired, c.duplicates, c.appendErrors, c.acked,
		c.dispatched, c.refused, c.dropped, c.delivered, c.redelivered, c.checkpoints, c.checkpointFailures, c.checkpointLast} {
		ch <- d
	}
}

// Collect reads the engine's Stats once.
func (c *engineCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.e.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	gauge(c.delivering, float64(st.Connected))
	gauge(c.sessions, float64(st.Sessions))
	gauge(c.subscriptions, float64(st.Subscriptions))
	gauge(c.inflight, float64(st.Inflight))
	gauge(c.retained, float64(st.Retained))
	gauge(c.queued, float64(st.Queued))
	gauge(c.queuedMax, float64(st.QueuedMax))
	age := 0.0
	if !st.OldestQueued.IsZero() {
		age = max(0, time.Since(st.OldestQueued).Seconds())
	}
	gauge(c.oldestQueued, age)
	counter(c.wills, st.Wills)
	counter(c.expired, st.Expired)
	counter(c.duplicates, st.Duplicates)
	counter(c.appendErrors, st.RecordFailures+st.Refused-st.RefusedFull)
	counter(c.acked, st.Acked)
	counter(c.dispatched, st.Dispatched)
	counter(c.refused, st.RefusedFull, "storage_full")
	counter(c.refused, st.Refused-st.RefusedFull, "storage_error")
	counter(c.dropped, st.DroppedExpired, "expired")
	counter(c.dropped, st.DroppedDenied, "acl")
	counter(c.dropped, st.DroppedTooLarge, "too_large")
	counter(c.dropped, st.DroppedUnreadable, "unreadable")
	counter(c.dropped, st.DroppedAtMostOnce, "at_most_once")
	for q, n := range st.DeliveredQoS {
		counter(c.delivered, n, string(rune('0'+q)))
	}
	counter(c.redelivered, st.Redelivered)
	counter(c.checkpoints, st.Checkpoints)
	counter(c.checkpointFailures, st.CheckpointFailures)
	var last float64
	if !st.LastCheckpoint.IsZero() {
		last = float64(st.LastCheckpoint.UnixNano()) / 1e9
	}
	gauge(c.checkpointLast, last)
}

// logCollector exports the log's Stats.
type logCollector struct {
	log *wal.Log

	appends, appendBytes, fsyncs, fsyncSeconds, groupSize, appendSeconds   *prometheus.Desc
	segments, diskBytes, maxBytes, first, last, writeErrors, syncErrors    *prometheus.Desc
	fullRefusals, droppedRecords, removedSegments, corruptReads, cursorLag *prometheus.Desc
	ledBatches                                                             *prometheus.Desc
}

func newLogCollector(l *wal.Log) *logCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("edgemq_log_"+name, help, labels, nil)
	}
	return &logCollector{
		log:             l,
		appends:         d("appends_total", "Records made durable."),
		appendBytes:     d("append_bytes_total", "Bytes of records made durable, framing included."),
		fsyncs:          d("fsyncs_total", "Segment fsyncs."),
		fsyncSeconds:    d("fsync_seconds", "Latency of segment fsyncs."),
		groupSize:       d("group_records", "Records per group commit."),
		appendSeconds:   d("append_seconds", "Latency of an append, from call to durable."),
		segments:        d("segments", "Segment files on disk."),
		diskBytes:       d("disk_bytes", "Size of the log on disk."),
		maxBytes:        d("budget_bytes", "The log's disk budget (0: none)."),
		first:           d("first_offset", "Oldest offset in the log."),
		last:            d("last_offset", "Newest durable offset in the log."),
		writeErrors:     d("write_errors_total", "Failed writes."),
		syncErrors:      d("sync_errors_total", "Failed fsyncs."),
		fullRefusals:    d("full_refusals_total", "Appends refused because the disk budget or the disk was full."),
		droppedRecords:  d("dropped_records_total", "Records removed by retention while a cursor still needed them."),
		removedSegments: d("removed_segments_total", "Segments removed by retention."),
		corruptReads:    d("corrupt_reads_total", "Reads that met a bad checksum."),
		cursorLag:       d("cursor_lag_records", "Durable records at or after a cursor.", "cursor"),
		ledBatches:      d("led_batches_total", "Batches a publish wrote on its connection's goroutine (a quiet log), not the log's writer."),
	}
}

// Describe sends every descriptor.
func (c *logCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.appends, c.appendBytes, c.fsyncs, c.fsyncSeconds, c.groupSize, c.appendSeconds,
		c.segments, c.diskBytes, c.maxBytes, c.first, c.last, c.writeErrors, c.syncErrors,
		c.fullRefusals, c.droppedRecords, c.removedSegments, c.corruptReads, c.cursorLag, c.ledBatches} {
		ch <- d
	}
}

// Collect reads the log's Stats once.
func (c *logCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.log.Stats()
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	hist := func(d *prometheus.Desc, h wal.Histogram) {
		ch <- prometheus.MustNewConstHistogram(d, h.Count, h.Sum, h.Buckets())
	}
	counter(c.appends, st.Appends)
	counter(c.appendBytes, st.AppendBytes)
	counter(c.fsyncs, st.Fsyncs)
	hist(c.fsyncSeconds, st.FsyncSeconds)
	hist(c.groupSize, st.GroupSize)
	hist(c.appendSeconds, st.AppendSeconds)
	gauge(c.segments, float64(st.Segments))
	gauge(c.diskBytes, float64(st.DiskBytes))
	gauge(c.maxBytes, float64(st.MaxBytes))
	gauge(c.first, float64(st.FirstOffset))
	gauge(c.last, float64(st.LastOffset))
	counter(c.writeErrors, st.WriteErrors)
	counter(c.syncErrors, st.SyncErrors)
	counter(c.fullRefusals, st.FullRefusals)
	counter(c.droppedRecords, st.DroppedRecords)
	counter(c.removedSegments, st.RemovedSegments)
	counter(c.corruptReads, st.CorruptReads)
	counter(c.ledBatches, st.LedBatches)
	for _, cs := range st.Cursors {
		ch <- prometheus.MustNewConstMetric(c.cursorLag, prometheus.GaugeValue, float64(cs.Lag), cs.Name)
	}
}
