package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/edgemq/edgemq/edge"
)

// runPasswd is `edgemq passwd [-b] [-D] FILE USER [PASSWORD]`, after
// mosquitto_passwd: it adds or changes USER's bcrypt hash in FILE (created
// with mode 0600), or deletes USER with -D. The password is read twice from
// the terminal without echo, or as one line from stdin when stdin is not a
// terminal, or taken from the command line with -b (visible in ps and shell
// history: for scripts and tests).
func runPasswd(args []string, stdin io.Reader, stderr io.Writer) error {
	fs := newFlagSet("passwd", stderr)
	batch := fs.Bool("b", false, "take the password from the command line")
	del := fs.Bool("D", false, "delete the user")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	a := fs.Args()
	switch {
	case *batch && *del:
		return fmt.Errorf("%w: passwd: -b and -D together", errUsage)
	case *batch && len(a) != 3:
		return fmt.Errorf("%w: edgemq passwd -b FILE USER PASSWORD", errUsage)
	case !*batch && len(a) != 2:
		return fmt.Errorf("%w: edgemq passwd [-D] FILE USER", errUsage)
	}
	file, user := a[0], a[1]
	if *del {
		return edge.DeletePassword(file, user)
	}
	var password string
	if *batch {
		password = a[2]
	} else {
		var err error
		if password, err = readPassword(stdin, stderr); err != nil {
			return err
		}
	}
	return edge.SetPassword(file, user, password)
}

// readPassword asks for the password twice on a terminal, or reads one line
// from a pipe.
func readPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd := int(f.Fd())
		fmt.Fprint(stderr, "Password: ")
		p1, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			return "", fmt.Errorf("passwd: read password: %w", err)
		}
		fmt.Fprint(stderr, "Reenter password: ")
		p2, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			return "", fmt.Errorf("passwd: read password: %w", err)
		}
		if !bytes.Equal(p1, p2) {
			return "", errors.New("passwd: passwords do not match")
		}
		return string(p1), nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("passwd: read password from stdin: %w", err)
	}
	return strings.TrimRight(line, "\r\n"), nil
}
