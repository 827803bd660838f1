package libvirt

import (
	"context"
	"fmt"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
)

// withoutInterfaces removes every network interface from a domain XML.
func withoutInterfaces(xml string) (string, error) {
	var x libvirtxml.Domain
	if err := x.Unmarshal(xml); err != nil {
		return "", err
	}
	if x.Devices != nil {
		x.Devices.Interfaces = nil
	}
	return x.Marshal()
}

// RemoveGuest implements driver.GuestRemover: destroy (when running) and undefine with
// its managed save, snapshot and checkpoint metadata and NVRAM. A guest that is already
// gone is not an error.
func (d *Driver) RemoveGuest(ctx context.Context, g driver.Guest) error {
	if !strings.HasPrefix(g.Name, driver.ThrowawayPrefix) {
		return fmt.Errorf("refusing to remove guest %s on %s: autosnap only removes the throwaway guests it defined itself (named %s…)", g.Name, d.node, driver.ThrowawayPrefix)
	}
	dom, err := call(ctx, func() (golibvirt.Domain, error) { return d.l.DomainLookupByName(g.Name) })
	if golibvirt.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing guest %s on %s: %w", g.Name, d.node, err)
	}
	if err := call0(ctx, func() error { return d.l.DomainDestroy(dom) }); err != nil && !golibvirt.IsNotFound(err) {
		if st, serr := d.domState(ctx, dom); serr != nil || st != driver.StateShutoff {
			return fmt.Errorf("stopping guest %s on %s: %w", g.Name, d.node, err)
		}
	}
	flags := golibvirt.DomainUndefineManagedSave | golibvirt.DomainUndefineSnapshotsMetadata |
		golibvirt.DomainUndefineCheckpointsMetadata | golibvirt.DomainUndefineNvram
	if err := call0(ctx, func() error { return d.l.DomainUndefineFlags(dom, flags) }); err != nil && !golibvirt.IsNotFound(err) {
		return fmt.Errorf("undefining guest %s on %s: %w; remove it with virsh undefine %s", g.Name, d.node, err, g.Name)
	}
	return nil
}
