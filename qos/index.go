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

// node is one level of the topic tree.
type node struct {
	children map[string]*node
	subs     []*sub
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
		c := n.children[level]
		if c == nil {
			if n.children == nil {
				n.children = map[string]*node{}
			}
			c = &node{}
			n.children[level] = c
		}
		n = c
	}
	n.subs = append(n.subs, s)
}

// remove takes s out; it prunes the levels left empty.
func (x *index) remove(filter string, s *sub) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.root.remove(filter, s)
}

func (n *node) remove(filter string, s *sub) {
	level, rest, more := strings.Cut(filter, "/")
	c := n.children[level]
	if c == nil {
		return
	}
	if more {
		c.remove(rest, s)
	} else {
		c.subs = slices.DeleteFunc(c.subs, func(o *sub) bool { return o == s })
	}
	if len(c.subs) == 0 && len(c.children) == 0 {
		delete(n.children, level)
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
		if c := n.children["#"]; c != nil {
			out = append(out, c.subs...)
		}
		if c := n.children["+"]; c != nil {
			out = c.matchRest(rest, more, out)
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
		if c := n.children["#"]; c != nil {
			out = append(out, c.subs...)
		}
		return out
	}
	return n.match(rest, false, out)
}
