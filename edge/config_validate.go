package edge

import (
	"errors"
	"fmt"
	"math"
	"net"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/edgemq/edgemq/qos"
)

// Bounds that come from the MQTT protocol itself.
const (
	// mqttMaxPacketSize is the largest MQTT packet: a 268,435,455-byte remaining
	// length plus the 5-byte fixed header [MQTT-2.2.3].
	mqttMaxPacketSize = 268_435_455 + 5
	// mqttMaxUint16 bounds topic lengths (UTF-8 string length prefix [MQTT-1.5.4]),
	// Receive Maximum [MQTT-3.2.2.3.3] and packet identifiers.
	mqttMaxUint16 = 65535
	// mqttMaxKeepalive is the largest Keep Alive, in seconds [MQTT-3.1.2.10].
	mqttMaxKeepalive = 65535 * time.Second
	// minSegmentSize keeps a log segment from being smaller than a typical record batch.
	minSegmentSize = 64 << 10
)

// minMemoryLimit is the smallest memory_limit accepted: the broker's own
// idle footprint is about 13 MB, and a limit below what it needs makes the
// garbage collector run without pause.
const minMemoryLimit = 32 << 20

// Validate checks every field and returns every problem found, joined with
// errors.Join, each a *ConfigError "field.path: reason (got X)". A listener's
// empty Name and a WebSocket listener's empty Path are accepted as their
// defaults (see applyDefaults).
//
// Validate does not touch the file system or the network: it does not check
// that files exist or that addresses can be bound. `edgemq check` also loads
// the password file and the TLS key pairs.
func (c Config) Validate() error {
	v := &validator{}
	v.listeners(c.Listeners)
	if c.HTTP.Address != "" {
		v.address("http.address", c.HTTP.Address)
		for i, l := range c.Listeners {
			if sameAddress(l.Address, c.HTTP.Address) {
				v.add("http.address", "already used by listeners[%d] (got %q)", i, c.HTTP.Address)
			}
		}
	}
	v.serverNames("http.server_names", c.HTTP.ServerNames)
	v.auth(c.Auth)
	v.limits(c.Limits)
	if c.MemoryLimit != 0 && c.MemoryLimit < minMemoryLimit {
		v.add("memory_limit", "must be 0 (none) or at least %s (got %s)", formatBytes(minMemoryLimit), formatBytes(c.MemoryLimit))
	}
	if c.GCHeadroom < 0 {
		v.add("gc_headroom", "must be 0 (none) or more (got %s)", formatBytes(c.GCHeadroom))
	}
	v.storage(c.Storage)
	v.bridges(c.Bridges)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.add("log.level", "must be debug, info, warn or error (got %q)", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		v.add("log.format", "must be text or json (got %q)", c.Log.Format)
	}
	if c.Shutdown.Grace < 0 {
		v.add("shutdown.grace", "must not be negative (got %s)", c.Shutdown.Grace)
	}
	if c.Shutdown.BatchSize < 1 {
		v.add("shutdown.batch_size", "must be at least 1 (got %d)", c.Shutdown.BatchSize)
	}
	return v.err()
}

// validator collects problems.
type validator struct{ errs []error }

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &ConfigError{Path: path, Reason: fmt.Sprintf(format, args...)})
}

func (v *validator) err() error { return errors.Join(v.errs...) }

func (v *validator) listeners(ls []ListenerConfig) {
	if len(ls) == 0 {
		v.add("listeners", "must have at least one listener (got none)")
		return
	}
	names := map[string]int{}
	for i, l := range ls {
		p := fmt.Sprintf("listeners[%d]", i)
		name := listenerName(i, l)
		if strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			v.add(p+".name", "must not contain spaces or control characters (got %q)", name)
		}
		if j, dup := names[name]; dup {
			v.add(p+".name", "already used by listeners[%d] (got %q)", j, name)
		}
		names[name] = i
		switch l.Type {
		case "tcp", "ws":
		default:
			v.add(p+".type", "must be tcp or ws (got %q)", l.Type)
		}
		v.address(p+".address", l.Address)
		for j := range i {
			if sameAddress(l.Address, ls[j].Address) {
				v.add(p+".address", "already used by listeners[%d] (got %q)", j, l.Address)
			}
		}
		if l.Type == "ws" {
			if l.Path != "" && !strings.HasPrefix(l.Path, "/") {
				v.add(p+".path", "must start with / (got %q)", l.Path)
			}
			for j, o := range l.AllowedOrigins {
				if _, err := path.Match(o, ""); err != nil || o == "" {
					v.add(fmt.Sprintf("%s.allowed_origins[%d]", p, j), "must be a host pattern such as example.com or *.example.com (got %q)", o)
				}
			}
			v.serverNames(p+".server_names", l.ServerNames)
		} else {
			if l.Path != "" {
				v.add(p+".path", "only for ws listeners (got %q)", l.Path)
			}
			if len(l.AllowedOrigins) > 0 {
				v.add(p+".allowed_origins", "only for ws listeners (got %d patterns)", len(l.AllowedOrigins))
			}
			if len(l.ServerNames) > 0 {
				v.add(p+".server_names", "only for ws listeners (got %d names)", len(l.ServerNames))
			}
		}
		v.tls(p+".tls", l.TLS)
	}
}

