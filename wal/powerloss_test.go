package wal_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgemq/edgemq/wal"
)

var (
	powerSeed  = flag.Uint64("wal.powerseed", 0, "seed of the power-loss test (0: a fixed one)")
	powerLong  = flag.Bool("wal.powerlong", false, "power-loss test: every crash point, more states per point, fsync EIO at every fsync")
	powerCases = flag.Int("wal.powerstates", 0, "power-loss test: random states per crash point (0: 3, or 12 with -wal.powerlong)")
)

// powerRun is one run of the power-loss workload: what it did, and the
// states a crash could leave at each crash point.
type powerRun struct {
	pol wal.SyncPolicy
	dir string

	mu       sync.Mutex
	acked    []ackedRec        // Append returned nil
	known    map[uint64]uint64 // offset -> payload id, every offset handed out
	syncs    []span            // Log.Sync calls that returned nil: ops before the call, ops after
	commits  []commitRec       // cursor commits (and creations) that returned nil
	points   []crashPoint      // states at the crash points
	cursors  map[string]bool   // every cursor name used
	appendEr map[string]int    // append errors by text, for the log
	fsyncs   []string          // the files the run fsynced, in order (base names)
	trace    []string          // the file-system operations, numbered
	led      uint64            // batches an appender wrote itself (AppendAsyncLead)
}

type ackedRec struct {
	off, id uint64
	pos     int // operations done when Append returned
}

type commitRec struct {
	name     string
	value    uint64
	pos      int
	creation bool
	failed   bool // Commit returned an error: durable only once a Sync after it returned
}

type span struct{ from, to int }

type crashPoint struct {
	pos   int
	state *simFS
	label string
}

// required returns the records and cursor positions that must survive a
// power cut at pos: under "always" what was acknowledged before it; under
// "interval" what was acknowledged before a Log.Sync that returned before
// it. A cursor position whose Commit failed counts once a Sync after it
// returned (Sync makes the cursor table as it is durable).
//
// Positions are operation counts read after the call returned (an
// acknowledgement, a Sync) or before it began (a Sync's from), so an
// acknowledgement at a Sync's from may have come after the Sync began
// (no operation between the write and the acknowledgement, the Sync
// taking the list of dirty segments in between) and the Sync need not
// cover it: only one at a smaller position came before it. (Under
// "always" the fsync an acknowledgement waited for is an operation at or
// before its position, so the state at any pos from it on holds it.)
func (r *powerRun) required(pos int) (recs []ackedRec, curs map[string]uint64) {
	before := func(at int) bool { return at <= pos } // at is durable in the state at pos
	if r.pol != wal.SyncAlways {
		limit := -1
		for _, s := range r.syncs {
			if s.to <= pos && s.from > limit {
				limit = s.from
			}
		}
		before = func(at int) bool { return at < limit }
	}
	for _, a := range r.acked {
		if before(a.pos) {
			recs = append(recs, a)
		}
	}
	synced := func(at int) bool {
		for _, s := range r.syncs {
			if s.from > at && s.to <= pos {
				return true
			}
		}
		return false
	}
	curs = map[string]uint64{}
	for _, c := range r.commits {
		if (!c.failed && (before(c.pos) || (c.creation && c.pos <= pos))) || synced(c.pos) {
			curs[c.name] = max(curs[c.name], c.value)
		}
	}
	return recs, curs
}

func powerConfig(fs wal.FS, pol wal.SyncPolicy) wal.Config {
	cfg := testConfig()
	cfg.Sync = pol
	cfg.SyncInterval = 2 * time.Millisecond
	cfg.SegmentSize = 4 << 10
	cfg.RetentionCheck = 3 * time.Millisecond
	cfg.FS = fs
	return cfg
}

