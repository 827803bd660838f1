package qmp

import (
	"context"
	"fmt"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

// SetProtected implements driver.Protector. qcow2 internal snapshots hold no
// description, so the flag is a "protected: yes" line in the snapshot's description
// in the guest's sidecar (naming.WithProtected), written atomically under the guest's
// lock. A snapshot the sidecar has no description of is not autosnap's, and is
// refused.
func (d *Driver) SetProtected(ctx context.Context, g driver.Guest, name string, protected bool) error {
	v, err := d.open(ctx, g)
	if err != nil {
		return err
	}
	defer v.close()
	if _, ok := v.find(name); !ok {
		return fmt.Errorf("guest %s: no snapshot %q (see: autosnap snapshot list %s): %w", v.e.name, name, v.e.name, driver.ErrNotFound)
	}
	sm := v.m.Snapshots[name]
	desc := ""
	if sm != nil {
		desc = sm.Description
	}
	out, err := naming.WithProtected(desc, protected)
	if err != nil {
		return fmt.Errorf("guest %s: snapshot %s: %w", v.e.name, name, err)
	}
	if out == desc {
		return nil
	}
	sm.Description = out
	if err := writeMeta(v.e.meta, v.m); err != nil {
		return fmt.Errorf("guest %s: snapshot %s: setting protected=%v: %w", v.e.name, name, protected, err)
	}
	return nil
}

var _ driver.Protector = (*Driver)(nil)
