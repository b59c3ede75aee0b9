#!/bin/sh
# edgemq's bridge beside Mosquitto's own bridge (Mosquitto edge -> Mosquitto
# upstream, cleansession false, QoS 1), the same machine, the same proxy
# between edge and upstream: live forwarding rate, drain rate of a backlog
# built during an outage, and the loss after a kill -9 of the edge broker
# during the outage. Several rounds, medians, ratios. See docs/bridging.md.
#
#   deploy/bench/bridge.sh                                       # 100,000 messages, 3 rounds
#   deploy/bench/bridge.sh -messages 20000 -restart 2000 -rounds 1   # smoke test
#   deploy/bench/bridge.sh -json bridge.json                     # keep every round
#
# Needs: go, and /usr/sbin/mosquitto (apt-get install mosquitto).
set -eu
cd "$(dirname "$0")/../.."
exec go run ./cmd/edgemq-bench bridge "$@"
