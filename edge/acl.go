package edge

import (
	"fmt"
	"strings"

	"github.com/edgemq/edgemq/qos"
)

// acl is the compiled AuthConfig.ACL.
//
// A request is a topic name (publish, delivery) or a topic filter
// (subscribe). A rule covers a request when every topic the request can name
// also matches the rule's filter: "a/+" covers "a/b" and "a/+", not "a/#".
// So a subscription to "a/#" needs a rule covering all of "a/#", and a deny
// rule for "a/secret" does not refuse that subscription but does stop each
// delivery on "a/secret" (mochi checks read access again on every delivery).
//
// Decision: no rules allows everything. Otherwise a covering deny rule
// refuses; else a covering rule with the access asked for allows; else
// refused.
type acl struct {
	rules []aclRule
}

type aclRule struct {
	user   string
	levels []string // the filter split on '/'
	subst  bool     // the filter holds %u or %c
	read   bool
	write  bool
	deny   bool
}

// compileACL checks and compiles the rules.
func compileACL(rules []ACLRule) (*acl, error) {
	a := &acl{}
	for i, r := range rules {
		cr := aclRule{user: r.User, levels: strings.Split(r.Topic, "/"), subst: strings.Contains(r.Topic, "%u") || strings.Contains(r.Topic, "%c")}
		switch r.Access {
		case "read":
			cr.read = true
		case "write":
			cr.write = true
		case "readwrite":
			cr.read, cr.write = true, true
		case "deny":
			cr.deny = true
		default:
			return nil, &ConfigError{Path: fmt.Sprintf("auth.acl[%d].access", i), Reason: fmt.Sprintf("must be read, write, readwrite or deny (got %q)", r.Access)}
		}
		if qos.CheckFilter(r.Topic) != "" {
			return nil, &ConfigError{Path: fmt.Sprintf("auth.acl[%d].topic", i), Reason: fmt.Sprintf("not a valid topic filter (got %q)", r.Topic)}
		}
		a.rules = append(a.rules, cr)
	}
	return a, nil
}

// allowed decides one request. topic may carry a $share/<group>/ prefix,
// which is stripped: access is to the topics, not to the group.
func (a *acl) allowed(user, clientID, topic string, write bool) bool {
	if len(a.rules) == 0 {
		return true
	}
	_, topic = qos.SplitShared(topic)
	req := strings.Split(topic, "/")
	ok := false
	var buf []string
	for i := range a.rules {
		r := &a.rules[i]
		if r.user != "" && r.user != user {
			continue
		}
		levels := r.levels
		if r.subst {
			var fine bool
			if buf, fine = substitute(buf[:0], r.levels, user, clientID); !fine {
				continue
			}
			levels = buf
		}
		if !covers(levels, req) {
			continue
		}
		if r.deny {
			return false
		}
		if (write && r.write) || (!write && r.read) {
			ok = true
		}
	}
	return ok
}

// substitute replaces %u and %c in each level, in one pass: what a value
// holds is never read as a placeholder (a user named "%c" is not the
// client id). A username or client id that is empty or holds '/', '+',
// '#', '%' or NUL cannot be substituted: "+" as a username would turn
// "users/%u/#" into every user's tree, "a/b" as a client id would reach
// into client "a"'s. The rule is then skipped, which can only refuse.
func substitute(dst, levels []string, user, clientID string) ([]string, bool) {
	for _, l := range levels {
		if !strings.Contains(l, "%") {
			dst = append(dst, l)
			continue
		}
		var b strings.Builder
		for i := 0; i < len(l); i++ {
			if l[i] != '%' || i+1 == len(l) || (l[i+1] != 'u' && l[i+1] != 'c') {
				b.WriteByte(l[i])
				continue
			}
			v := user
			if l[i+1] == 'c' {
				v = clientID
			}
			if !substitutable(v) {
				return dst, false
			}
			b.WriteString(v)
			i++
		}
		dst = append(dst, b.String())
	}
	return dst, true
}

func substitutable(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/+#%\x00")
}

// covers reports whether every topic matched by req is matched by rule.
// Wildcards in the first level do not match topics starting with '$'
// [MQTT-4.7.2-1].
func covers(rule, req []string) bool {
	if len(req) > 0 && strings.HasPrefix(req[0], "$") && len(rule) > 0 && (rule[0] == "+" || rule[0] == "#") {
		return false
	}
	for i, r := range rule {
		if r == "#" {
			return true // '#' also matches the parent level: "a/#" covers "a"
		}
		if i >= len(req) {
			return false
		}
		q := req[i]
		switch {
		case q == "#":
			return false
		case r == "+":
		case q == "+" || r != q:
			return false
		}
	}
	return len(req) == len(rule)
}
