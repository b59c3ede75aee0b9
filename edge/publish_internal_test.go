package edge

import "testing"

// minExpiry is mochi's minimum (processPublish): 0 means no limit on
// either side.
func TestMinExpiry(t *testing.T) {
	for _, tc := range []struct{ server, message, want int64 }{
		{0, 0, 0}, {0, 30, 30}, {60, 0, 60}, {60, 30, 30}, {60, 90, 60}, {60, 60, 60},
	} {
		if got := minExpiry(tc.server, tc.message); got != tc.want {
			t.Errorf("minExpiry(%d, %d) = %d, want %d", tc.server, tc.message, got, tc.want)
		}
	}
}
