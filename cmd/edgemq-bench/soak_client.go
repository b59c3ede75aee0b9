package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// The soak test's client: the bench's packet encoder (packet.go) with one
// reader goroutine per connection feeding a channel, so that waiting never
// cuts a packet in half (a read deadline on the buffered reader would).

// mconn is one soak connection. Packets arrive on in (bodies copied); in
// is closed when the connection ends.
type mconn struct {
	c       net.Conn
	version byte
	in      chan packet
	wmu     sync.Mutex
	done    chan struct{}
}

// errTimeout is a wait for a packet that did not come.
var errTimeout = errors.New("soak: timed out waiting for the broker")

func mdial(addr string, o connectOptions) (*mconn, connackInfo, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, connackInfo{}, err
	}
	m := &mconn{c: c, version: o.version, in: make(chan packet, 1024), done: make(chan struct{})}
	go m.readLoop()
	if err := m.write(appendConnect(nil, o)); err != nil {
		m.close()
		return nil, connackInfo{}, err
	}
	p, err := m.next(5 * time.Second)
	if err != nil {
		m.close()
		return nil, connackInfo{}, err
	}
	ci, err := parseConnack(p, o.version)
	if err != nil {
		m.close()
		return nil, ci, err
	}
	return m, ci, nil
}

func (m *mconn) readLoop() {
	defer close(m.done)
	defer close(m.in)
	pr := newPacketReader(m.c)
	for {
		p, err := pr.read()
		if err != nil {
			return
		}
		p.body = append([]byte(nil), p.body...)
		m.in <- p
	}
}

// next returns the next packet, or an error when the connection ended or
// nothing came within d.
func (m *mconn) next(d time.Duration) (packet, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case p, ok := <-m.in:
		if !ok {
			return packet{}, net.ErrClosed
		}
		return p, nil
	case <-t.C:
		return packet{}, errTimeout
	}
}

func (m *mconn) write(b []byte) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	_ = m.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := m.c.Write(b)
	return err
}

// close ends the connection abruptly (no DISCONNECT: a will goes) and
// waits for its reader.
func (m *mconn) close() {
	_ = m.c.Close()
	for range m.in { // unblock the reader
	}
	<-m.done
}

// disconnect sends DISCONNECT, then closes.
func (m *mconn) disconnect() {
	_ = m.write(appendDisconnect(nil))
	m.close()
}

// soakPayload is (publisher, sequence) in the first 12 bytes of a payload.
func soakPayload(pub uint32, seq uint64, size int) []byte {
	b := make([]byte, max(size, 12))
	binary.BigEndian.PutUint32(b, pub)
	binary.BigEndian.PutUint64(b[4:], seq)
	return b
}

func parseSoakPayload(b []byte) (pub uint32, seq uint64, err error) {
	if len(b) < 12 {
		return 0, 0, fmt.Errorf("payload of %d bytes", len(b))
	}
	return binary.BigEndian.Uint32(b), binary.BigEndian.Uint64(b[4:]), nil
}
