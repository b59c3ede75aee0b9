//go:build !linux

package main

import "errors"

// mountTmpfs: a tmpfs of a given size is mounted on Linux only.
func mountTmpfs(dir string, size int64) (unmount func(), err error) {
	return nil, errors.New("a tmpfs of a given size needs Linux")
}
