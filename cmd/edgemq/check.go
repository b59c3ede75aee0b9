package main

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/edgemq/edgemq/edge"
)

// runCheck is `edgemq check [-c] FILE`: parse and validate the file, then
// build (without starting) a broker on it, which reads the password file and
// the TLS files. Every problem is printed to stderr, one a line.
func runCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", stderr)
	var path string
	fs.StringVar(&path, "c", "", "config file `FILE` to check")
	fs.StringVar(&path, "config", "", "same as -c")
	repair := fs.Bool("repair", false, "also repair the log: cut a torn tail, turn damaged records into holes (the broker must be stopped)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case path == "" && fs.NArg() == 1:
		path = fs.Arg(0)
	case path == "" || fs.NArg() > 0:
		return fmt.Errorf("%w: check needs one config file: edgemq check -c FILE", errUsage)
	}
	cfg, err := edge.LoadConfig(path)
	if err != nil {
		n := 0
		for _, e := range flatten(err) {
			fmt.Fprintln(stderr, e)
			n++
		}
		if n == 1 {
			return errReported
		}
		fmt.Fprintf(stderr, "%s: %d problems\n", path, n)
		return errReported
	}
	// New reads the password file and the TLS certificates and keys, and binds nothing.
	if _, err := edge.New(cfg, edge.Options{Logger: slog.New(slog.DiscardHandler)}); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	// The log the file points at: its records, and any damage.
	lines, err := edge.CheckStorage(cfg.Storage, *repair, slog.New(slog.NewTextHandler(stderr, nil)))
	for _, l := range lines {
		fmt.Fprintln(stdout, l)
	}
	if err != nil {
		return fmt.Errorf("%s: storage: %w (edgemq check -repair mends it, losing the damaged records)", path, err)
	}
	fmt.Fprintf(stdout, "%s: OK\n", path)
	return nil
}

// flatten lists the errors joined in err.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}
