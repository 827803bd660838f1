#!/usr/bin/env bash
# Captures real libvirt snapshot XML (virsh snapshot-dumpxml) of every kind autosnap
# lists, for the golden test of the lean snapshot decoder (TestLeanDecoderGolden).
# Needs root and a running libvirtd; leaves nothing behind. Run from this directory.
set -euo pipefail
export LIBVIRT_DEFAULT_URI=qemu:///system
p=astbench-cap
dir=
out=$(pwd)
cleanup() {
  for d in $p-run $p-off $p-int; do
    virsh destroy $d >/dev/null 2>&1 || true
    virsh undefine $d --snapshots-metadata >/dev/null 2>&1 || true
  done
  if [ -n "$dir" ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT
cleanup
dir=$(mktemp -d /var/tmp/astbench-cap.XXXXXX)
chmod 0755 "$dir" # qemu runs as libvirt-qemu

domxml() { # name disks...
  local name=$1; shift
  printf "<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\n" "$name"
  printf "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\n"
  local t=a
  for f in "$@"; do
    printf "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vd%s' bus='virtio'/></disk>\n" "$f" $t
    t=$(echo $t | tr a-y b-z)
  done
  printf "<memballoon model='none'/></devices></domain>\n"
}
img() { qemu-img create -q -f qcow2 "$1" 16M; }

# A running guest with two disks: external disk-only, external with memory, one disk left out.
img "$dir/run-a.qcow2"; img "$dir/run-b.qcow2"
domxml $p-run "$dir/run-a.qcow2" "$dir/run-b.qcow2" > "$dir/run.xml"
virsh define "$dir/run.xml" >/dev/null
virsh start $p-run >/dev/null
virsh snapshot-create-as $p-run autoh260101010000 --description $'autosnap\nconsistency: crash' \
  --disk-only --atomic >/dev/null
virsh snapshot-dumpxml $p-run autoh260101010000 > "$out/external-disk-only.xml"
virsh snapshot-create-as $p-run autoh260101020000 --description $'autosnap\nconsistency: memory' \
  --memspec "file=$dir/run.mem,snapshot=external" --atomic >/dev/null
virsh snapshot-dumpxml $p-run autoh260101020000 > "$out/external-memory.xml"
virsh snapshot-create-as $p-run 'odd <&> "name"' --description $'  spaces & <tags> "quotes" \'apos\' ünïcode\r\n\ttab\nconsistency: quiesced  ' \
  --disk-only --atomic --diskspec vdb,snapshot=no >/dev/null
virsh snapshot-dumpxml $p-run 'odd <&> "name"' > "$out/special-one-disk-left-out.xml"
virsh snapshot-dumpxml $p-run 'odd <&> "name"' --security-info > "$out/special-secure.xml"

# A shut-off guest: offline external snapshots.
img "$dir/off.qcow2"; img "$dir/off-b.qcow2"
domxml $p-off "$dir/off.qcow2" "$dir/off-b.qcow2" > "$dir/off.xml"
virsh define "$dir/off.xml" >/dev/null
virsh snapshot-create-as $p-off autod260101030000 --description $'autosnap\nconsistency: offline' --disk-only >/dev/null
virsh snapshot-dumpxml $p-off autod260101030000 > "$out/offline-external.xml"
virsh snapshot-create-as $p-off manual-no-description --disk-only >/dev/null
virsh snapshot-dumpxml $p-off manual-no-description > "$out/offline-external-child.xml"

# Internal snapshots: of a shut-off guest, and with memory of a running one.
img "$dir/int.qcow2"
domxml $p-int "$dir/int.qcow2" > "$dir/int.xml"
virsh define "$dir/int.xml" >/dev/null
virsh snapshot-create-as $p-int autoi260101040000 --description 'cv4pve-autosnap' >/dev/null
virsh snapshot-dumpxml $p-int autoi260101040000 > "$out/internal-offline.xml"
virsh start $p-int >/dev/null
virsh snapshot-create-as $p-int internal-running --description 'live' >/dev/null
virsh snapshot-dumpxml $p-int internal-running > "$out/internal-memory.xml"
virsh destroy $p-int >/dev/null

# Mixed internal and external disks and a block-device disk cannot be created by
# libvirt 9.0; their metadata can be redefined, which is how they reach a listing.
awk '
  /<name>autod260101030000<\/name>/ { sub(/autod260101030000/, "mixed-redefined") }
  /<disk name=.vda. snapshot=.external./ { print "    <disk name=\x27vda\x27 snapshot=\x27internal\x27/>"; skip = 1; next }
  /<disk name=.vdb. snapshot=.external./ { sub(/type=.file./, "type=\x27block\x27") }
  /<source file=.*off-b\.autod/ { print "      <source dev=\x27/dev/null\x27/>"; next }
  skip && /<\/disk>/ { skip = 0; next }
  !skip' "$out/offline-external.xml" > "$dir/mixed.xml"
virsh snapshot-create $p-off --xmlfile "$dir/mixed.xml" --redefine >/dev/null
virsh snapshot-dumpxml $p-off mixed-redefined > "$out/mixed-redefined.xml"

# Paths are machine specific: make them stable so the files can be compared.
sed -i "s|$dir|/var/lib/libvirt/images/cap|g" "$out"/*.xml
echo "captured: $(ls "$out"/*.xml | wc -l) files"
