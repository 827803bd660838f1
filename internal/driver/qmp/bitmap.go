package qmp

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/autosnap/autosnap/internal/driver"
)

// QMPBackupPrefix starts the names of qmpbackup's bitmaps in every version
// (qmpbackup-<device>, qmpbackup-<node>-<uuid>, qmpbackup-<uuid>, and the transient
// qmpbackup-copy-<uuid>).
const QMPBackupPrefix = "qmpbackup-"

// Bitmaps implements driver.BitmapInspector: autosnap's bitmaps on every writable
// disk, as the running QEMU holds them (flags auto = recording, in-use =
// inconsistent, busy, transient) or, while it is stopped, as the images store them.
// Image is the disk's image file.
func (d *Driver) Bitmaps(ctx context.Context, g driver.Guest) ([]driver.Bitmap, error) {
	return d.bitmapsWith(ctx, g, CheckpointPrefix)
}

func (d *Driver) bitmapsWith(ctx context.Context, g driver.Guest, prefix string) ([]driver.Bitmap, error) {
	v, err := d.openBk(ctx, g)
	if err != nil {
		return nil, err
	}
	defer v.close()
	return v.bitmaps(prefix), nil
}

func (v *bkView) bitmaps(prefix string) []driver.Bitmap {
	var out []driver.Bitmap
	for _, x := range v.disks {
		for _, b := range x.Bitmaps {
			if !strings.HasPrefix(b.Name, prefix) {
				continue
			}
			own := false
			if i, ok := v.bk.checkpoint(b.Name); ok && prefix == CheckpointPrefix {
				own = slices.Contains(v.bk.Checkpoints[i].Disks, x.Name)
			}
			out = append(out, driver.Bitmap{Disk: x.Name, Image: x.File, Name: b.Name, Flags: b.flags(), Checkpoint: own})
		}
	}
	return out
}

// RemoveOrphanBitmaps implements driver.BitmapInspector: it removes autosnap's
// bitmaps that no checkpoint accounts for, through QMP while QEMU runs (a bitmap
// exists in the running QEMU first) and from the images while it is stopped.
func (d *Driver) RemoveOrphanBitmaps(ctx context.Context, g driver.Guest, bms []driver.Bitmap) error {
	if len(bms) == 0 {
		return nil
	}
	return d.removeBitmaps(ctx, g, bms, CheckpointPrefix)
}

// QMPBackupBitmaps lists qmpbackup's bitmaps on the guest's disks (never used by
// autosnap; listed so that bitmaps cleanup can remove them on request).
func (d *Driver) QMPBackupBitmaps(ctx context.Context, g driver.Guest) ([]driver.Bitmap, error) {
	return d.bitmapsWith(ctx, g, QMPBackupPrefix)
}

// RemoveQMPBackupBitmaps removes qmpbackup's bitmaps listed by QMPBackupBitmaps, as
// qmpbackup's own "cleanup --remove-bitmap" does: a user who switched to autosnap
// stops the disks from tracking changes for a tool that no longer runs. Any other
// bitmap is refused.
func (d *Driver) RemoveQMPBackupBitmaps(ctx context.Context, g driver.Guest, bms []driver.Bitmap) error {
	if len(bms) == 0 {
		return nil
	}
	return d.removeBitmaps(ctx, g, bms, QMPBackupPrefix)
}

func (d *Driver) removeBitmaps(ctx context.Context, g driver.Guest, bms []driver.Bitmap, prefix string) error {
	v, err := d.openBk(ctx, g)
	if err != nil {
		return err
	}
	defer v.close()
	for _, b := range bms {
		if !strings.HasPrefix(b.Name, prefix) {
			return fmt.Errorf("guest %s: bitmap %s on disk %s does not start with %s; not removed", v.e.name, b.Name, b.Disk, prefix)
		}
		if prefix == CheckpointPrefix {
			if i, ok := v.bk.checkpoint(b.Name); ok && slices.Contains(v.bk.Checkpoints[i].Disks, b.Disk) {
				return fmt.Errorf("guest %s: bitmap %s on disk %s belongs to checkpoint %s, not an orphan; not removed", v.e.name, b.Name, b.Disk, b.Name)
			}
		}
		if err := v.removeBitmaps(ctx, b.Name, []string{b.Disk}); err != nil {
			return fmt.Errorf("guest %s: removing bitmap %s: %w", v.e.name, b.Name, err)
		}
	}
	return nil
}
