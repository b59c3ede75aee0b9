//go:build !unix

package wal

import (
	"errors"
	"os"
)

// ErrLocked is returned by Open and Repair when another Log holds the
// directory. Without flock (non-Unix systems) nothing is locked.
var ErrLocked = errors.New("wal: log directory in use")

func lockDir(string) (*os.File, error) { return nil, nil }
