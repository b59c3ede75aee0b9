// Command edgemq is the edgemq broker daemon.
//
//	edgemq [run] [-c FILE]          run the broker (embedded defaults without -c)
//	edgemq check [-repair] [[-c] FILE] check a config file (or the defaults) and the log; exit 1 listing every problem
//	edgemq passwd [-b|-D] FILE USER add, change (-b: password as argument) or delete (-D) a user
//	edgemq health [-c FILE]         ask the running broker's /healthz; exit 1 unless 200
//	edgemq version                  print the version, Go version and mochi version
//
// main only wires: run holds everything testable, and main adds the process:
// the real arguments and streams, the signals and the exit code.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

// errUsage marks a command line that cannot be run; main exits 2 for it.
var errUsage = errors.New("usage")

// errReported is returned when the problem has already been printed in full
// (edgemq check's list); main then prints nothing more and exits 1.
var errReported = errors.New("reported")

const usage = `edgemq: an MQTT + WebSocket edge broker that loses nothing.

Usage:
  edgemq [run] [-c FILE]            run the broker; without -c, on embedded safe defaults
  edgemq check [-repair] [[-c] FILE]
                                    check a config file (without one, the embedded defaults),
                                    the password and TLS files it names, and the log under
                                    storage.dir; every problem, one a line, then exit 1
                                    (-repair: also mend a damaged log; stop the broker first)
  edgemq passwd [-b] FILE USER [PW] add or change USER's password (bcrypt), asking for it
                                    (-b: take it from the command line, like mosquitto_passwd)
  edgemq passwd -D FILE USER        delete USER
  edgemq health [-c FILE]           ask the running broker's /healthz (http.address); exit 1 unless 200
  edgemq version                    print version information

A first SIGTERM or SIGINT shuts down gracefully; a second exits at once. SIGHUP (systemctl
reload) reloads the password file, the ACL and the TLS certificates; a bad file changes nothing.
Configuration reference: deploy/edgemq.example.yaml; documentation: docs/ and README.md.
`

func main() {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	// SIGHUP is what `systemctl reload` sends (deploy/edgemq.service); by
	// default it would end the process, which systemd then does not restart.
	// `edgemq run` reloads on it (reloader); every other command ignores it.
	signal.Ignore(syscall.SIGHUP)
	go handleSignals(sigs, cancel, os.Stderr, os.Exit)

	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	os.Exit(exitCode(err, os.Stderr))
}

// handleSignals cancels the context on the first signal, so the broker shuts
// down gracefully, and exits at once on the second.
func handleSignals(sigs <-chan os.Signal, cancel context.CancelCauseFunc, stderr io.Writer, exit func(int)) {
	s := <-sigs
	cancel(fmt.Errorf("received %v", s))
	s = <-sigs
	fmt.Fprintf(stderr, "edgemq: second signal (%v): exiting at once\n", s)
	code := 1
	if ss, ok := s.(syscall.Signal); ok {
		code = 128 + int(ss)
	}
	exit(code)
}

// exitCode prints err and returns the process exit code for it: 0 for none,
// 2 for a usage error, 1 for anything else.
func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errReported):
		return 1
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "edgemq: %v\nRun 'edgemq help' for usage.\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "edgemq: %v\n", err)
	return 1
}

// run runs the command line args (without the program name). It returns when
// the command is done or, for the broker, after ctx is cancelled and the
// broker has shut down.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprint(stdout, usage)
		return nil
	}
	cmd, rest := "run", args
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, rest = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runBroker(ctx, rest, stderr)
	case "check":
		return runCheck(rest, stdout, stderr)
	case "passwd":
		return runPasswd(rest, stdin, stderr)
	case "health":
		return runHealth(ctx, rest, stdout, stderr)
	case "version":
		if len(rest) > 0 {
			return fmt.Errorf("%w: version takes no arguments", errUsage)
		}
		return runVersion(stdout)
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
}

// newFlagSet is a flag set whose errors are returned as usage errors.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("edgemq "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args into fs, wrapping a bad flag as a usage error.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nil
}
