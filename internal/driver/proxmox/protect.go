package proxmox

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

// SetProtected implements driver.Protector. Proxmox VE has no protection flag for
// snapshots, so it is a "protected: yes" line in the snapshot's description
// (naming.WithProtected), set with PUT …/snapshot/NAME/config. cv4pve-autosnap's
// snapshots ("cv4pve-autosnap") become "cv4pve-autosnap\nprotected: yes", which
// cv4pve-autosnap itself no longer counts, so it leaves them alone too; unprotecting
// gives back exactly "cv4pve-autosnap". A locked guest is retried until ctx ends. The
// PUT is idempotent, so an answer lost to a failing host is sent again (once per host).
func (d *Driver) SetProtected(ctx context.Context, g driver.Guest, name string, protected bool) error {
	err := d.retryLocked(ctx, g, func() error {
		e, ok, err := d.find(ctx, g, name)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("no snapshot %q (see: autosnap snapshot list %s): %w", name, guestName(g), driver.ErrNotFound)
		}
		desc, err := naming.WithProtected(e.Description, protected)
		if err != nil {
			return err
		}
		if desc == e.Description {
			return nil
		}
		path := guestPath(g) + "/snapshot/" + url.PathEscape(name) + "/config"
		for attempt := 0; ; attempt++ {
			res, err := d.c.do(ctx, http.MethodPut, path, url.Values{"description": {desc}}, nil)
			if res.lost && attempt < len(d.c.eps) && ctx.Err() == nil {
				continue
			}
			return notFound(err)
		}
	})
	if err != nil {
		return fmt.Errorf("%s: snapshot %s: setting protected=%v: %w", guestName(g), name, protected, err)
	}
	return nil
}

var _ driver.Protector = (*Driver)(nil)
