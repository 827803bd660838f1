#!/usr/bin/env bash
# Backup benchmark (issue 10). One guest (paused, no OS: nothing but the benchmark
# touches its disk) with a 2 GiB qcow2 disk holding 1 GiB of random data. virtnbdbackup
# refuses to run beside checkpoints it did not create ("Foreign checkpoint found"), so
# it backs up a twin domain on a byte-identical copy of that disk, which gets the same
# writes; both are defined, paused and benchmarked on this host in the same run. In one run,
# R rounds, each alternating the tools so that load from other processes hits them alike:
#   floor:          `virsh backup-begin` push mode, full, into a qcow2 target, waited for
#                   (no checkpoint: the bare copy libvirt+QEMU can do)
#   autosnap full:  `autosnap backup --level full` (checkpoint, manifest, checksums)
#   virtnbdbackup:  `virtnbdbackup -l full` (pull mode over NBD, its stream format)
#   then 64 MiB of scattered writes (256 x 256 KiB at random 256 KiB-aligned offsets,
#                   through QEMU: whole multiples of the bitmaps' 64 KiB granularity, so
#                   the checkpoint's bitmap marks 64 MiB, less any overlap — the bench
#                   prints what it marked), and
#   autosnap inc:   `autosnap backup` (auto → inc)
#   virtnbdbackup:  `virtnbdbackup -l inc`
#   inc floor:      a bare push of the same changes (since the full's checkpoint), waited for
#   restore:        `autosnap restore --to` (newest point, qcow2) vs `virtnbdrestore`
# Every time is a whole process run, timed from outside. virtnbdbackup and virtnbdrestore
# return before their files are on disk (they never fsync); autosnap fsyncs first, so
# they are also timed until an fsync of their output returns ("files on disk"). Prints the medians and the
# ratios against the goals: full <= 1.2x floor, virtnbdbackup >= 2.5x autosnap full,
# inc <= 10% of full, virtnbdrestore >= 2x autosnap restore.
# Usage: bench/backup.sh [path/to/autosnap]   env: R=3 DIR=/var/tmp/astbench-bk
set -euo pipefail
bin=$(readlink -f "${1:-bin/autosnap}")
R=${R:-3}
name=astbench-bk
dir=${DIR:-/var/tmp/astbench-bk}
export LIBVIRT_DEFAULT_URI=qemu:///system

