// Package disktest gives tests a small real disk that can fill up: a tmpfs
// of a given size, mounted for one test, and a filler that takes every
// byte left on it. edge's and bridge's full-disk tests share it, since test
// helpers do not cross packages.
//
// It is test support: only _test.go files import it. It guarantees that a
// mounted tmpfs is unmounted when the test ends; without root (no mount)
// the test is skipped, not failed, and so it is off Linux (tmpfs_other.go).
// It does not simulate a disk: the errors the tests see (ENOSPC) come from
// the kernel.
package disktest

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Fill writes a file in dir until the disk is full and returns a function
// that removes it, freeing the space again.
func Fill(t testing.TB, dir string) (free func()) {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()
	return func() {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}
