package edge

import (
	"github.com/prometheus/client_golang/prometheus"

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
			Help: "Unix time of the last successful checkpoint (0: none since start). Alert when it lags far behind storage.checkpoint_interval.",
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
