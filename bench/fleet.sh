#!/usr/bin/env bash
# Fleet `snap` against libvirt's own floor (issue 8). Two fleets of N running guests (one
# small qcow2 disk, nothing to boot) under local libvirt; after KEEP untimed rounds that
# only create, R timed rounds of "snapshot every guest, keep KEEP" on each, interleaved
# round by round so that load from other processes hits both alike:
#   floor:    bench/floor on astbench-fa-* — the same creates and deletes autosnap makes
#             (external disk-only atomic create; block commit of the oldest overlay,
#             redefine of its child, drop of its metadata) back to back over one
#             connection, block jobs awaited by event: libvirt's floor;
#   native:   bench/floor -mode native on astbench-fn-: the same creates, each delete
#             one libvirt 9 snapshot-delete call (libvirt merges itself) — for reference;
#   autosnap: `autosnap --vmid 'astbench-fl-%' snap --label b --keep KEEP` on
#             astbench-fl-*, a process per round as cron runs it.
# Prints all three, the ratio autosnap/floor (goal <= 1.1) overall and per round, and
# autosnap's RPCs per guest and round (one more round through bench/rpccount's counting
# proxy, not timed). PEER=1 also times the sequential virsh loop (snapshot-create-as +
# snapshot-delete, libvirt 9 merging itself) on a third fleet, after the others.
# Usage: bench/fleet.sh [path/to/autosnap]   env: N=8 R=4 KEEP=2 PARALLEL=4 PEER=0
set -euo pipefail
bin=${1:-bin/autosnap}
N=${N:-8}
R=${R:-4}
KEEP=${KEEP:-2}
PARALLEL=${PARALLEL:-4}
PEER=${PEER:-0}
top=$(cd "$(dirname "$0")/.." && pwd)
dir=/var/tmp/astbench-fl
export LIBVIRT_DEFAULT_URI=qemu:///system

[ -x "$bin" ] || { echo "no autosnap binary at $bin (make build)" >&2; exit 2; }
tools=$(mktemp -d)
(cd "$top" && go build -o "$tools/floor" ./bench/floor && go build -o "$tools/rpccount" ./bench/rpccount)

cleanup() {
  local doms
  doms=$(virsh list --all --name | grep '^astbench-f[alnp]-' || true)
  for d in $doms; do
    virsh destroy "$d" >/dev/null 2>&1 || true
    virsh undefine "$d" --snapshots-metadata >/dev/null 2>&1 || true
  done
  rm -rf "$dir"
}
trap 'cleanup; rm -rf "$tools"' EXIT
cleanup
install -d -m 0755 "$dir" # QEMU runs as libvirt-qemu and must reach the images

# make_fleet PREFIX: N running guests named PREFIX1…PREFIXN.
make_fleet() {
  local p=$1 i
  for i in $(seq 1 "$N"); do
    qemu-img create -q -f qcow2 "$dir/$p$i.qcow2" 64M
    chmod 0644 "$dir/$p$i.qcow2"
    cat > "$dir/$p$i.xml" <<XML
<domain type='qemu'>
  <name>$p$i</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/$p$i.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    virsh define "$dir/$p$i.xml" >/dev/null
    virsh start "$p$i" >/dev/null
  done
}

now() { date +%s.%N; }
snap() { "$bin" --max-parallel "$PARALLEL" --vmid 'astbench-fl-%' --timestamp-format yyMMddHHmmssfff snap --label b --keep "$KEEP" --quiesce off "$@"; }

floor_round() { # PREFIX MODE
  "$tools/floor" -prefix "$1" -mode "$2" -keep "$KEEP" | sed -n 's/^floor_seconds=\([0-9.]*\).*/\1/p'
}
auto_round() {
  local t0
  t0=$(now)
  snap >/dev/null
  echo "$(now) - $t0" | bc -l
}

