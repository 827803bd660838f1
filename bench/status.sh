#!/usr/bin/env bash
# Status at fleet size (issue 8). Defines N shut-off guests under local libvirt, each with
# M autosnap snapshots whose metadata is redefined from crafted XML (no disk image is
# ever created: the definitions name files that do not exist, which a shut-off guest and
# a listing never notice), then times `autosnap status` over them: wall time, autosnap's
# CPU (user+sys of the process) and libvirtd's CPU over the same run (from
# /proc/PID/stat), and the ratio autosnap CPU / libvirtd CPU (goal < 0.33; and the wall
# time of 500x20 under 3 s).
#
# libvirtd's CPU counts every client: on a machine where other tests run, it and the
# wall time are inflated. Medians over RUNS are printed, and the run with the best wall.
#
# Usage: bench/status.sh [path/to/autosnap]
#   env: SIZES="200x20 500x20" (NxM, ascending N, same M: the fleet grows between sizes)
#        RUNS=3   STATUS_ARGS=""  (extra args for status, e.g. "-o json")
#        KEEP=1   leave the fleet (astbench-st-*) defined afterwards, e.g. for
#                 BenchmarkListFleet or bench/cpuprofile; the next run removes it
set -euo pipefail
bin=${1:-bin/autosnap}
SIZES=${SIZES:-"200x20 500x20"}
RUNS=${RUNS:-3}
STATUS_ARGS=${STATUS_ARGS:-}
prefix=astbench-st-
dir=/var/tmp/astbench-st
export LIBVIRT_DEFAULT_URI=qemu:///system

[ -x "$bin" ] || { echo "no autosnap binary at $bin (make build)" >&2; exit 2; }
lvpid=$(pgrep -xo libvirtd) || { echo "libvirtd is not running (bash scripts/start-libvirt.sh)" >&2; exit 2; }
hz=$(getconf CLK_TCK)

cleanup() {
  local doms
  doms=$(virsh list --all --name | grep "^$prefix" || true)
  if [ -n "$doms" ]; then
    # One virsh process for all: undefine also drops the snapshot metadata.
    for d in $doms; do echo "undefine $d --snapshots-metadata"; done | virsh -q >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}
if [ "${KEEP:-0}" != 1 ]; then trap cleanup EXIT; fi
cleanup
install -d -m 0700 "$dir"