// runPowerWorkload runs three appenders (one of them appends a batch larger
// than a segment), a consumer committing two cursors (one created midway),
// retention removing what the cursors passed, and under "interval" a
// Log.Sync now and then, on a simFS that takes a state at every crash point:
// before and after every fsync, and every sample-th other operation.
func runPowerWorkload(t *testing.T, pol wal.SyncPolicy, failSync, sample int) *powerRun {
	t.Helper()
	root := t.TempDir()
	r := &powerRun{pol: pol, dir: filepath.Join(root, "data", "log"), known: map[uint64]uint64{},
		cursors: map[string]bool{}, appendEr: map[string]int{}}
	sim := newSimFS(root)
	sim.failSync = failSync
	faulty := failSync > 0
	sim.traceOn = true
	take := func(label string) {
		r.points = append(r.points, crashPoint{pos: sim.ops, state: sim.cloneLocked(), label: label})
	}
	sim.onSync = func(before bool) {
		if faulty && !sim.failed && sim.syncs+1 < failSync {
			return // only the states after the injected failure matter
		}
		if before {
			take("before fsync")
		} else {
			take("after fsync")
		}
	}
	sim.onOp = func() {
		if faulty && !sim.failed {
			return
		}
		if sim.ops%sample == 0 {
			take("between fsyncs")
		}
	}
	ops := func() int {
		sim.mu.Lock()
		defer sim.mu.Unlock()
		return sim.ops
	}
	l, err := wal.Open(r.dir, powerConfig(sim.fs(), pol))
	if err != nil {
		if faulty {
			t.Logf("open with fsync %d failing: %v", failSync, err)
			return r
		}
		t.Fatalf("open: %v", err)
	}
	ctx := context.Background()
	commit := func(c *wal.Cursor, v uint64) {
		if v <= c.Offset() {
			return
		}
		err := c.Commit(v)
		r.mu.Lock()
		r.commits = append(r.commits, commitRec{name: c.Name(), value: v, pos: ops(), failed: err != nil})
		r.mu.Unlock()
	}
	cursor := func(name string, from uint64) *wal.Cursor {
		c, err := l.CursorFrom(name, from)
		if err != nil {
			return nil
		}
		r.mu.Lock()
		r.cursors[name] = true
		r.commits = append(r.commits, commitRec{name: name, value: c.Offset(), pos: ops(), creation: true})
		r.mu.Unlock()
		return c
	}
	var wg, appenders sync.WaitGroup
	stop := make(chan struct{})
	for w := uint64(0); w < 3; w++ {
		appenders.Add(1)
		go func() {
			defer appenders.Done()
			for i := uint64(0); i < 30; i++ {
				n := 1 + int(i%3)
				if w == 0 && i == 12 {
					n = 28 // about 6 KiB: larger than a segment
				}
				recs := make([][]byte, n)
				ids := make([]uint64, n)
				for k := range recs {
					ids[k] = w<<40 | i<<8 | uint64(k)
					recs[k] = payload(ids[k])
				}
				var off uint64
				var err error
				if w == 2 {
					// An appender that may write its batch itself
					// (AppendAsyncLead), acknowledged once durable.
					if off, err = l.AppendAsyncLead(recs...); err == nil {
						err = l.WaitDurable(ctx, off+uint64(n)-1)
					}
				} else {
					off, err = l.Append(ctx, recs...)
				}
				p := ops()
				r.mu.Lock()
				if err != nil {
					r.appendEr[err.Error()]++
				} else {
					for k := range recs {
						r.acked = append(r.acked, ackedRec{off: off + uint64(k), id: ids[k], pos: p})
						r.known[off+uint64(k)] = ids[k]
					}
				}
				r.mu.Unlock()
				// Let the interval fsyncs and the consumer run between
				// appends, as they would with a real disk.
				time.Sleep(200 * time.Microsecond)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		c1 := cursor("reader", 0)
		var c2 *wal.Cursor
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			last := l.LastOffset()
			if c1 != nil && last > 40 {
				commit(c1, last-40)
			}
			if i == 15 {
				c2 = cursor("late", last+1)
			}
			if c2 != nil && last > 20 {
				commit(c2, last-20)
			}
			if i%3 == 0 {
				from := ops()
				if err := l.Sync(ctx); err == nil {
					r.mu.Lock()
					r.syncs = append(r.syncs, span{from, ops()})
					r.mu.Unlock()
				}
			}
		}
	}()
	appenders.Wait()
	close(stop)
	r.led = l.Stats().LedBatches
	wg.Wait()
	{
		from := ops()
		if err := l.Sync(ctx); err == nil {
			r.syncs = append(r.syncs, span{from, ops()})
		}
	}
	if err := l.Close(); err != nil && !faulty {
		t.Fatalf("close: %v", err)
	}
	take("after close")
	r.fsyncs = slices.Clone(sim.synced)
	r.trace = sim.trace
	return r
}

// checkPowerState opens the log in st and checks it against what the
// workload was told before pos. It returns what is wrong, or nil.
func (r *powerRun) checkPowerState(st *simFS, pos int) error {
	recs, curs := r.required(pos)
	var before string // what the cut left, for a failure message
	if ents, err := st.readDir(r.dir); err != nil && len(recs) == 0 && len(curs) == 0 {
		// The log's directory never became durable, and nothing needed it
		// to. Open creates it.
	} else if rep, err := wal.CheckFS(r.dir, st.fs()); err != nil {
		return fmt.Errorf("check before open: %v (report %+v)", err, rep)
	} else {
		var files []string
		for _, e := range ents {
			info, _ := e.Info()
			files = append(files, fmt.Sprintf("%s:%d", e.Name(), info.Size()))
		}
		before = fmt.Sprintf("left by the cut: files %v, log %d..%d, durable mark %d; required: %d records, cursors %v",
			files, rep.FirstOffset, rep.LastOffset, rep.DurableMark, len(recs), curs)
	}
	cfg := powerConfig(st.fs(), wal.SyncAlways)
	l, err := wal.Open(r.dir, cfg)
	if err != nil {
		return fmt.Errorf("open: %v", err)
	}
	defer func() {
		if l != nil {
			l.Close()
		}
	}()
	if err := r.verify(l, recs, curs); err != nil {
		return fmt.Errorf("%w; %s", err, before)
	}
	off, err := l.Append(context.Background(), payload(1<<62))
	if err != nil {
		return fmt.Errorf("append after recovery: %v", err)
	}
	// A power cut right after that append returned.
	after := st.materialise(cutNone, nil)
	err = l.Close()
	l = nil
	if err != nil {
		return fmt.Errorf("close after recovery: %v", err)
	}
	if rep, err := wal.CheckFS(r.dir, st.fs()); err != nil || rep.TornTail != nil {
		return fmt.Errorf("check after close: %v (report %+v)", err, rep)
	}
	l2, err := wal.Open(r.dir, powerConfig(after.fs(), wal.SyncAlways))
	if err != nil {
		return fmt.Errorf("reopen after a power cut after recovery: %v", err)
	}
	defer l2.Close()
	if got, err := l2.Read(off); err != nil || !bytes.Equal(got, payload(1<<62)) {
		return fmt.Errorf("append after recovery at %d lost by a power cut: %q %v", off, got, err)
	}
	return r.verify(l2, recs, curs)
}

func (r *powerRun) verify(l *wal.Log, recs []ackedRec, curs map[string]uint64) error {
	names := l.Cursors()
	// A record retention removed is fine if every cursor is past it.
	var minCursor uint64
	for i, name := range names {
		c, _ := l.Cursor(name)
		if o := c.Offset(); i == 0 || o < minCursor {
			minCursor = o
		}
	}
	for _, a := range recs {
		got, err := l.Read(a.off)
		if errors.Is(err, wal.ErrTruncated) && len(names) > 0 && minCursor > a.off {
			continue
		}
		if err != nil || !bytes.Equal(got, payload(a.id)) {
			return fmt.Errorf("acknowledged offset %d (id %#x, acknowledged at op %d): %.20q %v (log %d..%d, recovered cursors %s)",
				a.off, a.id, a.pos, got, err, l.FirstOffset(), l.LastOffset(), cursorList(l))
		}
	}
	seen := map[string]uint64{}
	for off := l.FirstOffset(); off <= l.LastOffset(); off++ {
		got, err := l.Read(off)
		if errors.Is(err, wal.ErrNotFound) || (errors.Is(err, wal.ErrTruncated) && off < l.FirstOffset()) {
			continue
		}
		if err != nil {
			return fmt.Errorf("offset %d: %v", off, err)
		}
		if !wellFormed(got) {
			return fmt.Errorf("offset %d: not a record the workload wrote: %.20q", off, got)
		}
		if id, ok := r.known[off]; ok && !bytes.Equal(got, payload(id)) && !bytes.Equal(got, payload(1<<62)) {
			return fmt.Errorf("offset %d: %.20q, want id %#x", off, got, id)
		}
		if prev, dup := seen[string(got)]; dup {
			return fmt.Errorf("offsets %d and %d hold the same record", prev, off)
		}
		seen[string(got)] = off
	}
	for name, v := range curs {
		if i := sort.SearchStrings(names, name); i == len(names) || names[i] != name {
			return fmt.Errorf("cursor %s lost (committed to %d); cursors %v", name, v, names)
		}
		c, _ := l.Cursor(name)
		// Under "interval" a cursor can be durable past records that are
		// not: Open moves it back to the end of the log (the records are
		// checked above).
		if c.Offset() < min(v, l.LastOffset()+1) {
			return fmt.Errorf("cursor %s at %d, committed to %d", name, c.Offset(), v)
		}
	}
	for _, name := range names {
		c, _ := l.Cursor(name)
		if o := c.Offset(); o < l.FirstOffset() || o > l.LastOffset()+1 {
			return fmt.Errorf("cursor %s at %d, outside the log %d..%d", name, o, l.FirstOffset(), l.LastOffset())
		}
	}
	return nil
}

// history returns the last n operations up to pos, file system and
// workload interleaved, for a failure message.
func (r *powerRun) history(pos, n int) string {
	type ev struct {
		pos  int
		text string
	}
	var evs []ev
	for _, line := range r.trace {
		var at int
		fmt.Sscan(line, &at)
		evs = append(evs, ev{at, line})
	}
	r.mu.Lock()
	for _, a := range r.acked {
		evs = append(evs, ev{a.pos, fmt.Sprintf("%d   acknowledged %d", a.pos, a.off)})
	}
	for _, c := range r.commits {
		evs = append(evs, ev{c.pos, fmt.Sprintf("%d   cursor %s committed to %d (creation %v, failed %v)", c.pos, c.name, c.value, c.creation, c.failed)})
	}
	for _, s := range r.syncs {
		evs = append(evs, ev{s.to, fmt.Sprintf("%d   Log.Sync called at op %d returned", s.to, s.from)})
	}
	r.mu.Unlock()
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].pos < evs[j].pos })
	var lines []string
	for _, e := range evs {
		if e.pos <= pos {
			lines = append(lines, e.text)
		}
	}
	lines = lines[max(0, len(lines)-n):]
	return "history up to the cut:\n\t" + strings.Join(lines, "\n\t")
}

