package wal

// CheckFS is Check over a file-system seam, for the power-loss test.
func CheckFS(dir string, fs FS) (Report, error) { return check(dir, fs.withDefaults(), nil) }
