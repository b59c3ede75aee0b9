package edge

import (
	"strings"
	"testing"

	"github.com/edgemq/edgemq/qos"
)

// TestCovers checks the rule-covers-request relation that the ACL rests on.
func TestCovers(t *testing.T) {
	for _, tc := range []struct {
		rule, req string
		want      bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/+", true},
		{"a/+", "a/#", false},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "a/+/c", true},
		{"a/#", "a/#", true},
		{"a/b", "a/+", false},
		{"a/b/#", "a/#", false},
		{"#", "anything/at/all", true},
		{"#", "$SYS/broker/uptime", false}, // [MQTT-4.7.2-1]
		{"+/broker/#", "$SYS/broker/uptime", false},
		{"$SYS/#", "$SYS/broker/uptime", true},
		{"a/+/c", "a//c", true},
		{"a", "a/", false},
	} {
		got := covers(strings.Split(tc.rule, "/"), strings.Split(tc.req, "/"))
		if got != tc.want {
			t.Errorf("covers(%q, %q) = %v, want %v", tc.rule, tc.req, got, tc.want)
		}
	}
}

// TestACLSubstitution: %u and %c are replaced, and values that would widen
// a rule are refused.
func TestACLSubstitution(t *testing.T) {
	a, err := compileACL([]ACLRule{
		{Topic: "users/%u/#", Access: "readwrite"},
		{Topic: "clients/%c", Access: "write"},
		{User: "ops", Topic: "#", Access: "read"},
		{Topic: "users/%u/private", Access: "deny"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, client, topic string
		write               bool
		want                bool
	}{
		{"alice", "c1", "users/alice/x", true, true},
		{"alice", "c1", "users/bob/x", true, false},
		{"alice", "c1", "users/alice/private", false, false},
		{"alice", "c1", "users/alice/#", false, true},
		{"+", "c1", "users/bob/x", true, false},   // '+' as a username
		{"#", "c1", "users/bob/x", true, false},   // '#' as a username
		{"a/b", "c1", "users/a/b/x", true, false}, // '/' in a username
		{"", "c1", "users//x", true, false},       // anonymous: no %u rules
		{"%c", "bob", "users/bob/x", true, false}, // one pass: %u's value is not re-read
		{"%u", "c1", "users/%u/x", true, false},   // '%' in a username
		{"a\x00b", "c1", "users/a\x00b/x", true, false},
		{"alice", "%u", "clients/%u", true, false},
		{"alice", "c1", "clients/c1", true, true},
		{"alice", "c1", "clients/c1", false, false}, // write-only
		{"alice", "c/2", "clients/c/2", true, false},
		{"ops", "c1", "anything", false, true},
		{"ops", "c1", "anything", true, false},
		{"ops", "c1", "$share/g/anything", false, true},
		{"alice", "c1", "$share/g/users/alice/x", false, true},
	} {
		if got := a.allowed(tc.user, tc.client, tc.topic, tc.write); got != tc.want {
			t.Errorf("allowed(%q, %q, %q, write=%v) = %v, want %v", tc.user, tc.client, tc.topic, tc.write, got, tc.want)
		}
	}
	none, _ := compileACL(nil)
	if !none.allowed("", "", "x", true) {
		t.Error("no rules must allow everything")
	}
}

// FuzzACL: the matcher never panics and an exact topic rule covers itself.
func FuzzACL(f *testing.F) {
	f.Add("a/+/c", "a/b/c", "alice", "c1")
	f.Add("users/%u/#", "users/%u/x", "+", "#")
	f.Add("#", "$SYS/x", "", "")
	f.Fuzz(func(t *testing.T, rule, topic, user, client string) {
		if qos.CheckFilter(rule) != "" {
			return
		}
		a, err := compileACL([]ACLRule{{Topic: rule, Access: "readwrite"}})
		if err != nil {
			t.Fatal(err)
		}
		_ = a.allowed(user, client, topic, true)
		_ = a.allowed(user, client, topic, false)
		if !strings.ContainsAny(rule, "+#%") && !strings.HasPrefix(strings.ToLower(rule), "$share/") && !a.allowed(user, client, rule, true) {
			t.Fatalf("rule %q does not cover itself", rule)
		}
	})
}
