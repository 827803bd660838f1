package libvirt

import (
	"context"
	"fmt"
	"os"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
)

// PrepareFrozenSnapshot is PrepareSnapshot for a snapshot the caller takes while it
// holds the guest's filesystems frozen. For a disk-only snapshot of a running guest
// on this host it also creates the overlays now (qemu-img, backing file and format
// as libvirt would write them, mode 0600), and the create call asks libvirt to reuse
// them: inside the freeze libvirt then only opens them and switches the disks,
// instead of creating each image through QEMU's block jobs too. The create record
// names the overlays, so a run cut off before the create is reconciled like any
// other (the files are removed); Close, and a create libvirt refused, remove them.
// Any other snapshot is prepared as by PrepareSnapshot.
func (d *Driver) PrepareFrozenSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.PreparedSnapshot, error) {
	p, err := d.prepareSnapshot(ctx, g, opts)
	if err != nil {
		return nil, err
	}
	if err := p.precreate(ctx); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// precreate creates the overlays of a prepared disk-only snapshot of a running guest
// and makes the create reuse them; see PrepareFrozenSnapshot.
func (p *preparedSnapshot) precreate(ctx context.Context) error {
	if !p.d.local || !p.active || p.internal || p.memory || p.dryRun || p.key == "" || len(p.disks) == 0 {
		return nil
	}
	for i, dk := range p.disks {
		format := "raw"
		if dk.prev != nil && dk.prev.Driver != nil && dk.prev.Driver.Type != "" {
			format = dk.prev.Driver.Type
		}
		f := p.overlays[i]
		p.precreated = append(p.precreated, f)
		if _, err := runCmd(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", format, "-b", dk.active, f); err != nil {
			return fmt.Errorf("guest %s: snapshot %s not taken: creating the overlay of disk %s: %w", p.g.Name, p.name, dk.target, err)
		}
		if err := os.Chmod(f, 0o600); err != nil {
			return fmt.Errorf("guest %s: snapshot %s not taken: %w", p.g.Name, p.name, err)
		}
	}
	p.flags |= uint32(golibvirt.DomainSnapshotCreateReuseExt)
	return nil
}

// removePrecreated removes the overlays precreate made for a snapshot that was not
// taken. Failures are left to the next run (the create record names the files).
func (p *preparedSnapshot) removePrecreated() {
	for _, f := range p.precreated {
		_ = p.d.removeFile(f)
	}
	p.precreated = nil
}
