package main

import (
	"testing"
	"testing/fstest"
)

// TestMemoryBound: the memory the process may use, from /proc/meminfo and
// the cgroup files of v1 and v2, its own cgroup's and those above it.
func TestMemoryBound(t *testing.T) {
	const mib = 1 << 20
	meminfo := "MemTotal:         131072 kB\nMemFree:           65536 kB\n" // 128 MiB
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	for _, c := range []struct {
		name  string
		files fstest.MapFS
		want  uint64
	}{
		{"not Linux: nothing", fstest.MapFS{}, 0},
		{"RAM alone", fstest.MapFS{"proc/meminfo": file(meminfo)}, 128 * mib},
		{"malformed MemTotal", fstest.MapFS{"proc/meminfo": file("MemTotal: lots\n")}, 0},
		{"MemTotal in another unit", fstest.MapFS{"proc/meminfo": file("MemTotal: 131072 MB\n")}, 0},
		{"v2, no limit", fstest.MapFS{
			"proc/meminfo":             file(meminfo),
			"proc/self/cgroup":         file("0::/\n"),
			"sys/fs/cgroup/memory.max": file("max\n"),
		}, 128 * mib},
		{"v2 container: its own memory.max", fstest.MapFS{
			"proc/meminfo":             file(meminfo),
			"proc/self/cgroup":         file("0::/\n"),
			"sys/fs/cgroup/memory.max": file("67108864\n"),
		}, 64 * mib},
		{"v2 service: its cgroup's limit, or one above it, the smaller", fstest.MapFS{
			"proc/meminfo":     file(meminfo),
			"proc/self/cgroup": file("0::/system.slice/edgemq.service\n"),
			"sys/fs/cgroup/system.slice/edgemq.service/memory.max": file("100663296\n"),
			"sys/fs/cgroup/system.slice/memory.max":                file("83886080\n"),
		}, 80 * mib},
		{"v2: a limit above RAM", fstest.MapFS{
			"proc/meminfo":             file(meminfo),
			"proc/self/cgroup":         file("0::/\n"),
			"sys/fs/cgroup/memory.max": file("1073741824\n"),
		}, 128 * mib},
		{"v1: memory.limit_in_bytes; its none is near 2^63", fstest.MapFS{
			"proc/meminfo":     file(meminfo),
			"proc/self/cgroup": file("5:cpu,cpuacct:/a\n4:memory:/docker/abc\n0::/\n"),
			"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": file("9223372036854771712\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes":            file("50331648\n"),
		}, 48 * mib},
		{"v1, no memory controller listed", fstest.MapFS{
			"proc/meminfo":     file(meminfo),
			"proc/self/cgroup": file("5:cpu:/\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes": file("50331648\n"),
		}, 128 * mib},
		{"malformed limit and cgroup lines", fstest.MapFS{
			"proc/meminfo":             file(meminfo),
			"proc/self/cgroup":         file("garbage\n0::/../..\n"),
			"sys/fs/cgroup/memory.max": file("-1\n"),
		}, 128 * mib},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := memoryBound(c.files); got != c.want {
				t.Errorf("memoryBound = %d, want %d", got, c.want)
			}
		})
	}
	t.Logf("this machine: %d MiB", processMemory()>>20)
}
