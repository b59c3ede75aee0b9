package bridge

import "testing"

func TestExpand(t *testing.T) {
	for _, c := range []struct{ tmpl, want string }{
		{"{topic}", "a/b"},
		{"fixed/topic", "fixed/topic"},
		{"site/17/{topic}", "site/17/a/b"},
		{"{client}/{topic}/x", "dev-1/a/b/x"},
		{"{topic}{topic}", "a/ba/b"},
		{"odd/{other}/{topic}", "odd/{other}/a/b"},
		{"end/{", "end/{"},
	} {
		if got := expand(c.tmpl, "a/b", "dev-1"); got != c.want {
			t.Errorf("expand(%q) = %q, want %q", c.tmpl, got, c.want)
		}
	}
}
