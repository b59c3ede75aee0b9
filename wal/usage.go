package wal

// Usage returns what counts against Config.MaxBytes: the bytes the
// segments take on disk and the bytes queued for the writer. It is two
// atomic loads, cheap enough for every append's admission decision. Their
// sum never falls short of what the log holds: the writer adds a batch to
// the disk count before it takes it off the queued count, and Usage loads
// the queued count first.
func (l *Log) Usage() (disk, queued int64) {
	queued = l.stats.queued.Load()
	return l.stats.diskBytes.Load(), queued
}

// usage is Usage's sum.
func (l *Log) usage() int64 {
	disk, queued := l.Usage()
	return disk + queued
}
