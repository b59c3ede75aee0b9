package edge

import (
	"errors"
	"fmt"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgemq/edgemq/bridge"
)

// BridgeConfig is one bridge to an upstream broker, as the file writes it;
// bridge.Config documents each field (deploy/edgemq.example.yaml gives the
// defaults, units and dangers). A bridge in a file starts from the defaults
// of bridge.DefaultConfig, a rule from bridge.DefaultForward and
// bridge.DefaultDownlink.
type BridgeConfig struct {
	Name            string          `yaml:"name"`
	Upstreams       []string        `yaml:"upstreams"`
	Protocol        string          `yaml:"protocol"`
	ClientID        string          `yaml:"client_id"`
	Username        string          `yaml:"username"`
	Password        string          `yaml:"password"`
	Keepalive       time.Duration   `yaml:"keepalive"`
	CleanStart      bool            `yaml:"clean_start"`
	SessionExpiry   time.Duration   `yaml:"session_expiry"`
	TLS             BridgeTLSConfig `yaml:"tls"`
	MaxInflight     int             `yaml:"max_inflight"`
	ConnectTimeout  time.Duration   `yaml:"connect_timeout"`
	BackoffMin      time.Duration   `yaml:"backoff_min"`
	BackoffMax      time.Duration   `yaml:"backoff_max"`
	MaxBacklogAge   time.Duration   `yaml:"max_backlog_age"`
	MaxBacklogBytes ByteSize        `yaml:"max_backlog_bytes"`
	Forward         []ForwardRule   `yaml:"forward"`
	Downlink        []DownlinkRule  `yaml:"downlink"`
}

// BridgeTLSConfig is how a bridge verifies its upstream and proves itself
// (bridge.TLSConfig).
type BridgeTLSConfig struct {
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// ForwardRule takes local messages upstream (bridge.Forward).
type ForwardRule struct {
	Filter      string `yaml:"filter"`
	StripPrefix string `yaml:"strip_prefix"`
	Remote      string `yaml:"remote"`
	QoS         int    `yaml:"qos"`
	Retain      string `yaml:"retain"`
}

// DownlinkRule brings upstream messages into the broker (bridge.Downlink).
type DownlinkRule struct {
	Filter      string `yaml:"filter"`
	StripPrefix string `yaml:"strip_prefix"`
	Local       string `yaml:"local"`
	QoS         int    `yaml:"qos"`
}

// UnmarshalYAML decodes a bridge onto its defaults.
func (c *BridgeConfig) UnmarshalYAML(n *yaml.Node) error {
	d := bridge.DefaultConfig()
	*c = BridgeConfig{
		Protocol: d.Protocol, Keepalive: d.Keepalive, SessionExpiry: d.SessionExpiry, MaxInflight: d.MaxInflight,
		ConnectTimeout: d.ConnectTimeout, BackoffMin: d.BackoffMin, BackoffMax: d.BackoffMax,
	}
	type plain BridgeConfig
	return n.Decode((*plain)(c))
}

// UnmarshalYAML decodes a forward rule onto its defaults.
func (r *ForwardRule) UnmarshalYAML(n *yaml.Node) error {
	d := bridge.DefaultForward()
	*r = ForwardRule{Remote: d.Remote, QoS: d.QoS, Retain: d.Retain}
	type plain ForwardRule
	return n.Decode((*plain)(r))
}

// UnmarshalYAML decodes a downlink rule onto its defaults.
func (r *DownlinkRule) UnmarshalYAML(n *yaml.Node) error {
	d := bridge.DefaultDownlink()
	*r = DownlinkRule{Local: d.Local, QoS: d.QoS}
	type plain DownlinkRule
	return n.Decode((*plain)(r))
}

// bridgeConfig is c as the bridge package takes it. An empty client id
// becomes "edgemq-<host>-<name>": stable across restarts, distinct across
// gateways.
func (c BridgeConfig) bridgeConfig() bridge.Config {
	id := c.ClientID
	if id == "" {
		host, _ := os.Hostname()
		id = "edgemq-" + host + "-" + c.Name
	}
	out := bridge.Config{
		Name: c.Name, Upstreams: c.Upstreams, Protocol: c.Protocol, ClientID: id,
		Username: c.Username, Password: c.Password, Keepalive: c.Keepalive,
		CleanStart: c.CleanStart, SessionExpiry: c.SessionExpiry,
		TLS: bridge.TLSConfig{
			CAFile: c.TLS.CAFile, CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile,
			ServerName: c.TLS.ServerName, InsecureSkipVerify: c.TLS.InsecureSkipVerify,
		},
		MaxInflight: c.MaxInflight, ConnectTimeout: c.ConnectTimeout,
		BackoffMin: c.BackoffMin, BackoffMax: c.BackoffMax,
		MaxBacklogAge: c.MaxBacklogAge, MaxBacklogBytes: int64(c.MaxBacklogBytes),
	}
	for _, f := range c.Forward {
		out.Forward = append(out.Forward, bridge.Forward(f))
	}
	for _, d := range c.Downlink {
		out.Downlink = append(out.Downlink, bridge.Downlink(d))
	}
	return out
}

// bridges validates every bridge, with paths from the top of the file.
func (v *validator) bridges(bs []BridgeConfig) {
	names := map[string]int{}
	for i, b := range bs {
		p := fmt.Sprintf("bridges[%d]", i)
		if j, dup := names[b.Name]; dup {
			v.add(p+".name", "already used by bridges[%d] (got %q)", j, b.Name)
		}
		names[b.Name] = i
		err := b.bridgeConfig().Validate()
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				var fe *bridge.FieldError
				if errors.As(e, &fe) {
					v.add(p+"."+fe.Path, "%s", fe.Reason)
				} else {
					v.add(p, "%v", e)
				}
			}
		}
	}
}
