package edge

import (
	"time"
)

// Config is the whole broker configuration, as read from the YAML file.
// Every field has a default (DefaultConfig); a file sets only what it changes.
// Sizes are ByteSize (an integer of bytes, or a string like "256KiB", "1MiB");
// durations are Go duration strings ("10s", "50ms").
type Config struct {
	// Listeners are the MQTT endpoints. Default: TCP on 127.0.0.1:1883 and
	// WebSocket on 127.0.0.1:8083 path /mqtt. An empty list is an error.
	Listeners []ListenerConfig `yaml:"listeners"`
	// HTTP is the operator endpoint: /metrics, /healthz, /readyz.
	HTTP HTTPConfig `yaml:"http"`
	// Auth holds authentication and the ACL.
	Auth AuthConfig `yaml:"auth"`
	// Limits bound what one client may cost.
	Limits LimitsConfig `yaml:"limits"`
	// MemoryLimit is the Go runtime's soft memory limit (GOMEMLIMIT), in
	// bytes, set by cmd/edgemq at start: near it the garbage collector runs
	// more often so that the heap stays below. Default: 0, none from the
	// config (a GOMEMLIMIT environment variable still applies). Set it about
	// 20% under the memory the broker may use (the unit's MemoryMax), never
	// above: too close to what live data needs, the collector runs all the
	// time and the broker slows down instead of being killed.
	MemoryLimit ByteSize `yaml:"memory_limit"`
	// GCHeadroom is the garbage collector's heap floor, in bytes, kept by
	// cmd/edgemq: the next collection waits until at least this much has been
	// allocated since the last one left the live heap, however small that is
	// (with GOGC=100 alone a live heap of 8 MB is collected every 8 MB
	// allocated, dozens of times a second under load). Above the floor GOGC
	// applies as usual (a live heap of 100 MB collects at 200 MB). Only while
	// busy: when GOGC alone would collect less than once a second, it applies
	// alone. Never more than a quarter of the memory limit in force, which
	// stays the bound. A GOGC environment variable turns the floor off.
	// Default: 32MiB; 0: none. Danger: the broker's memory under load grows
	// by up to this much.
	GCHeadroom ByteSize `yaml:"gc_headroom"`
	// Storage is the durable log.
	Storage StorageConfig `yaml:"storage"`
	// Log is the broker's own logging.
	Log LogConfig `yaml:"log"`
	// Shutdown governs SIGTERM handling.
	Shutdown ShutdownConfig `yaml:"shutdown"`
	// Bridges link the broker to upstream brokers. Default: none.
	Bridges []BridgeConfig `yaml:"bridges"`
}

// ListenerConfig is one MQTT endpoint.
type ListenerConfig struct {
	// Name identifies the listener in logs and metrics labels. Default: the
	// type and position, e.g. "tcp0". Must be unique.
	Name string `yaml:"name"`
	// Type is "tcp" (MQTT over TCP, or TLS when TLS is set) or "ws"
	// (MQTT over WebSocket, or WSS when TLS is set).
	Type string `yaml:"type"`
	// Address is host:port to bind. With no authentication configured at all
	// the host is forced to loopback (see AuthConfig).
	Address string `yaml:"address"`
	// Path is the HTTP path for "ws" listeners. Default: "/mqtt".
	Path string `yaml:"path"`
	// AllowedOrigins lists the Origin host patterns ("example.com",
	// "*.example.com") a browser may connect from on a "ws" listener.
	// Default: empty, meaning same-origin only, on loopback or ServerNames. "*" allows every origin:
	// dangerous, any web page a user visits can then reach the broker.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// ServerNames are the host names browsers use to reach a "ws" listener
	// ("gateway.local"). A browser's same-origin request (Origin equal to
	// Host) is accepted only when Host is loopback or one of these, so a
	// page on a DNS name that an attacker points at us (DNS rebinding) is
	// refused. Default: empty, loopback only. Clients that send no Origin
	// (devices, not browsers) are not affected.
	ServerNames []string `yaml:"server_names"`
	// TLS turns on TLS for this listener when CertFile is set.
	TLS TLSConfig `yaml:"tls"`
}

// TLSConfig is a listener's server certificate and optional client-certificate policy.
type TLSConfig struct {
	// CertFile is the PEM server certificate chain. Empty: no TLS.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key for CertFile.
	KeyFile string `yaml:"key_file"`
	// ClientCAFile is a PEM bundle of CAs that sign client certificates.
	// Default: empty (client certificates are not requested).
	ClientCAFile string `yaml:"client_ca_file"`
	// RequireClientCert rejects clients without a certificate signed by
	// ClientCAFile. Default: false.
	RequireClientCert bool `yaml:"require_client_cert"`
	// UseCNAsUsername makes the verified client certificate's Common Name the
	// client's username, replacing any username in CONNECT. Default: false.
	UseCNAsUsername bool `yaml:"use_cn_as_username"`
}

