package edge_test

import (
	"testing"
	"time"

	"github.com/edgemq/edgemq/edge"
)

func TestBridgeConfigErrors(t *testing.T) {
	const head = "bridges:\n  - name: central\n    upstreams: [\"mqtt://127.0.0.1:1883\"]\n"
	for _, tc := range []struct{ name, doc, want string }{
		{"rule qos", head + "    forward:\n      - filter: a/#\n      - filter: b/#\n        qos: 3\n",
			"line 7: bridges[0].forward[1].qos: must be 0, 1 or 2 (got 3)"},
		{"unknown key", head + "    forward:\n      - filter: a/#\n        qso: 1\n", "line 6: bridges[0].forward[0].qso: unknown field"},
		{"scheme", "bridges:\n  - name: c\n    upstreams: [\"tcp://h:1\"]\n    forward: [{filter: a}]\n",
			`bridges[0].upstreams[0]: must be mqtt://, mqtts://, ws:// or wss:// (got "tcp://h:1")`},
		{"no port", "bridges:\n  - name: c\n    upstreams: [\"mqtts://h\"]\n    forward: [{filter: a}]\n",
			`bridges[0].upstreams[0]: must name the port (got "mqtts://h")`},
		{"filter", head + "    forward: [{filter: \"a/#/b\"}]\n", `bridges[0].forward[0].filter: # must be the last level [MQTT-4.7.1-2] (got "a/#/b")`},
		{"template", head + "    forward: [{filter: a, remote: \"x/{host}\"}]\n", `bridges[0].forward[0].remote: may only use {topic} and {client} (got "x/{host}")`},
		{"downlink qos 2 on 3.1.1", head + "    downlink: [{filter: c/#, qos: 2}]\n",
			`bridges[0].downlink[0].qos: 2 needs protocol 5 (got 2 with protocol "3.1.1")`},
		{"no rules", head, "bridges[0].forward: a bridge needs at least one forward or downlink rule (got none)"},
		{"duplicate", head + "    forward: [{filter: a}]\n" + "  - name: central\n    upstreams: [\"mqtt://h:1\"]\n    forward: [{filter: a}]\n",
			`bridges[1].name: already used by bridges[0] (got "central")`},
		{"keepalive", head + "    keepalive: 1500ms\n    forward: [{filter: a}]\n", "bridges[0].keepalive: must be whole seconds from 1s to 65535s (got 1.5s)"},
		{"protocol", head + "    protocol: \"4\"\n    forward: [{filter: a}]\n", `bridges[0].protocol: must be 3.1.1 or 5 (got "4")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := edge.ParseConfig([]byte(tc.doc))
			wantErr(t, err, tc.want)
		})
	}
}

// TestBridgeConfigEnv: a bridge's secrets come from the environment
// (${VAR}), as every value of the file may.
func TestBridgeConfigEnv(t *testing.T) {
	t.Setenv("EDGEMQ_TEST_BRIDGE_PASSWORD", "s3cret: with $ and #")
	t.Setenv("EDGEMQ_TEST_BRIDGE_USER", "gateway-17")
	cfg, err := edge.ParseConfig([]byte(`
bridges:
  - name: central
    upstreams: ["mqtt://127.0.0.1:1883"]
    client_id: ${EDGEMQ_TEST_BRIDGE_USER}
    username: ${EDGEMQ_TEST_BRIDGE_USER}
    password: ${EDGEMQ_TEST_BRIDGE_PASSWORD}
    forward: [{filter: "a/#", remote: "gw/${EDGEMQ_TEST_BRIDGE_USER}/{topic}"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.Bridges[0]
	if b.Password != "s3cret: with $ and #" || b.Username != "gateway-17" || b.ClientID != "gateway-17" || b.Forward[0].Remote != "gw/gateway-17/{topic}" {
		t.Errorf("bridge with ${VAR}: username %q password %q client_id %q remote %q", b.Username, b.Password, b.ClientID, b.Forward[0].Remote)
	}
}

// TestBridgeConfigDefaults: a bridge and its rules in a file start from the
// defaults; a value the file sets, zero included, stays.
func TestBridgeConfigDefaults(t *testing.T) {
	cfg, err := edge.ParseConfig([]byte(`
bridges:
  - name: central
    upstreams: ["mqtt://127.0.0.1:1883"]
    forward:
      - filter: a/#
      - filter: b/#
        qos: 0
    downlink:
      - filter: c/#
`))
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.Bridges[0]
	if b.Protocol != "3.1.1" || b.Keepalive != 30*time.Second || b.MaxInflight != 256 || b.BackoffMax != 30*time.Second {
		t.Errorf("bridge defaults not applied: %+v", b)
	}
	if f := b.Forward[0]; f.QoS != 1 || f.Remote != "{topic}" || f.Retain != "keep" {
		t.Errorf("forward defaults not applied: %+v", f)
	}
	if f := b.Forward[1]; f.QoS != 0 {
		t.Errorf("forward[1].qos = %d, want the 0 the file sets", f.QoS)
	}
	if d := b.Downlink[0]; d.QoS != 1 || d.Local != "{topic}" {
		t.Errorf("downlink defaults not applied: %+v", d)
	}
}