[ -x "$bin" ] || { echo "no autosnap binary at $bin (make build)" >&2; exit 2; }
command -v virtnbdbackup >/dev/null || { echo "virtnbdbackup missing: apt-get install virtnbdbackup" >&2; exit 2; }
twin=astbench-bkv
cleanup() {
  for d in "$name" "$twin"; do
    virsh destroy "$d" >/dev/null 2>&1 || true
    virsh undefine "$d" --checkpoints-metadata --snapshots-metadata >/dev/null 2>&1 || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT
cleanup
install -d -m 0700 "$dir"

# 1 GiB of random data in the first half of a 2 GiB disk.
head -c 1G /dev/urandom > "$dir/data.raw"
truncate -s 2G "$dir/data.raw"
qemu-img convert -q -f raw -O qcow2 "$dir/data.raw" "$dir/disk.qcow2"
rm -f "$dir/data.raw"
cp --sparse=always "$dir/disk.qcow2" "$dir/twin.qcow2"
for d in "$name:disk" "$twin:twin"; do
  cat > "$dir/dom.xml" <<XML
<domain type='qemu'>
  <name>${d%%:*}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/${d#*:}.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <memballoon model='none'/>
  </devices>
</domain>
XML
  virsh define "$dir/dom.xml" >/dev/null
  virsh start "${d%%:*}" --paused >/dev/null
done

now() { date +%s%N; }
secs() { echo "$1 $2" | awk '{ printf "%.3f\n", ($2 - $1) / 1e9 }'; }

floor() { # [DOMAIN CHECKPOINT [NEWCP]] → seconds of one bare push backup: full, or incremental
  # since CHECKPOINT; with NEWCP it also creates checkpoint NEWCP (as every backup of an
  # incremental chain must), which is then deleted again, untimed
  local dom=${1:-$name} inc=${2:+<incremental>$2</incremental>} out=$dir/floor.qcow2 t0 t1 cp=()
  rm -f "$out"
  qemu-img create -q -f qcow2 "$out" 2G
  cat > "$dir/backup.xml" <<XML
<domainbackup mode='push'>$inc<disks><disk name='vda' backup='yes' type='file'><driver type='qcow2'/><target file='$out'/></disk></disks></domainbackup>
XML
  if [ -n "${3:-}" ]; then
    echo "<domaincheckpoint><name>$3</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>" > "$dir/cp.xml"
    cp=("$dir/cp.xml")
  fi
  sync
  t0=$(now)
  virsh backup-begin "$name" "$dir/backup.xml" "${cp[@]}" --reuse-external >/dev/null
  # (Output captured first: grep -q closing the pipe early would fail it under pipefail.)
  local s
  while s=$(virsh domjobinfo "$name") && [[ $s == *Unbounded* ]]; do sleep 0.02; done
  t1=$(now)
  s=$(virsh domjobinfo "$name" --completed)
  [[ $s == *Completed* ]] || { echo "floor backup failed: $s" >&2; exit 1; }
  rm -f "$out"
  [ -z "${3:-}" ] || virsh checkpoint-delete "$name" "$3" >/dev/null
  secs "$t0" "$t1"
}

timed() { # CMD… → seconds; fails the bench when CMD fails
  local t0 t1
  sync # no step pays for the previous one's write-back
  t0=$(now)
  "$@" > "$dir/cmd.out" 2>&1 || { echo "failed: $*" >&2; cat "$dir/cmd.out" >&2; exit 1; }
  t1=$(now)
  secs "$t0" "$t1"
}

durable() { # DIR CMD… → "seconds-as-returned seconds-until-durable": CMD, then an fsync of
  # every file it wrote under DIR. virtnbdbackup and virtnbdrestore return with their
  # output in the page cache; autosnap fsyncs its files before it reports success, so
  # the like-for-like comparison is until both outputs are on disk. Both are printed.
  local out=$1 t0 t1 t2
  shift
  sync
  t0=$(now)
  "$@" > "$dir/cmd.out" 2>&1 || { echo "failed: $*" >&2; cat "$dir/cmd.out" >&2; exit 1; }
  t1=$(now)
  find "$out" -type f -print0 | xargs -0 -r sync --
  t2=$(now)
  echo "$(secs "$t0" "$t1") $(secs "$t0" "$t2")"
}

scatter() { # 256 writes of 256 KiB at random 256 KiB-aligned offsets (64 MiB), the same on both domains
  local i off pat d
  for i in $(seq 1 256); do
    off=$(( (RANDOM * 32768 + RANDOM) % 8192 * 262144 ))
    pat=$(( RANDOM % 255 + 1 ))
    for d in "$name" "$twin"; do
      virsh qemu-monitor-command "$d" --hmp \
        "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P $pat $off 256k\"" >/dev/null
    done
  done
  for d in "$name" "$twin"; do
    virsh qemu-monitor-command "$d" --hmp "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend flush" >/dev/null
  done
}

dirty() { # → "MiB granularity-KiB" the newest autosnap bitmap of the guest marks dirty
  virsh qemu-monitor-command "$name" '{"execute":"query-named-block-nodes","arguments":{"flat":true}}' |
    python3 -c 'import json, sys
bms = [b for n in json.load(sys.stdin)["return"] for b in n.get("dirty-bitmaps") or [] if b["name"].startswith("autosnap-")]
b = max(bms, key=lambda b: b["name"])
print("%.1f %d" % (b["count"] / 2**20, b["granularity"] // 1024))'
}

: > "$dir/r.dirty"; : > "$dir/r.incown"; : > "$dir/r.floor"; : > "$dir/r.ifloor"; : > "$dir/r.ifloorcp"; : > "$dir/r.full"; : > "$dir/r.vfull"; : > "$dir/r.inc"; : > "$dir/r.vinc"; : > "$dir/r.rest"; : > "$dir/r.vrest"
for i in $(seq 1 "$R"); do
  rm -rf "$dir/repo" "$dir/vnb" "$dir/rest" "$dir/vrest"
  floor >> "$dir/r.floor"
  timed "$bin" --vmid "$name" backup --target "$dir/repo" --level full --quiesce off --progress none >> "$dir/r.full"
  durable "$dir/vnb" virtnbdbackup -d "$twin" -l full -o "$dir/vnb" -n >> "$dir/r.vfull"
  scatter
  dirty >> "$dir/r.dirty"
  timed "$bin" --vmid "$name" backup --target "$dir/repo" --quiesce off --progress none >> "$dir/r.inc"
  out=$(cat "$dir/cmd.out")
  [[ $out == *"(inc) of"* ]] || { echo "autosnap did not take an inc: $out" >&2; exit 1; }
  # autosnap's own clock (after the guest selection, which lists every domain of the
  # host and waits for any of them that libvirtd has locked).
  sed -n 's/^Total execution \([0-9.]*\)\(m\?s\)$/\1 \2/p' "$dir/cmd.out" | awk '{ print ($2 == "ms") ? $1 / 1000 : $1 }' >> "$dir/r.incown"
  # The inc floor: a bare push of the same 64 MiB (changes since the full's checkpoint).
  floor "$name" "$(virsh checkpoint-list "$name" --name --topological | head -1)" >> "$dir/r.ifloor"
  # The same with the new checkpoint an incremental chain needs: libvirt then also
  # parses and schema-validates the checkpoint's XML.
  floor "$name" "$(virsh checkpoint-list "$name" --name --topological | head -1)" "astbench-floor-$i" >> "$dir/r.ifloorcp"
  durable "$dir/vnb" virtnbdbackup -d "$twin" -l inc -o "$dir/vnb" -n >> "$dir/r.vinc"
  timed "$bin" --vmid "$name" restore --target "$dir/repo" --to "$dir/rest" >> "$dir/r.rest"
  durable "$dir/vrest" virtnbdrestore -i "$dir/vnb" -o "$dir/vrest" -n >> "$dir/r.vrest"
  # Both restores must hold the guest's disk as it is now.
  a=$(qemu-img compare -q "$dir/rest/vda.qcow2" "$dir/disk.qcow2" -U && echo same || echo differ)
  vf=$(find "$dir/vrest" -type f ! -name '*.xml' ! -name '*.log' | head -1)
  v=$(qemu-img compare -q "$vf" "$dir/twin.qcow2" -U 2>/dev/null && echo same || echo "differ ($vf)")
  echo "round $i: autosnap restore $a, virtnbdrestore $v" >&2
  for d in "$name" "$twin"; do
    for c in $(virsh checkpoint-list "$d" --name --topological); do virsh checkpoint-delete "$d" "$c" --children >/dev/null 2>&1 || true; done
  done
done

# One more full and inc, untimed: the inc's RPCs by procedure (through bench/rpccount's
# counting proxy) and its process CPU time (user, system).
tools=$(mktemp -d)
(cd "$(dirname "$0")/.." && go build -o "$tools/rpccount" ./bench/rpccount)
rm -rf "$dir/repo"
"$bin" --vmid "$name" backup --target "$dir/repo" --level full --quiesce off --progress none >/dev/null
scatter
rpcs=$("$tools/rpccount" -- /usr/bin/time -f 'process CPU: user %U s, system %S s' "$bin" --host '{uri}' --vmid "$name" \
  backup --target "$dir/repo" --quiesce off --progress none 2>&1 >/dev/null)
rm -rf "$tools"

med() { # FILE [COLUMN] → the median of that column (1 by default)
  awk -v c="${2:-1}" '{ print $c }' "$1" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}
f=$(med "$dir/r.floor"); a=$(med "$dir/r.full"); v=$(med "$dir/r.vfull"); vd=$(med "$dir/r.vfull" 2)
ai=$(med "$dir/r.inc"); flo=$(med "$dir/r.ifloor"); flocp=$(med "$dir/r.ifloorcp"); vi=$(med "$dir/r.vinc"); vid=$(med "$dir/r.vinc" 2)
ar=$(med "$dir/r.rest"); vr=$(med "$dir/r.vrest"); vrd=$(med "$dir/r.vrest" 2)
printf '2 GiB disk, 1 GiB random data; medians of %d rounds (seconds, whole process runs); load average at the end: %s\n' "$R" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'floor (virsh backup-begin push, waited)  %7.2f\n' "$f"
printf 'autosnap full                            %7.2f   %.2fx floor      (goal <= 1.2)\n' "$a" "$(echo "$a / $f" | bc -l)"
printf 'virtnbdbackup -l full, as it returns     %7.2f   %.2fx autosnap   (its files still in the page cache)\n' "$v" "$(echo "$v / $a" | bc -l)"
printf 'virtnbdbackup -l full, files on disk     %7.2f   %.2fx autosnap   (goal >= 2.5; autosnap fsyncs before it returns)\n' "$vd" "$(echo "$vd / $a" | bc -l)"
read -r dm dg < <(sort -n "$dir/r.dirty" | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }')
printf 'changed data before each inc: %s MiB marked dirty at the bitmap granularity of %s KiB (median)\n' "$dm" "$dg"
printf 'autosnap inc (64 MiB scattered)          %7.2f   %.1f%% of full    (goal <= 10%%)\n' "$ai" "$(echo "100 * $ai / $a" | bc -l)"
printf '  of which after the guest selection     %7.2f   (autosnap'"'"'s own "Total execution")\n' "$(med "$dir/r.incown")"
printf 'inc floor (bare push of the same 64 MiB)  %7.2f   autosnap inc %.2fx it; %.1f%% of full\n' "$flo" "$(echo "$ai / $flo" | bc -l)" "$(echo "100 * $flo / $a" | bc -l)"
printf '  the same, creating the next checkpoint   %7.2f   autosnap inc %.2fx it; %.1f%% of full\n' "$flocp" "$(echo "$ai / $flocp" | bc -l)" "$(echo "100 * $flocp / $a" | bc -l)"
printf 'virtnbdbackup -l inc (returns; on disk)  %7.2f   %.2fx autosnap inc; %.2f, %.2fx\n' "$vi" "$(echo "$vi / $ai" | bc -l)" "$vid" "$(echo "$vid / $ai" | bc -l)"
printf 'autosnap restore (newest, qcow2)         %7.2f\n' "$ar"
printf 'virtnbdrestore, as it returns            %7.2f   %.2fx autosnap\n' "$vr" "$(echo "$vr / $ar" | bc -l)"
printf 'virtnbdrestore, files on disk            %7.2f   %.2fx autosnap   (goal >= 2)\n' "$vrd" "$(echo "$vrd / $ar" | bc -l)"
printf '\nautosnap inc, one more run through the counting proxy (calls, total wait):\n%s\n' "$rpcs"
