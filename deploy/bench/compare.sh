#!/bin/sh
# Side-by-side benchmark: Mosquitto (Debian package; its default queues, and
# unlimited queues and windows, which loses nothing), plain mochi and edgemq
# (storage.sync always and never; memory_limit 200MiB for the conns
# scenarios), the same scenarios against each in alternation, several rounds,
# medians, ratios against the Mosquitto that lost nothing, and the footprint.
# The closed loop releases its window on delivery. See deploy/bench/README.md.
#
#   deploy/bench/compare.sh                 # full run, under 10 minutes on 2 cores
#   deploy/bench/compare.sh -quick          # smoke test, about a minute
#   deploy/bench/compare.sh -json out.json  # also keep every run as JSON
#
# Needs: go, and /usr/sbin/mosquitto (apt-get install mosquitto) unless
# -mosquitto '' is given. Run it on an otherwise idle machine: the report
# prints the load average and says when the figures are not reliable.
set -eu
cd "$(dirname "$0")/../.."
exec go run ./cmd/edgemq-bench compare "$@"
