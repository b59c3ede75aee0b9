package qos

import (
	"slices"
	"strings"
	"sync"
)

// sub is one subscription in the index: a session's own, or a shared
// group's (then s is nil and g is the group, which holds its members).
type sub struct {
	Subscribe
	// since is the first offset the subscription may match: messages
	// logged before its SUBSCRIBE was handled are not its.
	since uint64
	ids   []int // {Identifier}, shared by every delivery; nil without one
	s     *session
	g     *group
}

// node is one level of the topic tree. The wildcard levels have fields of
// their own, looked at for every level of every topic matched, so a match
// costs one map lookup per level, not three.
type node struct {
	children   map[string]*node // by level name, the wildcards excepted
	hash, plus *node            // the '#' and '+' levels; nil: none
	subs       []*sub
}

// child returns n's child for level, nil when it has none.
func (n *node) child(level string) *node {
	switch level {
	case "#":
		return n.hash
	case "+":
		return n.plus
	}
	return n.children[level]
}

// setChild makes c n's child for level; nil removes it.
func (n *node) setChild(level string, c *node) {
	switch {
	case level == "#":
		n.hash = c
	case level == "+":
		n.plus = c
	case c == nil:
		delete(n.children, level)
	default:
		if n.children == nil {
			n.children = map[string]*node{}
		}
		n.children[level] = c
	}
}

// empty reports whether n holds no subscription and no level below.
func (n *node) empty() bool {
	return len(n.subs) == 0 && len(n.children) == 0 && n.hash == nil && n.plus == nil
}

// index is the engine's topic index: every subscription by its filter's
// levels ('+' and '#' are children like any other), so one walk per
// message finds every subscription it matches [MQTT-4.7] without building
// anything per message but the caller's result slice.
type index struct {
	mu   sync.RWMutex
	root node
}

// add inserts s under its filter (inner filter for a shared one).
func (x *index) add(filter string, s *sub) {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := &x.root
	for level := range strings.SplitSeq(filter, "/") {
		c := n.child(level)
		if c == nil {
			c = &node{}
			n.setChild(level, c)
		}
		n = c
	}
	n.subs = append(n.subs, s)
}

// replace puts nb in old's place under filter, in one step for a reader
// (the dispatcher never sees neither, or both); nb is added if old is not
// there.
func (x *index) replace(filter string, old, nb *sub) {
	x.mu.Lock()
	n := &x.root
	for level := range strings.SplitSeq(filter, "/") {
		if n = n.child(level); n == nil {
			break
		}
	}
	if n != nil {
		if i := slices.Index(n.subs, old); i >= 0 {
			n.subs[i] = nb
			x.mu.Unlock()
			return
		}
	}
	x.mu.Unlock()
	x.add(filter, nb)
}

// remove takes s out; it prunes the levels left empty.
func (x *index) remove(filter string, s *sub) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.root.remove(filter, s)
}

func (n *node) remove(filter string, s *sub) {
	level, rest, more := strings.Cut(filter, "/")
	c := n.child(level)
	if c == nil {
		return
	}
	if more {
		c.remove(rest, s)
	} else {
		c.subs = slices.DeleteFunc(c.subs, func(o *sub) bool { return o == s })
	}
	if c.empty() {
		n.setChild(level, nil)
	}
}

// match appends every subscription matching topic to out and returns it.
// The caller holds x.mu for reading for as long as it uses the result.
func (x *index) match(topic string, out []*sub) []*sub {
	if topic == "" {
		return out
	}
	// A filter starting with a wildcard does not match a topic starting
	// with '$' [MQTT-4.7.2-1].
	dollar := topic[0] == '$'
	return x.root.match(topic, dollar, out)
}

func (n *node) match(topic string, noWild bool, out []*sub) []*sub {
	level, rest, more := strings.Cut(topic, "/")
	if !noWild {
		// "a/#" matches "a/b/c" and "a" itself [MQTT-4.7.1-2].
		if n.hash != nil {
			out = append(out, n.hash.subs...)
		}
		if n.plus != nil {
			out = n.plus.matchRest(rest, more, out)
		}
	}
	if c := n.children[level]; c != nil {
		out = c.matchRest(rest, more, out)
	}
	return out
}

// matchRest continues below n, whose level matched, with what is left of
// the topic.
func (n *node) matchRest(rest string, more bool, out []*sub) []*sub {
	if !more {
		out = append(out, n.subs...)
		if n.hash != nil {
			out = append(out, n.hash.subs...)
		}
		return out
	}
	return n.match(rest, false, out)
}
