package edge_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgemq/edgemq/edge"
	"go.yaml.in/yaml/v3"
)

// exampleConfig is the commented example shipped for operators.
const exampleConfig = "../deploy/edgemq.example.yaml"

func TestParseConfigEmptyIsDefault(t *testing.T) {
	for _, doc := range []string{"", "\n", "# only a comment\n", "---\n", "---\n...\n", "~\n"} {
		cfg, err := edge.ParseConfig([]byte(doc))
		if err != nil {
			t.Fatalf("ParseConfig(%q): %v", doc, err)
		}
		if !reflect.DeepEqual(cfg, edge.DefaultConfig()) {
			t.Errorf("ParseConfig(%q) = %+v, want DefaultConfig()", doc, cfg)
		}
	}
	if err := edge.DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
}

func TestParseConfigOverridesOnlyWhatItSets(t *testing.T) {
	doc := `
storage:
  sync: interval
  sync_interval: 20ms
  segment_size: 4MiB
  max_disk_bytes: 2GB
limits:
  max_packet_size: 65536
  write_timeout: 2.5s
  max_keepalive: 10m
log:
  format: json
shutdown:
  grace: 0s
`
	cfg, err := edge.ParseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := edge.DefaultConfig()
	want.Storage.Sync = "interval"
	want.Storage.SyncInterval = 20 * time.Millisecond
	want.Storage.SegmentSize = 4 << 20
	want.Storage.MaxDiskBytes = 2_000_000_000
	want.Limits.MaxPacketSize = 65536
	want.Limits.WriteTimeout = 2500 * time.Millisecond
	want.Limits.MaxKeepalive = 10 * time.Minute
	want.Log.Format = "json"
	want.Shutdown.Grace = 0
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got  %+v\nwant %+v", cfg, want)
	}
}

func TestParseConfigListenersReplaceTheDefaults(t *testing.T) {
	doc := `
listeners:
  - type: tcp
    address: 0.0.0.0:1883
  - type: ws
    address: 0.0.0.0:8083
  - name: secure
    type: tcp
    address: ":8883"
    tls: {cert_file: /etc/edgemq/cert.pem, key_file: /etc/edgemq/key.pem}
auth:
  password_file: /etc/edgemq/passwd
`
	cfg, err := edge.ParseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := []edge.ListenerConfig{
		{Name: "tcp0", Type: "tcp", Address: "0.0.0.0:1883"},
		{Name: "ws1", Type: "ws", Address: "0.0.0.0:8083", Path: "/mqtt"},
		{Name: "secure", Type: "tcp", Address: ":8883", TLS: edge.TLSConfig{CertFile: "/etc/edgemq/cert.pem", KeyFile: "/etc/edgemq/key.pem"}},
	}
	if !reflect.DeepEqual(cfg.Listeners, want) {
		t.Fatalf("listeners = %+v\nwant %+v", cfg.Listeners, want)
	}
}

