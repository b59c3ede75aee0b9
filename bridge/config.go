package bridge

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// Config is one bridge: where it connects, what it forwards up and what it
// brings down. The broker builds it from the `bridges:` list of its
// configuration file (deploy/edgemq.example.yaml documents every field with
// its default, unit and danger); the field paths in Validate's errors are
// the keys of that file.
type Config struct {
	// Name identifies the bridge in metrics, logs and cursor names. Must be
	// unique, 1 to 64 letters, digits, '-' or '_'.
	Name string
	// Upstreams are tried in order, then round again: mqtt://host:port,
	// mqtts://host:port, ws://host:port/path or wss://host:port/path.
	Upstreams []string
	// Protocol is "3.1.1" or "5".
	Protocol string
	// ClientID is the client id at the upstream. Must be stable: the
	// upstream keeps the bridge's session under it.
	ClientID string
	// Username and Password for the upstream; empty: none.
	Username, Password string
	// Keepalive is the MQTT keepalive; a link silent for 1.5 of it is
	// declared down. Whole seconds, at least 1s.
	Keepalive time.Duration
	// CleanStart asks the upstream for a new session at every connection.
	// SessionExpiry is how long the upstream keeps the session after a
	// disconnect (MQTT 5; 3.1.1 keeps it until a clean connect).
	CleanStart    bool
	SessionExpiry time.Duration
	// TLS is used for mqtts:// and wss://.
	TLS TLSConfig
	// MaxInflight bounds the unacknowledged QoS 1/2 publishes on the link;
	// an MQTT 5 upstream's Receive Maximum lowers it further.
	MaxInflight int
	// ConnectTimeout bounds the dial, the TLS handshake and the wait for
	// CONNACK.
	ConnectTimeout time.Duration
	// BackoffMin and BackoffMax bound the reconnect delay: capped
	// exponential, each wait drawn uniformly below the cap (full jitter).
	BackoffMin, BackoffMax time.Duration
	// MaxBacklogAge, if not 0, drops (counted, reason "max_backlog_age")
	// messages older than it instead of forwarding them.
	MaxBacklogAge time.Duration
	// MaxBacklogBytes, if not 0, drops the oldest waiting messages (counted,
	// reason "max_backlog_bytes") while the bridge holds back more than this
	// many bytes of the log.
	MaxBacklogBytes int64
	// Forward rules send local messages upstream; Downlink rules bring
	// upstream messages into the local broker.
	Forward  []Forward
	Downlink []Downlink
}

// TLSConfig is how the bridge verifies the upstream and proves itself.
type TLSConfig struct {
	// CAFile is a PEM bundle of CAs for the upstream's certificate; empty:
	// the system roots.
	CAFile string
	// CertFile and KeyFile are the client certificate for mutual TLS.
	CertFile, KeyFile string
	// ServerName overrides the name checked in the upstream's certificate.
	ServerName string
	// InsecureSkipVerify accepts any upstream certificate: anyone on the
	// path can read and change the traffic. Logged at Warn on every connect.
	InsecureSkipVerify bool
}

// Forward is one rule taking local messages upstream.
type Forward struct {
	// Filter is the local topic filter.
	Filter string
	// StripPrefix is removed from the local topic before Remote applies.
	StripPrefix string
	// Remote is the upstream topic: a template in which {topic} is the
	// local topic (after StripPrefix) and {client} the publishing client's
	// id. Empty: "{topic}".
	Remote string
	// QoS is the QoS of the upstream PUBLISH, whatever the message's own:
	// 0 forwards once from the log with no acknowledgement, 1 at least once,
	// 2 exactly once per connection (see doc.go).
	QoS int
	// Retain is "keep" (the message's retain flag) or "clear".
	Retain string
}

// Downlink is one rule bringing upstream messages into the local broker.
type Downlink struct {
	// Filter is the upstream topic filter subscribed to.
	Filter string
	// StripPrefix is removed from the upstream topic before Local applies.
	StripPrefix string
	// Local is the local topic: a template with {topic}. Empty: "{topic}".
	Local string
	// QoS is the subscription's QoS: the most the upstream sends at. 2
	// needs protocol 5: paho.mqtt.golang answers the PUBREL of 3.1.1 itself,
	// so the broker could not record the end of the exchange.
	QoS int
}

// FieldError is one problem with a Config: Path is the key path inside the
// bridge ("forward[1].qos"), Reason says what is wrong and what was found.
type FieldError struct {
	Path, Reason string
}

// Error returns "path: reason".
func (e *FieldError) Error() string { return e.Path + ": " + e.Reason }

// DefaultConfig returns the defaults of every field the file may leave out.
func DefaultConfig() Config {
	return Config{
		Protocol:       "3.1.1",
		Keepalive:      30 * time.Second,
		SessionExpiry:  time.Hour,
		MaxInflight:    256,
		ConnectTimeout: 10 * time.Second,
		BackoffMin:     500 * time.Millisecond,
		BackoffMax:     30 * time.Second,
	}
}

// DefaultForward and DefaultDownlink are the defaults of one rule.
func DefaultForward() Forward   { return Forward{Remote: "{topic}", QoS: 1, Retain: "keep"} }
func DefaultDownlink() Downlink { return Downlink{Local: "{topic}", QoS: 1} }