echo "== $N guests each for the floor (astbench-fa-), native (astbench-fn-), autosnap (astbench-fl-)"
make_fleet astbench-fa-
make_fleet astbench-fn-
make_fleet astbench-fl-
for _ in $(seq 1 "$KEEP"); do
  floor_round astbench-fa- commit >/dev/null; floor_round astbench-fn- native >/dev/null; snap >/dev/null
done
echo "== $R interleaved rounds: floor, native, autosnap --max-parallel $PARALLEL"
floor=0; native=0; auto=0; ratios=""
for r in $(seq 1 "$R"); do
  f=$(floor_round astbench-fa- commit)
  nv=$(floor_round astbench-fn- native)
  a=$(auto_round)
  floor=$(echo "$floor + $f" | bc -l); native=$(echo "$native + $nv" | bc -l); auto=$(echo "$auto + $a" | bc -l)
  ratios="$ratios $(echo "$a / $f" | bc -l)"
  printf '  round %d: floor %.3f s  native %.3f s  autosnap %.3f s  ratio %.2f\n' "$r" "$f" "$nv" "$a" "$(echo "$a / $f" | bc -l)"
done
median=$(tr ' ' '\n' <<< "$ratios" | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
rpcs=$("$tools/rpccount" -per "$N" -- "$bin" --host '{uri}' --max-parallel "$PARALLEL" --vmid 'astbench-fl-%' \
  --timestamp-format yyMMddHHmmssfff snap --label b --keep "$KEEP" --quiesce off 2>&1 >/dev/null)
depth=$(qemu-img info -U --backing-chain "$(virsh domblklist astbench-fl-1 | awk '$1=="vda"{print $2}')" | grep -c '^image:')

if [ "$PEER" = 1 ]; then
  echo "== peer: sequential virsh loop on astbench-fp-, $KEEP + $R rounds"
  make_fleet astbench-fp-
  peer_round() {
    for i in $(seq 1 "$N"); do
      virsh snapshot-create-as "astbench-fp-$i" "peer$1" --disk-only --atomic \
        --diskspec "vda,snapshot=external,file=$dir/astbench-fp-$i.peer$1.qcow2" >/dev/null
      if [ "$1" -gt "$KEEP" ]; then virsh snapshot-delete "astbench-fp-$i" "peer$(($1 - KEEP))" >/dev/null; fi
    done
  }
  for r in $(seq 1 "$KEEP"); do peer_round "$r"; done
  t0=$(now)
  for r in $(seq $((KEEP + 1)) $((KEEP + R))); do peer_round "$r"; done
  peer=$(echo "$(now) - $t0" | bc -l)
fi

printf '\nautosnap RPCs in one more round (calls, per guest, total wait):\n%s\n' "$rpcs"
printf '\nguests=%d timed rounds=%d keep=%d (each side: create %d snapshots, merge %d)\n' "$N" "$R" "$KEEP" $((N * R)) $((N * R))
printf 'floor (libvirt, one connection): %7.2f s  %6.3f s per guest-round\n' "$floor" "$(echo "$floor / ($N * $R)" | bc -l)"
printf 'native (libvirt 9 deletes):      %7.2f s  %6.3f s per guest-round\n' "$native" "$(echo "$native / ($N * $R)" | bc -l)"
printf 'autosnap snap --keep %d:          %7.2f s  %6.3f s per guest-round  (chain after: %d images)\n' \
  "$KEEP" "$auto" "$(echo "$auto / ($N * $R)" | bc -l)" "$depth"
if [ "$PEER" = 1 ]; then
  printf 'virsh loop (peer):               %7.2f s  %6.3f s per guest-round\n' "$peer" "$(echo "$peer / ($N * $R)" | bc -l)"
fi
printf 'ratio autosnap/floor: %.2f overall, median of rounds %.2f  (goal <= 1.10); autosnap/native %.2f\n' \
  "$(echo "$auto / $floor" | bc -l)" "$median" "$(echo "$auto / $native" | bc -l)"
