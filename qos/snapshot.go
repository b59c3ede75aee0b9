package qos

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"slices"
)

// ErrBadSnapshot is returned by ReadSnapshot for a file that is not a whole,
// undamaged snapshot of a version this build reads. The caller falls back to
// an older snapshot or to a longer replay of the log.
var ErrBadSnapshot = errors.New("qos: bad snapshot")

// snapshotMagic starts every snapshot file; the byte after it is the version.
var snapshotMagic = [7]byte{'E', 'D', 'G', 'E', 'S', 'N', 'P'}

// Snapshot versions. Version 1 was gob, which could not encode a State
// holding a retained message; it is still read (see doc.go), never written.
// Version 2 had no GroupTaken section (its group positions were past every
// delivery logged); it is still read, with none taken. Version 3 had no
// GroupOwed and GroupHandout sections (its group positions stayed below
// what members held); it is still read, with none owed or handed out.
const (
	snapshotGob     = 1
	snapshotNoTaken = 2
	snapshotNoOwed  = 3
	snapshotVersion = 4
)

// snapshotHeader is magic, version, offset, body length, CRC-32C. From
// version 2 the CRC covers the offset too, so a damaged offset cannot make
// a restart replay from the wrong place.
const snapshotHeader = 28

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// WriteSnapshot writes st as the state after every record below offset: a
// header (magic, version, offset, body length, CRC-32C of the offset and
// the body) and the body (see doc.go). The same State always gives the same bytes. It fails
// only for a State that Apply cannot have built (a QoS above 2).
func WriteSnapshot(w io.Writer, st *State, offset uint64) error {
	body, err := st.appendBinary(nil)
	if err != nil {
		return fmt.Errorf("qos: encode snapshot: %w", err)
	}
	bw := bufio.NewWriter(w)
	if _, err := bw.Write(snapshotHeaderOf(snapshotVersion, offset, body)); err != nil {
		return err
	}
	if _, err := bw.Write(body); err != nil {
		return err
	}
	return bw.Flush()
}

func snapshotHeaderOf(version byte, offset uint64, body []byte) []byte {
	hdr := make([]byte, 0, snapshotHeader)
	hdr = append(hdr, snapshotMagic[:]...)
	hdr = append(hdr, version)
	hdr = binary.BigEndian.AppendUint64(hdr, offset)
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(len(body)))
	return binary.BigEndian.AppendUint32(hdr, snapshotSum(version, hdr[8:16], body))
}

func snapshotSum(version byte, offset, body []byte) uint32 {
	if version == snapshotGob {
		return crc32.Checksum(body, castagnoli)
	}
	return crc32.Update(crc32.Checksum(offset, castagnoli), castagnoli, body)
}

// ReadSnapshot reads a snapshot written by WriteSnapshot (or a version 1
// one) and returns the state and the offset replay resumes from. A
// truncated, damaged or unknown file returns an error wrapping
// ErrBadSnapshot.
func ReadSnapshot(r io.Reader) (*State, uint64, error) {
	var hdr [snapshotHeader]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, 0, fmt.Errorf("%w: header: %v", ErrBadSnapshot, err)
	}
	version := hdr[7]
	if !bytes.Equal(hdr[:7], snapshotMagic[:]) || (version != snapshotVersion && version != snapshotNoOwed && version != snapshotNoTaken && version != snapshotGob) {
		return nil, 0, fmt.Errorf("%w: not a version %d snapshot", ErrBadSnapshot, snapshotVersion)
	}
	offset := binary.BigEndian.Uint64(hdr[8:])
	n := binary.BigEndian.Uint64(hdr[16:])
	sum := binary.BigEndian.Uint32(hdr[24:])
	if n > 1<<34 {
		return nil, 0, fmt.Errorf("%w: body of %d bytes", ErrBadSnapshot, n)
	}
	body, err := io.ReadAll(io.LimitReader(r, int64(n)))
	if err != nil {
		return nil, 0, fmt.Errorf("%w: body: %v", ErrBadSnapshot, err)
	}
	if uint64(len(body)) != n || snapshotSum(version, hdr[8:16], body) != sum {
		return nil, 0, fmt.Errorf("%w: body truncated or damaged", ErrBadSnapshot)
	}
	var st *State
	if version == snapshotGob {
		st, err = decodeGobState(body)
	} else {
		st, err = decodeState(body, version)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("%w: decode: %v", ErrBadSnapshot, err)
	}
	return st, offset, nil
}

