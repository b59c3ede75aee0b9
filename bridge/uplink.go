package bridge

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// uplink is one connection to one upstream, whatever the protocol. The
// bridge publishes through it from several goroutines; the PUBLISH packets
// go on the wire in the order the publish calls returned (both clients
// queue them in order, and the connection writes its queue in order).
type uplink interface {
	// publish writes one PUBLISH and returns once it is on the wire (or
	// failed). For QoS 1 and 2, done is called once later with f, and nil
	// for PUBACK/PUBCOMP, an *refusedError for a refusal, or errLinkLost;
	// for QoS 0 done is nil.
	publish(ctx context.Context, p outbound, f flight, done func(flight, error)) error
	// window is how many QoS 1/2 publishes may wait for their
	// acknowledgement: Config.MaxInflight, lowered by the upstream's
	// Receive Maximum [MQTT-3.3.4-9].
	window() int
	// lost is closed when the connection ends; cause tells why.
	lost() <-chan struct{}
	cause() error
	// close disconnects (if still connected) and waits for the library's
	// goroutines.
	close()
}

// linkState is what both uplinks keep about their connection's end: the
// first cause wins, and lost is closed once.
type linkState struct {
	mu       sync.Mutex
	err      error
	lostCh   chan struct{}
	lostOnce sync.Once
}

func newLinkState() linkState { return linkState{lostCh: make(chan struct{})} }

// fail records why the link ended, if it is the first to, and closes lost.
func (s *linkState) fail(err error) {
	s.lostOnce.Do(func() {
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		close(s.lostCh)
	})
}

func (s *linkState) lost() <-chan struct{} { return s.lostCh }

func (s *linkState) cause() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// outbound is one message as it goes upstream.
type outbound struct {
	topic   string
	payload []byte
	qos     byte
	retain  bool
	props   *outProps // MQTT 5 only
}

// outProps are the MQTT 5 properties that travel with a message
// [MQTT-3.3.2.3].
type outProps struct {
	payloadFormat   *byte
	expiry          *uint32
	contentType     string
	responseTopic   string
	correlationData []byte
	user            [][2]string
}

// Errors of the uplink.
var (
	// errLinkLost: the connection ended with the publish unacknowledged; it
	// is sent again from the cursor on the next connection.
	errLinkLost = errors.New("bridge: link lost before the acknowledgement")
	// errSilent: nothing came from the upstream for 1.5 keepalives (a
	// half-open link); the bridge closed the connection.
	errSilent = errors.New("bridge: upstream silent for 1.5 keepalives (half-open link?)")
)

// refusedError is an MQTT 5 PUBACK or PUBREC with a failure reason code
// [MQTT-3.4.2.1]: the upstream will not take the message.
type refusedError struct{ code byte }

func (e *refusedError) Error() string {
	return fmt.Sprintf("bridge: upstream refused the message (reason code 0x%02x)", e.code)
}

// dialer opens the network connection to an upstream. WebSocket comes from
// the broker (Options.DialWebSocket), which owns the WebSocket library.
type dialer struct {
	cfg Config
	ws  func(ctx context.Context, u *url.URL, tc *tls.Config) (net.Conn, error)
}

func (d dialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	scheme, u, err := parseUpstream(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout)
	defer cancel()
	var tc *tls.Config
	if scheme == "mqtts" || scheme == "wss" {
		if tc, err = d.cfg.TLS.build(u.Hostname()); err != nil {
			return nil, err
		}
	}
	switch scheme {
	case "mqtt":
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", u.Host)
	case "mqtts":
		td := tls.Dialer{Config: tc}
		c, err := td.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, tlsError(err)
		}
		return c, nil
	default:
		if d.ws == nil {
			return nil, errors.New("bridge: no WebSocket dialer")
		}
		c, err := d.ws(ctx, u, tc)
		if err != nil {
			return nil, tlsError(err)
		}
		return c, nil
	}
}

// tlsError says in words what a certificate failure means for the user.
func tlsError(err error) error {
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return fmt.Errorf("upstream certificate not signed by a trusted CA (check tls.ca_file): %w", err)
	}
	var hostErr x509.HostnameError
	if errors.As(err, &hostErr) {
		return fmt.Errorf("upstream certificate does not match the host (check the address or tls.server_name): %w", err)
	}
	return err
}

