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
)

// ErrBadSnapshot is returned by ReadSnapshot for a file that is not a whole,
// undamaged snapshot.
var ErrBadSnapshot = errors.New("qos: bad snapshot")

// snapshotMagic starts every snapshot file; the byte after it is the version.
var snapshotMagic = [7]byte{'E', 'D', 'G', 'E', 'S', 'N', 'P'}

const snapshotVersion = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// WriteSnapshot writes st as the state after every record below offset:
// a header (magic, version, offset, body length, CRC-32C of the body) and
// the gob-encoded state.
func WriteSnapshot(w io.Writer, st *State, offset uint64) error {
	var body bytes.Buffer
	if err := gob.NewEncoder(&body).Encode(st); err != nil {
		return fmt.Errorf("qos: encode snapshot: %w", err)
	}
	hdr := make([]byte, 0, 32)
	hdr = append(hdr, snapshotMagic[:]...)
	hdr = append(hdr, snapshotVersion)
	hdr = binary.BigEndian.AppendUint64(hdr, offset)
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(body.Len()))
	hdr = binary.BigEndian.AppendUint32(hdr, crc32.Checksum(body.Bytes(), castagnoli))
	bw := bufio.NewWriter(w)
	if _, err := bw.Write(hdr); err != nil {
		return err
	}
	if _, err := body.WriteTo(bw); err != nil {
		return err
	}
	return bw.Flush()
}

// ReadSnapshot reads a snapshot written by WriteSnapshot and returns the
// state and the offset replay resumes from. A truncated or damaged file
// returns an error wrapping ErrBadSnapshot.
func ReadSnapshot(r io.Reader) (*State, uint64, error) {
	var hdr [28]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, 0, fmt.Errorf("%w: header: %v", ErrBadSnapshot, err)
	}
	if !bytes.Equal(hdr[:7], snapshotMagic[:]) || hdr[7] != snapshotVersion {
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
	if uint64(len(body)) != n || crc32.Checksum(body, castagnoli) != sum {
		return nil, 0, fmt.Errorf("%w: body truncated or damaged", ErrBadSnapshot)
	}
	st := NewState()
	if err := gob.NewDecoder(bytes.NewReader(body)).Decode(st); err != nil {
		return nil, 0, fmt.Errorf("%w: decode: %v", ErrBadSnapshot, err)
	}
	for _, s := range st.Sessions { // gob leaves empty maps nil
		if s.Subs == nil {
			s.Subs = map[string]Sub{}
		}
		if s.Inflight == nil {
			s.Inflight = map[uint16]Inflight{}
		}
	}
	return st, offset, nil
}
