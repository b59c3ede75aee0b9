//go:build unix

package main

import (
	"fmt"
	"syscall"
)

// raiseFDLimit raises this process's soft limit on open files to its hard
// limit and returns it. Brokers the compare driver starts inherit it (an
// explicit Setrlimit stops Go from restoring the original soft limit in
// children), so 10,000 idle connections fit on both sides.
func raiseFDLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("setrlimit RLIMIT_NOFILE %d: %w", rl.Max, err)
	}
	return rl.Cur, nil
}
