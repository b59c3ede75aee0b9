// Package linkproxy is a TCP proxy on loopback between a bridge and its
// upstream, so that a test or the bench tool can take the link down the
// ways a real network does and bring it back: cut it (close every
// connection and refuse new ones), black-hole it (keep the connections,
// forward nothing: a half-open link) and restore it. bridge's tests and
// cmd/edgemq-bench's bridge scenario share it.
//
// It guarantees that Close stops its goroutines and waits for them, and
// that in a black hole the sender's writes still succeed. It does not
// delay, reorder or corrupt bytes; it forwards or drops them.
package linkproxy

import (
	"net"
	"sync"
)

type state int

const (
	forwarding state = iota
	cut
	blackHole
)

// Proxy forwards every connection made to Addr to its target.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex // guards what follows
	state state
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// New listens on a free loopback port and forwards to target (host:port).
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is where the bridge connects (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		st := p.state
		p.mu.Unlock()
		if st == cut {
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[u] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, u)
		go p.pipe(u, c)
	}
}

// pipe copies src to dst until either side ends, and closes both; in a
// black hole it reads and drops, so the sender sees its writes succeed.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			st := p.state
			p.mu.Unlock()
			if st == forwarding {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proxy) set(st state) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = st
	if st == cut {
		for c := range p.conns {
			c.Close()
		}
		p.conns = map[net.Conn]bool{}
	}
}

// Cut closes every connection and refuses new ones until Restore.
func (p *Proxy) Cut() { p.set(cut) }

// BlackHole keeps the connections but forwards nothing until Restore.
func (p *Proxy) BlackHole() { p.set(blackHole) }

// Restore forwards again.
func (p *Proxy) Restore() { p.set(forwarding) }

// Close stops listening, closes every connection and waits for the pipes.
func (p *Proxy) Close() {
	p.ln.Close()
	p.set(cut)
	p.wg.Wait()
}
