#!/usr/bin/env bash
# Starts virtlogd and libvirtd without systemd (CI containers, fresh VMs) and waits for
# the system socket. Does nothing when libvirtd already answers.
set -euo pipefail
sock=/var/run/libvirt/libvirt-sock
conf=/etc/libvirt/qemu.conf
if [ -f "$conf" ] && [ "$(id -u)" = 0 ]; then
  grep -qE '^user *= *"root"' "$conf" || echo 'user = "root"' >> "$conf"
  grep -qE '^group *= *"root"' "$conf" || echo 'group = "root"' >> "$conf"
fi
if virsh -c qemu:///system version >/dev/null 2>&1; then exit 0; fi
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 1 100); do
  [ -S "$sock" ] && virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 0.2
done
echo "start-libvirt: libvirtd did not answer on $sock within 20 s" >&2
exit 1
