#!/usr/bin/env bash
# autosnap demo: creates (once) a tiny Linux guest "autosnap-demo" under local libvirt,
# with a real qemu-guest-agent and an ext4 data disk, then runs autosnap's main job on it:
# three `snap --keep 2` runs, then `status`. `scripts/demo.sh --clean` removes the guest.
set -euo pipefail
name=autosnap-demo
dir=/var/lib/autosnap-demo
export LIBVIRT_DEFAULT_URI=qemu:///system

if [ "${1:-}" = "--clean" ]; then
  virsh destroy "$name" >/dev/null 2>&1 || true
  virsh undefine "$name" --snapshots-metadata >/dev/null 2>&1 || true
  rm -rf "$dir"
  echo "removed $name and $dir"
  exit 0
fi
bin=${1:-bin/autosnap}
top=$(cd "$(dirname "$0")/.." && pwd)

if ! virsh dominfo "$name" >/dev/null 2>&1; then
  echo "==> building the demo guest (kernel + busybox + qemu-ga initramfs) in $dir"
  install -d -m 0700 "$dir"
  bash "$top/scripts/build-test-guest.sh" "$dir/guest" >/dev/null
  raw=$(mktemp "$dir/data.XXXXXX.raw")
  truncate -s 64M "$raw"
  mkfs.ext4 -q -F -L demo-data "$raw"
  qemu-img convert -q -f raw -O qcow2 "$raw" "$dir/data.qcow2"
  rm -f "$raw"
  chmod 0600 "$dir/data.qcow2"
  cat > "$dir/domain.xml" <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$dir/guest/vmlinuz</kernel>
    <initrd>$dir/guest/initrd.img</initrd>
    <cmdline>console=ttyS0 loglevel=4 autosnap.writer=1</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$dir/data.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$dir/console.log'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
XML
  virsh define "$dir/domain.xml" >/dev/null
fi
if [ "$(virsh domstate "$name")" != "running" ]; then
  virsh start "$name" >/dev/null
fi
echo "==> waiting for the guest agent of $name"
for _ in $(seq 1 120); do
  virsh qemu-agent-command "$name" '{"execute":"guest-ping"}' >/dev/null 2>&1 && break
  sleep 0.5
done
virsh qemu-agent-command "$name" '{"execute":"guest-ping"}' >/dev/null || { echo "guest agent did not answer; console: $dir/console.log" >&2; exit 1; }

echo "==> $bin vm list"
"$bin" vm list
for i in 1 2 3; do
  echo "==> run $i: $bin --vmid $name snap --label demo --keep 2"
  "$bin" --vmid "$name" snap --label demo --keep 2
  sleep 1 # names have one-second resolution
done
echo "==> $bin --vmid $name status"
"$bin" --vmid "$name" status
echo "==> backing chain of vda (keep 2 => 3 images)"
top_image=$(virsh domblklist "$name" | awk '$1=="vda"{print $2}')
qemu-img info -U --backing-chain "$top_image" | grep '^image:'
echo
echo "The demo guest keeps running. Remove it with: make demo-clean"
