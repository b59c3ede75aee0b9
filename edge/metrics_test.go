package edge_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestMetricsTruthful: the session, subscription, retained, inflight and
// queue figures count what waits, offline sessions and restarts included,
// and go down when clean sessions end.
func TestMetricsTruthful(t *testing.T) {
	r := newRestartable(t, nil)
	want := func(name string, v float64) {
		t.Helper()
		eventually(t, fmt.Sprintf("%s = %v (is %v)", name, v, r.tb.metric(t, name)), func() bool { return r.tb.metric(t, name) == v })
	}
	off, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "m-offline", persistent: true})
	off.subscribe(t, "m/#", 1)
	off.subscribe(t, "$share/g/m/#", 1)
	_ = off.Disconnect(&paho.Disconnect{})
	<-doneOrTimeout(off.Done())
	clean, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "m-clean"})
	clean.subscribe(t, "m/#", 1)
	want("edgemq_mqtt_sessions", 2)
	want("edgemq_mqtt_subscriptions", 3)

	p, _ := connectV5(t, dialNet(t, "tcp", r.ep().addr, nil), v5Opts{id: "m-pub"})
	for i := range 10 {
		if _, err := p.publish(t, fmt.Sprint("m/r/", i), 1, true, []byte("state")); err != nil {
			t.Fatal(err)
		}
	}
	clean.receive(t, 10)
	want("edgemq_mqtt_retained_messages", 10)
	if v := r.tb.metric(t, "edgemq_mqtt_queued_messages"); v < 10 {
		t.Errorf("edgemq_mqtt_queued_messages = %v with 10 messages waiting for an offline session", v)
	}
	if v := r.tb.metric(t, "edgemq_mqtt_queued_messages_max"); v < 10 {
		t.Errorf("edgemq_mqtt_queued_messages_max = %v", v)
	}
	time.Sleep(1100 * time.Millisecond)
	if v := r.tb.metric(t, "edgemq_mqtt_oldest_queued_message_age_seconds"); v < 1 || v > 60 {
		t.Errorf("edgemq_mqtt_oldest_queued_message_age_seconds = %v, want about 1", v)
	}
	runtime.GC() // go_gc_heap_live_bytes is the last collection's: none yet is 0
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "go_gc_heap_live_bytes"} {
		if v := r.tb.metric(t, name); v <= 0 {
			t.Errorf("%s = %v", name, v)
		}
	}
	_ = clean.Disconnect(&paho.Disconnect{})
	<-doneOrTimeout(clean.Done())
	want("edgemq_mqtt_sessions", 2) // m-pub's is clean and connected
	want("edgemq_mqtt_subscriptions", 2)

	r.restart()
	want("edgemq_mqtt_sessions", 1)
	want("edgemq_mqtt_subscriptions", 2)
	want("edgemq_mqtt_retained_messages", 10)
	// The offline session takes its backlog and acknowledges none of it:
	// inflight counts it, connected and then offline.
	rc := dialRaw(t, r.ep().addr, 5)
	rc.connectWith("m-offline", false, 30, func(pk *packets.Packet) { pk.Properties.ReceiveMaximum = 4 })
	want("edgemq_mqtt_inflight_messages", 4)
	want("edgemq_mqtt_subscriptions", 2)
	_ = rc.c.Close()
	want("edgemq_mqtt_sessions", 1)
	want("edgemq_mqtt_inflight_messages", 4)
	if v := r.tb.metric(t, "edgemq_mqtt_queued_messages"); v < 6 {
		t.Errorf("edgemq_mqtt_queued_messages = %v with 6 messages still to send", v)
	}
}
