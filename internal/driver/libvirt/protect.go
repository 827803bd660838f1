package libvirt

import (
	"context"
	"fmt"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

// SetProtected implements driver.Protector: the flag is a "protected: yes" line in the
// snapshot's description (naming.WithProtected), written by redefining the snapshot's
// metadata as EditSnapshot does, so libvirt keeps it across restarts and no file
// changes. A snapshot whose description is not autosnap's is refused.
func (d *Driver) SetProtected(ctx context.Context, g driver.Guest, name string, protected bool) error {
	dom, t, unlock, err := d.settledTree(ctx, g)
	if err != nil {
		return err
	}
	defer unlock()
	m, ok := t.byName[name]
	if !ok {
		return fmt.Errorf("guest %s has no snapshot %q: %w", g.Name, name, driver.ErrNotFound)
	}
	desc, err := naming.WithProtected(m.x.Description, protected)
	if err != nil {
		return fmt.Errorf("guest %s: snapshot %s: %w", g.Name, name, err)
	}
	if desc == m.x.Description {
		return nil
	}
	m.x.Description = desc
	if err := d.redefine(ctx, dom, m.x, m.current); err != nil {
		return fmt.Errorf("guest %s: recording the protection of snapshot %s failed: %w", g.Name, name, err)
	}
	return nil
}

var _ driver.Protector = (*Driver)(nil)
