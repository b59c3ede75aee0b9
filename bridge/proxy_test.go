package bridge_test

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// proxy is a TCP proxy on loopback between a bridge and its upstream, to cut
// the link (close every connection and refuse new ones), black-hole it
// (keep the connections, forward nothing: a half-open link) and restore it.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	state int // 0 forwarding, 1 cut, 2 black hole
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

const (
	forwarding = iota
	cutOff
	blackHole
)

// newProxy forwards to target ("mqtt://host:port" or "host:port").
func newProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target[strings.LastIndex(target, "/")+1:], conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) url() string { return "mqtt://" + p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.state == cutOff {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.mu.Unlock()
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

// pipe copies src to dst while forwarding; in a black hole it reads and
// drops, so the sender sees its writes succeed.
func (p *proxy) pipe(dst, src net.Conn) {
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
			if err != io.EOF {
				return
			}
			return
		}
	}
}

func (p *proxy) set(state int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = state
	if state == cutOff {
		for c := range p.conns {
			c.Close()
		}
		p.conns = map[net.Conn]bool{}
	}
}

func (p *proxy) cut()       { p.set(cutOff) }
func (p *proxy) blackHole() { p.set(blackHole) }
func (p *proxy) restore()   { p.set(forwarding) }

func (p *proxy) close() {
	p.ln.Close()
	p.set(cutOff)
	p.wg.Wait()
}
