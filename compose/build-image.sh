#!/usr/bin/env bash
# Builds the rood image without pulling anything: FROM scratch with the rood binary (debug info
# stripped: what ships needs none, profiles still name functions), /rooctl linking to it (the
# operator's command line: `docker exec <task> /rooctl routes ls`), the shared libraries `ldd`
# lists for it, and the CA roots (for Let's Encrypt and TLS upstreams).
#
#   cargo build --profile dist -p rood && compose/build-image.sh [binary] [tag]
#   (defaults: target/dist/rood, roo:local)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
binary=${1:-$here/../target/dist/rood}
tag=${2:-roo:local}
[ -x "$binary" ] || { echo "no rood binary at $binary: cargo build --profile dist -p rood" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp" "$ctx/rootfs/data"
strip --strip-debug -o "$ctx/rootfs/rood" "$binary" 2>/dev/null || cp "$binary" "$ctx/rootfs/rood"
ln -s rood "$ctx/rootfs/rooctl"
# Every library the binary loads, at the path the loader looks for it.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/" 2>/dev/null || true
cp "$here/Dockerfile" "$ctx/Dockerfile"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
