//go:build !(linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le || s390x))

package wal

// pwriteHolding is for 64-bit Linux only (rawio_pwrite.go): elsewhere the
// writer always calls f.WriteAt.
func pwriteHolding(File, []byte, int64) (ok bool, err error) { return false, nil }
