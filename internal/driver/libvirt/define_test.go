package libvirt

import (
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"
)

const savedDomain = `<domain type="kvm">
  <name>web1</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <memory unit="MiB">256</memory>
  <os><type arch="x86_64" machine="pc">hvm</type><nvram template="/usr/share/OVMF/OVMF_VARS.fd">/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram></os>
  <devices>
    <disk type="file" device="disk"><driver name="qemu" type="raw"/><source file="/img/web1.raw"/><target dev="vda" bus="virtio"/></disk>
    <disk type="file" device="disk"><driver name="qemu" type="qcow2"/><source file="/img/web1-data.snap1"/><backingStore type="file"><format type="qcow2"/><source file="/img/web1-data.qcow2"/></backingStore><target dev="vdb" bus="virtio"/></disk>
    <disk type="file" device="cdrom"><source file="/iso/x.iso"/><target dev="sda" bus="sata"/></disk>
    <interface type="network"><mac address="52:54:00:12:34:56"/><source network="default"/><model type="virtio"/></interface>
    <serial type="file"><source path="/var/log/web1-console.log"/><target port="0"/></serial>
    <channel type="unix"><source mode="bind" path="/var/lib/libvirt/qemu/channel/target/domain-3-web1/org.qemu.guest_agent.0"/><target type="virtio" name="org.qemu.guest_agent.0"/></channel>
  </devices>
</domain>`

func TestRewriteForDefine(t *testing.T) {
	out, notes, err := RewriteForDefine([]byte(savedDomain), "web1-restored", map[string]string{"vda": "/r/web1-restored-vda.qcow2"}, "/r")
	if err != nil {
		t.Fatal(err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(out); err != nil {
		t.Fatal(err)
	}
	if x.Name != "web1-restored" || x.UUID != "" {
		t.Fatalf("name %q uuid %q", x.Name, x.UUID)
	}
	if strings.Contains(out, "52:54:00:12:34:56") || strings.Contains(out, "domain-3-web1") || strings.Contains(out, "web1_VARS.fd") {
		t.Fatalf("the original's MAC, agent socket or NVRAM file is still in:\n%s", out)
	}
	if len(x.Devices.Disks) != 2 {
		t.Fatalf("disks %d, want vda and the cdrom:\n%s", len(x.Devices.Disks), out)
	}
	vda := x.Devices.Disks[0]
	if vda.Target.Dev != "vda" || vda.Source.File.File != "/r/web1-restored-vda.qcow2" || vda.Driver.Type != "qcow2" || vda.BackingStore != nil {
		t.Fatalf("vda %+v", vda)
	}
	if p := x.Devices.Serials[0].Source.File.Path; p != "/r/web1-restored-web1-console.log" {
		t.Fatalf("serial log %s, want /r/web1-restored-web1-console.log", p)
	}
	if x.Devices.Disks[1].Device != "cdrom" {
		t.Fatalf("the cdrom is gone")
	}
	if strings.Contains(out, "/img/") {
		t.Fatalf("the new guest still names an original image:\n%s", out)
	}
	if len(notes) != 2 || !strings.Contains(strings.Join(notes, "\n"), "disk vdb was not restored") {
		t.Fatalf("notes %q", notes)
	}
	if _, _, err := RewriteForDefine([]byte(savedDomain), "n", map[string]string{"vdz": "/x"}, "/r"); err == nil || !strings.Contains(err.Error(), "no disk [vdz]") {
		t.Fatalf("unknown disk: %v", err)
	}
}
