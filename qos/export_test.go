package qos

// Crash stops the engine as a kill -9 would, as far as the log is
// concerned: its goroutines end, no last checkpoint is written, and a new
// Engine over the same Log and Snapshots recovers from them.
func (e *Engine) Crash() {
	e.runMu.Lock()
	e.closed = true
	e.runMu.Unlock()
	e.cancel()
	e.wg.Wait()
}

// Checkpoint writes a checkpoint now, as the dispatcher would.
func (e *Engine) Checkpoint() error {
	return e.checkpoint(e.shadowCopy())
}