// watchedConn is a net.Conn that remembers when it last read something, so
// that the watchdog can tell a silent link from a quiet one. Its reads are
// buffered: both paho clients read a packet's header a byte or two at a
// time, which would cost system calls per acknowledgement. Its writes are
// coalesced: both paho clients write each packet with its own system call
// (one per forwarded message); here Write queues the bytes and one writer
// goroutine writes whatever queued up meanwhile in one call, so under load
// one system call carries many PUBLISH packets, and an idle link still
// sends each packet at once. A write error is returned by the Writes after
// it (the link fails then, and the unacknowledged messages are sent again).
type watchedConn struct {
	net.Conn
	r        *bufio.Reader // over sockReader; used by the client's one reading goroutine
	lastRead atomic.Int64  // Unix nanoseconds
	silent   atomic.Bool

	writeTimeout time.Duration // for each write of the writer goroutine
	wmu          sync.Mutex    // guards what follows
	wcond        *sync.Cond    // the queue drained, or the writer failed or stopped
	queued       []byte        // waiting for the writer
	spare        []byte
	werr         error // the first write error
	wclosed      bool
	kick         chan struct{} // capacity 1: wakes the writer; kicks merge
	wdone        chan struct{} // closed when the writer goroutine ends
	closeOnce    sync.Once
}

// maxQueuedWrite bounds the bytes a Write may queue: beyond it Write waits
// for the writer, so a slow upstream slows the bridge down (backpressure)
// instead of growing memory.
const maxQueuedWrite = 256 << 10

// newWatchedConn wraps c and starts its writer goroutine, which Close
// stops; writeTimeout bounds each write to the socket (0: none).
func newWatchedConn(c net.Conn, writeTimeout time.Duration) *watchedConn {
	w := &watchedConn{Conn: c, writeTimeout: writeTimeout, kick: make(chan struct{}, 1), wdone: make(chan struct{})}
	w.r = bufio.NewReaderSize(sockReader{w}, 16<<10)
	w.wcond = sync.NewCond(&w.wmu)
	go w.writeLoop()
	return w
}

func (c *watchedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Write queues p for the writer goroutine.
func (c *watchedConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	for len(c.queued) >= maxQueuedWrite && c.werr == nil && !c.wclosed {
		c.wcond.Wait()
	}
	if c.werr != nil || c.wclosed {
		err := c.werr
		c.wmu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		return 0, err
	}
	c.queued = append(c.queued, p...)
	c.wmu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return len(p), nil
}

// SetWriteDeadline does nothing: paho.mqtt.golang sets a deadline around
// each Write, which here only queues; the writer goroutine sets its own
// (writeTimeout) around each write to the socket.
func (c *watchedConn) SetWriteDeadline(time.Time) error { return nil }

// writeLoop writes what is queued, one system call per wake-up, until
// Close; after Close it writes what was queued before (a DISCONNECT) and ends.
func (c *watchedConn) writeLoop() {
	defer close(c.wdone)
	for range c.kick {
		// Let the goroutines that are about to write run first: paho
		// hands its packets from goroutine to goroutine, one Write each,
		// and without this yield a drain wrote 3-4 PUBLISH packets per
		// system call (0.27 writes per message, 6 µs each on loopback);
		// with it 20-30 (0.035). With nothing else runnable it returns
		// at once, so a lone packet is not delayed.
		runtime.Gosched()
		c.wmu.Lock()
		b, closed := c.queued, c.wclosed
		c.queued = c.spare[:0]
		c.wmu.Unlock()
		var err error
		if len(b) > 0 {
			if c.writeTimeout > 0 {
				_ = c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
			}
			_, err = c.Conn.Write(b)
		}
		c.wmu.Lock()
		c.spare = b[:0]
		if err != nil && c.werr == nil {
			c.werr = err
		}
		c.wcond.Broadcast()
		c.wmu.Unlock()
		if closed {
			return
		}
	}
}

// Close writes what is queued (for at most a second), closes the socket
// and stops the writer goroutine.
func (c *watchedConn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		c.wmu.Lock()
		c.wclosed = true
		c.wcond.Broadcast()
		c.wmu.Unlock()
		select {
		case c.kick <- struct{}{}:
		default:
		}
		t := time.NewTimer(time.Second)
		select {
		case <-c.wdone:
		case <-t.C:
		}
		t.Stop()
		err = c.Conn.Close() // ends a write the upstream does not take
		<-c.wdone
	})
	return err
}

// sockReader reads the socket itself and notes the time of what came.
type sockReader struct{ c *watchedConn }

func (s sockReader) Read(p []byte) (int, error) {
	n, err := s.c.Conn.Read(p)
	if n > 0 {
		s.c.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

// watch closes c when nothing has been read for 1.5 keepalives: the MQTT
// client pings after a keepalive without traffic and the server answers
// [MQTT-3.1.2-24], so a live link never stays silent that long. It returns
// when ctx ends. silent is called first, so the link is known to be down at
// once, whatever the MQTT library then takes to notice the closed socket.
func (c *watchedConn) watch(ctx context.Context, keepalive time.Duration, wg *sync.WaitGroup, silent func()) {
	c.lastRead.Store(time.Now().UnixNano())
	limit := keepalive * 3 / 2
	tick := time.NewTicker(max(keepalive/8, 10*time.Millisecond))
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				if now.Sub(time.Unix(0, c.lastRead.Load())) > limit {
					c.silent.Store(true)
					silent()
					_ = c.Conn.Close()
					return
				}
			}
		}
	}()
}
