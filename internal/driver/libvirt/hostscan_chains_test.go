package libvirt

import (
	"reflect"
	"testing"

	"libvirt.org/go/libvirtxml"
)

// TestDefinedChains: the chains a live definition states, top first; a disk that is
// not a plain file or block device sends the guest to block statistics.
func TestDefinedChains(t *testing.T) {
	const live = `<domain type='qemu' id='7'><name>x</name><devices>
  <disk type='file' device='disk'><source file='/i/top.qcow2'/>
    <backingStore type='file' index='1'><format type='qcow2'/><source file='/i/mid.qcow2'/>
      <backingStore type='block' index='2'><format type='raw'/><source dev='/dev/vg/base'/><backingStore/></backingStore>
    </backingStore>
    <target dev='vda' bus='virtio'/></disk>
  <disk type='block' device='disk'><source dev='/dev/sdb'/><backingStore/><target dev='vdb' bus='virtio'/></disk>
  <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
</devices></domain>`
	got, ok := liveDefinedChains(live)
	want := map[string][]string{"vda": {"/i/top.qcow2", "/i/mid.qcow2", "/dev/vg/base"}, "vdb": {"/dev/sdb"}}
	if !ok || !reflect.DeepEqual(got, want) {
		t.Errorf("definedChains = %v, %v; want %v", got, ok, want)
	}

	// A guest that stopped between the listing and the read: libvirt gives its stored
	// definition (no id, no chain below the top image), which must not stand for it.
	const stopped = `<domain type='qemu'><name>x</name><devices>
  <disk type='file' device='disk'><source file='/i/top.qcow2'/><target dev='vda' bus='virtio'/></disk>
</devices></domain>`
	if c, ok := liveDefinedChains(stopped); ok {
		t.Errorf("a stopped guest's stored definition was taken as its live chains: %v", c)
	}

	var x libvirtxml.Domain
	const network = `<domain type='qemu'><name>x</name><devices>
  <disk type='file' device='disk'><source file='/i/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
  <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>`
	if err := x.Unmarshal(network); err != nil {
		t.Fatal(err)
	}
	if _, ok := definedChains(&x); ok {
		t.Error("a network disk's chain was taken from the definition; only block statistics name its images")
	}
}
