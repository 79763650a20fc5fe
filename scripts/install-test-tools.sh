#!/usr/bin/env bash
# `make test` runs this first: the tools the tests call besides Envoy, from Debian's packages.
# Idempotent (installs only what is missing); says plainly what to do when it cannot install.
#   promtool  (prometheus)      alert rules and metric names, tests/it/observability.rs
#   h2load    (nghttp2-client)  HTTP/2 load through an http2 rule, tests/it/grpc.rs
#   pebble, pebble-challtestsrv (pebble)  the ACME test CA and its DNS, tests/it/managed.rs
#   keepalived, ip (keepalived, iproute2)  high availability in network namespaces, tests/it/ha.rs
#   faketime  (faketime)        the agent's clock jumping (libfaketime), tests/it/faults.rs
#   haproxy   (haproxy)         only with WITH_HAPROXY=1: the baseline of `make bench-live`
#   wrk       (wrk)             only with WITH_WRK=1: the load of `make bench-access-log`
#   slowhttptest (slowhttptest) only with WITH_SLOWHTTPTEST=1: the attacker of `make bench-attacks`
#   nginx     (nginx, libnginx-mod-stream) only with WITH_NGINX=1: upstream and baseline of `make bench-dataplane`
#   qemu-system-aarch64, qemu-aarch64-static, update-binfmts, aarch64-linux-gnu-gcc, mmdebstrap,
#             arch-test, cloud-localds (qemu-system-arm, qemu-user-static, binfmt-support,
#             gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, mmdebstrap, arch-test, qemu-utils,
#             cloud-image-utils) only with
#             WITH_ARM64_IMAGE=1: building and booting the arm64 image, `make image-test-arm64`
set -euo pipefail
need=()
tools=(promtool h2load pebble pebble-challtestsrv keepalived ip faketime)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v keepalived >/dev/null 2>&1 || need+=(keepalived)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v pebble-challtestsrv >/dev/null 2>&1 || need+=(pebble)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
if [ "${WITH_HAPROXY:-}" = 1 ]; then
  tools+=(haproxy)
  command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
fi
if [ "${WITH_WRK:-}" = 1 ]; then
  tools+=(wrk)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
fi
if [ "${WITH_NGINX:-}" = 1 ]; then
  tools+=(nginx)
  command -v nginx >/dev/null 2>&1 || need+=(nginx)
  # nginx as a TCP proxy (the stream module is a package of its own).
  [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
fi
if [ "${WITH_SLOWHTTPTEST:-}" = 1 ]; then
  tools+=(slowhttptest)
  command -v slowhttptest >/dev/null 2>&1 || need+=(slowhttptest)
fi
if [ "${WITH_ARM64_IMAGE:-}" = 1 ]; then
  tools+=(qemu-system-aarch64 qemu-aarch64-static update-binfmts aarch64-linux-gnu-gcc mmdebstrap
    arch-test cloud-localds qemu-img)
  command -v qemu-system-aarch64 >/dev/null 2>&1 || need+=(qemu-system-arm)
  command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
  command -v update-binfmts >/dev/null 2>&1 || need+=(binfmt-support)
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
  # mmdebstrap checks with it that the foreign architecture's binaries run.
  command -v arch-test >/dev/null 2>&1 || need+=(arch-test)
  command -v cloud-localds >/dev/null 2>&1 || need+=(cloud-image-utils)
  command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
fi
[ ${#need[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    echo "install-test-tools: the tests need: ${need[*]} (Debian packages)." >&2
    echo "  Install them as root:  apt-get install --no-install-recommends ${need[*]}" >&2
    echo "  then run 'make test' again." >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-tools: no apt-get here; install promtool, h2load, pebble, keepalived, ip and faketime (${need[*]} on Debian) by hand." >&2
  exit 1
fi
echo "install-test-tools: installing ${need[*]}"
"${sudo[@]}" apt-get update -qq
# One package at a time: apt refuses a whole batch when one of them conflicts with a held package.
for p in "${need[@]}"; do
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$p" >/dev/null
done
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-test-tools: $tool is still missing after installing ${need[*]}" >&2; exit 1; }
done
