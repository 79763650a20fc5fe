#!/usr/bin/env bash
# Makes a provisioned system fit to be an image: every VM made from it must get its own identity
# (machine id, SSH host keys, cloud-init instance) and start with empty logs. Runs as root, last,
# in the Packer VM and in the image test's chroot.
#
# Usage: cleanup.sh [STAGE_DIR]   (the stage directory is removed too)
set -euo pipefail
log() { echo "cleanup: $*"; }

[ -n "${1:-}" ] && rm -rf -- "$1"

# cloud-init runs again at the first boot of each VM, with that VM's user data.
if command -v cloud-init >/dev/null; then
  cloud-init clean --logs --seed
fi

# An empty machine-id (not a missing one) makes systemd generate a new id at first boot.
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
[ -d /var/lib/dbus ] && ln -s /etc/machine-id /var/lib/dbus/machine-id

# SSH host keys: cloud-init generates new ones at first boot.
rm -f /etc/ssh/ssh_host_*

# Logs, caches and anything the build left behind.
apt-get clean 2>/dev/null || true
rm -rf /var/lib/apt/lists/*
rm -rf /var/log/journal/* /var/log/vpsie-lb /var/lib/vpsie-lb /run/vpsie-lb
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /tmp/* /var/tmp/* /root/.bash_history /root/.cache
log "machine id, SSH host keys, cloud-init state and logs removed"
