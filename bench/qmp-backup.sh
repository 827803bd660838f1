#!/usr/bin/env bash
# QMP incremental backup vs full backup of the same standalone QEMU guest (issue 11).
# One block-only guest (KVM, CPUs stopped: -S) with one SIZE_MIB qcow2 disk filled with
# data. Timed, each a process as cron runs it:
#   autosnap --host qmp:///DIR --vmid astbench-qb backup --target REPO --level full
# then R rounds of: write PCT % of the disk (1 MiB pieces spread over the disk, through
# QMP human-monitor-command qemu-io, below the guest) and
#   autosnap --host qmp:///DIR --vmid astbench-qb backup --target REPO --level inc
# Both read through copy-before-write fleecing. Prints seconds for the full, each inc,
# the median inc and the ratio full/inc.
# Usage: bench/qmp-backup.sh [path/to/autosnap]   env: SIZE_MIB=2048 PCT=5 R=3
set -euo pipefail
bin=${1:-bin/autosnap}
SIZE_MIB=${SIZE_MIB:-2048}
PCT=${PCT:-5}
R=${R:-3}
dir=/var/tmp/astbench-qmpbk
name=astbench-qb

[ -x "$bin" ] || { echo "no autosnap binary at $bin (make build)" >&2; exit 2; }

cleanup() {
  local pid
  if [ -e "$dir/run/$name.pid" ]; then
    pid=$(cat "$dir/run/$name.pid")
    if grep -qa -- "$dir/" "/proc/$pid/cmdline" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
    sleep 0.5
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
cleanup
install -d -m 0700 "$dir" "$dir/qmp" "$dir/run" "$dir/img" "$dir/repo"

img=$dir/img/$name.qcow2
qemu-img create -q -f qcow2 "$img" "${SIZE_MIB}M"
fill=()
for off in $(seq 0 64 $((SIZE_MIB - 1))); do fill+=(-c "write -P 0x5a ${off}M 64M"); done
qemu-io -f qcow2 "${fill[@]}" "$img" >/dev/null
qemu-system-x86_64 -name "$name" -accel kvm -machine pc -m 32 -nodefaults -no-user-config -display none -S \
  -qmp "unix:$dir/qmp/$name.qmp,server=on,wait=off" \
  -blockdev "driver=file,filename=$img,node-name=file0" \
  -blockdev "driver=qcow2,file=file0,node-name=disk0" -device virtio-blk-pci,drive=disk0,id=vda \
  -daemonize -pidfile "$dir/run/$name.pid" 2>/dev/null

# write_pct PATTERN: PCT % of the disk in 1 MiB pieces at an even stride.
write_pct() {
  python3 - "$dir/qmp/$name.qmp" "$SIZE_MIB" "$PCT" "$1" <<'PY'
import json, socket, sys
sock, size, pct, pat = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_UNIX); s.connect(sock); f = s.makefile("rw")
def cmd(c, a=None):
    m = {"execute": c}
    if a is not None: m["arguments"] = a
    f.write(json.dumps(m) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" in r: continue
        if "error" in r: sys.exit("QMP %s: %s" % (c, r["error"]))
        return r
f.readline(); cmd("qmp_capabilities")
n = max(1, int(size * pct / 100)); stride = size // n
for i in range(n):
    cmd("human-monitor-command", {"command-line": "qemu-io -d /machine/peripheral/vda/virtio-backend \"write -P %d %dM 1M\"" % (pat, i * stride)})
cmd("human-monitor-command", {"command-line": "qemu-io -d /machine/peripheral/vda/virtio-backend \"flush\""})
PY
}

now() { date +%s.%N; }
backup() {
  local t0 out
  t0=$(now)
  out=$("$bin" --host "qmp://$dir/qmp" --vmid "$name" backup --target "$dir/repo" --quiesce off --level "$1" 2>&1) || { echo "$out" >&2; echo "backup --level $1 failed" >&2; exit 1; }
  echo "$(now) - $t0" | bc
}

full=$(backup full)
printf 'full backup of %d MiB: %.2f s\n' "$SIZE_MIB" "$full"
incs=()
for r in $(seq 1 "$R"); do
  write_pct $((r + 16))
  t=$(backup inc)
  incs+=("$t")
  printf 'inc %d after writing %s %% (%d MiB): %.2f s\n' "$r" "$PCT" "$((SIZE_MIB * PCT / 100))" "$t"
done
med=$(printf '%s\n' "${incs[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf 'median inc: %.2f s; full/inc ratio: %.1f\n' "$med" "$(echo "$full / $med" | bc -l)"
du -sh "$dir/repo" | awk '{print "repository: " $1}'
