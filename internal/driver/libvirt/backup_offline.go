package libvirt

import (
	"context"
	"fmt"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
)

// backupOffline backs up a shut-off guest.
func (d *Driver) backupOffline(ctx context.Context, g driver.Guest, dom golibvirt.Domain, x *libvirtxml.Domain, disks map[string]*libvirtxml.DomainDisk, req driver.BackupRequest) (driver.BackupResult, error) {
	return driver.BackupResult{}, fmt.Errorf("guest %s is shut off: not built yet: %w", g.Name, driver.ErrUnsupported)
}
