package repo

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// RestoreDisk writes disk of point, read through its backing chain, to the image out
// in format ("qcow2" or "raw", "" meaning qcow2) with `qemu-img convert`: thin (what
// reads as zero is left unallocated, or a hole in a raw file), and bit-identical to
// the guest's disk at the point's instant. It writes out's content to a temporary
// file beside out, fsyncs it and renames it over out, so out is either untouched or
// complete. out is created 0600. When out is an existing block device (an LVM volume,
// a raw disk), the data is written into it in place (raw only) and flushed. The
// caller holds the guest's shared lock (RLock) or its lock.
func (g *Guest) RestoreDisk(ctx context.Context, point Point, disk, out, format string) error {
	if format == "" {
		format = "qcow2"
	}
	if format != "qcow2" && format != "raw" {
		return fmt.Errorf("guest %s: restore format %q: use qcow2 or raw", g.ID.Name, format)
	}
	d, ok := point.Disk(disk)
	if !ok {
		return fmt.Errorf("guest %s: point %s has no disk %s (it has %s)", g.ID.Name, point.ID, disk, diskNames(point))
	}
	src := point.Path(d)
	if st, err := os.Stat(out); err == nil && st.Mode()&os.ModeDevice != 0 {
		return g.restoreToDevice(ctx, point, disk, src, "qcow2", out, format, d.VirtualSize)
	}
	tmp := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".restoring")
	_ = os.Remove(tmp)
	if err := convertOut(ctx, src, "qcow2", tmp, format); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("guest %s: restoring disk %s of point %s to %s: %w", g.ID.Name, disk, point.ID, out, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("guest %s: restoring disk %s: %w", g.ID.Name, disk, err)
	}
	if err := syncFile(tmp); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("guest %s: restoring disk %s: %w", g.ID.Name, disk, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("guest %s: restoring disk %s: %w", g.ID.Name, disk, err)
	}
	return syncDir(filepath.Dir(out))
}

func diskNames(p Point) string {
	s := ""
	for i, d := range p.Disks {
		if i > 0 {
			s += ", "
		}
		s += d.Name
	}
	if s == "" {
		return "none"
	}
	return s
}

// restoreToDevice writes the disk src (in srcFormat) into the block device dev, which
// must be at least the disk's virtual size: `qemu-img convert -n` writes every block,
// zeroes included, since a device has no holes to leave.
func (g *Guest) restoreToDevice(ctx context.Context, point Point, disk, src, srcFormat, dev, format string, size uint64) error {
	if format != "raw" {
		return fmt.Errorf("guest %s: %s is a block device: restore into it with format raw", g.ID.Name, dev)
	}
	f, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("guest %s: restoring disk %s: %w", g.ID.Name, disk, err)
	}
	devSize, err := f.Seek(0, io.SeekEnd)
	f.Close()
	if err != nil {
		return fmt.Errorf("guest %s: restoring disk %s: sizing %s: %w", g.ID.Name, disk, dev, err)
	}
	if uint64(devSize) < size {
		return fmt.Errorf("guest %s: disk %s of point %s is %d bytes, the device %s only %d: use a larger one", g.ID.Name, disk, point.ID, size, dev, devSize)
	}
	if _, err := qemuImg(ctx, "convert", "-n", "-W", "-f", srcFormat, "-O", "raw", "-t", "none", src, dev); err != nil {
		return fmt.Errorf("guest %s: restoring disk %s of point %s into %s: %w", g.ID.Name, disk, point.ID, dev, err)
	}
	return syncFile(dev)
}

// convertOut writes the image src (srcFormat: a qcow2 chain's top, or raw) to the new
// image file tmp in format, thin.
// The target is written with O_DIRECT (-t none: no second copy through the page
// cache, no write-back storm for the final flush to wait on) and out of order (-W:
// the coroutines do not wait for each other; the result is the same image). Where the
// target's file system refuses O_DIRECT (tmpfs), it falls back to the page cache.
// Either way qemu-img flushes the target when it closes it.
func convertOut(ctx context.Context, src, srcFormat, tmp, format string) error {
	args := func(cache string) []string {
		a := []string{"convert", "-W", "-t", cache, "-f", srcFormat, "-O", format}
		if format == "qcow2" {
			a = append(a, "-o", "compat=1.1")
		}
		return append(a, src, tmp)
	}
	_, err := qemuImg(ctx, args("none")...)
	if err == nil || ctx.Err() != nil {
		return err
	}
	_ = os.Remove(tmp)
	if _, err2 := qemuImg(ctx, args("writeback")...); err2 != nil {
		return fmt.Errorf("%w (with O_DIRECT: %v)", err2, err)
	}
	return nil
}
