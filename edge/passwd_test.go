package edge_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgemq/edgemq/edge"
)

func TestSetPasswordAndCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	if err := edge.SetPassword(path, "bob", "hunter2"); err != nil {
		t.Fatal(err)
	}
	if err := edge.SetPassword(path, "alice", "s3cret"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "alice:$2") || !strings.HasPrefix(lines[1], "bob:$2") {
		t.Fatalf("file = %q, want alice then bob with bcrypt hashes", data)
	}
	if strings.Contains(string(data), "hunter2") {
		t.Fatal("file holds a password in clear")
	}

	pw, err := edge.LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		user, password string
		want           bool
	}{
		{"bob", "hunter2", true},
		{"alice", "s3cret", true},
		{"bob", "s3cret", false},
		{"bob", "", false},
		{"carol", "hunter2", false},
		{"", "", false},
	} {
		if got := pw.Check(c.user, []byte(c.password)); got != c.want {
			t.Errorf("Check(%q, %q) = %v, want %v", c.user, c.password, got, c.want)
		}
	}

	// Replacing a password keeps the other users.
	if err := edge.SetPassword(path, "bob", "correct horse"); err != nil {
		t.Fatal(err)
	}
	pw, err = edge.LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if pw.Check("bob", []byte("hunter2")) || !pw.Check("bob", []byte("correct horse")) || !pw.Check("alice", []byte("s3cret")) {
		t.Fatal("after replacing bob's password: wrong checks")
	}
}

func TestSetPasswordRejects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	for _, c := range []struct{ user, password string }{
		{"", "x"}, {"a:b", "x"}, {"a\nb", "x"}, {"a", ""},
		{"#", "x"}, {"#admin", "x"}, {" bob", "x"}, {"bob ", "x"}, {"\tbob", "x"}, {"a\x00b", "x"}, {"a\rb", "x"}, {"\xff", "x"},
		{"a", strings.Repeat("x", 73)}, // bcrypt reads at most 72 bytes
	} {
		if err := edge.SetPassword(path, c.user, c.password); err == nil {
			t.Errorf("SetPassword(%q, %q) = nil, want an error", c.user, c.password)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a rejected SetPassword created the file: %v", err)
	}
	if err := edge.SetPassword(filepath.Join(t.TempDir(), "no", "dir", "passwd"), "a", "x"); err == nil {
		t.Error("SetPassword into a missing directory: want an error")
	}
}

func TestDeletePassword(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	for _, u := range []string{"a", "b"} {
		if err := edge.SetPassword(path, u, "pw-"+u); err != nil {
			t.Fatal(err)
		}
	}
	if err := edge.DeletePassword(path, "a"); err != nil {
		t.Fatal(err)
	}
	pw, err := edge.LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pw["a"]; ok || !pw.Check("b", []byte("pw-b")) {
		t.Fatalf("after deleting a: %v", pw)
	}
	if err := edge.DeletePassword(path, "a"); !errors.Is(err, edge.ErrNoSuchUser) {
		t.Fatalf("deleting a again = %v, want ErrNoSuchUser", err)
	}
	if err := edge.DeletePassword(filepath.Join(t.TempDir(), "missing"), "a"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("deleting from a missing file = %v", err)
	}
}

func TestLoadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := edge.SetPassword(good, "u", "p"); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(good)
	hash := strings.TrimSpace(strings.TrimPrefix(string(data), "u:"))

	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pw, err := edge.LoadPasswordFile(write("comments", "# users\n\n  # indented comment\nu:"+hash+"  \r\n# end\n"))
	if err != nil || !pw.Check("u", []byte("p")) {
		t.Fatalf("comments and blank lines: %v, %v", pw, err)
	}
	for name, c := range map[string]struct{ content, want string }{
		"no colon":   {"# x\nuser\n", ":2: want user:bcrypt-hash"},
		"no user":    {":" + hash + "\n", ":1: want user:bcrypt-hash"},
		"not bcrypt": {"# x\n\nu:$6$salt$sha512crypt\n", `:3: user "u": not a bcrypt hash`},
	} {
		_, err := edge.LoadPasswordFile(write(strings.ReplaceAll(name, " ", "-"), c.content))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to contain %q", name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "sha512crypt") {
			t.Errorf("%s: the error echoes the hash: %v", name, err)
		}
	}
	// Every bad line is reported, each with its number; a username is
	// never trimmed into another one.
	_, err = edge.LoadPasswordFile(write("many", "ok:"+hash+"\n bob:"+hash+"\nnocolon\n\nv:notahash\n"))
	for _, want := range []string{`:2: username " bob"`, ":3: want user:bcrypt-hash", `:5: user "v": not a bcrypt hash`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("several bad lines: error %v, want it to contain %q", err, want)
		}
	}
	if _, err := edge.LoadPasswordFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}
