package libvirt

import (
	"context"

	"github.com/autosnap/autosnap/internal/driver"
)

// SuspendCheckpoints sets a shut-off guest's autosnap checkpoints aside as a snapshot
// does, and stops there, as a run killed inside that window would.
func SuspendCheckpoints(ctx context.Context, d *Driver, g driver.Guest) error {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	own, err := d.ownCheckpoints(ctx, dom)
	if err != nil {
		return err
	}
	return d.suspendCheckpoints(ctx, dom, own)
}
