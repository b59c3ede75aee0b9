package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// mochiModule is the MQTT engine edgemq embeds.
const mochiModule = "github.com/mochi-mqtt/server/v2"

// runVersion is `edgemq version`: the version set at build time, the Go
// version and platform, the mochi version, and the commit when it is known.
func runVersion(stdout io.Writer) error {
	fmt.Fprintf(stdout, "edgemq %s\n", version)
	fmt.Fprintf(stdout, "go     %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	mochi, revision, modified := "unknown", "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == mochiModule {
				mochi = d.Version
				if d.Replace != nil {
					mochi += " => " + d.Replace.Path + " " + d.Replace.Version
				}
			}
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					modified = " (modified)"
				}
			}
		}
	}
	fmt.Fprintf(stdout, "mochi  %s\n", mochi)
	if revision != "" {
		fmt.Fprintf(stdout, "commit %s%s\n", revision, modified)
	}
	return nil
}