func (v *validator) tls(p string, t TLSConfig) {
	if t.CertFile == "" {
		if t.KeyFile != "" {
			v.add(p+".cert_file", "must be set when key_file is (got \"\")")
		}
		if t.ClientCAFile != "" || t.RequireClientCert || t.UseCNAsUsername {
			v.add(p+".cert_file", "must be set for client certificates (got \"\")")
		}
		return
	}
	if t.KeyFile == "" {
		v.add(p+".key_file", "must be set when cert_file is (got \"\")")
	}
	if t.RequireClientCert && t.ClientCAFile == "" {
		v.add(p+".client_ca_file", "must be set when require_client_cert is true (got \"\")")
	}
	if t.UseCNAsUsername && !t.RequireClientCert {
		// Without a required certificate a client could pick its username freely
		// by sending none; the CN mapping would be only sometimes in force.
		v.add(p+".use_cn_as_username", "needs require_client_cert: true (got true)")
	}
}

func (v *validator) auth(a AuthConfig) {
	for i, r := range a.ACL {
		p := fmt.Sprintf("auth.acl[%d]", i)
		if err := qos.CheckFilter(r.Topic); err != "" {
			v.add(p+".topic", "%s (got %q)", err, r.Topic)
		}
		switch r.Access {
		case "read", "write", "readwrite", "deny":
		default:
			v.add(p+".access", "must be read, write, readwrite or deny (got %q)", r.Access)
		}
	}
	if a.FailureBurst < 0 {
		v.add("auth.failure_burst", "must be 0 (no backoff) or more (got %d)", a.FailureBurst)
	}
	if a.FailureBurst > 0 && a.FailureInterval <= 0 {
		v.add("auth.failure_interval", "must be positive with a failure_burst (got %s)", a.FailureInterval)
	}
	if a.CacheTTL < 0 {
		v.add("auth.cache_ttl", "must be 0 (no cache) or more (got %s)", a.CacheTTL)
	}
	if strings.Contains(strings.ReplaceAll(a.ClientIDPrefix, "%u", ""), "%") {
		v.add("auth.client_id_prefix", "may hold no placeholder but %%u (got %q)", a.ClientIDPrefix)
	}
}

func (v *validator) limits(l LimitsConfig) {
	if l.MaxPacketSize < 2 || l.MaxPacketSize > mqttMaxPacketSize {
		v.add("limits.max_packet_size", "must be between 2 and %d bytes, the MQTT maximum (got %s)", mqttMaxPacketSize, formatBytes(l.MaxPacketSize))
	}
	if l.MaxClients < 1 {
		v.add("limits.max_clients", "must be at least 1 (got %d)", l.MaxClients)
	}
	if l.MaxTopicLength < 1 || l.MaxTopicLength > mqttMaxUint16 {
		v.add("limits.max_topic_length", "must be between 1 and %d (got %d)", mqttMaxUint16, l.MaxTopicLength)
	}
	if l.MaxClientIDLength < 1 || l.MaxClientIDLength > mqttMaxUint16 {
		v.add("limits.max_client_id_length", "must be between 1 and %d (got %d)", mqttMaxUint16, l.MaxClientIDLength)
	}
	if l.MaxSubscriptions < 1 {
		v.add("limits.max_subscriptions", "must be at least 1 (got %d)", l.MaxSubscriptions)
	}
	keepalive := func(p string, d time.Duration) {
		if d < 0 || d > mqttMaxKeepalive {
			v.add(p, "must be between 0s and %s (got %s)", mqttMaxKeepalive, d)
		} else if d%time.Second != 0 {
			v.add(p, "must be whole seconds (got %s)", d)
		}
	}
	keepalive("limits.min_keepalive", l.MinKeepalive)
	keepalive("limits.max_keepalive", l.MaxKeepalive)
	if l.MaxKeepalive == 0 {
		v.add("limits.max_keepalive", "must be at least 1s (got 0s)")
	} else if l.MinKeepalive > l.MaxKeepalive {
		v.add("limits.min_keepalive", "must not exceed limits.max_keepalive %s (got %s)", l.MaxKeepalive, l.MinKeepalive)
	}
	if l.ReceiveMaximum < 1 || l.ReceiveMaximum > mqttMaxUint16 {
		v.add("limits.receive_maximum", "must be between 1 and %d (got %d)", mqttMaxUint16, l.ReceiveMaximum)
	}
	if l.MaxInflight < 1 || l.MaxInflight > mqttMaxUint16 {
		v.add("limits.max_inflight", "must be between 1 and %d (got %d)", mqttMaxUint16, l.MaxInflight)
	}
	if l.WriteTimeout <= 0 {
		v.add("limits.write_timeout", "must be positive (got %s)", l.WriteTimeout)
	}
	if l.ConnectTimeout <= 0 {
		v.add("limits.connect_timeout", "must be positive (got %s)", l.ConnectTimeout)
	}
	if l.MaxWritesPending < 1 || l.MaxWritesPending > math.MaxInt32 {
		v.add("limits.max_writes_pending", "must be between 1 and %d (got %d)", math.MaxInt32, l.MaxWritesPending)
	}
}

