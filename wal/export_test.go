package wal

import "log/slog"

// CheckFS and RepairFS are Check and Repair over a file-system seam, for
// the tests on simulated file systems.
func CheckFS(dir string, fs FS) (Report, error) { return check(dir, fs.withDefaults(), nil) }

func RepairFS(dir string, fs FS, logger *slog.Logger) (Report, error) {
	return repair(dir, fs.withDefaults(), logger)
}