// cursorList says where l's cursors are, for a failure message.
func cursorList(l *wal.Log) string {
	var b strings.Builder
	for _, name := range l.Cursors() {
		c, _ := l.Cursor(name)
		fmt.Fprintf(&b, "%s=%d ", name, c.Offset())
	}
	return strings.TrimSpace(b.String())
}

var digits = regexp.MustCompile(`[0-9]+|"[^"]*"|/tmp/[^ :]*`)

// checkPowerRun checks every crash point of a run: the state a kill -9
// leaves there, the one a power cut that keeps nothing unsynced leaves, and
// states random subsets of the unsynced operations leave.
func checkPowerRun(t *testing.T, r *powerRun, seed uint64, states, every int) (checked int) {
	t.Helper()
	fails := 0
	kinds := map[string]int{}
	for i, p := range r.points {
		if every > 1 && i%every != 0 && i != len(r.points)-1 {
			continue
		}
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		try := func(mode cutMode, k int) {
			var st *simFS
			if mode == cutAll {
				st = p.state.clone() // kill -9: the page cache survives
			} else {
				st = p.state.materialise(mode, rng)
			}
			checked++
			if err := r.checkPowerState(st, p.pos); err != nil {
				fails++
				kind := digits.ReplaceAllString(err.Error(), "N")
				kinds[kind]++
				if kinds[kind] == 1 {
					t.Errorf("%s, seed %d, crash point %d (%s, op %d), %s %d: %v\n%s",
						r.pol, seed, i, p.label, p.pos, [...]string{"power cut keeping nothing unsynced", "kill -9", "power cut keeping some"}[mode], k, err,
						r.history(p.pos, 60))
				}
			}
		}
		try(cutAll, 0)
		try(cutNone, 0)
		for k := 0; k < states; k++ {
			try(cutRandom, k)
		}
	}
	if fails > 0 {
		t.Errorf("%d failing states in all, %d kinds", fails, len(kinds))
	}
	return checked
}

