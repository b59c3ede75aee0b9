package edge

import (
	"fmt"
	"regexp"
	"strconv"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the broker's Prometheus metrics, registered on the registry
// passed in Options. Labels never hold client ids or topics.
//
//	edgemq_mqtt_connections                      gauge    connected clients
//	edgemq_mqtt_messages_received_total{qos}     counter  PUBLISH packets accepted for processing
//	edgemq_mqtt_messages_sent_total{qos}         counter  PUBLISH packets written to clients
//	edgemq_mqtt_received_bytes_total             counter
//	edgemq_mqtt_sent_bytes_total                 counter
//	edgemq_mqtt_dropped_messages_total{reason}   counter  queue_full, inflight_full, topic_too_long, reserved_topic
//	edgemq_mqtt_slow_consumer_disconnects_total  counter  clients cut because a write missed limits.write_timeout
//	edgemq_mqtt_blocked_writers                  gauge    connections whose current write has been blocked for over 1 s
//	edgemq_auth_failures_total{reason}           counter  anonymous, bad_credentials, backoff, busy, client_id, session_owner
//	edgemq_auth_cache_hits_total                 counter  logins verified without bcrypt
//	edgemq_acl_denials_total{access}             counter  read (subscribe or delivery), write (publish or will)
//	edgemq_listener_accepted_connections_total{listener}
//	edgemq_listener_rejected_connections_total{listener,reason}  tls_handshake, ws_handshake, ws_subprotocol, ws_origin, packet_too_large, protocol_error, max_clients
//	go_*, process_*                                       the Go runtime's and the process's collectors
//	go_gc_heap_live_bytes                        gauge    the heap the last collection left live: what grows
//	                                                      if the broker keeps something, where RSS and
//	                                                      go_memstats_* also hold the garbage (gc_headroom)
//
// Sessions, subscriptions, retained and inflight messages and queues are
// the delivery engine's (engine_metrics.go): it owns them, connected or
// offline.
type metrics struct {
	received      [3]prometheus.Counter
	sent          [3]prometheus.Counter
	authFailures  *prometheus.CounterVec
	aclDenials    *prometheus.CounterVec
	authCacheHits prometheus.Counter
	slowConsumers prometheus.Counter
	accepted      *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	dropped       *droppedCollector
}

func newMetrics(reg prometheus.Registerer, srv *mqtt.Server, blocked func() int) (*metrics, error) {
	received := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgemq_mqtt_messages_received_total",
		Help: "PUBLISH packets received from clients and accepted for processing, by QoS.",
	}, []string{"qos"})
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgemq_mqtt_messages_sent_total",
		Help: "PUBLISH packets written to clients, by QoS.",
	}, []string{"qos"})
	m := &metrics{
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgemq_auth_failures_total",
			Help: "Refused CONNECTs, by reason: anonymous (no username, anonymous not allowed), bad_credentials, backoff (the source failed too often: refused before any bcrypt), busy (no bcrypt slot within the connect timeout), client_id (auth.client_id_prefix), session_owner (another user's session).",
		}, []string{"reason"}),
		authCacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgemq_auth_cache_hits_total",
			Help: "Logins verified from the cache of recently verified credentials (auth.cache_ttl), without bcrypt.",
		}),
		aclDenials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgemq_acl_denials_total",
			Help: "ACL refusals: read (a subscription, or one delivery), write (a publish or a will).",
		}, []string{"access"}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgemq_mqtt_slow_consumer_disconnects_total",
			Help: "Clients disconnected because a socket write missed limits.write_timeout.",
		}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgemq_listener_accepted_connections_total",
			Help: "Connections handed to the MQTT engine, by listener.",
		}, []string{"listener"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgemq_listener_rejected_connections_total",
			Help: "Connections refused before MQTT, by listener and reason (tls_handshake, ws_handshake, ws_subprotocol, ws_origin, packet_too_large, protocol_error, max_clients).",
		}, []string{"listener", "reason"}),
		dropped: &droppedCollector{info: srv.Info, desc: prometheus.NewDesc(
			"edgemq_mqtt_dropped_messages_total",
			"Messages not delivered to a subscriber or not accepted, by reason: queue_full (QoS 0 messages over the client's limits.max_writes_pending), inflight_full (the client's limits.max_inflight window), topic_too_long, reserved_topic (a client's publish or will to $SYS, or to $share with no topic), payload_format_invalid (an MQTT 5 publish or will whose Payload Format Indicator says UTF-8 and whose payload is not).",
			[]string{"reason"}, nil)},
	}
	// Every known label value exists from the start, so that dashboards and
	// rate() see a zero rather than nothing.
	for _, r := range []string{"anonymous", "bad_credentials", "backoff", "busy", "client_id", "session_owner"} {
		m.authFailures.WithLabelValues(r)
	}
	for _, a := range []string{"read", "write"} {
		m.aclDenials.WithLabelValues(a)
	}
	for q := range 3 {
		m.received[q] = received.WithLabelValues(strconv.Itoa(q))
		m.sent[q] = sent.WithLabelValues(strconv.Itoa(q))
	}
	info := srv.Info
	collectors := []prometheus.Collector{
		received, sent, m.authFailures, m.aclDenials, m.authCacheHits, m.slowConsumers, m.accepted, m.rejected, m.dropped,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgemq_mqtt_connections",
			Help: "Connected MQTT clients.",
		}, func() float64 { return float64(atomic.LoadInt64(&info.ClientsConnected)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgemq_mqtt_blocked_writers",
			Help: "Connections whose socket write in progress has been blocked for more than a second: subscribers not keeping up (each is cut at limits.write_timeout).",
		}, func() float64 { return float64(blocked()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgemq_mqtt_received_bytes_total",
			Help: "Bytes of MQTT packets received.",
		}, func() float64 { return float64(atomic.LoadInt64(&info.BytesReceived)) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgemq_mqtt_sent_bytes_total",
			Help: "Bytes of MQTT packets sent.",
		}, func() float64 { return float64(atomic.LoadInt64(&info.BytesSent)) }),
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range collectors[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("edge: register metrics: %w", err)
		}
	}
	return m, nil
}