have=0   # guests defined so far
have_m=0 # snapshots per guest
# grow N M: defines guests have+1..N with M snapshots each, in two virsh batches.
grow() {
  local n=$1 m=$2 t0
  t0=$(date +%s.%N)
  awk -v from=$((have + 1)) -v to="$n" -v m="$m" -v dir="$dir" -v prefix="$prefix" '
    function dom(i, name, uuid) {
      return "<domain type=\x27qemu\x27>\n  <name>" name "</name>\n  <uuid>" uuid "</uuid>\n" \
        "  <memory unit=\x27MiB\x27>64</memory>\n  <vcpu>1</vcpu>\n" \
        "  <os><type arch=\x27x86_64\x27 machine=\x27pc\x27>hvm</type></os>\n  <devices>\n" \
        "    <disk type=\x27file\x27 device=\x27disk\x27><driver name=\x27qemu\x27 type=\x27qcow2\x27/>" \
        "<source file=\x27" dir "/" name "-vda.qcow2\x27/><target dev=\x27vda\x27 bus=\x27virtio\x27/></disk>\n" \
        "    <interface type=\x27network\x27><source network=\x27default\x27/><model type=\x27virtio\x27/></interface>\n" \
        "    <serial type=\x27pty\x27/><console type=\x27pty\x27/>\n" \
        "    <channel type=\x27unix\x27><target type=\x27virtio\x27 name=\x27org.qemu.guest_agent.0\x27/></channel>\n" \
        "    <memballoon model=\x27virtio\x27/>\n  </devices>\n</domain>\n"
    }
    BEGIN {
      defs = dir "/define.cmds"; snaps = dir "/snapshots.cmds"
      base = 1767229200 # 2026-01-01 01:00:00 UTC
      for (i = from; i <= to; i++) {
        name = sprintf("%s%04d", prefix, i)
        uuid = sprintf("a57be9c4-0000-4000-8000-%012d", i)
        f = dir "/" name ".xml"
        printf "%s", dom(i, name, uuid) > f; close(f)
        print "define " f > defs
        parent = ""
        for (j = 1; j <= m; j++) {
          t = base + j * 3600
          sn = "autob" strftime("%y%m%d%H%M%S", t, 1)
          sf = dir "/" name "." j ".snap.xml"
          printf "<domainsnapshot>\n  <name>%s</name>\n  <description>autosnap\nconsistency: offline</description>\n", sn > sf
          printf "  <state>shutoff</state>\n  <creationTime>%d</creationTime>\n", t > sf
          if (parent != "") printf "  <parent><name>%s</name></parent>\n", parent > sf
          printf "  <memory snapshot=\x27no\x27/>\n  <disks>\n    <disk name=\x27vda\x27 snapshot=\x27external\x27 type=\x27file\x27>\n" > sf
          printf "      <driver type=\x27qcow2\x27/><source file=\x27%s/%s-vda.%s.qcow2\x27/>\n    </disk>\n  </disks>\n", dir, name, sn > sf
          printf "%s", dom(i, name, uuid) > sf
          print "</domainsnapshot>" > sf
          close(sf)
          print "snapshot-create " name " --xmlfile " sf " --redefine" (j == m ? " --current" : "") > snaps
          parent = sn
        }
      }
    }'
  virsh -q < "$dir/define.cmds" >/dev/null
  if [ "$m" -gt 0 ]; then virsh -q < "$dir/snapshots.cmds" >/dev/null; fi
  rm -f "$dir"/define.cmds "$dir"/snapshots.cmds "$dir"/*.xml
  local last got
  last=$(printf '%s%04d' "$prefix" "$n")
  got=$(virsh snapshot-list "$last" --name | grep -c . || true)
  if [ "$(virsh list --all --name | grep -c "^$prefix")" != "$n" ] || [ "$got" != "$m" ]; then
    echo "building the fleet failed: $last has $got snapshots (want $m)" >&2
    exit 1
  fi
  have=$n; have_m=$m
  printf 'fleet: %d guests x %d snapshots defined in %.1f s\n' "$n" "$m" "$(echo "$(date +%s.%N) - $t0" | bc -l)"
}

daemon_ticks() { awk '{print $14 + $15}' "/proc/$lvpid/stat"; }

# measure: one status run; prints "wall autosnap_cpu libvirtd_cpu rows".
measure() {
  local c0 c1 tf rows
  tf=$(mktemp)
  c0=$(daemon_ticks)
  # shellcheck disable=SC2086
  /usr/bin/time -f '%e %U %S' -o "$tf" "$bin" --vmid "${prefix}%" status $STATUS_ARGS > "$dir/out" 2> "$dir/err" \
    || { echo "autosnap status failed:" >&2; cat "$dir/err" >&2; exit 1; }
  c1=$(daemon_ticks)
  rows=$(grep -c "autob" "$dir/out" || true)
  awk -v hz="$hz" -v d=$((c1 - c0)) -v rows="$rows" '{ printf "%.3f %.3f %.3f %d\n", $1, $2 + $3, d / hz, rows }' "$tf"
  rm -f "$tf"
}

for size in $SIZES; do
  n=${size%x*}; m=${size#*x}
  if [ "$n" -lt "$have" ] || { [ "$have" -gt 0 ] && [ "$m" != "$have_m" ]; }; then
    cleanup; install -d -m 0700 "$dir"; have=0
  fi
  grow "$n" "$m"
  : > "$dir/runs"
  for r in $(seq 1 "$RUNS"); do
    read -r wall acpu dcpu rows < <(measure)
    if [ "$rows" != $((n * m)) ]; then echo "status listed $rows snapshots, want $((n * m))" >&2; exit 1; fi
    ratio=$(echo "if ($dcpu > 0) $acpu / $dcpu else 0" | bc -l)
    printf '  run %d: wall %6.2f s   autosnap CPU %5.2f s   libvirtd CPU %5.2f s   autosnap/libvirtd %.2f\n' "$r" "$wall" "$acpu" "$dcpu" "$ratio"
    echo "$wall $acpu $dcpu $ratio" >> "$dir/runs"
  done
  # Medians of each column, and the run with the best wall time.
  med() { sort -g -k"$1" "$dir/runs" | awk -v c="$1" '{a[NR]=$c} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
  read -r bwall bacpu bdcpu bratio < <(sort -g -k1 "$dir/runs" | head -1)
  printf 'status %dx%d (%d snapshots), %d runs: median wall %.2f s, autosnap CPU %.2f s, libvirtd CPU %.2f s, ratio %.2f; best run: wall %.2f s, ratio %.2f (goal: ratio < 0.33%s)\n' \
    "$n" "$m" $((n * m)) "$RUNS" "$(med 1)" "$(med 2)" "$(med 3)" "$(med 4)" "$bwall" "$bratio" "$([ "$n" -ge 500 ] && echo ", wall < 3 s")"
done
