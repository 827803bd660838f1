package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/repo"
)

// FindGuest returns the repository's guest whose name or UUID is sel. Exactly one
// must match: a name two guests share must be given as the UUID.
func FindGuest(r *repo.Repo, sel string) (*repo.Guest, error) {
	gs, err := r.Guests()
	if err != nil {
		return nil, err
	}
	var match []*repo.Guest
	for _, g := range gs {
		if strings.EqualFold(g.ID.UUID, sel) || g.ID.Name == sel {
			match = append(match, g)
		}
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		var names []string
		for _, g := range gs {
			names = append(names, g.ID.Name)
		}
		return nil, fmt.Errorf("the repository %s has no guest %q (it has: %s)", r.Dir, sel, strings.Join(names, ", "))
	}
	var ids []string
	for _, g := range match {
		ids = append(ids, g.ID.UUID)
	}
	return nil, fmt.Errorf("the repository %s has %d guests named %s: give the UUID (%s)", r.Dir, len(match), sel, strings.Join(ids, ", "))
}

// untilLayouts are the time forms --until takes (local time unless the form has a zone).
var untilLayouts = []string{time.RFC3339, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"}

// SelectPoint picks the point to restore: the newest without until, the point with
// that ID, or the newest taken at or before that time (a date alone means the end of
// that day).
func SelectPoint(g *repo.Guest, until string, loc *time.Location) (repo.Point, error) {
	if until == "" {
		pts, err := g.Points()
		if err != nil {
			return repo.Point{}, err
		}
		if len(pts) == 0 {
			return repo.Point{}, fmt.Errorf("guest %s: %w: the repository holds no complete point of it", g.ID.Name, repo.ErrNoPoint)
		}
		return pts[len(pts)-1], nil
	}
	if repo.ValidID(until) {
		return g.Point(until)
	}
	for _, l := range untilLayouts {
		t, err := time.ParseInLocation(l, until, loc)
		if err != nil {
			continue
		}
		if l == "2006-01-02" {
			t = t.Add(24*time.Hour - time.Nanosecond)
		}
		return g.Until(t)
	}
	return repo.Point{}, fmt.Errorf("--until %q: give a point ID (20261130T061500Z-inc) or a time (2026-11-30T06:15:00Z, 2026-11-30 06:15, 2026-11-30)", until)
}

// RestoreFile is one disk a restore writes.
type RestoreFile struct {
	Disk   string
	Out    string
	Format string
}

// PlanRestore lists the files a restore to dir writes: <prefix><disk>.<format> for
// each disk of the point (or only those in disks). It fails when a disk is not in the
// point or a file exists already (a restore never overwrites; --in-place is separate).
func PlanRestore(p repo.Point, disks []string, dir, prefix, format string) ([]RestoreFile, error) {
	if format == "" {
		format = "qcow2"
	}
	var have []string
	for _, d := range p.Disks {
		have = append(have, d.Name)
	}
	for _, d := range disks {
		if !slices.Contains(have, d) {
			return nil, fmt.Errorf("point %s has no disk %s (it has %s)", p.ID, d, strings.Join(have, ", "))
		}
	}
	var out []RestoreFile
	for _, d := range have {
		if len(disks) > 0 && !slices.Contains(disks, d) {
			continue
		}
		f := RestoreFile{Disk: d, Out: filepath.Join(dir, prefix+d+"."+format), Format: format}
		if _, err := os.Lstat(f.Out); err == nil {
			return nil, fmt.Errorf("%s exists: a restore never overwrites a file; remove it or choose another --to", f.Out)
		}
		out = append(out, f)
	}
	return out, nil
}

// InPlaceFile is one disk of a shut-off guest an in-place restore replaces.
type InPlaceFile struct {
	Disk   string
	File   string // the guest's image, replaced by the point's content
	Format string // the image's format, kept
}

// PlanInPlace checks that an in-place restore can replace the guest's images: the
// guest is shut off, every disk to restore is a disk of the point and of the guest,
// and no disk has a backing chain (snapshot overlays would then describe another
// content). backingOf reports an image's backing file.
func PlanInPlace(g driver.Guest, src driver.BackupSource, p repo.Point, disks []string, backingOf func(string) (string, error)) ([]InPlaceFile, error) {
	if g.State != driver.StateShutoff {
		return nil, fmt.Errorf("guest %s is %s: --in-place restores only a shut-off guest; shut it down first", g.Name, g.State)
	}
	var out []InPlaceFile
	for _, pd := range p.Disks {
		if len(disks) > 0 && !slices.Contains(disks, pd.Name) {
			continue
		}
		i := slices.IndexFunc(src.Disks, func(d driver.BackupDisk) bool { return d.Name == pd.Name })
		if i < 0 {
			return nil, fmt.Errorf("guest %s has no disk %s any more: restore the point with --to instead", g.Name, pd.Name)
		}
		sd := src.Disks[i]
		if sd.File == "" {
			return nil, fmt.Errorf("guest %s: disk %s is not a local file; restore it with --to and copy it by hand", g.Name, sd.Name)
		}
		if sd.Format != "qcow2" && sd.Format != "raw" {
			return nil, fmt.Errorf("guest %s: disk %s is a %s image; --in-place writes qcow2 or raw only", g.Name, sd.Name, sd.Format)
		}
		if sd.VirtualSize != 0 && pd.VirtualSize != sd.VirtualSize {
			return nil, fmt.Errorf("guest %s: disk %s is %d bytes now and was %d in point %s: restore it with --to instead", g.Name, sd.Name, sd.VirtualSize, pd.VirtualSize, p.ID)
		}
		b, err := backingOf(sd.File)
		if err != nil {
			return nil, fmt.Errorf("guest %s: disk %s: %w", g.Name, sd.Name, err)
		}
		if b != "" {
			return nil, fmt.Errorf("guest %s: disk %s (%s) has a backing file %s (snapshots): remove the guest's snapshots first (autosnap clean --keep 0) or restore with --to", g.Name, sd.Name, sd.File, b)
		}
		out = append(out, InPlaceFile{Disk: sd.Name, File: sd.File, Format: sd.Format})
	}
	if len(out) == 0 {
		return nil, errors.New("no disk to restore: fix --disk")
	}
	return out, nil
}

// ForgetCheckpoints removes every autosnap checkpoint of the guest (any repository's)
// after its disks were replaced: their dirty bitmaps describe changes to the old
// content, so the next backup must be a full (it will say the checkpoint is gone).
func ForgetCheckpoints(ctx context.Context, b driver.Backupper, g driver.Guest, note func(string)) error {
	src, err := b.BackupSource(ctx, g)
	if err != nil {
		return err
	}
	var errs []error
	for i := len(src.Checkpoints) - 1; i >= 0; i-- {
		c := src.Checkpoints[i]
		if err := b.DeleteCheckpoint(ctx, g, c.Name); err != nil && !errors.Is(err, driver.ErrNotFound) {
			errs = append(errs, fmt.Errorf("checkpoint %s: %w", c.Name, err))
			continue
		}
		note(fmt.Sprintf("Removed checkpoint %s (the restored disks make it meaningless; the next backup is a full)", c.Name))
	}
	return errors.Join(errs...)
}
