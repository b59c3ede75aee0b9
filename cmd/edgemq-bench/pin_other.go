//go:build !linux

package main

import "errors"

// pinSelf: -pin sets CPU affinity with sched_setaffinity(2), on Linux only.
func pinSelf(cpu int) error { return errors.New("-pin needs Linux") }
