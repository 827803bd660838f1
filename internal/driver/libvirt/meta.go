package libvirt

import (
	"context"
	"fmt"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
)

// SnapshotXML implements driver.SnapshotXMLer: libvirt's description of the snapshot,
// including security-sensitive parts of the recorded domain definition (such as
// graphics passwords) so that RedefineSnapshot restores it completely, as virsh
// snapshot-dumpxml --security-info does.
func (d *Driver) SnapshotXML(ctx context.Context, g driver.Guest, name string) (string, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return "", err
	}
	snap := golibvirt.DomainSnapshot{Name: name, Dom: dom}
	raw, err := call(ctx, func() (string, error) {
		return d.l.DomainSnapshotGetXMLDesc(snap, uint32(golibvirt.DomainSnapshotXMLSecure))
	})
	if err != nil {
		return "", d.snapErr(g, name, err)
	}
	return raw, nil
}

func (d *Driver) snapErr(g driver.Guest, name string, err error) error {
	if errCode(err) == golibvirt.ErrNoDomainSnapshot {
		return fmt.Errorf("guest %s has no snapshot %q: %w", g.Name, name, driver.ErrNotFound)
	}
	return fmt.Errorf("guest %s: snapshot %s: %w", g.Name, name, d.notFound(g.Name, err))
}

// RedefineSnapshot implements driver.SnapshotXMLer with libvirt's redefine: it records
// (or replaces) a snapshot's metadata from SnapshotXML output without touching any
// file. The snapshot's parent must already be defined, so a hierarchy is redefined
// root first. The recorded domain must have the guest's UUID.
func (d *Driver) RedefineSnapshot(ctx context.Context, g driver.Guest, xml string, current bool) error {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	var x libvirtxml.DomainSnapshot
	if err := x.Unmarshal(xml); err != nil {
		return fmt.Errorf("guest %s: not a libvirt snapshot description: %w", g.Name, err)
	}
	if x.Name == "" {
		return fmt.Errorf("guest %s: the snapshot description has no <name>", g.Name)
	}
	unlock := d.domLock(g.Key())
	defer unlock()
	if err := d.settle(ctx, g, dom); err != nil {
		return err
	}
	flags := uint32(golibvirt.DomainSnapshotCreateRedefine)
	if current {
		flags |= uint32(golibvirt.DomainSnapshotCreateCurrent)
	}
	_, err = call(ctx, func() (golibvirt.DomainSnapshot, error) { return d.snapshotCreateXML(dom, xml, flags) })
	if err != nil {
		return fmt.Errorf("guest %s: redefining snapshot %s failed: %w", g.Name, x.Name, d.notFound(g.Name, err))
	}
	return nil
}

// SetCurrent implements driver.CurrentSetter: the snapshot's own metadata is
// redefined with libvirt's current flag. Nothing is reverted.
func (d *Driver) SetCurrent(ctx context.Context, g driver.Guest, name string) error {
	raw, err := d.SnapshotXML(ctx, g, name)
	if err != nil {
		return err
	}
	return d.RedefineSnapshot(ctx, g, raw, true)
}

// EditSnapshot implements driver.SnapshotEditor. A description is changed by
// redefining the snapshot. A rename defines the snapshot under the new name, moves its
// children to it and then forgets the old name; files keep their names (the metadata
// records them). If a step fails, both names may exist; the error says which.
func (d *Driver) EditSnapshot(ctx context.Context, g driver.Guest, name string, opts driver.EditOptions) error {
	dom, t, unlock, err := d.settledTree(ctx, g)
	if err != nil {
		return err
	}
	defer unlock()
	m, ok := t.byName[name]
	if !ok {
		return fmt.Errorf("guest %s has no snapshot %q: %w", g.Name, name, driver.ErrNotFound)
	}
	if opts.Description != nil {
		m.x.Description = *opts.Description
	}
	if opts.Rename == "" || opts.Rename == name {
		if err := d.redefine(ctx, dom, m.x, m.current); err != nil {
			return fmt.Errorf("guest %s: updating snapshot %s failed: %w", g.Name, name, err)
		}
		return nil
	}
	if _, exists := t.byName[opts.Rename]; exists {
		return fmt.Errorf("guest %s already has a snapshot %q", g.Name, opts.Rename)
	}
	m.x.Name = opts.Rename
	if err := d.redefine(ctx, dom, m.x, m.current); err != nil {
		return fmt.Errorf("guest %s: defining snapshot %s as %s failed: %w", g.Name, name, opts.Rename, err)
	}
	for _, c := range t.children(name) {
		cm := t.byName[c]
		cm.x.Parent = &libvirtxml.DomainSnapshotParent{Name: opts.Rename}
		if err := d.redefine(ctx, dom, cm.x, cm.current); err != nil {
			return fmt.Errorf("guest %s: snapshot %s is now also named %s, but moving its child %s failed: %w (finish with: autosnap snapshot edit again, or delete one name with --metadata)", g.Name, name, opts.Rename, c, err)
		}
	}
	if err := d.forget(ctx, g, dom, name); err != nil {
		return fmt.Errorf("snapshot %s was renamed to %s but the old name remains: %w", name, opts.Rename, err)
	}
	return nil
}
