package qmp

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/crash"
)

// bkBitmapRef names one dirty bitmap on one disk.
type bkBitmapRef struct {
	Disk string `json:"disk"`
	Name string `json:"name"`
}

// revertBitmaps is what a revert must remove first: QEMU refuses to load an internal
// snapshot into (or qemu-img to apply one to) a disk carrying dirty bitmaps, and a
// revert changes the disks wholesale, so every bitmap recorded changes against
// content the disks no longer hold.
type revertBitmaps struct {
	refs    []bkBitmapRef
	foreign []string // "NAME on disk DISK" for bitmaps autosnap did not create
}

// planRevertBitmaps lists the dirty bitmaps on the disks a revert changes (from the
// running QEMU, else from the images). Bitmaps autosnap did not create (qmpbackup's,
// anyone's) make it fail unless force: removing them breaks their owner's next
// incremental backup, so the user decides.
func (v *view) planRevertBitmaps(ctx context.Context, ds []disk, force bool) (revertBitmaps, error) {
	var bds []bkDisk
	var err error
	if v.s != nil {
		bds, err = bkDisks(ctx, v.s)
	} else {
		bds, err = offlineDisks(ctx, v.m)
	}
	if err != nil {
		return revertBitmaps{}, fmt.Errorf("guest %s: listing the disks' dirty bitmaps before the revert: %w", v.e.name, err)
	}
	var rb revertBitmaps
	others := false // foreign bitmaps that are not qmpbackup's
	for _, x := range bds {
		if !slices.ContainsFunc(ds, func(d disk) bool { return d.Name == x.Name }) {
			continue
		}
		for _, b := range x.Bitmaps {
			rb.refs = append(rb.refs, bkBitmapRef{Disk: x.Name, Name: b.Name})
			if !strings.HasPrefix(b.Name, CheckpointPrefix) {
				rb.foreign = append(rb.foreign, b.Name+" on disk "+x.Name)
				others = others || !strings.HasPrefix(b.Name, QMPBackupPrefix)
			}
		}
	}
	if len(rb.foreign) > 0 && !force {
		hint := fmt.Sprintf("remove them first with: autosnap --host qmp://%s bitmaps cleanup --include-qmpbackup %s, ", v.d.node, v.e.name)
		if others {
			hint = fmt.Sprintf("remove them first (qmpbackup's with: autosnap --host qmp://%s bitmaps cleanup --include-qmpbackup %s; others with QMP block-dirty-bitmap-remove, or qemu-img bitmap --remove while QEMU is stopped), ", v.d.node, v.e.name)
		}
		return revertBitmaps{}, fmt.Errorf("guest %s carries dirty bitmaps autosnap did not create (%s): QEMU cannot revert a disk with dirty bitmaps, and after a revert they no longer match the disks, so the next incremental backup of their owner would be wrong; %sor add --force to remove them with the revert",
			v.e.name, strings.Join(rb.foreign, ", "), hint)
	}
	return rb, nil
}

// journalRevertBitmaps records, before any is removed, the bitmaps a revert to snap
// removes, and marks every checkpoint of autosnap's unusable with the reason (the
// next backup is a full that says why). A run that dies before the removal finished
// leaves the list for the next revert of the guest, or the offline finish of the
// revert, to complete.
func (v *view) journalRevertBitmaps(rb revertBitmaps, snap string, now time.Time) (*bkFile, error) {
	bk, err := readBk(v.e)
	if err != nil {
		return nil, err
	}
	why := fmt.Sprintf("the guest was reverted to snapshot %s at %s, which changed its disks wholesale, so autosnap removed the checkpoint's bitmaps", snap, now.UTC().Format(time.RFC3339))
	for i := range bk.Checkpoints {
		if bk.Checkpoints[i].Reverted == "" {
			bk.Checkpoints[i].Reverted = why
		}
	}
	for _, r := range rb.refs {
		if !slices.Contains(bk.RevertBitmaps, r) {
			bk.RevertBitmaps = append(bk.RevertBitmaps, r)
		}
	}
	if err := writeBk(v.e, bk); err != nil {
		return nil, err
	}
	return bk, nil
}

// removeRevertBitmaps removes the bitmaps journalled in bk.RevertBitmaps (each only
// when still there) through the running QEMU or, while it is stopped, from the
// images, then clears the journal.
func (v *view) removeRevertBitmaps(ctx context.Context, bk *bkFile) error {
	if len(bk.RevertBitmaps) == 0 {
		return nil
	}
	var bds []bkDisk
	var err error
	if v.s != nil {
		bds, err = bkDisks(ctx, v.s)
	} else {
		bds, err = offlineDisks(ctx, v.m)
	}
	if err != nil {
		return fmt.Errorf("guest %s: removing dirty bitmaps before the revert: %w", v.e.name, err)
	}
	for _, r := range bk.RevertBitmaps {
		i := slices.IndexFunc(bds, func(x bkDisk) bool { return x.Name == r.Disk })
		if i < 0 || !slices.ContainsFunc(bds[i].Bitmaps, func(b qbitmap) bool { return b.Name == r.Name }) {
			continue
		}
		x := bds[i]
		if v.s != nil {
			err = v.s.m.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": x.Node, "name": r.Name}, nil)
			if isNoBitmap(err) {
				err = nil
			}
		} else {
			_, err = runTool(ctx, "qemu-img", "bitmap", "--remove", x.File, r.Name)
		}
		if err != nil {
			return fmt.Errorf("guest %s: removing dirty bitmap %s from disk %s before the revert (run the revert again to finish): %w", v.e.name, r.Name, r.Disk, err)
		}
		crash.Point(crashRevertBitmap)
	}
	bk.RevertBitmaps = nil
	return writeBk(v.e, bk)
}

// finishRevertBitmaps completes a bitmap removal a revert journalled but did not
// finish (its run died).
func (v *view) finishRevertBitmaps(ctx context.Context) error {
	bk, err := readBk(v.e)
	if err != nil {
		return err
	}
	return v.removeRevertBitmaps(ctx, bk)
}
