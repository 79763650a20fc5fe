#!/usr/bin/env bash
# Builds the load balancer's qcow2 image for one architecture with Packer, from the stage that
# `make stage-ARCH` made, and writes output/vpsie-lb-VERSION-ARCH.qcow2 and its .sha256.
# `validate` checks the templates instead (see below for Debian's Packer 1.6.6).
#
# Usage: scripts/build-image.sh amd64|arm64|validate
# Environment: PACKER (default packer), IMAGE_VERSION (default <crate version>-<git sha>),
#              PACKER_ACCELERATOR (kvm|tcg; default kvm when /dev/kvm is usable, else tcg)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: build-image.sh amd64|arm64|validate}
packer=${PACKER:-packer}
command -v "$packer" >/dev/null || {
  echo "build-image: Packer is not installed; see README \"Building images\"" >&2
  exit 1
}
packer_version=$("$packer" version | head -n1 | grep -o '[0-9]\+\.[0-9]\+\.[0-9]\+')

# Debian 12 ships Packer 1.6.6, which predates plugins: it cannot build these templates, but it
# can still check them once the two things it does not know are taken out: the
# required_plugins block (plugins.pkr.hcl) and the arguments its built-in qemu builder lacks.
legacy_args='^\s*(cd_content|efi_boot|efi_firmware_code|efi_firmware_vars)\s*='
is_legacy() { [ "$(printf '%s\n' "$packer_version" 1.7.0 | sort -V | head -n1)" != 1.7.0 ]; }

if [ "$what" = validate ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # Packer checks that the file provisioner's source exists; the templates do not need real
  # binaries to be checked, so empty stage directories stand in for `make stage-ARCH`.
  mkdir -p "$tmp/out/stage-amd64" "$tmp/out/stage-arm64"
  "$packer" fmt -check -diff packer/ || { echo "build-image: run 'packer fmt packer/'" >&2; exit 1; }
  if is_legacy; then
    mkdir "$tmp/t"
    cp packer/variables.pkr.hcl "$tmp/t/"
    grep -Ev "$legacy_args" packer/vpsie-lb.pkr.hcl > "$tmp/t/vpsie-lb.pkr.hcl"
    echo "build-image: Packer $packer_version predates plugins; validating without plugins.pkr.hcl" \
      "and without: $(grep -Eo "$legacy_args" packer/vpsie-lb.pkr.hcl | tr -d ' =' | sort -u | tr '\n' ' ')"
    "$packer" validate -var "output_dir=$tmp/out" "$tmp/t"
  else
    "$packer" init packer/
    "$packer" validate -var "output_dir=$tmp/out" packer/
  fi
  echo "build-image: the templates are valid (Packer $packer_version)"
  exit 0
fi

case "$what" in amd64|arm64) ;; *) echo "build-image: unknown architecture '$what'" >&2; exit 2 ;; esac
if is_legacy; then
  echo "build-image: Packer $packer_version is too old to build (plugins need >= 1.9); see README \"Building images\"" >&2
  exit 1
fi
[ -x "output/stage-$what/provision.sh" ] || { echo "build-image: run 'make stage-$what' first" >&2; exit 1; }
version=${IMAGE_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)-$(git rev-parse --short HEAD)}
if [ -z "${PACKER_ACCELERATOR:-}" ]; then
  PACKER_ACCELERATOR=tcg
  [ -w /dev/kvm ] && [ "$what" = "$(dpkg --print-architecture 2>/dev/null || echo none)" ] && PACKER_ACCELERATOR=kvm
fi

rm -rf "output/packer-$what"
"$packer" init packer/
"$packer" build -only="qemu.$what" -var "version=$version" -var "output_dir=output" \
  -var "accelerator=$PACKER_ACCELERATOR" packer/
image=vpsie-lb-$version-$what.qcow2
mv "output/packer-$what/$image" "output/$image"
rmdir "output/packer-$what" 2>/dev/null || true
(cd output && sha256sum "$image" > "$image.sha256")
echo "build-image: output/$image ($(du -h "output/$image" | cut -f1)), sha256 in output/$image.sha256"
