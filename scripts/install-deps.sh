#!/usr/bin/env bash
# Installs the Debian packages autosnap's demo and tests need, then starts virtlogd and
# libvirtd without systemd. Idempotent: safe to run on every `make demo` / `make test`.
set -euo pipefail

pkgs=(qemu-system-x86 qemu-utils qemu-guest-agent libvirt-daemon-system libvirt-clients
      libvirt-daemon-driver-qemu linux-image-cloud-amd64 busybox-static e2fsprogs cpio
      kmod procps openssh-server openssh-client
      virtnbdbackup # virtnbdbackup: the comparison in bench/backup.sh
      chromium) # chromium: the dashboard browser tests (internal/web)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