func (v *validator) storage(s StorageConfig) {
	if s.Dir == "" {
		v.add("storage.dir", "must not be empty (got \"\")")
	}
	switch s.Sync {
	case "always", "interval", "never":
	default:
		v.add("storage.sync", "must be always, interval or never (got %q)", s.Sync)
	}
	if s.SyncInterval < 0 || (s.Sync == "interval" && s.SyncInterval == 0) {
		v.add("storage.sync_interval", "must be positive (got %s)", s.SyncInterval)
	}
	if s.CheckpointInterval < 100*time.Millisecond {
		v.add("storage.checkpoint_interval", "must be at least 100ms (got %s)", s.CheckpointInterval)
	}
	if s.SegmentSize < minSegmentSize {
		v.add("storage.segment_size", "must be at least %s (got %s)", formatBytes(minSegmentSize), formatBytes(s.SegmentSize))
	}
	if s.MaxDiskBytes < 0 {
		v.add("storage.max_disk_bytes", "must be 0 (no budget) or positive (got %s)", formatBytes(s.MaxDiskBytes))
	} else if s.MaxDiskBytes > 0 && s.SegmentSize > 0 && s.MaxDiskBytes < 2*s.SegmentSize {
		// The active segment plus one to delete: a smaller budget cannot make room.
		v.add("storage.max_disk_bytes", "must be 0 (no budget) or at least two segments, %s (got %s)", formatBytes(2*s.SegmentSize), formatBytes(s.MaxDiskBytes))
	}
}

// address checks a host:port to listen on. The host may be empty (every
// interface), an IP or a name; the port is a number, 0 meaning any free port.
func (v *validator) address(p, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.add(p, "must be host:port (got %q)", addr)
		return
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || port != strconv.FormatUint(n, 10) {
		v.add(p, "port must be a number from 0 to 65535 (got %q)", addr)
	}
	if strings.ContainsFunc(host, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_:%", r))
	}) {
		v.add(p, "host must be an IP address or a host name (got %q)", addr)
	}
}

// sameAddress reports whether two host:port addresses are the same fixed
// address (port 0 asks for any free port, so it never clashes).
func sameAddress(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa == "0" || pa != pb {
		return false
	}
	// localhost binds 127.0.0.1 (and ::1 where it resolves so): the same
	// socket as those.
	localhost := func(h, other string) bool {
		return h == "localhost" && (other == "127.0.0.1" || other == "::1")
	}
	return ha == hb || ha == "" || hb == "" || ha == "0.0.0.0" || hb == "0.0.0.0" || ha == "::" || hb == "::" ||
		localhost(ha, hb) || localhost(hb, ha)
}

// serverNames checks host names a browser reaches us by (server_names).
func (v *validator) serverNames(p string, names []string) {
	for j, n := range names {
		if n == "" || strings.ContainsAny(n, ":/ *") {
			v.add(fmt.Sprintf("%s[%d]", p, j), "must be a host name such as gateway.local, no port (got %q)", n)
		}
	}
}
