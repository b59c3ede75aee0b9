package wal

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
)

// Report is what Check found, and what Repair did.
type Report struct {
	// Segments, Records (holes included), Holes and Bytes of the log.
	Segments int
	Records  uint64
	Holes    uint64
	Bytes    int64
	// FirstOffset and LastOffset as Open would see them.
	FirstOffset uint64
	LastOffset  uint64
	// TornTail is invalid data at the end of the last segment: a write cut
	// short by a crash. Open cuts it by itself; it is not an error.
	TornTail *Damage
	// Damage is everything else that is wrong. Non-empty means Check returned
	// an error matching ErrCorrupt. Both copies of the cursor table damaged
	// is Damage too (Segment "cursors"): Open then starts every cursor from
	// the first offset; Repair removes the copies.
	Damage []Damage
	// DurableMark is the offset up to which the cursor table says the log
	// was fsynced: Open never cuts at or below it.
	DurableMark uint64
	// Repaired lists what Repair changed (empty for Check).
	Repaired []string
	// LostRecords is the number of records Repair turned into holes or cut.
	LostRecords uint64
}

// Damage is one damaged place in a segment file.
type Damage struct {
	Segment string
	Pos     int64  // byte position of the damage
	Offset  uint64 // offset of the first damaged record
	Bytes   int64  // bytes from Pos to the end of the file
	Reason  string
}

// segmentScan is the result of walking one segment file.
type segmentScan struct {
	name    string
	base    uint64
	want    int64 // expected records, -1 for the last segment
	size    int64
	records uint64
	holes   uint64
	damage  *Damage
	torn    bool
}

// Check reads every record of the log in dir and reports damage without
// changing anything. It returns a *CorruptError (ErrCorrupt) for the first
// damage found, other than a torn tail, and I/O errors as they come. It may
// run while the log is open; records being appended may then show as a torn
// tail.
func Check(dir string) (Report, error) {
	return check(dir, FS{}.withDefaults(), nil)
}

// Repair is Check followed by the fixes: it cuts a torn tail (as Open does);
// it turns damaged records into holes, keeping every offset in place and
// every good record after the damage (it resynchronises on the next valid
// record; when none follows, the rest of an older segment becomes holes);
// in the last segment it fills with holes the offsets up to the durable
// mark that the segment lost; it removes a cursor table whose two copies
// are both damaged (every cursor then starts from the first offset). Each repaired
// segment is rewritten to a temporary file, fsynced and renamed over the
// original. What was lost is logged at Warn and
// counted in the report. logger nil means slog.Default(). Repair fails with
// ErrLocked while a Log has the directory open.
func Repair(dir string, logger *slog.Logger) (Report, error) {
	return repair(dir, FS{}.withDefaults(), logger)
}

func repair(dir string, fs FS, logger *slog.Logger) (Report, error) {
	if logger == nil {
		logger = slog.Default()
	}
	lock, err := lockDir(dir)
	if err != nil {
		return Report{}, err
	}
	if lock != nil {
		defer lock.Close()
	}
	rep, err := check(dir, fs, logger)
	if err != nil && !errors.Is(err, ErrCorrupt) {
		return rep, err
	}
	after, err := check(dir, fs, nil) // the state of the repaired log
	after.Repaired, after.LostRecords = rep.Repaired, rep.LostRecords
	return after, err
}

