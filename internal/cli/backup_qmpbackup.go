package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/autosnap/autosnap/internal/backup"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/repo"
	"github.com/autosnap/autosnap/internal/report"
	"github.com/autosnap/autosnap/internal/selector"
)

// `backup list` and `restore` read a qmpbackup target directory as well as an
// autosnap repository (internal/repo/qmpbackup.go), so qmpbackup users keep their
// chains restorable after switching. Both commands call qmpbackupLayout first; it
// says whether --target is a qmpbackup directory and refuses a mixed one.

// qmpbackupLayout reports whether target holds qmpbackup backups (true) or an
// autosnap repository (false). A directory holding both, or neither, is an error
// (wrapping repo.ErrMixedLayout or repo.ErrNotRepo). A directory that cannot be
// read is left to the repository's own open, which says what is wrong.
func qmpbackupLayout(target string) (bool, error) {
	if target == "" {
		return false, nil
	}
	lay, err := repo.DetectLayout(target)
	switch {
	case errors.Is(err, repo.ErrMixedLayout):
		return false, err
	case err != nil:
		return false, nil
	case lay == repo.LayoutNone:
		return false, repo.NeitherError(target)
	}
	return lay == repo.LayoutQmpbackup, nil
}

var qmpbackupListColumns = append(append([]report.Column{}, backupListColumns...),
	report.Column{Header: "STATE", Key: "state"}, report.Column{Header: "REASON", Key: "reason"},
	report.Column{Header: "FORMAT", Key: "format"})

// listQmpbackup is `backup list` of a qmpbackup directory: the same columns as for
// a repository, plus state (complete; incomplete: a .partial file, qmpbackup did not
// finish the point; broken: it depends on an incomplete point), reason and format
// ("qmpbackup").
func listQmpbackup(ctx context.Context, g *GlobalOptions, target string) error {
	t, err := repo.OpenQmpbackup(ctx, target)
	if err != nil {
		return err
	}
	gs, err := selectQmpbackup(g, t)
	if err != nil {
		return err
	}
	tb := report.Table{Columns: qmpbackupListColumns}
	for _, qg := range gs {
		for _, p := range qg.Points() {
			disks := make([]string, len(p.Disks))
			for i, d := range p.Disks {
				disks[i] = d.Name
			}
			tb.Rows = append(tb.Rows, []any{qg.ID.Name, qg.ID.UUID, p.ID, p.Started.Local(), p.Level, p.Chain, p.Parent,
				p.Checkpoint, byteSize(p.Size()), byteSize(p.VirtualSize()), p.Consistency, disks, p.Dir,
				p.State, p.Reason, repo.QmpbackupFormat})
		}
	}
	if err := report.Render(g.stdout, g.format(), tb); err != nil {
		return err
	}
	return g.missing()
}

