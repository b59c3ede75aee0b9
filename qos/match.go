package qos

import "strings"

// Match reports whether topic name matches filter under MQTT's rules
// [MQTT-4.7]: '+' matches one level, a final '#' matches the parent level and
// everything below it, and a filter starting with a wildcard never matches a
// topic starting with '$' [MQTT-4.7.2-1]. Both are assumed valid; a shared
// subscription's "$share/<group>/" prefix must already be removed.
func Match(filter, topic string) bool {
	if filter == "" || topic == "" {
		return false
	}
	if topic[0] == '$' && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		if !fmore || !tmore {
			// "a/#" matches "a" too [MQTT-4.7.1-2].
			return fmore == tmore || (fmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}

// CheckFilter returns why f is not a valid MQTT topic filter, or "": it must
// be 1 to 65535 bytes [MQTT-1.5.4], hold no NUL [MQTT-4.7.3-2], and use '#'
// only as the whole last level [MQTT-4.7.1-2] and '+' only as a whole level
// [MQTT-4.7.1-3]. A shared subscription's prefix is checked as plain levels.
func CheckFilter(f string) string {
	switch {
	case f == "":
		return "must not be empty"
	case len(f) > 65535:
		return "must be at most 65535 bytes"
	case strings.IndexByte(f, 0) >= 0:
		return "must not contain NUL [MQTT-4.7.3-2]"
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return "# must be the last level [MQTT-4.7.1-2]"
		case strings.Contains(l, "#") && l != "#":
			return "# must be a whole level [MQTT-4.7.1-2]"
		case strings.Contains(l, "+") && l != "+":
			return "+ must be a whole level [MQTT-4.7.1-3]"
		}
	}
	return ""
}

// SplitShared splits "$share/<group>/<filter>" into its group and filter.
// For any other filter it returns "" and the filter unchanged. The prefix
// is "$share/" in lower case only [MQTT-4.8.2]: filters are
// case-sensitive [MQTT-4.7.3-4], so "$SHARE/g/t" is an ordinary filter
// (which matches the topic "$SHARE/g/t").
func SplitShared(filter string) (group, inner string) {
	rest, ok := strings.CutPrefix(filter, "$share/")
	if !ok {
		return "", filter
	}
	group, inner, ok = strings.Cut(rest, "/")
	if !ok {
		return "", filter
	}
	return group, inner
}
