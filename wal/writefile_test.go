package wal_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgemq/edgemq/wal"
)

// WriteFile creates the missing directories, replaces the file's contents
// and leaves no temporary file; a failed write leaves the old contents.
func TestWriteFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "state")
	for _, want := range []string{"first", "second"} {
		if err := wal.WriteFile(path, []byte(want), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Fatalf("read %q, %v; want %q", got, err, want)
		}
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("temporary file left: %v", err)
	}
	if err := os.Mkdir(path+".tmp", 0o700); err != nil { // the temporary file cannot be opened
		t.Fatal(err)
	}
	if err := wal.WriteFile(path, []byte("third"), 0o600); err == nil {
		t.Fatal("WriteFile succeeded with its temporary file a directory")
	}
	if got, _ := os.ReadFile(path); string(got) != "second" {
		t.Fatalf("after a failed write the file holds %q, want %q", got, "second")
	}
}

// WriteFileFunc writes what its function writes; when the function fails
// part way, the file keeps its old contents and no temporary file stays.
func TestWriteFileFunc(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snap")
	if err := wal.WriteFileFunc(path, 0o600, func(w io.Writer) error {
		_, err := io.WriteString(w, "old")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := wal.WriteFileFunc(path, 0o600, func(w io.Writer) error {
		if _, err := io.WriteString(w, "half of the new"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("WriteFileFunc returned %v, want the write's error", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Fatalf("after a failed write the file holds %q, want %q", got, "old")
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("temporary file left: %v", err)
	}
}
