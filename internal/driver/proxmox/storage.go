package proxmox

import (
	"context"
	"fmt"
	"net/url"
	"sort"

	"github.com/autosnap/autosnap/internal/driver"
)

// Storage implements driver.StorageReporter: one entry per storage holding a disk of
// the guest (CD-ROMs, empty drives and host paths excluded), with the fill level the
// cluster reports for it on the guest's node. Percent is 0-100. A storage PVE reports
// no size for (inactive, no RRD data yet, or hidden by missing Datastore.Audit) has
// Capacity 0, which the engine treats as unknown.
func (d *Driver) Storage(ctx context.Context, g driver.Guest) ([]driver.StorageUsage, error) {
	cfg, err := d.config(ctx, g)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", guestName(g), err)
	}
	names := map[string]bool{}
	for _, disk := range cfg.Disks {
		if disk.Storage != "" {
			names[disk.Storage] = true
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	var rs []resource
	if err := d.c.get(ctx, "/cluster/resources", url.Values{"type": {"storage"}}, &rs); err != nil {
		return nil, fmt.Errorf("reading storage usage: %w", err)
	}
	var out []driver.StorageUsage
	for name := range names {
		u := driver.StorageUsage{Name: g.Node + "/" + name}
		for _, r := range rs {
			if r.Type == "storage" && r.Node == g.Node && r.Storage == name && r.MaxDisk > 0 {
				u.Capacity, u.Used = uint64(r.MaxDisk), uint64(max(r.Disk, 0))
				u.Percent = float64(u.Used) / float64(u.Capacity) * 100
			}
		}
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