// HTTPConfig is the operator HTTP endpoint.
type HTTPConfig struct {
	// Address is host:port for /metrics, /healthz and /readyz.
	// Default: "127.0.0.1:8080". Empty disables the HTTP side.
	Address string `yaml:"address"`
	// ServerNames are the DNS names the HTTP side is reached by
	// ("gateway.local"). A request is answered only when its Host is an IP
	// address, loopback (localhost), the host of Address or one of these:
	// a page on a DNS name that an attacker points at us (DNS rebinding)
	// is refused with 403. Default: empty, IP addresses and localhost only.
	// A scraper that targets the gateway by another DNS name needs it here.
	ServerNames []string `yaml:"server_names"`
}

// AuthConfig is authentication and authorisation.
//
// With neither PasswordFile nor AllowAnonymous set, no authentication is
// configured: clients connect anonymously and every listener (and HTTP) is
// bound to loopback only, whatever its configured host, as Mosquitto 2 does.
type AuthConfig struct {
	// PasswordFile is a file of "user:bcrypt-hash" lines, as written by
	// `edgemq passwd`. Default: empty.
	PasswordFile string `yaml:"password_file"`
	// AllowAnonymous lets clients without a username connect. Default: false.
	// Dangerous on a non-loopback listener.
	AllowAnonymous bool `yaml:"allow_anonymous"`
	// ACL rules. Empty: every authenticated client may publish and subscribe
	// to everything. Non-empty: what no rule allows is denied.
	ACL []ACLRule `yaml:"acl"`
	// CrossUserTakeover lets a client take over a session (by its client
	// id) that another user created. Default: false, the other user is
	// refused (v5 CONNACK 0x87, v3 0x05). Dangerous: with it, anyone who
	// knows a client id can end that client's session or take its place;
	// the read ACL still applies to what the session holds.
	CrossUserTakeover bool `yaml:"cross_user_takeover"`
	// UseUsernameAsClientID replaces each authenticated client's client id
	// with its username, as Mosquitto's use_username_as_clientid: one
	// session per user, and a user's second connection takes over the
	// first. Default: false.
	UseUsernameAsClientID bool `yaml:"use_username_as_clientid"`
	// ClientIDPrefix, when set, is a prefix every client id must start
	// with, %u standing for the username ("%u-" lets alice use "alice-1",
	// not "bob-1"). Others are refused (v5 0x85, v3 0x02). Default: empty,
	// any client id.
	ClientIDPrefix string `yaml:"client_id_prefix"`
	// FailureBurst is how many failed password checks one source (an IP
	// address, an IPv6 /64) may have in a row; past it, its CONNECTs with
	// a password are refused before any bcrypt (0x86, v3 0x04) until one
	// failure is forgiven per FailureInterval. Default: 10. 0: no backoff,
	// and a password guesser can keep the CPUs busy. Clients behind one NAT
	// share a source.
	FailureBurst int `yaml:"failure_burst"`
	// FailureInterval is how often a source gets one failure back.
	// Default: 6s (10 guesses a minute once the burst is spent).
	FailureInterval time.Duration `yaml:"failure_interval"`
	// CacheTTL is how long verified credentials are remembered (as a keyed
	// hash, in memory only), so that a reconnecting fleet does not pay one
	// bcrypt per device. Default: 5m. 0: every login runs bcrypt. A
	// password removed from the file by a reload stops working at once.
	CacheTTL time.Duration `yaml:"cache_ttl"`
}

// ACLRule allows or denies topic access. Topic may use %u (username) and %c
// (client id), which are substituted before matching.
type ACLRule struct {
	// User the rule applies to; empty applies to every client (a pattern rule).
	User string `yaml:"user"`
	// Topic is an MQTT topic filter, with %u and %c substitution.
	Topic string `yaml:"topic"`
	// Access is "read" (subscribe), "write" (publish), "readwrite", or "deny".
	// A matching deny rule wins over any allow rule.
	Access string `yaml:"access"`
}