// droppedCollector serves edgemq_mqtt_dropped_messages_total from our own
// counters and mochi's InflightDropped.
type droppedCollector struct {
	info      *system.Info
	desc      *prometheus.Desc
	queueFull atomic.Int64
	// engineQueueFull counts the engine's QoS 0 drops (limits.max_writes_pending);
	// nil until the engine runs.
	engineQueueFull atomic.Pointer[func() uint64]
	topicTooLong    atomic.Int64
	// reservedTopic counts client publishes to topics reserved to the server,
	// $SYS and a bare $share (authHook.refuseReserved).
	reservedTopic atomic.Int64
	// payloadFormat counts MQTT 5 publishes and wills refused because
	// their payload is not the UTF-8 their Payload Format Indicator says
	// (payloadFormatInvalid).
	payloadFormat atomic.Int64
}

// Describe implements prometheus.Collector.
func (d *droppedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- d.desc }

// Collect implements prometheus.Collector.
func (d *droppedCollector) Collect(ch chan<- prometheus.Metric) {
	full := uint64(d.queueFull.Load())
	if f := d.engineQueueFull.Load(); f != nil {
		full += (*f)()
	}
	ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(full), "queue_full")
	ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(atomic.LoadInt64(&d.info.InflightDropped)), "inflight_full")
	ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(d.topicTooLong.Load()), "topic_too_long")
	ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(d.reservedTopic.Load()), "reserved_topic")
	ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(d.payloadFormat.Load()), "payload_format_invalid")
}

// metricsHook counts the messages mochi writes (Broker.publish counts
// those received).
type metricsHook struct {
	mqtt.HookBase
	m *metrics
}

// ID names the hook.
func (h *metricsHook) ID() string { return "edge-metrics" }

// Provides lists the events handled.
func (h *metricsHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPacketSent, mqtt.OnPublishDropped:
		return true
	}
	return false
}

// OnPacketSent counts an outbound message.
func (h *metricsHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos < 3 {
		h.m.sent[pk.FixedHeader.Qos].Inc()
	}
}

// OnPublishDropped counts a message dropped because the subscriber's
// outbound queue was full.
func (h *metricsHook) OnPublishDropped(*mqtt.Client, packets.Packet) {
	h.m.dropped.queueFull.Add(1)
}