func TestParseConfigEmptySectionsKeepDefaults(t *testing.T) {
	cfg, err := edge.ParseConfig([]byte("storage:\nlimits: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, edge.DefaultConfig()) {
		t.Fatalf("got %+v", cfg)
	}
}

func TestParseConfigAnchorsAndMergeKeys(t *testing.T) {
	doc := `
listeners:
  - &base
    type: ws
    address: 127.0.0.1:9001
    allowed_origins: [example.com]
  - <<: *base
    address: 127.0.0.1:9002
    path: /ws
`
	cfg, err := edge.ParseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Listeners[1]; got.Type != "ws" || got.Address != "127.0.0.1:9002" || got.Path != "/ws" || !slices.Equal(got.AllowedOrigins, []string{"example.com"}) {
		t.Fatalf("merged listener = %+v", got)
	}
	// An unknown key inside a merged mapping is still found.
	_, err = edge.ParseConfig([]byte("listeners:\n  - &b {type: tcp, adress: x}\n  - <<: *b\n    address: 127.0.0.1:1\n"))
	wantErr(t, err, `line 2: listeners[0].adress: unknown field`)
}

func TestParseConfigEnv(t *testing.T) {
	t.Setenv("EDGEMQ_TEST_DIR", "/var/lib/edgemq")
	t.Setenv("EDGEMQ_TEST_CLIENTS", "500")
	t.Setenv("EDGEMQ_TEST_TRICKY", `a: b # "c`)
	t.Setenv("EDGEMQ_TEST_EMPTY", "")
	doc := `
storage:
  dir: ${EDGEMQ_TEST_DIR}/log
limits:
  max_clients: ${EDGEMQ_TEST_CLIENTS}
auth:
  password_file: "${EDGEMQ_TEST_TRICKY}"
  acl:
    - {topic: "cost/$${EDGEMQ_TEST_DIR}/$x", access: read, user: "${EDGEMQ_TEST_EMPTY}"}
    - topic: ${EDGEMQ_TEST_CLIENTS}
      access: write
      user: ${EDGEMQ_TEST_EMPTY}
`
	cfg, err := edge.ParseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Storage.Dir != "/var/lib/edgemq/log" {
		t.Errorf("storage.dir = %q", cfg.Storage.Dir)
	}
	if cfg.Limits.MaxClients != 500 {
		t.Errorf("limits.max_clients = %d", cfg.Limits.MaxClients)
	}
	if cfg.Auth.PasswordFile != `a: b # "c` {
		t.Errorf("auth.password_file = %q: an expanded value must not be parsed as YAML", cfg.Auth.PasswordFile)
	}
	if got := cfg.Auth.ACL[0].Topic; got != "cost/${EDGEMQ_TEST_DIR}/$x" {
		t.Errorf("$$ escape: topic = %q", got)
	}
	if got := cfg.Auth.ACL[1].Topic; got != "500" {
		t.Errorf("number into a string: topic = %q", got)
	}
	if cfg.Auth.ACL[0].User != "" || cfg.Auth.ACL[1].User != "" {
		t.Errorf("empty variable: users = %q, %q", cfg.Auth.ACL[0].User, cfg.Auth.ACL[1].User)
	}
}

func TestParseConfigErrors(t *testing.T) {
	t.Setenv("EDGEMQ_TEST_PORT", "notaport")
	os.Unsetenv("EDGEMQ_TEST_UNSET")
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"unknown key", "storage:\n  dir: x\n  sycn: always\n",
			[]string{"line 3: storage.sycn: unknown field; valid: checkpoint_interval, dir, max_disk_bytes, segment_size, sync, sync_interval"}},
		{"unknown top-level key", "\n\nstorgae:\n  dir: x\n",
			[]string{"line 3: storgae: unknown field; valid: auth, bridges, gc_headroom, http, limits, listeners, log, memory_limit, shutdown, storage"}},
		{"unknown key in a list", "listeners:\n  - type: tcp\n    adress: 127.0.0.1:1883\n",
			[]string{"line 3: listeners[0].adress: unknown field"}},
		{"every unknown key", "a: 1\nb: 2\n", []string{"line 1: a: unknown field", "line 2: b: unknown field"}},
		{"duplicate key", "log:\n  level: info\n  level: debug\n", []string{"line 3: log.level: duplicate key (first at line 2)"}},
		{"integer duration", "limits:\n  write_timeout: 10\n",
			[]string{`line 2: limits.write_timeout: want a duration such as "10s" or "250ms" (got "10")`}},
		{"bad duration", "shutdown:\n  grace: soon\n", []string{`line 2: shutdown.grace: want a duration`}},
		{"bad integer", "limits:\n  max_clients: many\n", []string{`line 2: limits.max_clients: want an integer (got "many")`}},
		{"float integer", "limits:\n  max_clients: 1.5\n", []string{`limits.max_clients: want an integer (got "1.5")`}},
		{"bad bool", "auth:\n  allow_anonymous: sure\n", []string{`line 2: auth.allow_anonymous: want true or false (got "sure")`}},
		// Exactly true or false: YAML 1.1's yes/on/y and other spellings
		// would pass for true where an operator meant something else.
		{"yes bool", "auth:\n  allow_anonymous: yes\n", []string{`line 2: auth.allow_anonymous: want true or false (got "yes")`}},
		{"on bool", "auth:\n  allow_anonymous: on\n", []string{`line 2: auth.allow_anonymous: want true or false (got "on")`}},
		{"y bool", "auth:\n  allow_anonymous: y\n", []string{`line 2: auth.allow_anonymous: want true or false (got "y")`}},
		{"True bool", "auth:\n  allow_anonymous: True\n", []string{`line 2: auth.allow_anonymous: want true or false (got "True")`}},
		{"quoted yes bool", "auth:\n  allow_anonymous: \"yes\"\n", []string{`line 2: auth.allow_anonymous: want true or false (got "yes")`}},
		{"one bool", "auth:\n  allow_anonymous: 1\n", []string{`line 2: auth.allow_anonymous: want true or false (got "1")`}},
		{"localhost and 127.0.0.1", "listeners:\n  - type: tcp\n    address: 127.0.0.1:1883\n  - type: ws\n    address: localhost:1883\n",
			[]string{`line 5: listeners[1].address: already used by listeners[0] (got "localhost:1883")`}},
		{"localhost and ::1", "listeners:\n  - type: tcp\n    address: \"[::1]:1883\"\n  - type: ws\n    address: localhost:1883\n",
			[]string{`line 5: listeners[1].address: already used by listeners[0] (got "localhost:1883")`}},
		{"exponent integer", "limits:\n  max_clients: 1e3\n", []string{`limits.max_clients: want an integer (got "1e3")`}},
		{"bad size", "storage:\n  segment_size: 16 megs\n",
			[]string{`line 2: storage.segment_size: want a size such as 1048576, "256KiB" or "1MiB" (got "16 megs")`}},
		{"list for a scalar", "storage:\n  dir: [a, b]\n", []string{`line 2: storage.dir: want a string (got a list)`}},
		{"scalar for a section", "storage: fast\n", []string{`line 1: storage: want a section (got "fast")`}},
		{"mapping for a list", "listeners:\n  type: tcp\n", []string{`line 2: listeners: want a list (got a mapping)`}},
		{"no value", "http:\n  address:\n", []string{`line 2: http.address: no value`}},
		{"top level list", "- a\n- b\n", []string{`line 1: want a mapping of sections (got a list)`}},
		{"top level scalar", "hello\n", []string{`line 1: want a mapping of sections (got "hello")`}},
		{"syntax", "storage: [\n", []string{"line "}},
		{"tab indentation", "storage:\n\tdir: x\n", []string{"line 2"}},
		{"two documents", "log: {level: info}\n---\nlog: {level: debug}\n", []string{"line 3: more than one YAML document"}},
		{"unset variable", "storage:\n  dir: ${EDGEMQ_TEST_UNSET}/x\n",
			[]string{"line 2: storage.dir: environment variable EDGEMQ_TEST_UNSET is not set"}},
		{"unclosed variable", "storage:\n  dir: ${EDGEMQ_TEST_UNSET\n", []string{"line 2: storage.dir: unclosed ${"}},
		{"bad variable name", "storage:\n  dir: ${1X}\n", []string{`line 2: storage.dir: bad variable name "1X"`}},
		{"variable with a bad value", "listeners:\n  - type: tcp\n    address: 127.0.0.1:${EDGEMQ_TEST_PORT}\n",
			[]string{`line 3: listeners[0].address: port must be a number from 0 to 65535 (got "127.0.0.1:notaport")`}},
		{"invalid value", "storage:\n  sync: sometimes\n",
			[]string{`line 2: storage.sync: must be always, interval or never (got "sometimes")`}},
		{"invalid listener", "listeners:\n  - type: tcp\n    address: 127.0.0.1:1883\n  - type: tcp\n    address: foo\n",
			[]string{`line 5: listeners[1].address: must be host:port (got "foo")`}},
		{"every invalid value", "log:\n  level: loud\n  format: xml\n",
			[]string{`line 2: log.level: must be debug, info, warn or error (got "loud")`, `line 3: log.format: must be text or json (got "xml")`}},
		{"empty listeners", "listeners: []\n", []string{"line 1: listeners: must have at least one listener (got none)"}},
		{"null listeners", "listeners:\n", []string{"line 1: listeners: must have at least one listener (got none)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := edge.ParseConfig([]byte(tc.doc))
			if err == nil {
				t.Fatalf("ParseConfig(%q) = %+v, want an error", tc.doc, cfg)
			}
			if !errors.Is(err, edge.ErrConfig) {
				t.Errorf("errors.Is(%v, ErrConfig) = false", err)
			}
			for _, w := range tc.want {
				wantErr(t, err, w)
			}
		})
	}
}