// LimitsConfig bounds what clients may cost.
type LimitsConfig struct {
	// MaxPacketSize is the largest MQTT packet accepted, in bytes. Default: 1MiB.
	MaxPacketSize ByteSize `yaml:"max_packet_size"`
	// MaxClients is the most concurrent connections. Default: 10000.
	MaxClients int `yaml:"max_clients"`
	// MaxTopicLength is the longest topic name or filter in bytes. Default: 1024.
	MaxTopicLength int `yaml:"max_topic_length"`
	// MaxClientIDLength is the longest client id in bytes. Default: 256;
	// at most 65535. Records about a session name it by a short id, so a
	// long client id costs log space once per connection (its Session
	// record) and in memory, not per delivery.
	MaxClientIDLength int `yaml:"max_client_id_length"`
	// MaxSubscriptions is the most topic filters one client may hold; a
	// SUBSCRIBE past it gets 0x97 Quota exceeded (v3 0x80) for the extra
	// filters. Default: 1000. Each filter costs a few KiB of memory.
	MaxSubscriptions int `yaml:"max_subscriptions"`
	// MinKeepalive and MaxKeepalive bound the client keepalive. A v5 client
	// asking for 0 (none) or more than MaxKeepalive is told MaxKeepalive
	// (Server Keep Alive); a v3 client asking for more is refused, and its 0
	// means none (3.1.1 cannot tell it another value). Defaults: 0s and 1h.
	MinKeepalive time.Duration `yaml:"min_keepalive"`
	MaxKeepalive time.Duration `yaml:"max_keepalive"`
	// ReceiveMaximum is the inbound QoS 1/2 window per client (v5 Receive
	// Maximum sent in CONNACK). Default: 128.
	ReceiveMaximum int `yaml:"receive_maximum"`
	// MaxInflight is the outbound unacknowledged QoS 1/2 window per client.
	// Default: 128.
	MaxInflight int `yaml:"max_inflight"`
	// WriteTimeout is the deadline of each socket write. A subscriber that
	// cannot take a write within it is disconnected (its persistent session
	// keeps its messages). Default: 10s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// MaxWritesPending is how many QoS 0 messages wait for one client
	// before more are dropped (counted). Default: 1024.
	MaxWritesPending int `yaml:"max_writes_pending"`
	// ConnectTimeout bounds the TLS handshake, the WebSocket upgrade and the
	// wait for CONNECT on a new connection. Default: 10s. Too long lets idle
	// sockets pile up; too short cuts clients on slow links.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
}

// StorageConfig is the durable log.
type StorageConfig struct {
	// Dir is where the log lives. Default: "data".
	Dir string `yaml:"dir"`
	// Sync is "always" (ack after fsync, grouped), "interval" (ack after
	// write, fsync every SyncInterval) or "never". Default: "always".
	Sync string `yaml:"sync"`
	// SyncInterval is the fsync period under Sync "interval". Default: 50ms.
	SyncInterval time.Duration `yaml:"sync_interval"`
	// SegmentSize is the size at which a log segment is rolled. Default: 16MiB.
	SegmentSize ByteSize `yaml:"segment_size"`
	// CheckpointInterval is how often the broker snapshots its state (sessions,
	// subscriptions, positions, retained messages) so that a restart replays
	// only the log written since, and the log can be trimmed below what no
	// one needs. Default: 10s. Longer: slower restarts, a longer log.
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	// MaxDiskBytes is the disk budget of the log. Default: 1GiB. 0: no budget
	// beyond the disk itself.
	MaxDiskBytes ByteSize `yaml:"max_disk_bytes"`
}

// LogConfig is the broker's logging.
type LogConfig struct {
	// Level is "debug", "info", "warn" or "error". Default: "info".
	Level string `yaml:"level"`
	// Format is "text" or "json". Default: "text".
	Format string `yaml:"format"`
}

// ShutdownConfig governs a graceful stop.
type ShutdownConfig struct {
	// Grace is how long clients are given to be disconnected, in batches,
	// before the rest are cut. Default: 10s.
	Grace time.Duration `yaml:"grace"`
	// BatchSize is how many clients are disconnected at a time. Default: 100.
	BatchSize int `yaml:"batch_size"`
}

// ByteSize is a count of bytes; in YAML an integer or a string with a unit
// (B, KB, KiB, MB, MiB, GB, GiB).
type ByteSize int64

// DefaultConfig returns the configuration used when no file is given.
func DefaultConfig() Config {
	return Config{
		Listeners: []ListenerConfig{
			{Name: "tcp", Type: "tcp", Address: "127.0.0.1:1883"},
			{Name: "ws", Type: "ws", Address: "127.0.0.1:8083", Path: "/mqtt"},
		},
		HTTP: HTTPConfig{Address: "127.0.0.1:8080"},
		Auth: AuthConfig{FailureBurst: 10, FailureInterval: 6 * time.Second, CacheTTL: 5 * time.Minute},
		Limits: LimitsConfig{
			MaxPacketSize:     1 << 20,
			MaxClients:        10000,
			MaxTopicLength:    1024,
			MaxClientIDLength: 256,
			MaxSubscriptions:  1000,
			MaxKeepalive:      time.Hour,
			ReceiveMaximum:    128,
			MaxInflight:       128,
			WriteTimeout:      10 * time.Second,
			MaxWritesPending:  1024,
			ConnectTimeout:    10 * time.Second,
		},
		Storage: StorageConfig{
			Dir:                "data",
			Sync:               "always",
			SyncInterval:       50 * time.Millisecond,
			CheckpointInterval: 10 * time.Second,
			SegmentSize:        16 << 20,
			MaxDiskBytes:       1 << 30,
		},
		GCHeadroom: 32 << 20,
		Log:        LogConfig{Level: "info", Format: "text"},
		Shutdown:   ShutdownConfig{Grace: 10 * time.Second, BatchSize: 100},
	}
}
