package main

import (
	"encoding/binary"
	"slices"
	"sync"
	"sync/atomic"
)

// Every payload starts with a header that makes each message identifiable,
// so that counting is exact: the run's nonce (messages of another run are
// "foreign"), the publisher id, its sequence number and the send time.
const headerSize = 24

func encodeHeader(b []byte, nonce, pub uint32, seq uint64, sentNanos int64) {
	binary.LittleEndian.PutUint32(b[0:], nonce)
	binary.LittleEndian.PutUint32(b[4:], pub)
	binary.LittleEndian.PutUint64(b[8:], seq)
	binary.LittleEndian.PutUint64(b[16:], uint64(sentNanos))
}

func decodeHeader(b []byte) (nonce, pub uint32, seq uint64, sentNanos int64, ok bool) {
	if len(b) < headerSize {
		return 0, 0, 0, 0, false
	}
	return binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:]),
		binary.LittleEndian.Uint64(b[8:]), int64(binary.LittleEndian.Uint64(b[16:])), true
}

// pubTrack is what one subscriber (or one shared group) saw of one publisher.
type pubTrack struct {
	seen    []uint64 // bitset of sequence numbers seen
	hw      int64    // highest sequence seen, -1 before the first
	unique  uint64
	dup     uint64
	reorder uint64
	// first and last are the receive times (Unix ns) of the first and the
	// last new message; written before uniqueN counts it.
	first, last int64
}

// tally counts what subscribers receive. A tally belongs to one subscriber's
// read loop, or (shared subscriptions) to a group, then mu is used.
type tally struct {
	mu       *sync.Mutex
	nonce    uint32
	pubs     []pubTrack
	win      *window
	foreign  uint64
	short    uint64
	uniqueN  atomic.Uint64 // for progress monitoring during the run
	lastNano int64         // receive time of the last new message
	// phases splits latency samples by send time (burst); phase i holds
	// messages sent before phaseEnds[i]. One phase when nil.
	phaseEnds []int64
	lat       [][]uint32 // microseconds, per phase
	maxLat    int
	// lastPhase holds (send time, latency µs) of the last phase's samples
	// when there are phases: the burst's recovery is read from it.
	lastPhase []sentLatency
}

// sentLatency is one sample of the last burst phase.
type sentLatency struct {
	sent int64
	us   uint32
}

func newTally(nonce uint32, pubs int, win *window, shared bool, phaseEnds []int64) *tally {
	t := &tally{nonce: nonce, pubs: make([]pubTrack, pubs), win: win, phaseEnds: phaseEnds, maxLat: 4 << 20}
	for i := range t.pubs {
		t.pubs[i].hw = -1
	}
	if shared {
		t.mu = new(sync.Mutex)
	}
	n := len(phaseEnds)
	if n == 0 {
		n = 1
	}
	t.lat = make([][]uint32, n)
	return t
}

// record counts one received payload at time now. member, when not nil, is
// the receiving group member's own per-publisher high-water marks: in a
// shared subscription order holds per member, not across the group.
func (t *tally) record(payload []byte, now int64, member []int64) {
	nonce, pub, seq, sent, ok := decodeHeader(payload)
	if t.mu != nil {
		t.mu.Lock()
		defer t.mu.Unlock()
	}
	if !ok {
		t.short++
		return
	}
	if nonce != t.nonce || int(pub) >= len(t.pubs) {
		t.foreign++
		return
	}
	p := &t.pubs[pub]
	word, bit := seq/64, uint64(1)<<(seq%64)
	if word >= uint64(len(p.seen)) {
		grown := make([]uint64, max(int(word)+1, 2*len(p.seen), 1024))
		copy(grown, p.seen)
		p.seen = grown
	}
	if p.seen[word]&bit != 0 {
		p.dup++
		return
	}
	p.seen[word] |= bit
	p.unique++
	if p.first == 0 {
		p.first = now
	}
	p.last = now
	t.uniqueN.Add(1)
	t.lastNano = now
	if t.win != nil {
		t.win.delivered(pub, seq)
	}
	if member != nil {
		if int64(seq) < member[pub] {
			p.reorder++
		} else {
			member[pub] = int64(seq)
		}
	}
	if int64(seq) < p.hw {
		if member == nil {
			p.reorder++
		}
	} else {
		p.hw = int64(seq)
	}
	ph := 0
	for ph < len(t.phaseEnds)-1 && sent >= t.phaseEnds[ph] {
		ph++
	}
	if len(t.lat[ph]) < t.maxLat {
		d := (now - sent) / 1000
		if d < 0 {
			d = 0
		}
		us := uint32(min(d, int64(^uint32(0))))
		t.lat[ph] = append(t.lat[ph], us)
		if len(t.phaseEnds) > 1 && ph == len(t.phaseEnds)-1 {
			t.lastPhase = append(t.lastPhase, sentLatency{sent: sent, us: us})
		}
	}
}

// latencyStats are end-to-end latencies in milliseconds.
type latencyStats struct {
	Samples int     `json:"samples"`
	P50     float64 `json:"p50_ms"`
	P99     float64 `json:"p99_ms"`
	P999    float64 `json:"p999_ms"`
	Max     float64 `json:"max_ms"`
}

func summarize(samples []uint32) latencyStats {
	if len(samples) == 0 {
		return latencyStats{}
	}
	slices.Sort(samples)
	q := func(f float64) float64 {
		i := int(f * float64(len(samples)-1))
		return float64(samples[i]) / 1000
	}
	return latencyStats{Samples: len(samples), P50: q(0.50), P99: q(0.99), P999: q(0.999),
		Max: float64(samples[len(samples)-1]) / 1000}
}

// missing lists up to limit sequence numbers below n that publisher pub
// never delivered to this tally, for the notes of a lossy run.
func (t *tally) missing(pub int, n uint64, limit int) []uint64 {
	var out []uint64
	p := &t.pubs[pub]
	for seq := uint64(0); seq < n && len(out) < limit; seq++ {
		w := seq / 64
		if w >= uint64(len(p.seen)) || p.seen[w]&(1<<(seq%64)) == 0 {
			out = append(out, seq)
		}
	}
	return out
}
