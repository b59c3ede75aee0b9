package edge

import (
	"strconv"
	"testing"
	"time"
)

func TestSourceOf(t *testing.T) {
	for _, tc := range []struct{ remote, want string }{
		{"192.0.2.7:1883", "192.0.2.7"},
		{"[2001:db8:1:2:3:4:5:6]:1883", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:ffff::1]:9", "2001:db8:1:2::/64"}, // one host, one /64
		{"[::ffff:192.0.2.7]:1883", "192.0.2.7"},
		{"pipe", "pipe"},
	} {
		if got := sourceOf(tc.remote); got != tc.want {
			t.Errorf("sourceOf(%q) = %q, want %q", tc.remote, got, tc.want)
		}
	}
}

// TestSourceBuckets: burst failures block a source, a token comes back
// per interval, and past maxSources new sources share one bucket instead
// of growing the map.
func TestSourceBuckets(t *testing.T) {
	s := &sourceBuckets{burst: 2, every: time.Minute, m: map[string]*bucket{}}
	now := time.Unix(1e9, 0)
	s.fail("a", now)
	if s.blocked("a", now) {
		t.Fatal("blocked after one failure of two")
	}
	s.fail("a", now)
	if !s.blocked("a", now) || s.blocked("b", now) {
		t.Fatal("after two failures: a must be blocked, b not")
	}
	if s.blocked("a", now.Add(time.Minute)) {
		t.Fatal("a token must come back after the interval")
	}
	for i := range maxSources + 10 {
		s.fail("src"+strconv.Itoa(i), now)
	}
	if len(s.m) > maxSources {
		t.Fatalf("%d buckets, want at most %d", len(s.m), maxSources)
	}
	if s.m[overflowSource] == nil {
		t.Fatal("no shared bucket for the sources past the limit")
	}
	// Once the others are refilled, room is made for new ones.
	s.fail("late", now.Add(time.Hour))
	if s.m["late"] == nil {
		t.Fatal("refilled buckets were not dropped to make room")
	}
}

func TestVerifiedCache(t *testing.T) {
	c := newVerifiedCache(time.Minute)
	now := time.Unix(1e9, 0)
	c.add("alice", []byte("pw"), now)
	for _, tc := range []struct {
		user, pw string
		at       time.Duration
		want     bool
	}{
		{"alice", "pw", 0, true},
		{"alice", "pw2", 0, false},
		{"alicep", "w", 0, false}, // the username's length is in the hash
		{"bob", "pw", 0, false},
		{"alice", "pw", 2 * time.Minute, false}, // expired
	} {
		if got := c.hit(tc.user, []byte(tc.pw), now.Add(tc.at)); got != tc.want {
			t.Errorf("hit(%q, %q, +%v) = %v, want %v", tc.user, tc.pw, tc.at, got, tc.want)
		}
	}
	c.clear()
	if c.hit("alice", []byte("pw"), now) {
		t.Error("hit after clear")
	}
}
