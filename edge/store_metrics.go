package edge

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/qos"
	"github.com/edgemq/edgemq/wal"
)

// storeMetrics are the durable delivery path's figures.
type storeMetrics struct {
	online       prometheus.Gauge
	wills        prometheus.Counter
	expired      prometheus.Counter
	duplicates   prometheus.Counter
	appendErrors prometheus.Counter
	acked        prometheus.Counter
	dispatched   prometheus.Counter
	refused      *prometheus.CounterVec
	dropped      *prometheus.CounterVec
	delivered    *prometheus.CounterVec

	checkpoints        prometheus.Counter
	checkpointFailures prometheus.Counter
	checkpointLast     prometheus.Gauge
}

func newStoreMetrics(reg prometheus.Registerer) (*storeMetrics, error) {
	m := &storeMetrics{
		online: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgemq_sessions_delivering",
			Help: "Connected sessions whose delivery pump runs.",
		}),
		wills: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgemq_wills_published_total",
			Help: "Will messages published (connection lost, will delay passed or session ended).",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgemq_sessions_expired_total",
			Help: "Offline sessions ended by their expiry interval.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgemq_messages_duplicate_total",
			Help: "Inbound QoS 2 messages received again before their PUBREL, acknowledged and not delivered again.",
		}),
		appendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgemq_store_append_errors_total",
			Help: "Log appends that failed (disk full, I/O error, closed log).",
		}),
		acked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgemq_deliveries_acknowledged_total",
			Help: "Outbound QoS 1/2 messages acknowledged by their subscriber (PUBACK or PUBCOMP).",
		}),
		dispatched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgemq_messages_dispatched_total",
			Help: "QoS 1/2 messages the dispatcher has matched against subscriptions.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgemq_publishes_refused_total",
			Help: "QoS 1/2 publishes refused because the log could not take them, by reason.",
		}, []string{"reason"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgemq_deliveries_dropped_total",
			Help: "Deliveries not made, by reason (expired, acl, too_large, packet_ids).",
		}, []string{"reason"}),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgemq_deliveries_total",
			Help: "Messages written to subscribers by the durable delivery path, by QoS.",
		}, []string{"qos"}),
		checkpoints: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgemq_storage_checkpoints_total",
			Help: "Checkpoints written (snapshot of the state, then the log trimmed below what is still needed).",
		}),
		checkpointFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgemq_storage_checkpoint_failures_total",
			Help: "Checkpoints that failed. Alert on any increase: without checkpoints the log is never trimmed and fills its disk budget.",
		}),
		checkpointLast: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgemq_storage_checkpoint_last_success_timestamp_seconds",
			Help: "Unix time the snapshot on disk was last known current: its checkpoint succeeded then, or there was nothing new to checkpoint (0: not since start). Alert when it lags far behind storage.checkpoint_interval.",
		}),
	}
	for _, c := range []prometheus.Collector{m.online, m.wills, m.expired, m.duplicates, m.appendErrors, m.acked, m.dispatched, m.refused, m.dropped, m.delivered,
		m.checkpoints, m.checkpointFailures, m.checkpointLast} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// logCollector exports the log's Stats.
type logCollector struct {
	log *wal.Log

	appends, appendBytes, fsyncs, fsyncSeconds, groupSize, appendSeconds   *prometheus.Desc
	segments, diskBytes, maxBytes, first, last, writeErrors, syncErrors    *prometheus.Desc
	fullRefusals, droppedRecords, removedSegments, corruptReads, cursorLag *prometheus.Desc
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
	}
}

// Describe sends every descriptor.
func (c *logCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.appends, c.appendBytes, c.fsyncs, c.fsyncSeconds, c.groupSize, c.appendSeconds,
		c.segments, c.diskBytes, c.maxBytes, c.first, c.last, c.writeErrors, c.syncErrors,
		c.fullRefusals, c.droppedRecords, c.removedSegments, c.corruptReads, c.cursorLag} {
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
	for _, cs := range st.Cursors {
		ch <- prometheus.MustNewConstMetric(c.cursorLag, prometheus.GaugeValue, float64(cs.Lag), cs.Name)
	}
}