// check scans the log; with repair non-nil it also fixes what it finds.
func check(dir string, fs FS, repair *slog.Logger) (Report, error) {
	var rep Report
	ents, err := fs.ReadDir(dir)
	if err != nil {
		return rep, fmt.Errorf("wal: read %s: %w", dir, err)
	}
	var firstErr error
	tabs, _, found, err := readTables(fs, dir, false)
	if err != nil {
		return rep, err
	}
	if best := newest(tabs); best >= 0 {
		rep.DurableMark = tabs[best].mark
	} else if found == 2 {
		d := Damage{Segment: "cursors", Reason: "both copies of the cursor table are damaged"}
		if repair != nil {
			for i := 0; i < 2; i++ {
				if err := fs.Remove(cursorPath(dir, i)); err != nil && !errors.Is(err, os.ErrNotExist) {
					return rep, fmt.Errorf("wal: repair cursor table: %w", err)
				}
			}
			if err := fs.syncDir(dir); err != nil {
				return rep, fmt.Errorf("wal: repair cursor table: %w", err)
			}
			repair.Warn("wal: removed the damaged cursor table: every cursor starts again from the first offset")
			rep.Repaired = append(rep.Repaired, "cursor table: both copies damaged, removed (every cursor starts again from the first offset)")
		} else {
			rep.Damage = append(rep.Damage, d)
			firstErr = &CorruptError{Segment: d.Segment, Reason: d.Reason}
		}
	}
	var bases []uint64
	for _, e := range ents {
		if b, ok := parseSegmentName(e.Name()); ok && !e.IsDir() {
			bases = append(bases, b)
		}
	}
	sort.Slice(bases, func(i, j int) bool { return bases[i] < bases[j] })
	rep.Segments = len(bases)
	if len(bases) == 0 {
		rep.FirstOffset = 1
		return rep, firstErr
	}
	rep.FirstOffset = bases[0]
	for i, base := range bases {
		want := int64(-1)
		if i+1 < len(bases) {
			want = int64(bases[i+1] - base)
		}
		path := filepath.Join(dir, segmentName(base))
		data, err := readAll(fs, path)
		if err != nil {
			return rep, fmt.Errorf("wal: read segment %s: %w", segmentName(base), err)
		}
		mark := uint64(0)
		if want < 0 {
			mark = rep.DurableMark
		}
		sc := scanSegment(data, base, want, mark)
		if repair != nil && sc.damage != nil {
			out, lost := repairSegment(data, base, want, mark)
			if err := fs.replace(path, path+".repair", writeBytes(out), 0o640); err != nil {
				return rep, fmt.Errorf("wal: repair segment %s: %w", sc.name, err)
			}
			msg := fmt.Sprintf("segment %s: %s at byte %d (offset %d): %d bytes rewritten, %d records lost",
				sc.name, sc.damage.Reason, sc.damage.Pos, sc.damage.Offset, len(data)-len(out), lost)
			repair.Warn("wal: repaired segment", "segment", sc.name, "reason", sc.damage.Reason,
				"pos", sc.damage.Pos, "offset", sc.damage.Offset, "lost_records", lost)
			rep.Repaired = append(rep.Repaired, msg)
			rep.LostRecords += lost
			data = out
			sc = scanSegment(data, base, want, mark)
		}
		rep.Records += sc.records
		rep.Holes += sc.holes
		rep.Bytes += int64(len(data))
		if sc.damage != nil {
			if sc.torn {
				rep.TornTail = sc.damage
			} else {
				rep.Damage = append(rep.Damage, *sc.damage)
				if firstErr == nil {
					firstErr = &CorruptError{Segment: sc.name, Pos: sc.damage.Pos, Offset: sc.damage.Offset, Reason: sc.damage.Reason}
				}
			}
		}
		if want < 0 {
			rep.LastOffset = base + sc.records - 1
		}
	}
	return rep, firstErr
}