// TestPowerLoss runs the workload under "always" and "interval" on a file
// system that keeps what a power cut keeps, and checks the states a crash
// could leave at every fsync (and between): Open succeeds, every record
// acknowledged (under "interval": covered by a Log.Sync) before the cut
// reads back exactly, nothing else reads back as data, cursors are within
// the log and no lower than committed, Check reports no damage, and an
// append after recovery survives a second power cut.
func TestPowerLoss(t *testing.T) {
	seed := *powerSeed
	if seed == 0 {
		seed = 1
	}
	states := 3
	every := 2
	if *powerLong {
		states, every = 12, 1
	}
	if *powerCases > 0 {
		states = *powerCases
	}
	for _, pol := range []wal.SyncPolicy{wal.SyncAlways, wal.SyncInterval} {
		t.Run(string(pol), func(t *testing.T) {
			r := runPowerWorkload(t, pol, 0, 7)
			n := checkPowerRun(t, r, seed, states, every)
			t.Logf("%d records acknowledged, %d crash points, %d states checked, append errors %v, %d batches written by an appender",
				len(r.acked), len(r.points), n, r.appendEr, r.led)
		})
	}
}

// TestPowerLossFsyncEIO makes one fsync fail with EIO, and the kernel drop
// that file's dirty pages (a retried fsync then succeeds with the data
// gone: PostgreSQL's "fsyncgate"), then checks the crash states after it as
// TestPowerLoss does.
func TestPowerLossFsyncEIO(t *testing.T) {
	seed := *powerSeed
	if seed == 0 {
		seed = 1
	}
	for _, pol := range []wal.SyncPolicy{wal.SyncAlways, wal.SyncInterval} {
		t.Run(string(pol), func(t *testing.T) {
			// The file fsyncs of a clean run: a few of the segments' and a
			// few of the cursor table's, spread over the run (all of them
			// with -wal.powerlong).
			var segs, tables []int
			for i, name := range runPowerWorkload(t, pol, 0, 1<<30).fsyncs {
				if strings.HasPrefix(name, "cursors.") {
					tables = append(tables, i+1)
				} else {
					segs = append(segs, i+1)
				}
			}
			pick := func(ks []int, n int) []int {
				if *powerLong || len(ks) <= n {
					return ks
				}
				var out []int
				for i := 0; i < n; i++ {
					out = append(out, ks[(2*i+1)*len(ks)/(2*n)])
				}
				return out
			}
			ks := append(pick(segs, 5), pick(tables, 4)...)
			slices.Sort(ks)
			for _, k := range ks {
				t.Run(fmt.Sprint(k), func(t *testing.T) {
					r := runPowerWorkload(t, pol, k, 1<<30)
					checkPowerRun(t, r, seed, 1, 4)
				})
			}
		})
	}
}