func TestParseConfigTooLarge(t *testing.T) {
	doc := "# " + strings.Repeat("x", edge.MaxConfigSize) + "\n"
	_, err := edge.ParseConfig([]byte(doc))
	wantErr(t, err, "larger than")
}

func TestParseConfigAliasBomb(t *testing.T) {
	// Each anchor merges the two before it: walked naively, storage would take
	// Fibonacci(60) steps.
	var b strings.Builder
	b.WriteString("x0: &a0 {dir: x}\nx1: &a1 {dir: y}\n")
	for i := 2; i < 60; i++ {
		fmt.Fprintf(&b, "x%d: &a%d {<<: [*a%d, *a%d]}\n", i, i, i-1, i-2)
	}
	b.WriteString("storage: {<<: [*a59, *a58]}\n")
	_, err := edge.ParseConfig([]byte(b.String()))
	wantErr(t, err, "document too large or too deeply aliased")
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "edgemq.yaml")
	if err := os.WriteFile(path, []byte("log:\n  level: debug\n  colour: red\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := edge.LoadConfig(path)
	wantErr(t, err, path+":3: log.colour: unknown field")

	if err := os.WriteFile(path, []byte("log:\n  level: debug\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := edge.LoadConfig(path)
	if err != nil || cfg.Log.Level != "debug" {
		t.Fatalf("LoadConfig = %+v, %v", cfg.Log, err)
	}

	_, err = edge.LoadConfig(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*edge.Config)
		want   string
	}{
		{"no listeners", func(c *edge.Config) { c.Listeners = nil }, "listeners: must have at least one listener (got none)"},
		{"listener type", func(c *edge.Config) { c.Listeners[0].Type = "udp" }, `listeners[0].type: must be tcp or ws (got "udp")`},
		{"listener address", func(c *edge.Config) { c.Listeners[1].Address = "foo" }, `listeners[1].address: must be host:port (got "foo")`},
		{"listener port", func(c *edge.Config) { c.Listeners[0].Address = "127.0.0.1:65536" }, `listeners[0].address: port must be a number from 0 to 65535 (got "127.0.0.1:65536")`},
		{"listener host", func(c *edge.Config) { c.Listeners[0].Address = "local host:1" }, `listeners[0].address: host must be an IP address or a host name (got "local host:1")`},
		{"listener clash", func(c *edge.Config) { c.Listeners[1].Address = "0.0.0.0:1883" }, `listeners[1].address: already used by listeners[0] (got "0.0.0.0:1883")`},
		{"listener name", func(c *edge.Config) { c.Listeners[1].Name = "tcp" }, `listeners[1].name: already used by listeners[0] (got "tcp")`},
		{"default name clash", func(c *edge.Config) { c.Listeners[0].Name = "ws1"; c.Listeners[1].Name = "" }, `listeners[1].name: already used by listeners[0] (got "ws1")`},
		{"listener name spaces", func(c *edge.Config) { c.Listeners[0].Name = "my tcp" }, `listeners[0].name: must not contain spaces or control characters (got "my tcp")`},
		{"ws path", func(c *edge.Config) { c.Listeners[1].Path = "mqtt" }, `listeners[1].path: must start with / (got "mqtt")`},
		{"tcp path", func(c *edge.Config) { c.Listeners[0].Path = "/mqtt" }, `listeners[0].path: only for ws listeners (got "/mqtt")`},
		{"tcp origins", func(c *edge.Config) { c.Listeners[0].AllowedOrigins = []string{"a"} }, `listeners[0].allowed_origins: only for ws listeners (got 1 patterns)`},
		{"origin pattern", func(c *edge.Config) { c.Listeners[1].AllowedOrigins = []string{"ok.com", "[bad"} }, `listeners[1].allowed_origins[1]: must be a host pattern such as example.com or *.example.com (got "[bad")`},
		{"server name", func(c *edge.Config) { c.Listeners[1].ServerNames = []string{"gw.local:8083"} }, `listeners[1].server_names[0]: must be a host name such as gateway.local, no port (got "gw.local:8083")`},
		{"failure burst", func(c *edge.Config) { c.Auth.FailureBurst = -1 }, `auth.failure_burst: must be 0 (no backoff) or more (got -1)`},
		{"failure interval", func(c *edge.Config) { c.Auth.FailureInterval = 0 }, `auth.failure_interval: must be positive with a failure_burst (got 0s)`},
		{"cache ttl", func(c *edge.Config) { c.Auth.CacheTTL = -time.Second }, `auth.cache_ttl: must be 0 (no cache) or more (got -1s)`},
		{"client id prefix", func(c *edge.Config) { c.Auth.ClientIDPrefix = "%c-" }, `auth.client_id_prefix: may hold no placeholder but %u (got "%c-")`},
		{"tls key without cert", func(c *edge.Config) { c.Listeners[0].TLS.KeyFile = "k.pem" }, `listeners[0].tls.cert_file: must be set when key_file is (got "")`},
		{"tls cert without key", func(c *edge.Config) { c.Listeners[0].TLS.CertFile = "c.pem" }, `listeners[0].tls.key_file: must be set when cert_file is (got "")`},
		{"client ca without tls", func(c *edge.Config) { c.Listeners[0].TLS.ClientCAFile = "ca.pem" }, `listeners[0].tls.cert_file: must be set for client certificates (got "")`},
		{"require client cert without ca", func(c *edge.Config) {
			c.Listeners[0].TLS = edge.TLSConfig{CertFile: "c", KeyFile: "k", RequireClientCert: true}
		}, `listeners[0].tls.client_ca_file: must be set when require_client_cert is true (got "")`},
		{"cn without required cert", func(c *edge.Config) {
			c.Listeners[0].TLS = edge.TLSConfig{CertFile: "c", KeyFile: "k", ClientCAFile: "ca", UseCNAsUsername: true}
		}, `listeners[0].tls.use_cn_as_username: needs require_client_cert: true (got true)`},
		{"http address", func(c *edge.Config) { c.HTTP.Address = "8080" }, `http.address: must be host:port (got "8080")`},
		{"http server name", func(c *edge.Config) { c.HTTP.ServerNames = []string{"gw.local:8080"} }, `http.server_names[0]: must be a host name such as gateway.local, no port (got "gw.local:8080")`},
		{"http clash", func(c *edge.Config) { c.HTTP.Address = "127.0.0.1:1883" }, `http.address: already used by listeners[0] (got "127.0.0.1:1883")`},
		{"acl topic", func(c *edge.Config) { c.Auth.ACL = []edge.ACLRule{{Topic: "a/#/b", Access: "read"}} }, `auth.acl[0].topic: # must be the last level [MQTT-4.7.1-2] (got "a/#/b")`},
		{"acl plus", func(c *edge.Config) { c.Auth.ACL = []edge.ACLRule{{Topic: "a/b+", Access: "read"}} }, `auth.acl[0].topic: + must be a whole level [MQTT-4.7.1-3] (got "a/b+")`},
		{"acl empty topic", func(c *edge.Config) { c.Auth.ACL = []edge.ACLRule{{Access: "read"}} }, `auth.acl[0].topic: must not be empty (got "")`},
		{"acl access", func(c *edge.Config) { c.Auth.ACL = []edge.ACLRule{{Topic: "#", Access: "all"}} }, `auth.acl[0].access: must be read, write, readwrite or deny (got "all")`},
		{"max client id length", func(c *edge.Config) { c.Limits.MaxClientIDLength = 0 }, `limits.max_client_id_length: must be between 1 and 65535 (got 0)`},
		{"max subscriptions", func(c *edge.Config) { c.Limits.MaxSubscriptions = 0 }, `limits.max_subscriptions: must be at least 1 (got 0)`},
		{"max packet size", func(c *edge.Config) { c.Limits.MaxPacketSize = 1 << 30 }, `limits.max_packet_size: must be between 2 and 268435460 bytes, the MQTT maximum (got 1GiB)`},
		{"max clients", func(c *edge.Config) { c.Limits.MaxClients = 0 }, `limits.max_clients: must be at least 1 (got 0)`},
		{"max topic length", func(c *edge.Config) { c.Limits.MaxTopicLength = 70000 }, `limits.max_topic_length: must be between 1 and 65535 (got 70000)`},
		{"min keepalive", func(c *edge.Config) { c.Limits.MinKeepalive = -time.Second }, `limits.min_keepalive: must be between 0s and 18h12m15s (got -1s)`},
		{"keepalive seconds", func(c *edge.Config) { c.Limits.MaxKeepalive = 1500 * time.Millisecond }, `limits.max_keepalive: must be whole seconds (got 1.5s)`},
		{"keepalive zero", func(c *edge.Config) { c.Limits.MaxKeepalive = 0 }, `limits.max_keepalive: must be at least 1s (got 0s)`},
		{"keepalive order", func(c *edge.Config) { c.Limits.MinKeepalive = 2 * time.Hour }, `limits.min_keepalive: must not exceed limits.max_keepalive 1h0m0s (got 2h0m0s)`},
		{"receive maximum", func(c *edge.Config) { c.Limits.ReceiveMaximum = 0 }, `limits.receive_maximum: must be between 1 and 65535 (got 0)`},
		{"max inflight", func(c *edge.Config) { c.Limits.MaxInflight = 65536 }, `limits.max_inflight: must be between 1 and 65535 (got 65536)`},
		{"write timeout", func(c *edge.Config) { c.Limits.WriteTimeout = 0 }, `limits.write_timeout: must be positive (got 0s)`},
		{"writes pending", func(c *edge.Config) { c.Limits.MaxWritesPending = 0 }, `limits.max_writes_pending: must be between 1 and 2147483647 (got 0)`},
		{"connect timeout", func(c *edge.Config) { c.Limits.ConnectTimeout = -time.Second }, `limits.connect_timeout: must be positive (got -1s)`},
		{"storage dir", func(c *edge.Config) { c.Storage.Dir = "" }, `storage.dir: must not be empty (got "")`},
		{"storage sync", func(c *edge.Config) { c.Storage.Sync = "sometimes" }, `storage.sync: must be always, interval or never (got "sometimes")`},
		{"sync interval", func(c *edge.Config) { c.Storage.Sync = "interval"; c.Storage.SyncInterval = 0 }, `storage.sync_interval: must be positive (got 0s)`},
		{"checkpoint interval", func(c *edge.Config) { c.Storage.CheckpointInterval = 0 }, `storage.checkpoint_interval: must be at least 100ms (got 0s)`},
		{"segment size", func(c *edge.Config) { c.Storage.SegmentSize = 1000 }, `storage.segment_size: must be at least 64KiB (got 1000B)`},
		{"disk budget", func(c *edge.Config) { c.Storage.MaxDiskBytes = 1 << 20 }, `storage.max_disk_bytes: must be 0 (no budget) or at least two segments, 32MiB (got 1MiB)`},
		{"negative disk budget", func(c *edge.Config) { c.Storage.MaxDiskBytes = -1 }, `storage.max_disk_bytes: must be 0 (no budget) or positive (got -1B)`},
		{"memory limit", func(c *edge.Config) { c.MemoryLimit = 1 << 20 }, `memory_limit: must be 0 (none) or at least 32MiB (got 1MiB)`},
		{"negative gc headroom", func(c *edge.Config) { c.GCHeadroom = -1 }, `gc_headroom: must be 0 (none) or more (got -1B)`},
		{"log level", func(c *edge.Config) { c.Log.Level = "trace" }, `log.level: must be debug, info, warn or error (got "trace")`},
		{"log format", func(c *edge.Config) { c.Log.Format = "xml" }, `log.format: must be text or json (got "xml")`},
		{"grace", func(c *edge.Config) { c.Shutdown.Grace = -time.Second }, `shutdown.grace: must not be negative (got -1s)`},
		{"batch size", func(c *edge.Config) { c.Shutdown.BatchSize = 0 }, `shutdown.batch_size: must be at least 1 (got 0)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := edge.DefaultConfig()
			tc.modify(&cfg)
			err := cfg.Validate()
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tc.want)
			}
			if !errors.Is(err, edge.ErrConfig) {
				t.Errorf("errors.Is(%v, ErrConfig) = false", err)
			}
			if err.Error() != tc.want {
				t.Errorf("Validate() =\n  %v\nwant\n  %s", err, tc.want)
			}
		})
	}
}

func TestValidateAccepts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*edge.Config)
	}{
		{"unnamed listeners", func(c *edge.Config) { c.Listeners[0].Name, c.Listeners[1].Name, c.Listeners[1].Path = "", "", "" }},
		{"any free port twice", func(c *edge.Config) {
			c.Listeners[0].Address, c.Listeners[1].Address, c.HTTP.Address = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
		}},
		{"all interfaces", func(c *edge.Config) { c.Listeners[0].Address = ":1883" }},
		{"ipv6", func(c *edge.Config) { c.Listeners[0].Address = "[::1]:1883" }},
		{"host name", func(c *edge.Config) { c.Listeners[0].Address = "gateway-1.local:1883" }},
		{"http off", func(c *edge.Config) { c.HTTP.Address = "" }},
		{"mutual tls", func(c *edge.Config) {
			c.Listeners[0].TLS = edge.TLSConfig{CertFile: "c", KeyFile: "k", ClientCAFile: "ca", RequireClientCert: true, UseCNAsUsername: true}
		}},
		{"acl patterns", func(c *edge.Config) {
			c.Auth.ACL = []edge.ACLRule{{User: "a", Topic: "devices/%u/#", Access: "readwrite"}, {Topic: "+/%c/+", Access: "deny"}, {Topic: "#", Access: "read"}}
		}},
		{"no disk budget", func(c *edge.Config) { c.Storage.MaxDiskBytes = 0 }},
		{"sync never", func(c *edge.Config) { c.Storage.Sync, c.Storage.SyncInterval = "never", 0 }},
		{"no grace", func(c *edge.Config) { c.Shutdown.Grace = 0 }},
		{"any origin", func(c *edge.Config) { c.Listeners[1].AllowedOrigins = []string{"*"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := edge.DefaultConfig()
			tc.modify(&cfg)
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate() = %v", err)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	cfg := edge.DefaultConfig()
	cfg.Storage.Sync = "x"
	cfg.Log.Level = "x"
	cfg.Listeners[0].Type = "x"
	err := cfg.Validate()
	if got := len(strings.Split(err.Error(), "\n")); got != 3 {
		t.Fatalf("Validate() reported %d problems, want 3:\n%v", got, err)
	}
	var ce *edge.ConfigError
	if !errors.As(err, &ce) || ce.Path != "listeners[0].type" {
		t.Fatalf("errors.As: %#v", ce)
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]edge.ByteSize{
		"0": 0, "4096": 4096, "1B": 1, "256KiB": 256 << 10, "1MiB": 1 << 20, "1GiB": 1 << 30, "2TiB": 2 << 40,
		"1KB": 1000, "1kb": 1000, "1MB": 1e6, "1GB": 1e9, "1TB": 1e12, "512 MiB": 512 << 20, " 1.5GiB ": 3 << 29,
		"1.5KB": 1500, "8EiB": 0,
	} {
		got, err := edge.ParseByteSize(in)
		if in == "8EiB" {
			if err == nil {
				t.Errorf("ParseByteSize(%q) = %d, want an error", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5B", "1.0.0MB", "MiB", "1 megabyte", "0x10", "1e6", "9223372036854775808", "9000000TiB", "1.1B"} {
		if got, err := edge.ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestByteSizeYAML(t *testing.T) {
	var v struct {
		A, B edge.ByteSize
	}
	if err := yaml.Unmarshal([]byte("a: 1024\nb: 2MiB\n"), &v); err != nil || v.A != 1024 || v.B != 2<<20 {
		t.Fatalf("got %+v, %v", v, err)
	}
	if err := yaml.Unmarshal([]byte("a: [1]\n"), &v); err == nil {
		t.Fatal("a list as a size: want an error")
	}
}

// fieldPaths lists the key path of every leaf field of t ("storage.sync",
// "listeners[].tls.cert_file").
func fieldPaths(t reflect.Type, prefix string) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		p := name
		if prefix != "" {
			p = prefix + "." + name
		}
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct:
			out = append(out, fieldPaths(ft, p)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, fieldPaths(ft.Elem(), p+"[]")...)
		default:
			out = append(out, p)
		}
	}
	return out
}

// TestEveryFieldIsValidatedAndDocumented fails when a field is added to Config:
// add it to this list once Validate checks it (TestValidate) and the example
// config documents it.
func TestEveryFieldIsValidatedAndDocumented(t *testing.T) {
	known := []string{
		"listeners[].name", "listeners[].type", "listeners[].address", "listeners[].path", "listeners[].allowed_origins", "listeners[].server_names",
		"listeners[].tls.cert_file", "listeners[].tls.key_file", "listeners[].tls.client_ca_file",
		"listeners[].tls.require_client_cert", "listeners[].tls.use_cn_as_username",
		"http.address", "http.server_names",
		"auth.password_file", "auth.allow_anonymous", "auth.acl[].user", "auth.acl[].topic", "auth.acl[].access",
		"auth.cross_user_takeover", "auth.use_username_as_clientid", "auth.client_id_prefix",
		"auth.failure_burst", "auth.failure_interval", "auth.cache_ttl",
		"limits.max_packet_size", "limits.max_clients", "limits.max_topic_length", "limits.max_client_id_length", "limits.max_subscriptions", "limits.min_keepalive",
		"limits.max_keepalive", "limits.receive_maximum", "limits.max_inflight", "limits.write_timeout",
		"limits.max_writes_pending", "limits.connect_timeout",
		"storage.dir", "storage.sync", "storage.sync_interval", "storage.checkpoint_interval", "storage.segment_size", "storage.max_disk_bytes",
		"log.level", "log.format",
		"shutdown.grace", "shutdown.batch_size",
		"bridges[].name", "bridges[].upstreams", "bridges[].protocol", "bridges[].client_id", "bridges[].username",
		"bridges[].password", "bridges[].keepalive", "bridges[].clean_start", "bridges[].session_expiry",
		"bridges[].tls.ca_file", "bridges[].tls.cert_file", "bridges[].tls.key_file", "bridges[].tls.server_name",
		"bridges[].tls.insecure_skip_verify", "bridges[].max_inflight", "bridges[].connect_timeout",
		"bridges[].backoff_min", "bridges[].backoff_max", "bridges[].max_backlog_age", "bridges[].max_backlog_bytes",
		"bridges[].forward[].filter", "bridges[].forward[].strip_prefix", "bridges[].forward[].remote",
		"bridges[].forward[].qos", "bridges[].forward[].retain",
		"bridges[].downlink[].filter", "bridges[].downlink[].strip_prefix", "bridges[].downlink[].local", "bridges[].downlink[].qos",
		"memory_limit", "gc_headroom",
	}
	got := fieldPaths(reflect.TypeOf(edge.Config{}), "")
	slices.Sort(got)
	slices.Sort(known)
	if !slices.Equal(got, known) {
		t.Errorf("Config fields changed:\n got  %v\n want %v\nvalidate the new fields, document them in %s, then update this list", got, known, exampleConfig)
	}

	// The example config sets every field, so an operator sees each one.
	data, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	var walk func(n *yaml.Node, p string)
	walk = func(n *yaml.Node, p string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, p)
			}
		case yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c, p+"[]")
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				if p != "" {
					k = p + "." + k
				}
				set[k] = true
				walk(n.Content[i+1], k)
			}
		}
	}
	walk(&doc, "")
	for _, p := range got {
		if !set[p] {
			t.Errorf("%s does not set %s", exampleConfig, p)
		}
	}
}

// TestExampleConfig loads the shipped example: it must be valid, and where it
// sets a default it must say the truth about it.
func TestExampleConfig(t *testing.T) {
	cfg, err := edge.LoadConfig(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	def := edge.DefaultConfig()
	// The example differs from the defaults only where it shows a feature off;
	// everything else must equal DefaultConfig.
	if !reflect.DeepEqual(cfg.Listeners[:2], def.Listeners) {
		t.Errorf("example listeners[0:2] = %+v, want the defaults %+v", cfg.Listeners[:2], def.Listeners)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"http", cfg.HTTP, def.HTTP},
		{"limits", cfg.Limits, def.Limits},
		{"log", cfg.Log, def.Log},
		{"shutdown", cfg.Shutdown, def.Shutdown},
		{"storage.sync", cfg.Storage.Sync, def.Storage.Sync},
		{"storage.sync_interval", cfg.Storage.SyncInterval, def.Storage.SyncInterval},
		{"storage.checkpoint_interval", cfg.Storage.CheckpointInterval, def.Storage.CheckpointInterval},
		{"storage.segment_size", cfg.Storage.SegmentSize, def.Storage.SegmentSize},
		{"storage.max_disk_bytes", cfg.Storage.MaxDiskBytes, def.Storage.MaxDiskBytes},
		{"auth.allow_anonymous", cfg.Auth.AllowAnonymous, def.Auth.AllowAnonymous},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("example %s = %+v, want the default %+v", c.name, c.got, c.want)
		}
	}
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %q", want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error\n  %v\nwant it to contain\n  %s", err, want)
	}
}

// TestContainerConfig loads the config baked into the container image.
func TestContainerConfig(t *testing.T) {
	cfg, err := edge.LoadConfig("../deploy/edgemq.container.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Auth.PasswordFile == "" {
		t.Error("the container config binds every interface, so it must configure authentication")
	}
}

// BenchmarkParseExampleConfig measures loading the full example config.
func BenchmarkParseExampleConfig(b *testing.B) {
	data, err := os.ReadFile(exampleConfig)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := edge.ParseConfig(data); err != nil {
			b.Fatal(err)
		}
	}
}
