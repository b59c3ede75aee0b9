#!/bin/sh
# Side-by-side benchmark: Mosquitto (Debian package), plain mochi and edgemq
# (storage.sync always and never), the same scenarios against each in
# alternation, several rounds, medians and ratios. See deploy/bench/README.md.
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