// TestPowerLossFailedBatchAcrossSegments: a batch larger than two
// segments fills one of the segments it creates whole, and the fsync of
// that one fails with EIO (run by the roll to the next, or by the sync
// goroutine just before). The batch is undone: the segments it created
// are removed and the old tail is cut back to the batch's start. A power
// cut anywhere after that must leave what TestPowerLoss checks: in
// particular never a created segment's name next to the cut of the old
// tail (the old tail would end records early in the middle of the log),
// nor, under "always", where the log goes on, the name of the next
// segment before that cut is durable (the old tail would hold data after
// its last record). (The random workload reaches this only when the failing fsync happens
// to be that one: about once in a few hundred runs.)
func TestPowerLossFailedBatchAcrossSegments(t *testing.T) {
	for _, pol := range []wal.SyncPolicy{wal.SyncAlways, wal.SyncInterval} {
		t.Run(string(pol), func(t *testing.T) {
			root := t.TempDir()
			r := &powerRun{pol: pol, dir: filepath.Join(root, "log"), known: map[uint64]uint64{},
				cursors: map[string]bool{}, appendEr: map[string]int{}}
			sim := newSimFS(root)
			sim.traceOn = true
			ops := func() int {
				sim.mu.Lock()
				defer sim.mu.Unlock()
				return sim.ops
			}
			l, err := wal.Open(r.dir, powerConfig(sim.fs(), pol))
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			for id := uint64(0); id < 10; id++ {
				off, err := l.Append(ctx, payload(id))
				if err != nil {
					t.Fatal(err)
				}
				r.acked = append(r.acked, ackedRec{off: off, id: id, pos: ops()})
				r.known[off] = id
			}
			from := ops()
			if err := l.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			r.syncs = append(r.syncs, span{from, ops()})

			take := func(label string) {
				r.points = append(r.points, crashPoint{pos: sim.ops, state: sim.cloneLocked(), label: label})
			}
			sim.mu.Lock()
			tail := ""
			for name := range sim.dirs[r.dir].vol {
				if len(name) == 20 && name > tail {
					tail = name
				}
			}
			sim.failIf = func(name string) bool { return len(name) == 20 && name > tail }
			sim.onSync = func(before bool) {
				if sim.failed {
					take(map[bool]string{true: "before fsync", false: "after fsync"}[before])
				}
			}
			sim.onOp = func() {
				if sim.failed {
					take("between fsyncs")
				}
			}
			sim.mu.Unlock()
			big := make([][]byte, 100) // about 17 KiB: four segments and more
			for k := range big {
				big[k] = payload(1000 + uint64(k))
			}
			if _, err := l.Append(ctx, big...); err == nil {
				t.Fatalf("an append whose fsync failed succeeded:\n%s", strings.Join(sim.trace, "\n"))
			}
			// Under "always" the log goes on: a batch that does not fit the
			// room left in the old tail starts a new segment, which must
			// not have a durable name before the old tail's cut is durable.
			next := make([][]byte, 30)
			for k := range next {
				next[k] = payload(2000 + uint64(k))
			}
			if off, err := l.Append(ctx, next...); err == nil {
				for k := range next {
					r.acked = append(r.acked, ackedRec{off: off + uint64(k), id: 2000 + uint64(k), pos: ops()})
					r.known[off+uint64(k)] = 2000 + uint64(k)
				}
			} else if pol == wal.SyncAlways {
				t.Fatalf("append after the failed one: %v", err)
			}
			l.Close()
			sim.mu.Lock()
			take("after close")
			failed := sim.failed
			r.trace = sim.trace
			sim.mu.Unlock()
			if !failed {
				t.Fatal("no fsync of a segment the batch created")
			}
			n := checkPowerRun(t, r, 1, 8, 1)
			t.Logf("%d crash points after the failure, %d states checked", len(r.points), n)
		})
	}
}
