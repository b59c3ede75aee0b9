// Command edgemq-bench is the load generator and the side-by-side comparison
// of edgemq against Mosquitto and plain mochi.
//
// It speaks MQTT 3.1.1 and 5 over TCP and WebSocket with its own lean
// encoder (packet.go): the paho clients cost about ten times more CPU per
// message, and on a 2-core machine the generator shares the CPU with the
// broker it measures, so it reports its own CPU seconds too.
//
// Scenarios: fanin (N publishers, one wildcard subscriber), fanout (one
// publisher, M subscribers), shared (publishers into a $share group), latency
// (fixed rate, end-to-end p50/p99/p99.9, the broker's CPU as a share of a
// core; with -fsync-dir also the disk's write+fsync p99), conns (idle connections; the
// broker's RSS per connection with -pid), burst (base rate, a 10x spike, base
// rate) and backlog (an offline persistent subscriber accumulates messages,
// then drains). Throughput scenarios run a closed loop of at most -window
// messages in flight end to end.
//
// What it guarantees: every payload carries (run nonce, publisher id,
// sequence number, send time), so counts are exact. It reports published,
// acknowledged, rejected (v5 reason codes), unacked, expected, delivered,
// duplicated, lost, reordered and foreign messages; a run with loss is
// reported as LOSSY, never as a throughput figure alone. What it does not:
// it never reconnects or retransmits during a flow (a dropped connection is
// reported in the notes and its messages count as lost), and its latencies
// include its own scheduling delays when the machine is busy (the load
// average is reported).
//
//	edgemq-bench -addr 127.0.0.1:1883 -scenario fanin -qos 1 -pid $(pidof mosquitto)
//	edgemq-bench compare            # Mosquitto, plain mochi, edgemq; several rounds; medians and ratios
//	edgemq-bench compare -quick     # smoke test, under a minute
//	edgemq-bench bridge             # edgemq's bridge beside Mosquitto's (bridge.go)
//
// `edgemq-bench compare` starts each broker as a subprocess on free loopback
// ports, fresh for every run, so CPU seconds (/proc/PID/stat) and peak RSS
// (VmHWM) belong to that run alone.
package main
