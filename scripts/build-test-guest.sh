#!/usr/bin/env bash
# Builds the tiny Linux guest that autosnap's integration tests boot under TCG:
#   OUTDIR/vmlinuz     copy of the newest /boot/vmlinuz-*
#   OUTDIR/initrd.img  gzip'd cpio (newc) holding busybox-static, qemu-ga with its
#                      libraries, the virtio kernel modules and /init.
# Uses only files from installed Debian packages (linux-image-cloud-amd64, busybox-static,
# qemu-guest-agent, kmod). Fails loudly when any input is missing.
#
# The guest's /init mounts /dev/vda at /data when it holds ext4, writes /data/boot-ok (and
# syncs it) before it starts qemu-ga on the org.qemu.guest_agent.0 port, so an answering
# agent implies boot-ok is on disk. With autosnap.writer=1 on the kernel command line it
# then appends an incrementing counter line to /data/counter and syncs every ~100 ms.
set -euo pipefail

die() { echo "build-test-guest: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
out=$1
mkdir -p "$out"

for tool in cpio gzip ldd modinfo; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done

kernel=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$kernel" ] && [ -r "$kernel" ] || die "no readable /boot/vmlinuz-* (install linux-image-cloud-amd64)"
kver=${kernel#/boot/vmlinuz-}
moddir=/lib/modules/$kver
[ -d "$moddir" ] || die "no module directory $moddir for kernel $kernel"

busybox=/bin/busybox
[ -x "$busybox" ] || die "missing $busybox (install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked; install busybox-static"
fi
qga=/usr/sbin/qemu-ga
[ -x "$qga" ] || die "missing $qga (install qemu-guest-agent)"

root=$(mktemp -d "${TMPDIR:-/tmp}/autosnap-guest.XXXXXX")
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,data,etc,lib/modules,root,var}
# qemu-ga writes below /var/run; point it at the tmpfs /init mounts on /run.
ln -s /run "$root/var/run"

cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"

# qemu-ga with every shared library ldd reports, including the dynamic loader, at the same
# absolute paths so the loader's default search finds them.
cp "$qga" "$root/usr/sbin/qemu-ga"
libs=$(ldd "$qga" | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]+ \(/ {print $1}')
[ -n "$libs" ] || die "ldd found no libraries for $qga"
for lib in $libs; do
  [ -e "$lib" ] || die "library $lib of $qga is missing"
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
grep -q 'ld-linux' <<<"$libs" || die "ldd did not report the dynamic loader of $qga"

# Kernel modules, dependency order. A module that is built into this kernel has no file;
# that is fine. Compressed modules are decompressed because busybox insmod cannot.
mods=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
      virtio_console)
: >"$root/lib/modules/order"
for m in "${mods[@]}"; do
  f=$(modinfo -k "$kver" -n "$m" 2>/dev/null || true)
  case "$f" in
    ""|"(builtin)")
      grep -qE "/$m\.ko" "$moddir/modules.builtin" 2>/dev/null ||
        echo "build-test-guest: note: module $m not found as a file; assuming built in" >&2
      continue ;;
  esac
  [ -r "$f" ] || die "module file $f for $m is not readable"
  dst="$root/lib/modules/$m.ko"
  case "$f" in
    *.ko) cp "$f" "$dst" ;;
    *.ko.xz) command -v xz >/dev/null || die "xz needed for $f"; xz -dc "$f" >"$dst" ;;
    *.ko.zst) command -v zstd >/dev/null || die "zstd needed for $f"; zstd -qdc "$f" >"$dst" ;;
    *.ko.gz) gzip -dc "$f" >"$dst" ;;
    *) die "unknown module file type: $f" ;;
  esac
  echo "$m" >>"$root/lib/modules/order"
done

cat >"$root/init" <<'EOF'
#!/bin/sh
# autosnap test guest init. Never exits: init exiting panics the kernel.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s /bin
log() { echo "autosnap-guest: $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node, so the kernel started us without stdio.
exec </dev/console >/dev/console 2>&1
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
log "init started, kernel $(uname -r)"

for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko || log "insmod $m failed"
done
log "modules loaded"

# Device nodes normally come from devtmpfs; mknod covers kernels where they do not.
mknod_from_sys() {
  devname=/dev/$(basename "$1")
  [ -e "$devname" ] && return 0
  [ -r "$1/dev" ] || return 1
  majmin=$(cat "$1/dev")
  mknod "$devname" "$2" "${majmin%%:*}" "${majmin##*:}"
}

i=0
while [ ! -e /sys/block/vda ] && [ $i -lt 20 ]; do usleep 100000; i=$((i+1)); done
if [ -e /sys/block/vda ]; then
  mknod_from_sys /sys/block/vda b
  # ext4 superblock magic 0xEF53 at byte 1080.
  if [ "$(dd if=/dev/vda bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' ')" = "53ef" ]; then
    if mount -t ext4 /dev/vda /data; then
      echo "$(uname -r)" >/data/boot-ok
      sync
      log "mounted /dev/vda at /data, wrote /data/boot-ok"
    else
      log "mounting /dev/vda failed"
    fi
  else
    log "/dev/vda is not ext4; /data stays on the initramfs"
  fi
else
  log "no /dev/vda"
fi

port=""
i=0
while [ -z "$port" ] && [ $i -lt 50 ]; do
  for p in /sys/class/virtio-ports/*; do
    [ -r "$p/name" ] || continue
    if [ "$(cat "$p/name")" = "org.qemu.guest_agent.0" ]; then
      mknod_from_sys "$p" c
      port=/dev/$(basename "$p")
    fi
  done
  [ -n "$port" ] || { usleep 100000; i=$((i+1)); }
done

if [ -n "$port" ]; then
  mkdir -p /run/qga
  /usr/sbin/qemu-ga -m virtio-serial -p "$port" -t /run/qga -f /run/qemu-ga.pid &
  log "qemu-ga started on $port"
else
  log "no org.qemu.guest_agent.0 port; qemu-ga not started"
fi

if grep -q 'autosnap.writer=1' /proc/cmdline; then
  if grep -q ' /data ' /proc/mounts; then
    (
      n=0
      while true; do
        n=$((n+1))
        echo "$n" >>/data/counter
        sync
        usleep 100000
      done
    ) &
    log "writer loop started"
  else
    log "writer requested but /data is not mounted"
  fi
fi

log "boot complete"
while true; do sleep 3600; done
EOF
chmod 0755 "$root/init"

tmpk="$out/.vmlinuz.tmp.$$"
tmpi="$out/.initrd.img.tmp.$$"
cp "$kernel" "$tmpk"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) | gzip -6 >"$tmpi"
mv -f "$tmpk" "$out/vmlinuz"
mv -f "$tmpi" "$out/initrd.img"
echo "build-test-guest: kernel $kver -> $out/vmlinuz, initramfs $(du -h "$out/initrd.img" | cut -f1) -> $out/initrd.img"
