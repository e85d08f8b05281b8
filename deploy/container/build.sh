#!/usr/bin/env bash
# Builds the OCI image of one binary, without a container daemon (umoci,
# from Debian's `umoci` package; run as root so file ownership is kept):
#
#   deploy/container/build.sh PACKAGE ARCH STATIC_EXECUTABLE OUT_DIR [VERSION]
#
#   PACKAGE  edge-agent | inference-hub;  ARCH  amd64 | arm64 | arm
#
# The image has no shell, no package manager and no libc: the static binary,
# its example configuration in /etc/PACKAGE, the CA bundle for `system-roots`
# TLS, /etc/passwd naming the non-root user 65532 the entrypoint runs as, the
# state directory /var/lib/PACKAGE (a volume, owned by that user) and, for
# the hub, its models in /usr/share/inference-hub/models. Output:
# OUT_DIR/PACKAGE (an OCI image layout, tag VERSION) and
# OUT_DIR/PACKAGE-VERSION-ARCH.oci.tar (the same as an archive, for
# `podman load`, `skopeo copy oci-archive:...` or `docker load` via skopeo).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
[ $# -ge 4 ] || { sed -n '2,8p' "$0" >&2; exit 2; }
pkg=$1 arch=$2 exe=$3 out=$4
version=${5:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")}
case "$pkg" in
  edge-agent) config=edge.toml ports=() ;;
  inference-hub) config=hub.toml ports=(--config.exposedports 8080/tcp) ;;
  *) echo "unknown package $pkg" >&2; exit 2 ;;
esac
case "$arch" in amd64|arm64|arm) ;; *) echo "unknown architecture $arch" >&2; exit 2 ;; esac
file -L "$exe" | grep -q -E "statically linked|static-pie linked" || { echo "$exe is not a static executable" >&2; exit 2; }

layout="$out/$pkg"
rm -rf "$layout"
mkdir -p "$out"
bundle=$(mktemp -d)
trap 'rm -rf "$bundle"' EXIT
umoci init --layout "$layout"
umoci new --image "$layout:$version"
umoci unpack --image "$layout:$version" "$bundle/b" >/dev/null
rootfs="$bundle/b/rootfs"
uid=65532
install -D -m 0755 "$exe" "$rootfs/usr/bin/$pkg"
case "$arch" in
  amd64) strip "$rootfs/usr/bin/$pkg" ;;
  arm64) aarch64-linux-gnu-strip "$rootfs/usr/bin/$pkg" ;;
  arm) arm-linux-gnueabihf-strip "$rootfs/usr/bin/$pkg" ;;
esac
install -D -m 0644 "$here/$config" "$rootfs/etc/$pkg/$config"
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/var/lib/%s:/sbin/nologin\n' "$uid" "$uid" "$pkg" > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:%s:\n' "$uid" > "$rootfs/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$rootfs/etc/hosts"
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0750 -o "$uid" -g "$uid" "$rootfs/var/lib/$pkg"
if [ "$pkg" = inference-hub ]; then
  for model in "$repo"/models/*/manifest.json; do
    dir=$(dirname "$model") name=$(basename "$(dirname "$model")")
    for f in manifest.json model.onnx golden.json MODEL_CARD.md; do
      [ -f "$dir/$f" ] && install -D -m 0644 "$dir/$f" "$rootfs/usr/share/inference-hub/models/$name/$f"
    done
  done
fi
umoci repack --image "$layout:$version" "$bundle/b" >/dev/null
umoci config --image "$layout:$version" \
  --os linux --architecture "$arch" \
  --config.user "$uid:$uid" \
  --config.entrypoint "/usr/bin/$pkg" \
  --config.cmd --config --config.cmd "/etc/$pkg/$config" --config.cmd run \
  --config.workingdir "/var/lib/$pkg" \
  --config.volume "/var/lib/$pkg" \
  --config.env RUST_LOG=info \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  "${ports[@]}" \
  --config.label "org.opencontainers.image.title=$pkg" \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.licenses=Apache-2.0"
umoci gc --layout "$layout"
archive="$out/$pkg-$version-$arch.oci.tar"
tar -C "$layout" -cf "$archive" .
echo "$archive"
