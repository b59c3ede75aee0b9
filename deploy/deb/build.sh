#!/bin/sh
# Builds the edgemq .deb for one architecture with dpkg-deb (make dist runs it).
#
#   deploy/deb/build.sh BINARY DEBARCH VERSION OUTDIR
#
# BINARY is a static linux binary from make dist; DEBARCH the Debian
# architecture (amd64, arm64, armhf, armel); VERSION the git version
# (v1.2.3, v1.2.3-4-gabcdef, abcdef-dirty), turned into a Debian one.
# The package installs /usr/bin/edgemq, the systemd unit, /etc/edgemq/edgemq.yaml
# (deploy/deb/edgemq.yaml, which changes no default; a conffile: an upgrade
# keeps the operator's edits), the commented example config in
# /usr/share/doc/edgemq, and the system user edgemq (systemd-sysusers, or
# adduser where there is none).
set -eu
[ $# -eq 4 ] || { echo "usage: $0 BINARY DEBARCH VERSION OUTDIR" >&2; exit 2; }
bin=$1 arch=$2 version=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$here")

# Debian versions start with a digit and hold no '-' without a revision.
v=${version#v}
case $v in [0-9]*.*) ;; *) v="0~git$v" ;; esac
v=$(printf %s "$v" | tr -- - +)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
install -D -m 0755 "$bin" "$root/usr/bin/edgemq"
install -D -m 0644 "$deploy/edgemq.service" "$root/lib/systemd/system/edgemq.service"
install -D -m 0644 "$here/edgemq.yaml" "$root/etc/edgemq/edgemq.yaml"
install -D -m 0644 "$deploy/edgemq.example.yaml" "$root/usr/share/doc/edgemq/edgemq.example.yaml"
install -D -m 0644 "$here/sysusers.conf" "$root/usr/lib/sysusers.d/edgemq.conf"
install -d -m 0755 "$root/DEBIAN"
for s in postinst prerm postrm; do
	install -m 0755 "$here/$s" "$root/DEBIAN/$s"
done
echo /etc/edgemq/edgemq.yaml >"$root/DEBIAN/conffiles"
size=$(du -sk "$root/usr" "$root/lib" "$root/etc" | awk '{s += $1} END {print s}')
sed -e "s/@VERSION@/$v/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" "$here/control" >"$root/DEBIAN/control"

mkdir -p "$out"
# Reproducible: fixed owner and file times.
find "$root" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
dpkg-deb --root-owner-group -Zxz --build "$root" "$out/edgemq_${v}_${arch}.deb" >/dev/null
echo "$out/edgemq_${v}_${arch}.deb"
