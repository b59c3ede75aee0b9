package main

import (
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/edgemq/edgemq/edge"
)

// runCheck is `edgemq check [-repair] [[-c] FILE]`: check the file (or the
// embedded defaults) and the files it names, then the log under
// storage.dir. Every problem of every stage is printed to stderr in one
// pass, one a line, "file:line: field.path: reason"; warnings too, and they
// do not fail the check. The log's figures go to stdout, and with them
// each bridge forward rule's place in the log and the backlog behind it.
func runCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", stderr)
	var path string
	fs.StringVar(&path, "c", "", "config file `FILE` to check; without it, the embedded defaults")
	fs.StringVar(&path, "config", "", "same as -c")
	repair := fs.Bool("repair", false, "also repair the log: cut a torn tail, turn damaged records into holes (the broker must be stopped)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case path == "" && fs.NArg() == 1:
		path = fs.Arg(0)
	case fs.NArg() > 0:
		return fmt.Errorf("%w: check takes at most one config file: edgemq check [-repair] [-c FILE]", errUsage)
	}
	c := edge.CheckConfig(path)
	for _, w := range c.Warnings {
		fmt.Fprintln(stderr, w)
	}
	problems := c.Problems
	if readable(c) {
		// The log the configuration points at: its records, and any damage.
		lines, err := edge.CheckStorage(c.Config.Storage, *repair, slog.New(slog.NewTextHandler(stderr, nil)))
		for _, l := range lines {
			fmt.Fprintln(stdout, l)
		}
		if err != nil {
			problems = append(problems, c.At("storage.dir", "log %s: %v (edgemq check -repair mends it, losing the damaged records)", c.Config.Storage.Dir, err))
		} else {
			// Each bridge's place in that log: what waits to go upstream.
			lines, warnings, err := edge.CheckBridges(c, time.Now())
			for _, l := range lines {
				fmt.Fprintln(stdout, l)
			}
			for _, w := range warnings {
				fmt.Fprintln(stderr, w)
			}
			if err != nil {
				problems = append(problems, c.At("storage.dir", "bridges: %v", err))
			}
		}
	}
	if len(problems) > 0 {
		return reportProblems(stderr, c.Name, problems)
	}
	fmt.Fprintf(stdout, "%s: OK\n", c.Name)
	return nil
}

// reportProblems prints problems one a line, and their count when there is
// more than one, and returns errReported.
func reportProblems(stderr io.Writer, name string, problems []*edge.ConfigError) error {
	for _, p := range problems {
		fmt.Fprintln(stderr, p)
	}
	if n := len(problems); n > 1 {
		fmt.Fprintf(stderr, "%s: %d problems\n", name, n)
	}
	return errReported
}

// readable tells whether the check got far enough to know where the log is:
// the file could be read and parsed as a whole, and storage.dir has no
// problem of its own.
func readable(c *edge.ConfigCheck) bool {
	for _, p := range c.Problems {
		if p.Path == "" || p.Path == "storage" || p.Path == "storage.dir" {
			return false
		}
	}
	return true
}
