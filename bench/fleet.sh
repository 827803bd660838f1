#!/usr/bin/env bash
# Fleet benchmark (issue: the main job). N running guests under local libvirt; R rounds of
# "snapshot every guest, keep 2" done two ways in one run:
#   peer:     a sequential virsh loop — snapshot-create-as --disk-only --atomic per guest,
#             then snapshot-delete of the oldest once more than 2 exist (libvirt 9.0 merges
#             external snapshots of running guests itself);
#   autosnap: `autosnap --vmid 'bench-fleet-%' snap --label b --keep 2` per round.
# Both end each round with the same chains (keep+1 images per disk). Prints both times
# and the ratio autosnap/peer (goal ≤ 0.5).
# Usage: bench/fleet.sh [path/to/autosnap]   env: N=20 R=4 PARALLEL=4
set -euo pipefail
bin=${1:-bin/autosnap}
N=${N:-20}
R=${R:-4}
PARALLEL=${PARALLEL:-4}
dir=/var/tmp/autosnap-bench
export LIBVIRT_DEFAULT_URI=qemu:///system

cleanup() {
  for i in $(seq 1 "$N"); do
    virsh destroy "bench-fleet-$i" >/dev/null 2>&1 || true
    virsh undefine "bench-fleet-$i" --snapshots-metadata >/dev/null 2>&1 || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT
cleanup
install -d -m 0700 "$dir"

make_fleet() {
  for i in $(seq 1 "$N"); do
    qemu-img create -q -f qcow2 "$dir/fleet-$i.qcow2" 64M
    cat > "$dir/fleet-$i.xml" <<XML
<domain type='qemu'>
  <name>bench-fleet-$i</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/fleet-$i.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    virsh define "$dir/fleet-$i.xml" >/dev/null
    virsh start "bench-fleet-$i" >/dev/null
  done
}

echo "== creating $N running guests"
make_fleet

now() { date +%s.%N; }
# CPU seconds libvirtd used so far: the daemon is the shared resource both sides load.
daemon_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14+$15)/hz}' "/proc/$(pgrep -xo libvirtd)/stat"; }

echo "== peer: sequential virsh loop, $R rounds"
c0=$(daemon_cpu)
t0=$(now)
for r in $(seq 1 "$R"); do
  for i in $(seq 1 "$N"); do
    virsh snapshot-create-as "bench-fleet-$i" "peer$r" --disk-only --atomic \
      --diskspec "vda,snapshot=external,file=$dir/fleet-$i.peer$r.qcow2" >/dev/null
    if [ "$r" -gt 2 ]; then
      virsh snapshot-delete "bench-fleet-$i" "peer$((r-2))" >/dev/null
    fi
  done
done
t1=$(now)
peer=$(echo "$t1 - $t0" | bc -l)
peer_cpu=$(echo "$(daemon_cpu) - $c0" | bc -l)

# Same starting point for autosnap: fresh guests.
cleanup; install -d -m 0700 "$dir"; make_fleet

echo "== autosnap: --max-parallel $PARALLEL, $R rounds"
c0=$(daemon_cpu)
t0=$(now)
for r in $(seq 1 "$R"); do
  "$bin" --max-parallel "$PARALLEL" --vmid 'bench-fleet-%' --timestamp-format yyMMddHHmmssfff \
    snap --label b --keep 2 --quiesce off >/dev/null
done
t1=$(now)
auto=$(echo "$t1 - $t0" | bc -l)
auto_cpu=$(echo "$(daemon_cpu) - $c0" | bc -l)

depth=$(qemu-img info -U --backing-chain "$(virsh domblklist bench-fleet-1 | awk '$1=="vda"{print $2}')" | grep -c '^image:')
printf '\nguests=%d rounds=%d (create %d snapshots, merge %d)\n' "$N" "$R" $((N*R)) $((N*(R-2)))
printf 'peer (virsh loop): %8.2f s   libvirtd CPU %6.2f s\n' "$peer" "$peer_cpu"
printf 'autosnap:          %8.2f s   libvirtd CPU %6.2f s   (chain depth after: %d images)\n' "$auto" "$auto_cpu" "$depth"
printf 'ratio autosnap/peer: %.2f  (goal <= 0.50)\n' "$(echo "$auto / $peer" | bc -l)"
