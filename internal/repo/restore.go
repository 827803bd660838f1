package repo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// RestoreDisk writes disk of point, read through its backing chain, to the image out
// in format ("qcow2" or "raw", "" meaning qcow2) with `qemu-img convert`: thin (what
// reads as zero is left unallocated, or a hole in a raw file), and bit-identical to
// the guest's disk at the point's instant. It writes out's content to a temporary
// file beside out, fsyncs it and renames it over out, so out is either untouched or
// complete. out is created 0600. The caller holds the guest's lock or shared lock.
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
	tmp := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".restoring")
	_ = os.Remove(tmp)
	args := []string{"convert", "-f", "qcow2", "-O", format}
	if format == "qcow2" {
		args = append(args, "-o", "compat=1.1")
	}
	args = append(args, src, tmp)
	if _, err := qemuImg(ctx, args...); err != nil {
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