// appendBinary appends the body of a snapshot: five sections, each a count
// and its entries in key order, so that equal states encode equally.
// Sessions, subscriptions and messages are embedded as their own records
// (Encode), so a field added to a record reaches snapshots with the
// record's version.
func (st *State) appendBinary(b []byte) ([]byte, error) {
	b = binary.AppendUvarint(b, uint64(len(st.Sessions)))
	for _, id := range slices.Sorted(maps.Keys(st.Sessions)) {
		s := st.Sessions[id]
		sess := s.Session
		sess.Client = id // the key is what counts
		rec, err := Encode(&sess)
		if err != nil {
			return nil, fmt.Errorf("session %q: %w", id, err)
		}
		b = appendBytes(b, rec)
		var connected byte
		if s.Connected {
			connected = 1
		}
		b = append(b, connected)
		b = binary.AppendVarint(b, s.DisconnectedAt)
		b = binary.AppendUvarint(b, s.Next)
		b = binary.AppendVarint(b, s.WillDue)
		b = binary.AppendUvarint(b, uint64(len(s.Subs)))
		for _, filter := range slices.Sorted(maps.Keys(s.Subs)) {
			sub := s.Subs[filter]
			sub.Filter = filter
			rec, err := Encode(&sub.Subscribe)
			if err != nil {
				return nil, fmt.Errorf("session %q: %w", id, err)
			}
			b = appendBytes(b, rec)
			b = binary.AppendUvarint(b, sub.Since)
		}
		b = binary.AppendUvarint(b, uint64(len(s.Inflight)))
		for _, pid := range slices.Sorted(maps.Keys(s.Inflight)) {
			in := s.Inflight[pid]
			if in.QoS > 2 {
				return nil, fmt.Errorf("%w: session %q inflight qos %d", ErrBadRecord, id, in.QoS)
			}
			// Flags: 1 released, 2 retain, 4 at a SUBSCRIBE, 8 its message
			// follows (one no longer retained: the retained one at its
			// offset is the message otherwise); snapshots before retain
			// hold 0 or 1, before version 4 at most 3.
			var flags byte
			if in.Released {
				flags |= 1
			}
			if in.Retain {
				flags |= 2
			}
			var msg []byte
			if in.AtSubscribe {
				flags |= 4
				if _, ok := st.retainedAt[in.Offset]; !ok && in.Msg != nil {
					flags |= 8
					var err error
					if msg, err = in.Msg.AppendBinary(nil); err != nil {
						return nil, fmt.Errorf("session %q inflight %d: %w", id, pid, err)
					}
				}
			}
			b = binary.BigEndian.AppendUint16(b, pid)
			b = binary.AppendUvarint(b, in.Offset)
			b = append(b, in.QoS, flags)
			b = appendString(b, in.Group)
			if msg != nil {
				b = appendBytes(b, msg)
			}
		}
	}
	b = binary.AppendUvarint(b, uint64(len(st.Retained)))
	for _, topic := range slices.Sorted(maps.Keys(st.Retained)) {
		r := st.Retained[topic]
		r.Message.Topic = topic
		b = binary.AppendUvarint(b, r.Offset)
		rec, err := r.Message.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("retained %q: %w", topic, err)
		}
		b = appendBytes(b, rec)
	}
	b = binary.AppendUvarint(b, uint64(len(st.Inbound)))
	for _, id := range slices.Sorted(maps.Keys(st.Inbound)) {
		in := st.Inbound[id]
		b = appendString(b, id)
		b = binary.AppendUvarint(b, uint64(len(in)))
		for _, pid := range slices.Sorted(maps.Keys(in)) {
			b = binary.BigEndian.AppendUint16(b, pid)
			b = binary.AppendUvarint(b, in[pid])
		}
	}
	b = binary.AppendUvarint(b, uint64(len(st.GroupNext)))
	for _, key := range slices.Sorted(maps.Keys(st.GroupNext)) {
		b = appendString(b, key)
		b = binary.AppendUvarint(b, st.GroupNext[key])
	}
	// GroupTaken: per group, its offsets in order, each as the distance
	// from the one before (the first from the group's position).
	b = binary.AppendUvarint(b, uint64(len(st.GroupTaken)))
	for _, key := range slices.Sorted(maps.Keys(st.GroupTaken)) {
		offs := slices.Sorted(maps.Keys(st.GroupTaken[key]))
		b = appendString(b, key)
		b = binary.AppendUvarint(b, uint64(len(offs)))
		prev := st.GroupNext[key]
		for _, off := range offs {
			if off < prev {
				return nil, fmt.Errorf("%w: group %q taken %d below %d", ErrBadRecord, key, off, prev)
			}
			b = binary.AppendUvarint(b, off-prev)
			prev = off
		}
	}
	// GroupOwed: per group, its offsets in order, each as the distance
	// from the one before (the first from 0).
	b = binary.AppendUvarint(b, uint64(len(st.GroupOwed)))
	for _, key := range slices.Sorted(maps.Keys(st.GroupOwed)) {
		offs := slices.Sorted(maps.Keys(st.GroupOwed[key]))
		b = appendString(b, key)
		b = binary.AppendUvarint(b, uint64(len(offs)))
		var prev uint64
		for _, off := range offs {
			b = binary.AppendUvarint(b, off-prev)
			prev = off
		}
	}
	b = binary.AppendUvarint(b, uint64(len(st.GroupHandout)))
	for _, key := range slices.Sorted(maps.Keys(st.GroupHandout)) {
		b = appendString(b, key)
		b = binary.AppendUvarint(b, st.GroupHandout[key])
	}
	return b, nil
}

