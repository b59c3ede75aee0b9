#!/bin/sh
# deploy/interop/run.sh SUITE: runs the Eclipse Paho interoperability suite
# (SUITE: a checkout's interoperability/ directory) against a freshly built
# edgemq on loopback, over TCP and, through wsbridge.py, over WebSocket.
# Results go to ./interop-results/. See docs/conformance.md.
set -eu
SUITE=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$PWD/interop-results
mkdir -p "$OUT"
(cd "$HERE/../.." && go build -o "$OUT/edgemq" ./cmd/edgemq)
rm -rf interop-data
"$OUT/edgemq" run -c "$HERE/edgemq.interop.yaml" > "$OUT/broker.log" 2>&1 &
BROKER=$!
python3 "$HERE/wsbridge.py" 18840 18083 /mqtt > "$OUT/wsbridge.log" 2>&1 &
BRIDGE=$!
trap 'kill $BRIDGE $BROKER' EXIT
sleep 1
for net in tcp:18830 ws:18840; do
	name=${net%%:*} port=${net##*:}
	(cd "$SUITE" && PYTHONPATH="$SUITE" timeout 300 python3 "$HERE/run311.py" 127.0.0.1 "$port") > "$OUT/client_test-$name.txt" 2>&1 || true
	# will_message_test has no test_ prefix: unittest runs it only by name.
	(cd "$SUITE" && PYTHONPATH="$SUITE" timeout 60 python3 "$HERE/run311.py" 127.0.0.1 "$port" Test.will_message_test) > "$OUT/client_test-will-$name.txt" 2>&1 || true
	# client_test5.py takes -p itself; its host is always localhost.
	(cd "$SUITE" && timeout 600 python3 client_test5.py -p "$port" -v) > "$OUT/client_test5-$name.txt" 2>&1 || true
done
grep -H -E '^(Ran|OK|FAILED)' "$OUT"/client_test*.txt