// Validate returns every problem found, joined, each a *FieldError. It does
// not read files or touch the network (Check does).
func (c Config) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Reason: fmt.Sprintf(format, args...)})
	}
	if !validName(c.Name) {
		add("name", "must be 1 to 64 letters, digits, - or _ (got %q)", c.Name)
	}
	if len(c.Upstreams) == 0 {
		add("upstreams", "must list at least one address (got none)")
	}
	for i, u := range c.Upstreams {
		if _, _, err := parseUpstream(u); err != nil {
			add(fmt.Sprintf("upstreams[%d]", i), "%v (got %q)", err, u)
		}
	}
	switch c.Protocol {
	case "3.1.1", "5":
	default:
		add("protocol", "must be 3.1.1 or 5 (got %q)", c.Protocol)
	}
	if c.ClientID == "" || len(c.ClientID) > 65535 {
		add("client_id", "must be 1 to 65535 bytes (got %d)", len(c.ClientID))
	}
	if c.Keepalive < time.Second || c.Keepalive > 65535*time.Second || c.Keepalive%time.Second != 0 {
		add("keepalive", "must be whole seconds from 1s to 65535s (got %s)", c.Keepalive)
	}
	if c.SessionExpiry < 0 || c.SessionExpiry%time.Second != 0 || c.SessionExpiry > (1<<32-1)*time.Second {
		add("session_expiry", "must be whole seconds from 0s to 4294967295s (got %s)", c.SessionExpiry)
	}
	if c.MaxInflight < 1 || c.MaxInflight > 65535 {
		add("max_inflight", "must be between 1 and 65535 (got %d)", c.MaxInflight)
	}
	if c.ConnectTimeout <= 0 {
		add("connect_timeout", "must be positive (got %s)", c.ConnectTimeout)
	}
	if c.BackoffMin <= 0 {
		add("backoff_min", "must be positive (got %s)", c.BackoffMin)
	}
	if c.BackoffMax < c.BackoffMin {
		add("backoff_max", "must be at least backoff_min %s (got %s)", c.BackoffMin, c.BackoffMax)
	}
	if c.MaxBacklogAge < 0 {
		add("max_backlog_age", "must be 0 (no limit) or positive (got %s)", c.MaxBacklogAge)
	}
	if c.MaxBacklogBytes < 0 {
		add("max_backlog_bytes", "must be 0 (no limit) or positive (got %d)", c.MaxBacklogBytes)
	}
	t := c.TLS
	if (t.CertFile == "") != (t.KeyFile == "") {
		add("tls.cert_file", "cert_file and key_file go together (got cert_file %q, key_file %q)", t.CertFile, t.KeyFile)
	}
	if len(c.Forward) == 0 && len(c.Downlink) == 0 {
		add("forward", "a bridge needs at least one forward or downlink rule (got none)")
	}
	for i, f := range c.Forward {
		p := fmt.Sprintf("forward[%d]", i)
		if why := qos.CheckFilter(f.Filter); why != "" {
			add(p+".filter", "%s (got %q)", why, f.Filter)
		}
		if why := checkTemplate(f.Remote, "{topic}", "{client}"); why != "" {
			add(p+".remote", "%s (got %q)", why, f.Remote)
		}
		if f.QoS < 0 || f.QoS > 2 {
			add(p+".qos", "must be 0, 1 or 2 (got %d)", f.QoS)
		}
		switch f.Retain {
		case "keep", "clear":
		default:
			add(p+".retain", "must be keep or clear (got %q)", f.Retain)
		}
	}
	for i, d := range c.Downlink {
		p := fmt.Sprintf("downlink[%d]", i)
		if why := qos.CheckFilter(d.Filter); why != "" {
			add(p+".filter", "%s (got %q)", why, d.Filter)
		}
		if why := checkTemplate(d.Local, "{topic}"); why != "" {
			add(p+".local", "%s (got %q)", why, d.Local)
		}
		if d.QoS < 0 || d.QoS > 2 {
			add(p+".qos", "must be 0, 1 or 2 (got %d)", d.QoS)
		} else if d.QoS == 2 && c.Protocol != "5" {
			add(p+".qos", "2 needs protocol 5 (got 2 with protocol %q)", c.Protocol)
		}
	}
	return errors.Join(errs...)
}

// Check does what Validate does not: it reads the TLS files.
func (c Config) Check() error {
	if _, err := c.TLS.build(""); err != nil {
		return &FieldError{Path: "tls", Reason: err.Error()}
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// parseUpstream splits an upstream address into its scheme and URL.
func parseUpstream(s string) (string, *url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "", nil, errors.New("must be mqtt://, mqtts://, ws:// or wss:// with host:port")
	}
	switch u.Scheme {
	case "mqtt", "mqtts":
		if u.Path != "" && u.Path != "/" {
			return "", nil, errors.New("mqtt:// and mqtts:// take no path")
		}
	case "ws", "wss":
	default:
		return "", nil, errors.New("must be mqtt://, mqtts://, ws:// or wss://")
	}
	if u.Port() == "" {
		return "", nil, errors.New("must name the port")
	}
	return u.Scheme, u, nil
}

// checkTemplate returns why t is not a topic template with only the given
// placeholders, or "".
func checkTemplate(t string, allowed ...string) string {
	if t == "" {
		return "must not be empty"
	}
	rest := t
	for _, a := range allowed {
		rest = strings.ReplaceAll(rest, a, "x")
	}
	if strings.ContainsAny(rest, "{}") {
		return "may only use " + strings.Join(allowed, " and ")
	}
	if strings.ContainsAny(rest, "+#") {
		return "must be a topic name, without + or # [MQTT-3.3.2-2]"
	}
	return ""
}

// build returns the client TLS configuration for host (the upstream's host,
// used as the server name unless ServerName is set).
func (t TLSConfig) build(host string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.ServerName != "" {
		cfg.ServerName = t.ServerName
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate found", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file/key_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
