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

// SplitShared splits "$share/<group>/<filter>" into its group and filter.
// For any other filter it returns "" and the filter unchanged.
func SplitShared(filter string) (group, inner string) {
	const prefix = "$share/"
	if len(filter) < len(prefix) || !strings.EqualFold(filter[:len(prefix)], prefix) {
		return "", filter
	}
	group, inner, ok := strings.Cut(filter[len(prefix):], "/")
	if !ok {
		return "", filter
	}
	return group, inner
}
