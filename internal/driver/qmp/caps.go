package qmp

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/autosnap/autosnap/internal/driver"
)

// SetTags implements driver.Tagger: standalone QEMU has no tags of its own, so they
// live in the guest's sidecar (sorted, without duplicates).
func (d *Driver) SetTags(ctx context.Context, g driver.Guest, tags []string) error {
	e, err := d.find(g)
	if err != nil {
		return err
	}
	unlock, err := d.lock(ctx, e)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := readMeta(e.meta)
	if err != nil {
		return fmt.Errorf("guest %s: %w", e.name, err)
	}
	m.Tags = slices.Compact(slices.Sorted(slices.Values(tags)))
	if err := writeMeta(e.meta, m); err != nil {
		return fmt.Errorf("guest %s: setting tags: %w", e.name, err)
	}
	return nil
}

// Storage implements driver.StorageReporter: the filesystems of the directories that
// hold the guest's images.
func (d *Driver) Storage(ctx context.Context, g driver.Guest) ([]driver.StorageUsage, error) {
	v, err := d.open(ctx, g)
	if err != nil {
		return nil, err
	}
	defer v.close()
	var out []driver.StorageUsage
	seen := map[string]bool{}
	for _, x := range v.m.Disks {
		dir := filepath.Dir(x.File)
		if seen[dir] {
			continue
		}
		seen[dir] = true
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			return nil, fmt.Errorf("guest %s: disk %s: %w", v.e.name, x.Name, err)
		}
		u := driver.StorageUsage{Name: dir, Capacity: st.Blocks * uint64(st.Bsize)}
		u.Used = u.Capacity - st.Bfree*uint64(st.Bsize)
		if u.Capacity > 0 {
			u.Percent = 100 * float64(u.Used) / float64(u.Capacity)
		}
		out = append(out, u)
	}
	return out, nil
}

// SetCurrent implements driver.CurrentSetter; nothing is reverted.
func (d *Driver) SetCurrent(ctx context.Context, g driver.Guest, name string) error {
	v, err := d.open(ctx, g)
	if err != nil {
		return err
	}
	defer v.close()
	if _, ok := v.find(name); !ok {
		return fmt.Errorf("guest %s: snapshot %s: %w", v.e.name, name, driver.ErrNotFound)
	}
	v.m.Current = name
	if err := writeMeta(v.e.meta, v.m); err != nil {
		return fmt.Errorf("guest %s: %w", v.e.name, err)
	}
	return nil
}

var (
	_ driver.Tagger          = (*Driver)(nil)
	_ driver.StorageReporter = (*Driver)(nil)
	_ driver.CurrentSetter   = (*Driver)(nil)
	_ driver.Backupper       = (*Driver)(nil)
	_ driver.BitmapInspector = (*Driver)(nil)
)
var _ driver.TreeDeleter = (*Driver)(nil)