// decodeState decodes what appendBinary wrote. Every error wraps
// ErrBadRecord.
func decodeState(body []byte, version byte) (*State, error) {
	st := NewState()
	d := decoder{b: body}
	for range d.count() {
		k, v, err := Decode(d.field())
		if d.err != nil {
			break
		}
		sess, ok := v.(*Session)
		if err != nil || !ok {
			return nil, fmt.Errorf("%w: session entry of kind %d (%v)", ErrBadRecord, k, err)
		}
		s := &SessionState{Session: *sess, Subs: map[string]Sub{}, Inflight: map[uint16]Inflight{}}
		s.Connected = d.flag()
		s.DisconnectedAt = d.varint()
		s.Next = d.uvarint()
		s.WillDue = d.varint()
		for range d.count() {
			k, v, err := Decode(d.field())
			since := d.uvarint()
			if d.err != nil {
				break
			}
			sub, ok := v.(*Subscribe)
			if err != nil || !ok {
				return nil, fmt.Errorf("%w: subscription entry of kind %d (%v)", ErrBadRecord, k, err)
			}
			s.Subs[sub.Filter] = Sub{Subscribe: *sub, Since: since}
		}
		for range d.count() {
			pid := d.uint16()
			in := Inflight{Offset: d.uvarint(), QoS: d.byte()}
			flags := d.byte()
			in.Released, in.Retain, in.AtSubscribe = flags&1 != 0, flags&2 != 0, flags&4 != 0
			in.Group = d.string()
			if d.err == nil && (in.QoS > 2 || flags > 15 || (version < snapshotVersion && flags > 3) || (flags&8 != 0 && flags&4 == 0)) {
				return nil, fmt.Errorf("%w: inflight qos %d flags %#x", ErrBadRecord, in.QoS, flags)
			}
			if flags&8 != 0 {
				rec := d.field()
				if d.err == nil {
					in.Msg = new(Message)
					if err := in.Msg.UnmarshalBinary(rec); err != nil {
						return nil, err
					}
				}
			}
			s.Inflight[pid] = in
		}
		if d.err != nil {
			break
		}
		st.Sessions[s.Client] = s
		if s.Ref != 0 {
			st.refs[s.Ref] = s.Client
		}
	}
	for range d.count() {
		off := d.uvarint()
		rec := d.field()
		if d.err != nil {
			break
		}
		var m Message
		if err := m.UnmarshalBinary(rec); err != nil {
			return nil, err
		}
		st.Retained[m.Topic] = Retained{Offset: off, Message: m}
		st.retainedAt[off] = m.Topic
	}
	// A flight of a retained message sent at a SUBSCRIBE that is still
	// the retained one has its message there.
	for _, s := range st.Sessions {
		for pid, in := range s.Inflight {
			if in.AtSubscribe && in.Msg == nil {
				if in.Msg = st.retainedMessage(in.Offset); in.Msg != nil {
					s.Inflight[pid] = in
				}
			}
		}
	}
	for range d.count() {
		id := d.string()
		in := map[uint16]uint64{}
		for range d.count() {
			pid := d.uint16()
			in[pid] = d.uvarint()
		}
		if d.err != nil {
			break
		}
		st.Inbound[id] = in
	}
	for range d.count() {
		key := d.string()
		st.GroupNext[key] = d.uvarint()
	}
	if version >= snapshotNoOwed {
		for range d.count() {
			key := d.string()
			next, ok := st.GroupNext[key]
			if !ok && d.err == nil {
				d.fail("taken of no group")
			}
			t := map[uint64]bool{}
			prev := next
			for range d.count() {
				next := prev + d.uvarint()
				if next < prev {
					d.fail("taken offset")
				}
				prev = next
				t[prev] = true
			}
			if d.err != nil {
				break
			}
			st.GroupTaken[key] = t
		}
	}
	if version >= snapshotVersion {
		for range d.count() {
			key := d.string()
			if _, ok := st.GroupNext[key]; !ok && d.err == nil {
				d.fail("owed of no group")
			}
			o := map[uint64]bool{}
			var prev uint64
			for range d.count() {
				next := prev + d.uvarint()
				if next < prev || (next == prev && len(o) > 0) {
					d.fail("owed offset")
				}
				prev = next
				o[prev] = true
			}
			if d.err != nil {
				break
			}
			st.GroupOwed[key] = o
		}
		for range d.count() {
			key := d.string()
			if _, ok := st.GroupNext[key]; !ok && d.err == nil {
				d.fail("hand-out of no group")
			}
			st.GroupHandout[key] = d.uvarint()
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: snapshot: %d trailing bytes", ErrBadRecord, len(d.b))
	}
	return st, nil
}

// decodeGobState reads a version 1 snapshot: a gob-encoded State.
func decodeGobState(body []byte) (*State, error) {
	st := NewState()
	if err := gob.NewDecoder(bytes.NewReader(body)).Decode(st); err != nil {
		return nil, err
	}
	for topic, r := range st.Retained {
		st.retainedAt[r.Offset] = topic
	}
	for id, s := range st.Sessions {
		if s.Ref != 0 {
			st.refs[s.Ref] = id
		}
		// gob leaves empty maps nil
		if s.Subs == nil {
			s.Subs = map[string]Sub{}
		}
		if s.Inflight == nil {
			s.Inflight = map[uint16]Inflight{}
		}
	}
	return st, nil
}

// count reads the length of a section; each entry takes at least one byte,
// so a count beyond what is left is garbage, not an allocation to make.
func (d *decoder) count() uint64 {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("count")
		return 0
	}
	return n
}

// flag reads a byte that must be 0 or 1.
func (d *decoder) flag() bool {
	switch d.byte() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail("flag")
	return false
}
