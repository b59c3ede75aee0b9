package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"
)

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
