package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"
)

// The CPUs of compare -pin: every broker on brokerCPU, the generator (this
// process) on generatorCPU, as issue 10's external generator measured
// them. A broker then sees one CPU: a Go broker runs with GOMAXPROCS=1,
// as on a single-core gateway.
const (
	brokerCPU    = 0
	generatorCPU = 1
)

// pinned returns cmd run under taskset on cpu (taskset execs the broker,
// so the PID, whose CPU time is measured, stays the broker's).
func pinned(cmd *exec.Cmd, cpu int) (*exec.Cmd, error) {
	ts, err := exec.LookPath("taskset")
	if err != nil {
		return nil, fmt.Errorf("-pin needs taskset (util-linux): %w", err)
	}
	p := exec.Command(ts, append([]string{"-c", strconv.Itoa(cpu), cmd.Path}, cmd.Args[1:]...)...)
	p.Dir, p.Env = cmd.Dir, cmd.Env
	return p, nil
}

// pinSelf moves every thread of this process to cpu; threads started
// later inherit it from the thread that starts them.
func pinSelf(cpu int) error {
	if runtime.NumCPU() <= max(brokerCPU, generatorCPU) {
		return fmt.Errorf("-pin needs at least %d CPUs, this machine has %d", max(brokerCPU, generatorCPU)+1, runtime.NumCPU())
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	var mask [16]uint64 // 1,024 CPUs, the kernel's cpu_set_t
	mask[cpu/64] |= 1 << (cpu % 64)
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if _, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, uintptr(tid), unsafe.Sizeof(mask), uintptr(unsafe.Pointer(&mask))); e != 0 && e != syscall.ESRCH {
			return fmt.Errorf("pin thread %d to CPU %d: %w", tid, cpu, e)
		}
	}
	return nil
}
