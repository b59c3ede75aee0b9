package main

import (
	"fmt"
	"os/exec"
	"strconv"
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
