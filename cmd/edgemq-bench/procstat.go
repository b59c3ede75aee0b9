package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/edgemq/edgemq/internal/cputime"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// procCPUSeconds is the user plus system CPU time a process has used.
func procCPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces: split after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return float64(ut+st) / clockTicks, nil
}

// procStatusKB reads one "kB" line of /proc/PID/status, e.g. VmRSS (resident
// now) or VmHWM (peak resident).
func procStatusKB(pid int, key string) (int64, error) {
	return procStatusKBFile(fmt.Sprintf("/proc/%d/status", pid), key)
}

// procStatusKBFile reads a "Key: N kB" line of a /proc file.
func procStatusKBFile(path, key string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			return strconv.ParseInt(v, 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no %s", path, key)
}

// selfCPUSeconds is the generator's own user plus system CPU time.
func selfCPUSeconds() float64 { return cputime.Self().Seconds() }

// brokerProbe samples a broker process around a measured span.
type brokerProbe struct {
	pid   int
	cpu   float64
	rssKB int64
	at    time.Time
}

func startProbe(pid int) *brokerProbe {
	if pid <= 0 {
		return nil
	}
	cpu, err := procCPUSeconds(pid)
	if err != nil {
		return nil
	}
	rss, err := procStatusKB(pid, "VmRSS")
	if err != nil {
		return nil
	}
	return &brokerProbe{pid: pid, cpu: cpu, rssKB: rss, at: time.Now()}
}

// finish fills the broker's CPU seconds over the span (and as a share of
// one core), its RSS at both ends and its peak RSS.
func (bp *brokerProbe) finish(r *Result) {
	if bp == nil {
		return
	}
	if cpu, err := procCPUSeconds(bp.pid); err == nil {
		r.BrokerCPUSeconds = cpu - bp.cpu
		if wall := time.Since(bp.at).Seconds(); wall > 0 {
			r.BrokerCPUPercent = 100 * r.BrokerCPUSeconds / wall
		}
	} else {
		r.Notes = append(r.Notes, "broker CPU unreadable: "+err.Error())
	}
	r.BrokerStartRSSMB = float64(bp.rssKB) / 1024
	if rss, err := procStatusKB(bp.pid, "VmRSS"); err == nil {
		r.BrokerEndRSSMB = float64(rss) / 1024
	}
	if hwm, err := procStatusKB(bp.pid, "VmHWM"); err == nil {
		r.BrokerPeakRSSMB = float64(hwm) / 1024
	}
}

// loadAvg1 is the one-minute load average, 0 when unreadable.
func loadAvg1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// machine describes the host for reports: CPU model, cores, memory.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if kb, err := procStatusKBFile("/proc/meminfo", "MemTotal"); err == nil {
		mem = fmt.Sprintf(", %.0f GiB RAM", float64(kb)/(1<<20))
	}
	return fmt.Sprintf("%s, %d cores%s, Linux", model, runtime.NumCPU(), mem)
}