// sessionCollector exports what the store's sessions hold, connected or
// offline, summed on scrape (the store owns these facts; mochi forgets an
// offline session and knows nothing of what a restart recovered).
type sessionCollector struct {
	s                                   *store
	sessions, subscriptions, inflight   *prometheus.Desc
	queued, queuedMax, oldestQueuedSecs *prometheus.Desc
}

func newSessionCollector(s *store) *sessionCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &sessionCollector{
		s:             s,
		sessions:      d("edgemq_mqtt_sessions", "Sessions, connected or offline (a persistent session outlives its connection until it expires)."),
		subscriptions: d("edgemq_mqtt_subscriptions", "Subscriptions of every session, connected or offline, shared ones included."),
		inflight:      d("edgemq_mqtt_inflight_messages", "Outbound QoS 1/2 messages sent and not yet acknowledged (PUBACK or PUBCOMP), of connected and offline sessions. Messages still waiting to be sent are edgemq_mqtt_queued_messages."),
		queued: d("edgemq_mqtt_queued_messages", "Messages waiting to be sent, summed over sessions and shared groups: "+
			"queued in RAM, or, for a queue reading its backlog from the log (offline, or over its RAM bound), the log records it has still to read (an upper bound)."),
		queuedMax:        d("edgemq_mqtt_queued_messages_max", "The longest queue of one session or shared group, counted as edgemq_mqtt_queued_messages."),
		oldestQueuedSecs: d("edgemq_mqtt_oldest_queued_message_age_seconds", "Age of the oldest message some session or shared group still waits for (0: none waits)."),
	}
}

// Describe implements prometheus.Collector.
func (c *sessionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sessions, c.subscriptions, c.inflight, c.queued, c.queuedMax, c.oldestQueuedSecs} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *sessionCollector) Collect(ch chan<- prometheus.Metric) {
	q := c.s.queueStats()
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	gauge(c.sessions, float64(q.sessions))
	gauge(c.subscriptions, float64(q.subscriptions))
	gauge(c.inflight, float64(q.inflight))
	gauge(c.queued, float64(q.queued))
	gauge(c.queuedMax, float64(q.queuedMax))
	age := 0.0
	if created, ok := c.s.createdFrom(q.oldest); ok {
		age = max(0, time.Since(time.Unix(0, created)).Seconds())
	}
	gauge(c.oldestQueuedSecs, age)
}

// queueStats are the store's figures at one moment.
type queueStats struct {
	sessions, subscriptions, inflight int
	queued, queuedMax                 uint64
	oldest                            uint64 // the lowest position with something queued (0: none)
}

func (s *store) queueStats() queueStats {
	progress := s.fannedOut.Load()
	var st queueStats
	note := func(q *qos.Queue) {
		n, pos := uint64(q.Len()), q.Position(progress)
		if n == 0 && pos < progress {
			n = progress - pos
		}
		st.queued += n
		st.queuedMax = max(st.queuedMax, n)
		if n > 0 && (st.oldest == 0 || pos < st.oldest) {
			st.oldest = pos
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.sessions = len(s.sessions)
	for _, sess := range s.sessions {
		sess.mu.Lock()
		st.subscriptions += len(sess.subs)
		st.inflight += len(sess.inflight)
		sess.mu.Unlock()
		note(sess.queue)
	}
	for _, g := range s.groups {
		note(g.queue)
	}
	return st
}

// createdFrom returns when the first QoS 1/2 message at or after from was
// accepted (Unix nanoseconds), reading a few records of the log.
func (s *store) createdFrom(from uint64) (int64, bool) {
	if from == 0 {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(s.ctx, 100*time.Millisecond)
	defer cancel()
	r := s.log.NewReader(max(from, s.log.FirstOffset()))
	last := s.log.LastOffset()
	for range 64 {
		if r.Offset() > last {
			break
		}
		_, rec, err := r.Next(ctx)
		if err != nil {
			break
		}
		if qos.KindOf(rec) != qos.KindMessage {
			continue
		}
		var m qos.Message
		if m.UnmarshalBinary(rec) == nil && (m.QoS > 0 || m.Will) {
			return m.Created, true
		}
	}
	return 0, false
}
