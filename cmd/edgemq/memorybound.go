package main

import (
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
)

// processMemory is the memory this process may use, in bytes, read from the
// Linux files once at start: the smaller of the machine's RAM (/proc/meminfo
// MemTotal) and the memory limits of its cgroup and those above it (v2
// memory.max, v1 memory.limit_in_bytes); 0 when none is known (not Linux,
// /proc or /sys/fs/cgroup not mounted). The floor of gcfloor.go is at most a
// quarter of it, as of a memory limit.
func processMemory() uint64 { return memoryBound(os.DirFS("/")) }

// memoryBound is processMemory read from fsys, a root file system.
func memoryBound(fsys fs.FS) uint64 {
	var bound uint64
	less := func(n uint64) {
		if n > 0 && (bound == 0 || n < bound) {
			bound = n
		}
	}
	if b, err := fs.ReadFile(fsys, "proc/meminfo"); err == nil {
		less(memTotal(string(b)))
	}
	cgroups, _ := fs.ReadFile(fsys, "proc/self/cgroup")
	for line := range strings.Lines(string(cgroups)) {
		// hierarchy-ID:controller-list:path (cgroups(7)); v2's list is empty.
		_, rest, _ := strings.Cut(strings.TrimSpace(line), ":")
		controllers, dir, ok := strings.Cut(rest, ":")
		root, file := "sys/fs/cgroup", "memory.max"
		switch {
		case !ok:
			continue
		case controllers != "":
			if !slices.Contains(strings.Split(controllers, ","), "memory") {
				continue
			}
			root, file = "sys/fs/cgroup/memory", "memory.limit_in_bytes"
		}
		// Up to the root: a limit above binds too, and in a container the
		// path is the host's while /sys/fs/cgroup is the container's own.
		for d := path.Clean("/" + dir); ; d = path.Dir(d) {
			if b, err := fs.ReadFile(fsys, path.Join(root, d, file)); err == nil {
				less(cgroupLimit(string(b)))
			}
			if d == "/" {
				break
			}
		}
	}
	return bound
}

// memTotal is /proc/meminfo's MemTotal in bytes; 0 when absent or malformed.
func memTotal(meminfo string) uint64 {
	for line := range strings.Lines(meminfo) {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, unit, _ := strings.Cut(strings.TrimSpace(v), " ")
			n, err := strconv.ParseUint(kb, 10, 64)
			if err != nil || unit != "kB" || n > 1<<53 {
				return 0
			}
			return n << 10
		}
	}
	return 0
}

// cgroupLimit is a cgroup memory limit file's bytes; 0 for "max" (none) or
// malformed. v1's "none" is a number near 2^63, above any RAM.
func cgroupLimit(s string) uint64 {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0
	}
	return n
}
