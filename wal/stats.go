package wal

import (
	"math"
	"sort"
	"sync/atomic"
	"time"
)

// Stats is a snapshot of the log's figures, for metrics. Counters count from
// Open.
type Stats struct {
	// Appends is the number of records made durable; AppendBytes their size
	// on disk, framing included.
	Appends     uint64
	AppendBytes uint64
	// Batches is the number of group-commit batches written.
	Batches uint64
	// Fsyncs is the number of segment fsyncs; FsyncSeconds their latency.
	Fsyncs       uint64
	FsyncSeconds Histogram
	// GroupSize is the number of records per batch.
	GroupSize Histogram
	// AppendSeconds is the latency of Append, from call to durable.
	AppendSeconds Histogram
	// RollSeconds is how long the batches that started a new segment took to
	// write and sync: the stall a segment roll causes (RollMax: the worst).
	RollSeconds Histogram
	RollMax     time.Duration
	// Segments is the number of segment files; DiskBytes their total size.
	Segments  int64
	DiskBytes int64
	// MaxBytes is Config.MaxBytes (0: no budget).
	MaxBytes int64
	// QueuedBytes is what waits for the writer.
	QueuedBytes int64
	// FirstOffset and LastOffset are as the methods of the same names.
	FirstOffset uint64
	LastOffset  uint64
	// WriteErrors and SyncErrors count failed write() and fsync calls;
	// FullRefusals counts appends refused with ErrFull by the budget.
	WriteErrors  uint64
	SyncErrors   uint64
	FullRefusals uint64
	// DroppedRecords counts records removed by MaxAge or FullDropOldest
	// while a cursor still needed them.
	DroppedRecords uint64
	// RemovedSegments counts segments removed by retention.
	RemovedSegments uint64
	// TornBytes is what Open cut off a torn tail.
	TornBytes int64
	// CorruptReads counts reads that met a bad checksum.
	CorruptReads uint64
	// CachedReads counts reads served from the copy of the newest bytes
	// the log keeps in memory (a reader at the end of the log), without a
	// read of the file.
	CachedReads uint64
	// LedBatches counts the batches an appender wrote itself
	// (AppendAsyncLead) rather than the writer goroutine.
	LedBatches uint64
	// Cursors has one entry per cursor, by name.
	Cursors []CursorStats
}

// CursorStats describes one cursor.
type CursorStats struct {
	Name string
	// Offset is the next offset the cursor's consumer needs.
	Offset uint64
	// Lag is the number of durable records at or after Offset.
	Lag uint64
	// Dropped counts records this cursor still needed when retention
	// removed them.
	Dropped uint64
}

// Histogram is a cumulative histogram, shaped for
// prometheus.MustNewConstHistogram: Counts[i] observations were <= Bounds[i].
type Histogram struct {
	Bounds []float64
	Counts []uint64
	Count  uint64
	Sum    float64
}

// Buckets returns the histogram as prometheus.MustNewConstHistogram wants it.
func (h Histogram) Buckets() map[float64]uint64 {
	m := make(map[float64]uint64, len(h.Bounds))
	for i, b := range h.Bounds {
		m[b] = h.Counts[i]
	}
	return m
}

// Quantile estimates the q-quantile (0..1) from the buckets: the upper bound
// of the bucket holding it (+Inf beyond the last bound).
func (h Histogram) Quantile(q float64) float64 {
	if h.Count == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.Count)))
	i := sort.Search(len(h.Counts), func(i int) bool { return h.Counts[i] >= rank })
	if i == len(h.Bounds) {
		return math.Inf(1)
	}
	return h.Bounds[i]
}

// hist is a fixed-bucket histogram updated with atomics.
type hist struct {
	bounds []float64
	counts []atomic.Uint64 // per bucket, last is +Inf
	count  atomic.Uint64
	sumNs  atomic.Uint64 // sum in units of 1e-9
	max    atomic.Int64  // largest observed duration (observe only)
}

func newHist(bounds []float64) *hist {
	return &hist{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

func (h *hist) observe(d time.Duration) {
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			break
		}
	}
	h.observeValue(d.Seconds())
}

func (h *hist) observeValue(v float64) {
	i := sort.SearchFloat64s(h.bounds, v)
	h.counts[i].Add(1)
	h.count.Add(1)
	h.sumNs.Add(uint64(v * 1e9))
}

func (h *hist) snapshot() Histogram {
	out := Histogram{Bounds: h.bounds, Counts: make([]uint64, len(h.bounds))}
	var cum uint64
	for i := range h.bounds {
		cum += h.counts[i].Load()
		out.Counts[i] = cum
	}
	out.Count = h.count.Load()
	out.Sum = float64(h.sumNs.Load()) / 1e9
	return out
}

var (
	latencyBounds = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	groupBounds   = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384}
)

type counters struct {
	appends, appendBytes, batches, fsyncs          atomic.Uint64
	writeErrors, syncErrors, fullRefusals, dropped atomic.Uint64
	removedSegments, corrupt, cachedReads          atomic.Uint64
	heldFsyncs                                     atomic.Uint64 // fsyncs made holding the P (quiet)
	led                                            atomic.Uint64 // batches an appender wrote itself (lead)
	segments, diskBytes, queued, tornBytes         atomic.Int64
	fsyncLatency, groupSize, appendWait, roll      *hist
}

func (c *counters) init() {
	c.fsyncLatency = newHist(latencyBounds)
	c.appendWait = newHist(latencyBounds)
	c.groupSize = newHist(groupBounds)
	c.roll = newHist(latencyBounds)
}

// Stats returns the current figures. It takes no lock the writer holds for
// long and allocates only the cursor list.
func (l *Log) Stats() Stats {
	s := Stats{
		Appends:         l.stats.appends.Load(),
		AppendBytes:     l.stats.appendBytes.Load(),
		Batches:         l.stats.batches.Load(),
		Fsyncs:          l.stats.fsyncs.Load(),
		FsyncSeconds:    l.stats.fsyncLatency.snapshot(),
		GroupSize:       l.stats.groupSize.snapshot(),
		AppendSeconds:   l.stats.appendWait.snapshot(),
		RollSeconds:     l.stats.roll.snapshot(),
		RollMax:         time.Duration(l.stats.roll.max.Load()),
		Segments:        l.stats.segments.Load(),
		DiskBytes:       l.stats.diskBytes.Load(),
		MaxBytes:        l.cfg.MaxBytes,
		QueuedBytes:     l.stats.queued.Load(),
		WriteErrors:     l.stats.writeErrors.Load(),
		SyncErrors:      l.stats.syncErrors.Load(),
		FullRefusals:    l.stats.fullRefusals.Load(),
		DroppedRecords:  l.stats.dropped.Load(),
		RemovedSegments: l.stats.removedSegments.Load(),
		TornBytes:       l.stats.tornBytes.Load(),
		CorruptReads:    l.stats.corrupt.Load(),
		CachedReads:     l.stats.cachedReads.Load(),
		LedBatches:      l.stats.led.Load(),
	}
	l.smu.RLock()
	s.FirstOffset, s.LastOffset = l.segs[0].base, l.durable.Load()
	l.smu.RUnlock()
	s.Cursors = l.cursors.stats(s.FirstOffset, s.LastOffset)
	return s
}
