package wal

import "log/slog"

// CheckFS and RepairFS are Check and Repair over a file-system seam, for
// the tests on simulated file systems.
func CheckFS(dir string, fs FS) (Report, error) { return check(dir, fs.withDefaults(), nil) }

func RepairFS(dir string, fs FS, logger *slog.Logger) (Report, error) {
	return repair(dir, fs.withDefaults(), logger)
}

// ScanFS is Scan over a file-system seam.
func ScanFS(dir string, fs FS, from uint64, fn func(offset uint64, rec []byte) error) error {
	return scan(dir, fs.withDefaults(), from, fn)
}
