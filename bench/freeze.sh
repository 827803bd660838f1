#!/usr/bin/env bash
# Freeze-window benchmark (issue 8). Boots the tiny test guest (qemu-guest-agent, ext4
# data disk, a writer syncing every ~100 ms) under local libvirt and, N times, alternates:
#   autosnap: `snap --keep 2 --quiesce on` (merges run too); autosnap reports how long the
#             guest's filesystems were frozen (freeze call → thaw returned, an upper
#             bound of the guest-side window);
#   virsh:    one whole `virsh snapshot-create-as --quiesce --disk-only --atomic` call
#             (process start included: libvirt's freeze + snapshot + thaw), timed from
#             outside; its overlay is then merged back (blockcommit --pivot, not timed).
# Alternating makes load from other processes hit both alike. Prints p50/p95/max of each
# and the ratios autosnap/virsh (goal: p95 <= 0.75).
# Usage: bench/freeze.sh [path/to/autosnap]   env: N=20
set -euo pipefail
bin=${1:-bin/autosnap}
N=${N:-20}
top=$(cd "$(dirname "$0")/.." && pwd)
name=astbench-fz
dir=/var/tmp/astbench-fz
export LIBVIRT_DEFAULT_URI=qemu:///system

[ -x "$bin" ] || { echo "no autosnap binary at $bin (make build)" >&2; exit 2; }
cleanup() {
  virsh destroy "$name" >/dev/null 2>&1 || true
  virsh undefine "$name" --snapshots-metadata >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
cleanup
install -d -m 0755 "$dir"
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
up=0
for _ in $(seq 1 240); do
  if virsh qemu-agent-command "$name" '{"execute":"guest-ping"}' >/dev/null 2>&1; then up=1; break; fi
  sleep 0.5
done
[ "$up" = 1 ] || { echo "the test guest's agent did not answer within 2 minutes" >&2; exit 1; }

: > "$dir/windows"
: > "$dir/virsh"
for i in $(seq 1 "$N"); do
  "$bin" --vmid "$name" --timestamp-format yyMMddHHmmssfff snap --label fz --keep 2 --quiesce on > "$dir/out" 2>&1 \
    || { echo "autosnap snap failed:" >&2; cat "$dir/out" >&2; exit 1; }
  sed -n 's/^Filesystems frozen for \([0-9.]*\)\(ms\|s\|µs\).*/\1 \2/p' "$dir/out" \
    | awk '{ v=$1; if ($2=="s") v*=1000; if ($2=="µs") v/=1000; print v }' >> "$dir/windows"

  t0=$(date +%s%N)
  virsh snapshot-create-as "$name" "v$i" --disk-only --atomic --quiesce --no-metadata \
    --diskspec "vda,snapshot=external,file=$dir/v$i.qcow2" >/dev/null
  t1=$(date +%s%N)
  echo "$(( (t1 - t0) / 1000 ))" | awk '{ print $1 / 1000 }' >> "$dir/virsh"
  virsh blockcommit "$name" vda --active --pivot --delete --wait >/dev/null
done

pct() { # FILE → "p50 p95 max" (nearest rank)
  sort -n "$1" | awk -v n="$N" '{ a[NR] = $1 }
    END {
      if (NR != n) { printf "expected %d values, got %d\n", n, NR > "/dev/stderr"; exit 1 }
      r50 = int(NR * 0.50 + 0.5); r95 = int(NR * 0.95 + 0.5); if (r50 < 1) r50 = 1; if (r95 < 1) r95 = 1
      printf "%.1f %.1f %.1f\n", a[r50], a[r95], a[NR]
    }'
}
read -r a50 a95 amax < <(pct "$dir/windows")
read -r v50 v95 vmax < <(pct "$dir/virsh")
printf 'quiesced snapshots: %d each, alternating\n' "$N"
printf 'autosnap freeze window:                 p50 %7.1f ms  p95 %7.1f ms  max %7.1f ms\n' "$a50" "$a95" "$amax"
printf 'virsh snapshot-create-as --quiesce call: p50 %7.1f ms  p95 %7.1f ms  max %7.1f ms\n' "$v50" "$v95" "$vmax"
printf 'ratio autosnap/virsh: p50 %.2f  p95 %.2f  (goal: p95 <= 0.75)\n' \
  "$(echo "$a50 / $v50" | bc -l)" "$(echo "$a95 / $v95" | bc -l)"
