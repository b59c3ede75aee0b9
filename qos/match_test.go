package qos_test

import (
	"testing"

	"github.com/edgemq/edgemq/qos"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/+", "a/", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"+/+", "/a", true},
		{"/+", "/a", true},
		{"+", "a/b", false},
		{"a/b/c", "a/b", false},
		{"a/b", "a/b/c", false},
		{"sport/tennis/+", "sport/tennis/player1", true},
		{"sport/+/player1", "sport/tennis/player1", true},
		{"", "a", false},
		// §4.7.1: '+' matches an empty level too, '#' the parent level
		// and any number below; §4.7.3: case matters; [MQTT-4.7.2-1] a
		// filter beginning with a wildcard matches no '$' topic.
		{"a/+/c", "a//c", true},
		{"/#", "/a", true},
		{"#", "/a", true},
		{"+/#", "a", true},
		{"a/+/#", "a/b", true},
		{"a/b/#", "a/b/", true},
		{"A/b", "a/b", false},
		{"$SYS/+", "$SYS/x", true},
		{"+/#", "$SYS", false},
		{"$SYS", "$SYS", true},
	}
	for _, tt := range tests {
		if got := qos.Match(tt.filter, tt.topic); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestSplitShared(t *testing.T) {
	for _, tt := range []struct{ in, group, filter string }{
		{"$share/g/a/#", "g", "a/#"},
		{"$SHARE/g/a", "", "$SHARE/g/a"}, // case-sensitive [MQTT-4.7.3-4]
		{"$Share/g/a", "", "$Share/g/a"},
		{"$share/g", "", "$share/g"},
		{"a/b", "", "a/b"},
	} {
		g, f := qos.SplitShared(tt.in)
		if g != tt.group || f != tt.filter {
			t.Errorf("SplitShared(%q) = %q, %q; want %q, %q", tt.in, g, f, tt.group, tt.filter)
		}
	}
}

func BenchmarkMatch(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		qos.Match("site/+/device/+/telemetry/#", "site/7/device/42/telemetry/temp")
	}
}
