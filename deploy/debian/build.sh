#!/usr/bin/env bash
# Builds the Debian package of one binary from an already built executable:
#
#   deploy/debian/build.sh PACKAGE ARCH EXECUTABLE OUT_DIR [VERSION]
#
#   PACKAGE     edge-agent | inference-hub
#   ARCH        amd64 | arm64 | armhf (Debian's names; the executable must be
#               built for it, see docs/BENCHMARKS.md "Gateway builds")
#   EXECUTABLE  the stripped release binary
#   VERSION     default: the workspace version from Cargo.toml
#
# What goes where: the binary in /usr/bin, the example configuration in
# /etc/PACKAGE (a conffile: an upgrade never overwrites local edits), the
# hardened systemd unit, the hub's models in /usr/share/inference-hub/models,
# state under /var/lib/PACKAGE (created by the unit and the postinst, kept on
# upgrade and remove, deleted on purge). The maintainer scripts are
# maintainer-scripts/*.in with the package name filled in.
#
# dpkg-deb builds the archive; nothing here needs Rust or cargo-deb.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
[ $# -ge 4 ] || { sed -n '2,10p' "$0" >&2; exit 2; }
pkg=$1 arch=$2 exe=$3 out=$4
version=${5:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")}
case "$pkg" in
  edge-agent)
    config=edge.toml
    summary="IoT edge agent: MQTT ingest, durable spool, forwarding to the hub"
    description=" Subscribes to the gateway's MQTT broker, decodes JSON, SenML and
 Sparkplug B payloads, filters them, keeps them in a crash-safe spool and
 forwards them as compressed Arrow batches to an inference hub." ;;
  inference-hub)
    config=hub.toml
    summary="IoT inference hub: intake, anomaly scoring, Parquet archive, API"
    description=" Takes batches from edge agents over MQTT and HTTP, makes them durable,
 scores every reading with online detectors and ONNX models, archives
 scored telemetry and anomaly events as Parquet and serves the dashboard API." ;;
  *) echo "unknown package $pkg (edge-agent | inference-hub)" >&2; exit 2 ;;
esac
case "$arch" in amd64|arm64|armhf) ;; *) echo "unknown architecture $arch" >&2; exit 2 ;; esac
[ -x "$exe" ] || { echo "$exe: not an executable" >&2; exit 2; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
install -D -m 0755 "$exe" "$root/usr/bin/$pkg"
# Debian strips binaries (dh_strip); the release profile keeps symbols.
case "$arch" in
  amd64) strip_tool=strip ;;
  arm64) strip_tool=aarch64-linux-gnu-strip ;;
  armhf) strip_tool=arm-linux-gnueabihf-strip ;;
esac
"$strip_tool" "$root/usr/bin/$pkg"
install -D -m 0644 "$repo/deploy/$config" "$root/etc/$pkg/$config"
install -D -m 0644 "$repo/deploy/systemd/$pkg.service" "$root/lib/systemd/system/$pkg.service"
install -D -m 0644 "$here/copyright" "$root/usr/share/doc/$pkg/copyright"
install -D -m 0644 "$here/README.md" "$root/usr/share/doc/$pkg/README.md"
if [ "$pkg" = inference-hub ]; then
  for model in "$repo"/models/*/manifest.json; do
    dir=$(dirname "$model") name=$(basename "$(dirname "$model")")
    for f in manifest.json model.onnx golden.json MODEL_CARD.md; do
      [ -f "$dir/$f" ] && install -D -m 0644 "$dir/$f" "$root/usr/share/inference-hub/models/$name/$f"
    done
  done
fi

mkdir -p "$root/DEBIAN"
for script in postinst prerm postrm; do
  sed "s/#PACKAGE#/$pkg/g" "$here/maintainer-scripts/$script.in" > "$root/DEBIAN/$script"
  chmod 0755 "$root/DEBIAN/$script"
done
echo "/etc/$pkg/$config" > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: IoT pipeline maintainers <maintainers@iot-pipeline.invalid>
Section: net
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: passwd
Description: $summary
$description
CONTROL

mkdir -p "$out"
deb="$out/${pkg}_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
