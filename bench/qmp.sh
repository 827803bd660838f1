#!/usr/bin/env bash
# Snapshots of standalone QEMU over QMP vs the same work through libvirt (issue 11).
# Two fleets of N block-only guests (KVM, CPUs stopped: one 64 MiB qcow2 disk, nothing
# to boot), one started as plain qemu-system-x86_64 processes with a QMP socket each in
# one directory, one defined in and started (paused) by libvirt. After KEEP untimed
# rounds that only create, R timed rounds of
#   autosnap --host qmp:///DIR --vmid 'astbench-q-%'  snap --label b --keep KEEP
#   autosnap               --vmid 'astbench-lq-%' snap --label b --keep KEEP
# alternate round by round, a process per round as cron runs it; each round creates one
# snapshot per guest and removes the oldest. QMP takes internal qcow2 snapshots (one
# transaction, delete in place); libvirt takes external overlays and merges the oldest
# back (block commit). Prints seconds per round and per guest for both and the per-guest
# ratio libvirt/QMP (goal >= 3).
# Usage: bench/qmp.sh [path/to/autosnap]   env: N=20 R=4 KEEP=2 PARALLEL=4
set -euo pipefail
bin=${1:-bin/autosnap}
N=${N:-20}
R=${R:-4}
KEEP=${KEEP:-2}
PARALLEL=${PARALLEL:-4}
dir=/var/tmp/astbench-qmp
export LIBVIRT_DEFAULT_URI=qemu:///system

[ -x "$bin" ] || { echo "no autosnap binary at $bin (make build)" >&2; exit 2; }

cleanup() {
  local doms f pid
  doms=$(virsh list --all --name | grep '^astbench-lq-' || true)
  for d in $doms; do
    virsh destroy "$d" >/dev/null 2>&1 || true
    virsh undefine "$d" --snapshots-metadata >/dev/null 2>&1 || true
  done
  for f in "$dir"/run/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    # Only our QEMUs: their command line names our directory.
    if grep -qa -- "$dir/" "/proc/$pid/cmdline" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
  done
  sleep 0.5
  rm -rf "$dir"
}
trap cleanup EXIT
cleanup
install -d -m 0755 "$dir" "$dir/qmp" "$dir/run" "$dir/img"

for i in $(seq 1 "$N"); do
  q=astbench-q-$i
  qemu-img create -q -f qcow2 "$dir/img/$q.qcow2" 64M
  qemu-system-x86_64 -name "$q" -accel kvm -machine pc -m 32 -nodefaults -no-user-config -display none -S \
    -qmp "unix:$dir/qmp/$q.qmp,server=on,wait=off" \
    -blockdev "driver=file,filename=$dir/img/$q.qcow2,node-name=file0" \
    -blockdev "driver=qcow2,file=file0,node-name=disk0" -device virtio-blk-pci,drive=disk0,id=vda \
    -daemonize -pidfile "$dir/run/$q.pid" 2>/dev/null

  l=astbench-lq-$i
  qemu-img create -q -f qcow2 "$dir/img/$l.qcow2" 64M
  chmod 0644 "$dir/img/$l.qcow2"
  cat > "$dir/$l.xml" <<XML
<domain type='kvm'>
  <name>$l</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/img/$l.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <memballoon model='none'/>
  </devices>
</domain>
XML
  virsh define "$dir/$l.xml" >/dev/null
  virsh start --paused "$l" >/dev/null
done

now() { date +%s.%N; }
qmp_snap() { "$bin" --host "qmp://$dir/qmp" --max-parallel "$PARALLEL" --vmid 'astbench-q-%' --timestamp-format yyMMddHHmmssfff snap --label b --keep "$KEEP" --quiesce off; }
lv_snap() { "$bin" --max-parallel "$PARALLEL" --vmid 'astbench-lq-%' --timestamp-format yyMMddHHmmssfff snap --label b --keep "$KEEP" --quiesce off; }
timed() {
  local t0 out
  t0=$(now)
  out=$("$@" 2>&1) || { echo "$out" >&2; echo "round failed: $*" >&2; exit 1; }
  echo "$(now) - $t0" | bc -l
}

for _ in $(seq 1 "$KEEP"); do qmp_snap >/dev/null; lv_snap >/dev/null; done

printf '%-6s %12s %12s %14s %14s %8s\n' round qmp_s libvirt_s qmp_ms/guest libvirt_ms/guest ratio
tq=0 tl=0
for r in $(seq 1 "$R"); do
  a=$(timed qmp_snap)
  b=$(timed lv_snap)
  tq=$(echo "$tq + $a" | bc -l)
  tl=$(echo "$tl + $b" | bc -l)
  printf '%-6s %12.3f %12.3f %14.1f %14.1f %8.2f\n' "$r" "$a" "$b" "$(echo "1000*$a/$N" | bc -l)" "$(echo "1000*$b/$N" | bc -l)" "$(echo "$b/$a" | bc -l)"
done
printf '%-6s %12.3f %12.3f %14.1f %14.1f %8.2f\n' all "$tq" "$tl" "$(echo "1000*$tq/($N*$R)" | bc -l)" "$(echo "1000*$tl/($N*$R)" | bc -l)" "$(echo "$tl/$tq" | bc -l)"

# Both fleets must end with exactly KEEP snapshots per guest.
left=$(qemu-img snapshot -U -l "$dir/img/astbench-q-1.qcow2" | grep -c ' autob' || true)
lvleft=$(virsh snapshot-list astbench-lq-1 --name | grep -c . || true)
echo "snapshots left on guest 1: qmp=$left libvirt=$lvleft (want $KEEP)"
