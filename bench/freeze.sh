#!/usr/bin/env bash
# Freeze-window benchmark (issue: snapshot lifecycle and safe quiesce). Boots the tiny test
# guest (qemu-guest-agent, ext4 data disk, a writer syncing every ~100 ms) under local
# libvirt and takes N quiesced snapshots with autosnap (keep 2, so merges run too). For each,
# autosnap reports how long the guest's filesystems were frozen (freeze call → thaw
# returned, an upper bound of the guest-side window). Prints p50/p95/max; goal p95 ≤ 150 ms.
# For comparison it times the same number of `virsh snapshot-create-as --quiesce` calls
# (libvirt's own freeze+snapshot+thaw, measured end to end including virsh start-up).
# Usage: bench/freeze.sh [path/to/autosnap]   env: N=20
set -euo pipefail
bin=${1:-bin/autosnap}
N=${N:-20}
top=$(cd "$(dirname "$0")/.." && pwd)
name=bench-freeze
dir=/var/tmp/autosnap-bench-freeze
export LIBVIRT_DEFAULT_URI=qemu:///system

cleanup() {
  virsh destroy "$name" >/dev/null 2>&1 || true
  virsh undefine "$name" --snapshots-metadata >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
cleanup
install -d -m 0700 "$dir"
bash "$top/scripts/build-test-guest.sh" "$dir/guest" >/dev/null
truncate -s 64M "$dir/data.raw"
mkfs.ext4 -q -F "$dir/data.raw"
qemu-img convert -q -f raw -O qcow2 "$dir/data.raw" "$dir/data.qcow2"
rm -f "$dir/data.raw"
cat > "$dir/dom.xml" <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$dir/guest/vmlinuz</kernel><initrd>$dir/guest/initrd.img</initrd>
    <cmdline>console=ttyS0 loglevel=4 autosnap.writer=1</cmdline></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/data.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source path='$dir/console.log'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
XML
virsh define "$dir/dom.xml" >/dev/null
virsh start "$name" >/dev/null
for _ in $(seq 1 120); do virsh qemu-agent-command "$name" '{"execute":"guest-ping"}' >/dev/null 2>&1 && break; sleep 0.5; done

: > "$dir/windows"
for i in $(seq 1 "$N"); do
  "$bin" --vmid "$name" --timestamp-format yyMMddHHmmssfff snap --label fz --keep 2 --quiesce on \
    | sed -n 's/^Filesystems frozen for \([0-9.]*\)\(ms\|s\|µs\).*/\1 \2/p' \
    | awk '{ v=$1; if ($2=="s") v*=1000; if ($2=="µs") v/=1000; print v }' >> "$dir/windows"
done
"$bin" --vmid "$name" --timestamp-format yyMMddHHmmssfff clean --label fz --keep 0 >/dev/null

t0=$(date +%s%N)
for i in $(seq 1 "$N"); do
  virsh snapshot-create-as "$name" "v$i" --disk-only --atomic --quiesce --no-metadata \
    --diskspec "vda,snapshot=external,file=$dir/v$i.qcow2" >/dev/null
done
t1=$(date +%s%N)

sort -n "$dir/windows" | awk -v n="$N" -v peer="$(( (t1 - t0) / 1000000 / N ))" '
  { a[NR]=$1 }
  END {
    if (NR != n) { printf "expected %d windows, got %d\n", n, NR; exit 1 }
    p50=a[int(NR*0.50+0.5)]; p95=a[int(NR*0.95+0.5)]
    printf "quiesced snapshots: %d\n", NR
    printf "autosnap freeze window: p50 %.1f ms  p95 %.1f ms  max %.1f ms  (goal p95 <= 150 ms)\n", p50, p95, a[NR]
    printf "virsh snapshot-create-as --quiesce, whole call incl. virsh start: %d ms each\n", peer
  }'
