package libvirt

import (
	"testing"

	"libvirt.org/go/libvirtxml"
)

func TestWithoutInterfaces(t *testing.T) {
	out, _, err := RewriteForDefine([]byte(savedDomain), "autosnap-verify-1-web1", map[string]string{"vda": "/r/vda.qcow2"}, "/r")
	if err != nil {
		t.Fatal(err)
	}
	out, err = withoutInterfaces(out)
	if err != nil {
		t.Fatal(err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(out); err != nil {
		t.Fatal(err)
	}
	if len(x.Devices.Interfaces) != 0 || len(x.Devices.Disks) != 2 || len(x.Devices.Channels) != 1 {
		t.Fatalf("want no interfaces, the disk, the CD-ROM and the agent channel kept:\n%s", out)
	}
}