// selectQmpbackup returns the targets --vmid selects (all without --vmid), by the
// same grammar as for a repository's guests: a target's name is its directory's.
func selectQmpbackup(g *GlobalOptions, t *repo.QmpbackupTarget) ([]*repo.QmpbackupGuest, error) {
	if g.VMID == "" {
		return t.Guests, nil
	}
	sel, err := selector.Parse(g.VMID)
	if err != nil {
		return nil, usage(fmt.Errorf("--vmid: %w", err))
	}
	cands := make([]driver.Guest, len(t.Guests))
	byKey := map[string]*repo.QmpbackupGuest{}
	for i, qg := range t.Guests {
		cands[i] = driver.Guest{Name: qg.ID.Name, UUID: qg.ID.UUID}
		byKey[cands[i].Key()] = qg
	}
	res, err := sel.Select(cands)
	for _, u := range res.Unmatched {
		fmt.Fprintf(g.stderr, "WARNING: --vmid token %q matches no qmpbackup target in %s\n", u, t.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("qmpbackup directory %s: %w", t.Dir, err)
	}
	if len(res.Unmatched) > 0 {
		g.unmatchedIn = "--vmid"
		g.unmatched = append(g.unmatched, res.Unmatched...)
	}
	out := make([]*repo.QmpbackupGuest, 0, len(res.Guests))
	for _, c := range res.Guests {
		out = append(out, byKey[c.Key()])
	}
	return out, nil
}

// qmpbackupUntilLayouts are the time forms --until takes, as for a repository.
var qmpbackupUntilLayouts = []string{time.RFC3339, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"}

// selectQmpbackupPoint picks the point to restore: the newest complete one without
// until; the point with that ID or holding a file of that name (qmprestore's
// --until); or the newest complete point taken at or before that time. A named
// point that is incomplete or broken is refused with the reason.
func selectQmpbackupPoint(qg *repo.QmpbackupGuest, until string, loc *time.Location) (repo.QmpbackupPoint, error) {
	if until == "" {
		return qg.Newest()
	}
	if p, err := qg.Point(until); err == nil {
		if !p.Restorable() {
			return p, fmt.Errorf("qmpbackup target %s: point %s is %s: %s; restore an earlier point (see backup list)", qg.Dir, p.ID, p.State, p.Reason)
		}
		return p, nil
	} else if repo.ValidID(until) {
		return p, err
	}
	for _, l := range qmpbackupUntilLayouts {
		t, err := time.ParseInLocation(l, until, loc)
		if err != nil {
			continue
		}
		if l == "2006-01-02" {
			t = t.Add(24*time.Hour - time.Nanosecond)
		}
		return qg.Until(t)
	}
	return repo.QmpbackupPoint{}, usage(fmt.Errorf("--until %q: give a point ID (20261130T061500Z-inc), a qmpbackup file name (INC-1764483300-vda.qcow2) or a time (2026-11-30T06:15:00Z, 2026-11-30 06:15, 2026-11-30)", until))
}

// restoreQmpbackup is `restore --to DIR` from a qmpbackup directory. qmpbackup
// keeps disk images only: no guest definition (so no --define) and no guest
// identity to find the running guest by (so no --in-place).
func restoreQmpbackup(ctx context.Context, g *GlobalOptions, o *RestoreOptions) error {
	switch {
	case o.Define != "":
		return usage(errors.New("--define: qmpbackup stores no guest definition (only disk images), so there is nothing to define a guest from: restore the disks with --to DIR and point QEMU's command line at them"))
	case o.InPlace:
		return usage(errors.New("--in-place: qmpbackup records no guest identity to find the guest's images by: restore with --to DIR, then replace the images while the guest is stopped"))
	}
	t, err := repo.OpenQmpbackup(ctx, o.Target)
	if err != nil {
		return err
	}
	qg, err := t.Find(g.VMID)
	if err != nil {
		return usage(err)
	}
	p, err := selectQmpbackupPoint(qg, o.Until, time.Local)
	if err != nil {
		return err
	}
	out := g.stdout
	fmt.Fprintf(out, "Restoring point %s (%s, %s, %s) of qmpbackup target %s\n", p.ID, p.Level, p.Started.Local().Format(time.RFC3339), p.Consistency, qg.Dir)
	dir, err := filepath.Abs(o.To)
	if err != nil {
		return usage(err)
	}
	files, err := backup.PlanRestore(p.Point, o.Disks, dir, "", o.Format)
	if err != nil {
		return usage(err)
	}
	if g.DryRun {
		for _, f := range files {
			fmt.Fprintf(out, "Dry run: would write disk %s to %s (%s) from %d image(s) of the chain\n", f.Disk, f.Out, f.Format, len(p.Images(f.Disk)))
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	for _, f := range files {
		start := time.Now()
		if err := qg.RestoreDisk(ctx, p, f.Disk, f.Out, f.Format); err != nil {
			return err
		}
		fmt.Fprintf(out, "Restored disk %s to %s in %s\n", f.Disk, f.Out, time.Since(start).Round(time.Millisecond))
	}
	return nil
}
