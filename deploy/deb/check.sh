#!/bin/sh
# Checks the .debs that make dist built (.ci/run runs it as root):
# - every package holds the binary, the unit, the conffile and the sysusers entry;
# - the package of this machine installs into a scratch root (dpkg --root, maintainer
#   scripts chrootless), creating the system user there, and the installed
#   binary accepts the installed config;
# - the installed binary starts as that user on that config (in a network
#   namespace of its own), answers /healthz and stops on SIGTERM;
# - systemd-analyze verify passes on the installed unit, with the package's
#   /usr laid over the host's in a private mount namespace so that
#   ExecStart=/usr/bin/edgemq exists (no systemd needs to run).
#
#   deploy/deb/check.sh [DIST]     (default: dist)
set -eu
dist=${1:-dist}
fail() { echo "deb check: $*" >&2; exit 1; }

n=0
for deb in "$dist"/edgemq_*.deb; do
	[ -e "$deb" ] || fail "no .deb in $dist (run make dist)"
	n=$((n + 1))
	contents=$(dpkg-deb --contents "$deb")
	for f in ./usr/bin/edgemq ./lib/systemd/system/edgemq.service ./etc/edgemq/edgemq.yaml ./usr/lib/sysusers.d/edgemq.conf ./usr/share/doc/edgemq/edgemq.example.yaml; do
		echo "$contents" | grep -q " $f\$" || fail "$deb lacks $f"
	done
	[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles)" = /etc/edgemq/edgemq.yaml ] ||
		fail "$deb: /etc/edgemq/edgemq.yaml is not a conffile"
	echo "ok $deb: $(dpkg-deb --field "$deb" Package Version Architecture | tr '\n' ' ')"
done
[ "$n" -eq 4 ] || fail "want 4 packages (amd64, arm64, armhf, armel), found $n"

root=$(mktemp -d)
chmod 0755 "$root" # the broker runs as the package's user below
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
: >"$root/var/lib/dpkg/status"
deb=$(ls "$dist"/edgemq_*_"$(dpkg --print-architecture)".deb)
dpkg --root="$root" --force-script-chrootless --log=/dev/null -i "$deb" >/dev/null
grep -q '^edgemq:x:[0-9]*:[0-9]*:.*:/var/lib/edgemq:' "$root/etc/passwd" || fail "no system user edgemq in the scratch root"
"$root/usr/bin/edgemq" check -c "$root/etc/edgemq/edgemq.yaml" >/dev/null
"$root/usr/bin/edgemq" version | head -1
echo "ok dpkg -i into a scratch root: user edgemq, /usr/bin/edgemq, the packaged config checks"

unit="$root/lib/systemd/system/edgemq.service"
out=$(unshare -m sh -c "mount -t overlay overlay -o lowerdir=$root/usr:/usr /usr && systemd-analyze verify $unit" 2>&1) ||
	fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify warns: $out"
echo "ok systemd-analyze verify $(basename "$unit")"
# The installed broker starts as the package's user on the packaged config,
# the way the unit runs it (working directory /var/lib/edgemq), in a network
# namespace of its own so that its default ports meet no other process:
# healthy, then SIGTERM, exit 0.
uid=$(awk -F: '$1 == "edgemq" {print $3}' "$root/etc/passwd")
gid=$(awk -F: '$1 == "edgemq" {print $4}' "$root/etc/passwd")
install -d -o "$uid" -g "$gid" -m 0700 "$root/var/lib/edgemq"
out=$(unshare -n sh -c "
	ip link set lo up
	cd $root/var/lib/edgemq
	setpriv --reuid=$uid --regid=$gid --clear-groups $root/usr/bin/edgemq run -c $root/etc/edgemq/edgemq.yaml 2>broker.log &
	pid=\$!
	i=0
	until $root/usr/bin/edgemq health -c $root/etc/edgemq/edgemq.yaml >/dev/null 2>&1; do
		i=\$((i + 1)); [ \$i -lt 100 ] || { kill \$pid; cat broker.log; exit 1; }
		sleep 0.1
	done
	kill -TERM \$pid
	wait \$pid || { cat broker.log; exit 1; }
" 2>&1) || fail "the installed broker did not start, answer /healthz and stop on SIGTERM: $out"
echo "ok the installed broker runs as edgemq (uid $uid) on the packaged config, answers /healthz, exits 0 on SIGTERM"

dpkg --root="$root" --force-script-chrootless --log=/dev/null --purge edgemq >/dev/null
[ ! -e "$root/usr/bin/edgemq" ] || fail "dpkg --purge left /usr/bin/edgemq"
echo "ok dpkg --purge"