func readAll(fs FS, path string) ([]byte, error) {
	f, err := fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	data := make([]byte, info.Size())
	n, err := f.ReadAt(data, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	// Shorter when cut back since the Stat (Scan beside a writer undoing a
	// batch): the rest is not zeros on disk.
	return data[:n], nil
}

// scanSegment checks every record of one segment file. want is the number
// of records it must hold (-1: the last segment, any number above mark,
// the durable mark).
func scanSegment(data []byte, base uint64, want int64, mark uint64) segmentScan {
	sc := segmentScan{name: segmentName(base), base: base, want: want, size: int64(len(data))}
	off, pos := base, 0
	for pos < len(data) && (want < 0 || int64(off-base) < want) {
		kind, _, n, err := decodeEntry(off, data[pos:])
		if err != nil {
			why, torn := "", false
			if want < 0 {
				why, torn = tornAt(data, pos, off, mark)
			}
			sc.damage = &Damage{Segment: sc.name, Pos: int64(pos), Offset: off, Bytes: int64(len(data) - pos), Reason: err.Error()}
			if why != "" {
				sc.damage.Reason += ": " + why
			}
			sc.torn = torn
			return sc
		}
		if kind == kindHole {
			sc.holes++
		}
		sc.records++
		pos += n
		off++
	}
	switch {
	case want >= 0 && int64(sc.records) < want:
		sc.damage = &Damage{Segment: sc.name, Pos: int64(pos), Offset: off, Reason: fmt.Sprintf("segment ends %d records early", want-int64(sc.records))}
	case want < 0 && off <= mark:
		sc.damage = &Damage{Segment: sc.name, Pos: int64(pos), Offset: off,
			Reason: fmt.Sprintf("the log ends at offset %d, below offset %d, which it knew durable", off-1, mark)}
	case pos < len(data):
		sc.damage = &Damage{Segment: sc.name, Pos: int64(pos), Offset: off, Bytes: int64(len(data) - pos), Reason: "data after the segment's last record"}
	}
	return sc
}

// repairSegment rebuilds a segment: good records are kept, and a damaged
// stretch becomes holes up to the next valid record (resync). In an older
// segment, when nothing valid follows, the rest becomes holes up to want.
// In the last segment a torn end (tornAt) is cut, and holes fill the
// offsets up to mark that the segment no longer holds, so no offset known
// durable is ever handed out again.
func repairSegment(data []byte, base uint64, want int64, mark uint64) (out []byte, lost uint64) {
	off, pos := base, 0
	for pos < len(data) && (want < 0 || int64(off-base) < want) {
		_, _, n, err := decodeEntry(off, data[pos:])
		if err == nil {
			out = append(out, data[pos:pos+n]...)
			pos += n
			off++
			continue
		}
		if want < 0 {
			if _, torn := tornAt(data, pos, off, mark); torn {
				break
			}
		}
		at, atOff, ok := resync(data, pos, off)
		if !ok || (want >= 0 && int64(atOff-base) >= want) {
			break
		}
		for ; off < atOff; off++ {
			out = appendEntry(out, off, kindHole, nil)
			lost++
		}
		pos = at
	}
	end := mark
	if want >= 0 {
		end = base + uint64(want) - 1
	}
	for ; off <= end; off++ {
		out = appendEntry(out, off, kindHole, nil)
		lost++
	}
	return out, lost
}

// Cursors returns the cursors' positions (the next offset each reads) in
// the newest good copy of the cursor table of the log in dir, without
// opening the log (see Scan); nil if there is none. Open may move a cursor
// that lies beyond the log's end back to it.
func Cursors(dir string) (map[string]uint64, error) {
	tabs, _, _, err := readTables(FS{}.withDefaults(), dir, false)
	if err != nil {
		return nil, err
	}
	if best := newest(tabs); best >= 0 {
		return tabs[best].cursors, nil
	}
	return nil, nil
}

// Scan calls fn with every record of the log in dir from offset from on,
// in offset order, holes skipped, without opening the log: it takes no
// lock and may run while a Log has the directory open (what is being
// appended may be missing at the end, or show as a torn tail, where Scan
// stops). rec aliases a buffer that is valid only during the call. Scan
// returns fn's first error, a *CorruptError (ErrCorrupt) for damage before
// the last segment's end, and I/O errors as they come. It is for `edgemq
// check`, which reads the log of a broker that may be running.
//
// A segment listed but gone when read, or one that ends inside a record
// or short of the next one's base while a later one is listed, is what the writer leaves while it undoes a
// failed batch that had started a segment: it removes that segment, cuts
// the old tail back, and the next batch writes there again. Scan then
// lists the directory again and goes on from the offset it reached; it
// reports damage only where it finds it again under a fresh listing.
func Scan(dir string, from uint64, fn func(offset uint64, rec []byte) error) error {
	return scan(dir, FS{}.withDefaults(), from, fn)
}

// scanPasses bounds the listings of one Scan: a writer undoing batch after
// batch (a disk that fails every write) or retention removing a segment at
// each pass would otherwise keep it from ending.
const scanPasses = 8

func scan(dir string, fs FS, from uint64, fn func(offset uint64, rec []byte) error) error {
	var prev *CorruptError
	for pass := 1; ; pass++ {
		next, again, err := scanPass(dir, fs, from, fn)
		if !again || pass == scanPasses {
			return err
		}
		var ce *CorruptError
		if errors.As(err, &ce) {
			if prev != nil && *prev == *ce {
				return err // still there: damage
			}
			prev = ce
		}
		from = next
	}
}

// scanPass is one pass of Scan over one listing. On a listed segment gone
// or damage before the last one, it returns the offset it reached, again
// set, and the error to report if no other pass is to come.
func scanPass(dir string, fs FS, from uint64, fn func(offset uint64, rec []byte) error) (next uint64, again bool, err error) {
	ents, err := fs.ReadDir(dir)
	if err != nil {
		return from, false, fmt.Errorf("wal: read %s: %w", dir, err)
	}
	var bases []uint64
	for _, e := range ents {
		if b, ok := parseSegmentName(e.Name()); ok && !e.IsDir() {
			bases = append(bases, b)
		}
	}
	sort.Slice(bases, func(i, j int) bool { return bases[i] < bases[j] })
	for i, base := range bases {
		last := i == len(bases)-1
		if !last && bases[i+1] <= from {
			continue
		}
		data, err := readAll(fs, filepath.Join(dir, segmentName(base)))
		if err != nil {
			// Gone: removed by retention, or by the writer undoing a batch.
			return from, errors.Is(err, os.ErrNotExist), fmt.Errorf("wal: read segment %s: %w", segmentName(base), err)
		}
		off, pos := base, 0
		for pos < len(data) && (last || off < bases[i+1]) {
			kind, payload, n, err := decodeEntry(off, data[pos:])
			if err != nil {
				if last {
					return from, false, nil // the tail, being written or torn
				}
				return max(from, off), true, &CorruptError{Segment: segmentName(base), Pos: int64(pos), Offset: off, Reason: err.Error()}
			}
			if kind == kindRecord && off >= from {
				if err := fn(off, payload); err != nil {
					return from, false, err
				}
			}
			pos += n
			off++
		}
		if !last && off < bases[i+1] {
			// Records lost at its end, as Check says (scanSegment), or the
			// writer's undoing seen half done.
			return max(from, off), true, &CorruptError{Segment: segmentName(base), Pos: int64(pos), Offset: off,
				Reason: fmt.Sprintf("segment ends %d records early", bases[i+1]-off)}
		}
		from = max(from, off)
	}
	return from, false, nil
}
