package edge

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// loginGuard keeps password checks from being turned against the broker.
// A bcrypt comparison costs tens of milliseconds of CPU on purpose; a
// flood of CONNECTs with guessed passwords would otherwise take every CPU
// from the message traffic and make legitimate logins wait in line.
//
//   - Failures back off per source (an IP address, an IPv6 /64): each
//     failed check takes a token from the source's bucket, and a source
//     with none left is refused before any bcrypt, with the normal
//     bad-credentials code, until a token comes back.
//   - At most half the CPUs run bcrypt at once; a CONNECT waits for a slot
//     only until its connect deadline, and only so many wait: past either,
//     it is refused as server busy.
//   - Verified credentials are remembered for a short time as a keyed hash
//     of username and password (HMAC-SHA256 under a key made at start, so
//     the cache holds nothing a guess could be checked against offline):
//     a fleet reconnecting after a network cut does not redo bcrypt per
//     device, and a throttled source still lets in a device that proved
//     its password recently.
type loginGuard struct {
	slots      chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
	failures   *sourceBuckets // nil: no backoff
	cache      *verifiedCache // nil: no cache
}

func newLoginGuard(a AuthConfig) *loginGuard {
	n := max(1, runtime.NumCPU()/2)
	g := &loginGuard{slots: make(chan struct{}, n), maxWaiting: int64(64 * n)}
	if a.FailureBurst > 0 {
		g.failures = &sourceBuckets{burst: float64(a.FailureBurst), every: a.FailureInterval, m: map[string]*bucket{}}
	}
	if a.CacheTTL > 0 {
		g.cache = newVerifiedCache(a.CacheTTL)
	}
	return g
}

// acquire takes a bcrypt slot, waiting until deadline at most; false: none
// came in time, or too many wait already.
func (g *loginGuard) acquire(deadline time.Time) bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
	}
	if g.waiting.Add(1) > g.maxWaiting {
		g.waiting.Add(-1)
		return false
	}
	defer g.waiting.Add(-1)
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

func (g *loginGuard) release() { <-g.slots }

// sourceOf is the backoff key of a remote address: the IP, or the /64 of
// an IPv6 address (one host usually has a whole /64).
func sourceOf(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// sourceBuckets are token buckets of failures by source.
type sourceBuckets struct {
	burst float64       // tokens in a full bucket
	every time.Duration // one token comes back per every
	mu    sync.Mutex
	m     map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

// maxSources bounds the buckets kept. Past it, full buckets are dropped;
// if none is, new sources share one bucket: a spread-out attack then
// throttles new sources together rather than growing the map.
const maxSources = 10000

// overflowSource is the bucket new sources share when the map is full.
const overflowSource = "*"

// refill brings b up to now; callers hold mu.
func (s *sourceBuckets) refill(b *bucket, now time.Time) {
	if s.every > 0 {
		b.tokens = min(s.burst, b.tokens+float64(now.Sub(b.at))/float64(s.every))
	}
	b.at = now
}

// full reports whether a new source can have no bucket of its own: one
// place stays for the shared one. Callers hold mu.
func (s *sourceBuckets) full() bool {
	n := len(s.m)
	if _, ok := s.m[overflowSource]; ok {
		n--
	}
	return n >= maxSources-1
}

// blocked reports whether src has no failure left to spend.
func (s *sourceBuckets) blocked(src string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[src]
	if b == nil {
		b = s.m[overflowSource]
		if b == nil || !s.full() {
			return false
		}
	}
	s.refill(b, now)
	return b.tokens < 1
}

// fail spends one of src's failures.
func (s *sourceBuckets) fail(src string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[src]
	if b == nil {
		if s.full() {
			for k, o := range s.m {
				if s.refill(o, now); o.tokens >= s.burst {
					delete(s.m, k)
				}
			}
		}
		if s.full() {
			src = overflowSource
		}
		if b = s.m[src]; b == nil {
			b = &bucket{tokens: s.burst, at: now}
			s.m[src] = b
		}
	}
	s.refill(b, now)
	b.tokens = max(0, b.tokens-1)
}

// verifiedCache remembers recently verified credentials by username, as an
// HMAC of username and password under a key that never leaves the process.
// It holds at most one entry per user of the password file.
type verifiedCache struct {
	key [32]byte
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]verified
}

type verified struct {
	mac   [sha256.Size]byte
	until time.Time
}

func newVerifiedCache(ttl time.Duration) *verifiedCache {
	c := &verifiedCache{ttl: ttl, m: map[string]verified{}}
	_, _ = rand.Read(c.key[:]) // crypto/rand.Read never fails (Go 1.24+)
	return c
}

func (c *verifiedCache) mac(user string, password []byte) [sha256.Size]byte {
	h := hmac.New(sha256.New, c.key[:])
	h.Write(binary.AppendUvarint(nil, uint64(len(user))))
	h.Write([]byte(user))
	h.Write(password)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// hit reports whether user proved this password within the TTL.
func (c *verifiedCache) hit(user string, password []byte, now time.Time) bool {
	c.mu.Lock()
	e, ok := c.m[user]
	c.mu.Unlock()
	if !ok || now.After(e.until) {
		return false
	}
	m := c.mac(user, password)
	return hmac.Equal(m[:], e.mac[:])
}

// add remembers that user proved password now.
func (c *verifiedCache) add(user string, password []byte, now time.Time) {
	m := c.mac(user, password)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[user] = verified{mac: m, until: now.Add(c.ttl)}
}

// clear forgets everything: the passwords changed.
func (c *verifiedCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.m)
}
