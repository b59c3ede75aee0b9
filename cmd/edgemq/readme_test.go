//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadme runs every command of the README's "Quick start", "Secure it"
// and "Configuration" sections as written, against the binary they install, so that the
// README cannot drift from the program. Each fenced block there is preceded
// by a marker:
//
//	<!-- readme-test -->                     run it in the section's scratch directory
//	<!-- readme-test: exit N -->              run it; it must exit N
//	<!-- readme-test: source -->             run it in the source tree (go install)
//	<!-- readme-test: background until="X" --> start it (one command), wait for X in its
//	                                         output; Ctrl-C (SIGINT) at the end of its
//	                                         section, and it must exit 0
//	<!-- readme-test: file NAME -->          write the block to NAME in that directory
//	<!-- readme-test: output -->             every line must be a line of the output of
//	                                         the block before
//	<!-- readme-test: log -->                every line must match a line the last
//	                                         background command logged (time= left out;
//	                                         every key=value shown must be there)
//	<!-- readme-test: skip REASON -->        not run, saying why
//
// Each section runs in a fresh directory of its own. A "# prints: TEXT"
// comment in a block means its output must contain TEXT.
// The blocks run in order in one network namespace of their own (unshare
// -rn), so the README's fixed ports and 0.0.0.0 addresses touch nothing
// outside it; `go install` goes to a temporary GOBIN, first on PATH.
func TestReadme(t *testing.T) {
	for _, c := range []string{"unshare", "ip", "mosquitto_pub", "mosquitto_sub", "openssl"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s not installed (Debian: util-linux, iproute2, mosquitto-clients, openssl; .ci/run installs them): skipping the README test", c)
		}
	}
	if out, err := exec.Command("unshare", "-rn", "true").CombinedOutput(); err != nil {
		t.Skipf("no network namespace (unshare -rn: %v, %s): skipping the README test", err, out)
	}
	src, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	blocks := readmeBlocks(t, filepath.Join(src, "README.md"), "Quick start", "Secure it", "Configuration")
	if len(blocks) < 5 {
		t.Fatalf("found %d marked blocks in the README's quick start and secure it sections; the markers are gone?", len(blocks))
	}

	scratch := t.TempDir()
	outDir := filepath.Join(scratch, ".readme-test")
	work := filepath.Join(scratch, "work")
	for _, d := range []string{outDir, work, filepath.Join(scratch, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := readmeScript(t, blocks, src, work, outDir)
	scriptPath := filepath.Join(scratch, "readme.sh")
	if err := os.WriteFile(scriptPath, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// Bounded, so that a command that hangs fails the test with what it printed.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-rn", "bash", scriptPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Dir = work
	cmd.Env = append(os.Environ(),
		"GOBIN="+filepath.Join(scratch, "bin"),
		"PATH="+filepath.Join(scratch, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"),
		"GOTOOLCHAIN=local", // go.mod's go line must build with the Go at hand, offline
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's commands failed: %v\n%s", err, out)
	}

	var lastBackground int
	for i, b := range blocks {
		got := readFileString(t, filepath.Join(outDir, strconv.Itoa(i)))
		switch b.kind {
		case "background":
			lastBackground = i
		case "output":
			if i == 0 {
				t.Fatalf("README.md:%d: an output block with no block before it", b.line)
			}
			before := "\n" + readFileString(t, filepath.Join(outDir, strconv.Itoa(i-1)))
			for _, want := range b.lines {
				if !strings.Contains(before, "\n"+want+"\n") {
					t.Errorf("README.md:%d: the README shows the line %q, but the command printed:\n%s", b.line, want, before)
				}
			}
			continue
		case "log":
			logged := readFileString(t, filepath.Join(outDir, strconv.Itoa(lastBackground)))
			for _, want := range b.lines {
				if !loggedLine(logged, want) {
					t.Errorf("README.md:%d: the log shows %q, but the broker logged no such line:\n%s", b.line, want, logged)
				}
			}
			continue
		}
		for _, want := range b.prints {
			if !strings.Contains(got, want) {
				t.Errorf("README.md:%d: the output should contain %q (# prints:), got:\n%s", b.line, want, got)
			}
		}
	}
}

// readmeBlock is one marked fenced block of the README.
type readmeBlock struct {
	line    int      // of the fence, 1-based
	section string   // the ## heading it is under
	kind    string   // "", "source", "background", "file", "log"
	arg     string   // background: the text to wait for; file: the name
	lines   []string // the block's content
	prints  []string // the "# prints:" texts
}

var (
	markerRE = regexp.MustCompile(`^<!-- readme-test(?::\s*(.*?))?\s*-->$`)
	untilRE  = regexp.MustCompile(`^background until="([^"]+)"$`)
	printsRE = regexp.MustCompile(`#\s*prints:\s*(.+?)\s*$`)
)

// readmeBlocks returns the marked blocks in the named sections, and fails
// on a fenced block there without a marker: every command shown is tested.
func readmeBlocks(t *testing.T, path string, sections ...string) []readmeBlock {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []readmeBlock
	var section, marker string
	var cur *readmeBlock
	hasMarker, n := false, 0
	wanted := func() bool {
		for _, s := range sections {
			if section == s {
				return true
			}
		}
		return false
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		if cur != nil {
			if strings.HasPrefix(line, "```") {
				if cur.kind != "skip" {
					blocks = append(blocks, *cur)
				}
				cur = nil
				continue
			}
			cur.lines = append(cur.lines, line)
			if m := printsRE.FindStringSubmatch(line); m != nil {
				cur.prints = append(cur.prints, m[1])
			}
			continue
		}
		switch {
		case strings.HasPrefix(line, "## "):
			section, hasMarker = strings.TrimPrefix(line, "## "), false
		case markerRE.MatchString(line):
			marker, hasMarker = markerRE.FindStringSubmatch(line)[1], true
		case strings.HasPrefix(line, "```"):
			if !wanted() {
				continue
			}
			if !hasMarker {
				t.Errorf("README.md:%d: a block in %q without a readme-test marker: every command there must be tested (or marked skip, with the reason)", n, section)
			}
			b := readmeBlock{line: n, section: section}
			kind, arg, _ := strings.Cut(marker, " ")
			switch {
			case marker == "":
			case untilRE.MatchString(marker):
				b.kind, b.arg = "background", untilRE.FindStringSubmatch(marker)[1]
			case kind == "source" || kind == "log" || kind == "output" || kind == "skip" || kind == "file" && arg != "":
				b.kind, b.arg = kind, arg
			case kind == "exit":
				if _, err := strconv.Atoi(arg); err != nil {
					t.Fatalf("README.md:%d: readme-test: exit needs a number (got %q)", n, arg)
				}
				b.kind, b.arg = kind, arg
			default:
				t.Fatalf("README.md:%d: unknown readme-test marker %q", n, marker)
			}
			cur, hasMarker = &b, false
		case strings.TrimSpace(line) != "":
			hasMarker = false // a marker belongs to the block right after it
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return blocks
}

// readmeScript is the bash script that runs the blocks in order: each
// block's output goes to outDir/<index>; the first failing block stops it,
// naming its line.
func readmeScript(t *testing.T, blocks []readmeBlock, src, work, outDir string) string {
	t.Helper()
	var s strings.Builder
	s.WriteString("set -uo pipefail\nip link set lo up || exit 1\n")
	s.WriteString(`fail() { echo "README.md:$1: $2; its output:"; cat "$3"; exit 1; }` + "\n")
	type started struct {
		line int
		out  string
	}
	var running []started // background commands of the current section
	stop := func() {
		// Ctrl-C for every command the section started; each must exit 0.
		for i := len(running) - 1; i >= 0; i-- {
			r := running[i]
			fmt.Fprintf(&s, "kill -INT $pid%d; wait $pid%d || fail %d \"exited $? after Ctrl-C\" %q\n", r.line, r.line, r.line, r.out)
		}
		running = nil
	}
	section := ""
	for i, b := range blocks {
		if b.section != section {
			stop()
		}
		out := filepath.Join(outDir, strconv.Itoa(i))
		body := strings.Join(b.lines, "\n")
		// Each section starts in a fresh directory of its own.
		dir := filepath.Join(work, strings.Map(func(r rune) rune {
			if r == ' ' || r == '/' {
				return '-'
			}
			return r
		}, b.section))
		if b.section != section {
			fmt.Fprintf(&s, "mkdir -p %q || exit 1\n", dir)
		}
		section = b.section
		if b.kind == "source" {
			dir = src
		}
		switch b.kind {
		case "file":
			fmt.Fprintf(&s, "cat > %q <<'README_TEST_EOF'\n%s\nREADME_TEST_EOF\n: > %q\n", filepath.Join(dir, b.arg), body, out)
		case "log", "output":
			fmt.Fprintf(&s, ": > %q\n", out)
		case "exit":
			fmt.Fprintf(&s, "cd %q && (set -e\n%s\n) > %q 2>&1\nrc=$?; [ $rc = %s ] || fail %d \"exited $rc, not %s\" %q\n", dir, body, out, b.arg, b.line, b.arg, out)
		case "background":
			var cmds []string
			for _, l := range b.lines {
				if c := strings.TrimSpace(l); c != "" && !strings.HasPrefix(c, "#") {
					cmds = append(cmds, c)
				}
			}
			if len(cmds) != 1 {
				t.Fatalf("README.md:%d: a background block must hold one command (got %d)", b.line, len(cmds))
			}
			// exec: the background job is the command itself, so that
			// Ctrl-C reaches it and wait reports its exit code.
			fmt.Fprintf(&s, "{ cd %q && exec %s; } > %q 2>&1 &\npid%d=$!\n", dir, cmds[0], out, b.line)
			running = append(running, started{b.line, out})
			fmt.Fprintf(&s, "for i in $(seq 200); do grep -qF -- %q %q && break; kill -0 $pid%d 2>/dev/null || fail %d 'exited before it logged %s' %q; sleep 0.1; done\n",
				b.arg, out, b.line, b.line, b.arg, out)
			fmt.Fprintf(&s, "grep -qF -- %q %q || fail %d 'did not log %s within 20 s' %q\n", b.arg, out, b.line, b.arg, out)
		default:
			fmt.Fprintf(&s, "cd %q && (set -e\n%s\n) > %q 2>&1 || fail %d \"exited $?\" %q\n", dir, body, out, b.line, out)
		}
	}
	stop()
	return s.String()
}

// loggedLine tells whether logged has a line holding every space-separated
// key=value of want (values may be quoted, with spaces inside).
func loggedLine(logged, want string) bool {
	fields := logFields(want)
	for _, l := range strings.Split(logged, "\n") {
		have := map[string]bool{}
		for _, f := range logFields(l) {
			have[f] = true
		}
		all := true
		for _, f := range fields {
			if !have[f] {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// logFields splits a slog text line into its key=value fields.
func logFields(line string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && quoted && i+1 < len(line):
			cur.WriteByte(c)
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quoted = !quoted
			cur.WriteByte(c)
		case c == ' ' && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteByte(c)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

func readFileString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
