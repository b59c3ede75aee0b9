//go:build !linux

package wal

// fsyncHolding is Linux only (rawio_linux.go): elsewhere the writer always
// calls f.Sync.
func fsyncHolding(File) (ok bool, err error) { return false, nil }
