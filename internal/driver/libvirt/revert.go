package libvirt

import (
	"context"
	"fmt"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
)

// RevertSnapshot implements driver.Driver for internal snapshots. Reverting an external
// snapshot needs new overlays and is not supported by libvirt 9.0 itself; it returns
// an error wrapping driver.ErrUnsupported.
func (d *Driver) RevertSnapshot(ctx context.Context, g driver.Guest, name string, opts driver.RevertOptions) error {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	s, err := d.snapshotByName(ctx, g, dom, name)
	if err != nil {
		return err
	}
	if s.Location != driver.LocationInternal {
		return fmt.Errorf("guest %s: reverting the external snapshot %s is not supported yet: %w", g.Name, name, driver.ErrUnsupported)
	}
	var flags uint32
	if opts.Running {
		flags |= uint32(golibvirt.DomainSnapshotRevertRunning)
	}
	if opts.Paused {
		flags |= uint32(golibvirt.DomainSnapshotRevertPaused)
	}
	if opts.Force {
		flags |= uint32(golibvirt.DomainSnapshotRevertForce)
	}
	err = call0(ctx, func() error {
		return d.l.DomainRevertToSnapshot(golibvirt.DomainSnapshot{Name: name, Dom: dom}, flags)
	})
	if err != nil {
		return fmt.Errorf("guest %s: reverting to %s failed: %w", g.Name, name, err)
	}
	return nil
}
