#!/usr/bin/env bash
# Checks the import direction of docs/ARCHITECTURE.md on the non-test code of every package:
#   cmd -> edge -> {bridge, qos, wal},  bridge -> {qos, wal};  qos and wal import nothing of ours;
#   mochi (github.com/mochi-mqtt/server) and coder/websocket only in edge;
#   tidwall/wal only in wal.
# Test files are free to import what they test with. Prints each violation; exits 1 if any.
# Exception: cmd/edgemq-bench/plainmochi runs plain mochi as the benchmark baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
status=0
while read -r pkg imports; do
	rel=${pkg#"$mod"}
	rel=${rel#/}
	top=${rel%%/*}
	for imp in $imports; do
		bad=""
		case "$imp" in
		"$mod"/*)
			dep=${imp#"$mod"/}
			dep=${dep%%/*}
			[ "$dep" = "$top" ] && continue
			case "$top" in
			qos | wal) bad="$top imports nothing of ours" ;;
			bridge) [[ "$dep" == qos || "$dep" == wal ]] || bad="bridge imports only qos and wal" ;;
			edge) [[ "$dep" == bridge || "$dep" == qos || "$dep" == wal ]] || bad="edge imports only bridge, qos and wal" ;;
			cmd | examples) [[ "$dep" != cmd ]] || bad="nothing imports a command" ;;
			*) bad="package $top is not in the import graph of docs/ARCHITECTURE.md" ;;
			esac
			;;
		github.com/mochi-mqtt/server* | github.com/coder/websocket*)
			[[ "$top" == edge || "$rel" == cmd/edgemq-bench/plainmochi ]] || bad="mochi and coder/websocket are imported only in edge"
			;;
		github.com/tidwall/wal*)
			[ "$top" = wal ] || bad="tidwall/wal is imported only in wal"
			;;
		esac
		if [ -n "$bad" ]; then
			echo "$pkg imports $imp: $bad"
			status=1
		fi
	done
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./...)
exit $status
