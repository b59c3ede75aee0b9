//go:build !linux

package disktest

import "testing"

// Tmpfs skips the test: a tmpfs of a given size is mounted on Linux only.
func Tmpfs(t testing.TB, size int) string {
	t.Helper()
	t.Skip("a tmpfs of a given size needs Linux")
	return ""
}
