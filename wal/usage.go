package wal

// Usage returns what counts against Config.MaxBytes: the bytes the
// segments take on disk and the bytes queued for the writer. It is two
// atomic loads, cheap enough for every append's admission decision.
func (l *Log) Usage() (disk, queued int64) {
	return l.stats.diskBytes.Load(), l.stats.queued.Load()
}
