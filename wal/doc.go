// Package wal is edgemq's durable append log, built on github.com/tidwall/wal.
//
// (Work in progress: see issue 3. This comment is rewritten with the package.)
package wal
