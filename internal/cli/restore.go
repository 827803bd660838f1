package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/backup"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/repo"
)

// RestoreOptions are the flags of `restore`.
type RestoreOptions struct {
	Target  string
	Until   string
	To      string
	Format  string
	Define  string
	Start   bool
	InPlace bool
	Force   bool
	Instant bool
	Disks   []string
}

func newRestoreCommand(g *GlobalOptions) *cobra.Command {
	o := &RestoreOptions{}
	cmd := &cobra.Command{
		Use:   "restore",
		Short: "Restore a guest's disks from a backup repository (new files, a new guest, or in place)",
		Long: `Restore one guest's backup point from the repository --target DIR. --vmid names
the guest as the repository knows it (name or UUID; the guest need not exist any
more). Without --until the newest point is restored; --until takes a point ID or
a time (the newest point taken at or before it).

One of:
  --to DIR [--format qcow2|raw]   write each disk to DIR/<disk>.<format>: thin,
                                  standalone images, bit-identical to the guest's
                                  disk at the point's instant
  --define NEWNAME --to DIR [--start]
                                  write the disks to DIR/NEWNAME-<disk>.qcow2 and
                                  define a new guest from the saved definition with
                                  a new UUID and new MAC addresses (started only
                                  with --start); disks not restored are left out
  --in-place --force              replace the images of the shut-off guest itself
                                  (each disk written beside its image, then renamed
                                  over it); its checkpoints are removed, so its next
                                  backup is a full
  --define NEWNAME --to DIR --instant
                                  start the new guest within seconds on thin
                                  overlays in DIR backed by the repository's
                                  images (opened read-only, never written), then
                                  copy its disks to DIR/NEWNAME-<disk>.qcow2 while
                                  it runs (libvirt block copy, then a switch-over),
                                  with progress, until the guest no longer depends
                                  on the repository; the repository stays locked
                                  against prune meanwhile. When an instant
                                  restore is interrupted (killed, Ctrl-C), the guest
                                  keeps running on its overlays: run the same command
                                  again to finish the move (copies still running are
                                  taken over); until then, do not prune the point
--disk restores only the named disks (repeatable). Nothing is ever overwritten
except with --in-place --force; --dry-run shows the plan.

--target may also be a qmpbackup target (or a directory of them, --vmid naming
one by its directory or uuid): --to DIR restores its chain as of the point, read
through the FULL and each INC without changing qmpbackup's files; --until also
takes a qmpbackup file name (INC-1764483300-vda.qcow2). qmpbackup keeps no guest
definition, so --define and --in-place are refused; incomplete (.partial) points
are never restored.`,
		Example: `  autosnap --vmid web1 restore --target /backup/vms --to /srv/restore
  autosnap --vmid web1 restore --target /backup/vms --until 2026-11-30T06:00 --to /srv/r --format raw --disk vdb
  autosnap --vmid web1 restore --target /backup/vms --define web1-test --to /var/lib/libvirt/images --start
  autosnap --vmid web1 restore --target /backup/vms --in-place --force`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRestore(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Target, "target", "", "repository directory (required)")
	f.StringVar(&o.Until, "until", "", "point ID, or time: restore the newest point taken at or before it")
	f.StringVar(&o.To, "to", "", "directory for the restored images (created when missing)")
	f.StringVar(&o.Format, "format", "qcow2", "format of the images written by --to: qcow2 or raw")
	f.StringVar(&o.Define, "define", "", "define a new guest of this name from the saved definition (needs --to)")
	f.BoolVar(&o.Start, "start", false, "start the guest defined by --define")
	f.BoolVar(&o.InPlace, "in-place", false, "replace the disks of the shut-off guest itself (needs --force)")
	f.BoolVar(&o.Force, "force", false, "confirm --in-place")
	f.BoolVar(&o.Instant, "instant", false, "with --define: start the guest at once on overlays backed by the repository and move the data while it runs")
	f.StringSliceVar(&o.Disks, "disk", nil, "restore only these disks (repeatable)")
	_ = cmd.MarkFlagRequired("target")
	return cmd
}

func (o *RestoreOptions) validate(g *GlobalOptions) error {
	switch {
	case g.VMID == "":
		return errors.New("--vmid is required: the guest's name or UUID in the repository")
	case o.InPlace && (o.To != "" || o.Define != ""):
		return errors.New("--in-place replaces the guest's own images: it takes neither --to nor --define")
	case o.InPlace && !o.Force:
		return errors.New("--in-place overwrites the guest's disks: add --force to confirm")
	case !o.InPlace && o.To == "":
		return errors.New("say where to restore: --to DIR, --define NAME --to DIR, or --in-place --force")
	case o.Instant && o.Define == "":
		return errors.New("--instant starts the guest --define creates: give --define NAME --to DIR")
	case o.Start && o.Define == "":
		return errors.New("--start starts the guest --define creates: give --define NAME")
	case o.Define != "" && o.Format != "qcow2":
		return errors.New("--define writes qcow2 images: leave --format out")
	case o.Format != "qcow2" && o.Format != "raw":
		return fmt.Errorf("--format %q: use qcow2 or raw", o.Format)
	}
	return nil
}

func runRestore(ctx context.Context, g *GlobalOptions, o *RestoreOptions) error {
	if err := o.validate(g); err != nil {
		return usage(err)
	}
	if qb, err := qmpbackupLayout(o.Target); err != nil || qb {
		if err != nil {
			return usage(fmt.Errorf("--target: %w", err))
		}
		return restoreQmpbackup(ctx, g, o)
	}
	out := g.stdout
	r, err := repo.OpenExisting(o.Target)
	if errors.Is(err, repo.ErrNotRepo) {
		return usage(fmt.Errorf("--target: %w", err))
	}
	if err != nil {
		return err
	}
	rg, err := backup.FindGuest(r, g.VMID)
	if err != nil {
		return usage(err)
	}
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	unlock, err := rg.RLock(lctx)
	cancel()
	if err != nil {
		return err
	}
	defer unlock()
	p, err := backup.SelectPoint(rg, o.Until, time.Local)
	if err != nil {
		if errors.Is(err, repo.ErrNoPoint) {
			return err
		}
		return usage(err)
	}
	fmt.Fprintf(out, "Restoring point %s (%s, %s, %s) of guest %s\n", p.ID, p.Level, p.Started.Local().Format(time.RFC3339), p.Consistency, rg.ID.Name)
	if o.InPlace {
		return restoreInPlace(ctx, g, o, rg, p)
	}
	prefix, format := "", o.Format
	if o.Define != "" {
		prefix, format = o.Define+"-", "qcow2"
	}
	dir, err := filepath.Abs(o.To)
	if err != nil {
		return usage(err)
	}
	var d driver.Driver
	if o.Define != "" {
		// Connect first: a --define that cannot define should fail before copying.
		if d, err = g.connect(ctx); err != nil {
			return err
		}
		defer d.Close()
		if _, ok := d.(driver.GuestDefiner); !ok {
			return usage(fmt.Errorf("--define: the %s connection cannot define guests (give a single libvirt --host)", d.Name()))
		}
		if len(p.Config) == 0 {
			return fmt.Errorf("point %s holds no guest definition: restore with --to and define the guest by hand", p.ID)
		}
	}
	var resume *driver.Guest
	if o.Instant {
		ng, ok, err := interruptedInstant(ctx, d.(driver.GuestDefiner), o.Define)
		if err != nil {
			return err
		}
		if ok {
			resume = &ng
		}
	}
	var files []backup.RestoreFile
	if resume != nil {
		files, err = backup.PlanInstantResume(p, o.Disks, dir, prefix)
	} else {
		files, err = backup.PlanRestore(p, o.Disks, dir, prefix, format)
	}
	if err != nil {
		return usage(err)
	}
	if g.DryRun && resume != nil {
		fmt.Fprintf(out, "Dry run: would finish the interrupted instant restore of guest %s\n", o.Define)
		return nil
	}
	if g.DryRun {
		for _, f := range files {
			fmt.Fprintf(out, "Dry run: would write disk %s to %s (%s)\n", f.Disk, f.Out, f.Format)
		}
		if o.Define != "" {
			fmt.Fprintf(out, "Dry run: would define guest %s from the point's definition\n", o.Define)
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if resume != nil {
		return resumeInstant(ctx, g, d.(driver.GuestDefiner), *resume, files)
	}
	if o.Instant {
		return restoreInstant(ctx, g, o, d.(driver.GuestDefiner), p, files, dir)
	}
	disks := map[string]string{}
	for _, f := range files {
		start := time.Now()
		if err := rg.RestoreDisk(ctx, p, f.Disk, f.Out, f.Format); err != nil {
			return err
		}
		disks[f.Disk] = f.Out
		fmt.Fprintf(out, "Restored disk %s to %s in %s\n", f.Disk, f.Out, time.Since(start).Round(time.Millisecond))
	}
	if o.Define == "" {
		return nil
	}
	dctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	ng, notes, err := d.(driver.GuestDefiner).DefineGuest(dctx, driver.DefineRequest{Config: p.Config, Name: o.Define, Disks: disks, Dir: dir, Start: o.Start})
	for _, n := range notes {
		fmt.Fprintf(out, "Note: %s\n", n)
	}
	if err != nil {
		return fmt.Errorf("restored images are in %s, but: %w", dir, err)
	}
	fmt.Fprintf(out, "Defined guest %s (UUID %s, %s)\n", ng.Name, ng.UUID, ng.State)
	return nil
}

// restoreInstant defines and starts the new guest on thin overlays backed by the
// point's files, then pulls the data into the overlays while the guest runs. The
// repository's images are only read (QEMU opens backing files read-only); the caller's
// shared lock on the guest directory keeps a prune from removing them meanwhile.
func restoreInstant(ctx context.Context, g *GlobalOptions, o *RestoreOptions, def driver.GuestDefiner, p repo.Point, files []backup.RestoreFile, dir string) error {
	out := g.stdout
	overlays, moves := map[string]string{}, map[string]string{}
	for _, f := range files {
		pd, _ := p.Disk(f.Disk)
		ov := instantOverlay(f)
		_ = os.Remove(ov)
		if b, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", p.Path(pd), "-F", "qcow2", ov).CombinedOutput(); err != nil {
			return fmt.Errorf("creating the overlay %s: %w: %s", ov, err, strings.TrimSpace(string(b)))
		}
		if err := os.Chmod(ov, 0o600); err != nil {
			return err
		}
		overlays[f.Disk], moves[f.Disk] = ov, f.Out
	}
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, g.timeout())
	ng, notes, err := def.DefineGuest(dctx, driver.DefineRequest{Config: p.Config, Name: o.Define, Disks: overlays, Dir: dir, Start: true})
	cancel()
	for _, n := range notes {
		fmt.Fprintf(out, "Note: %s\n", n)
	}
	if err != nil {
		return fmt.Errorf("the overlays are in %s, but: %w", dir, err)
	}
	fmt.Fprintf(out, "Guest %s (UUID %s) started in %s on overlays backed by the repository; moving its disks to %s\n",
		ng.Name, ng.UUID, time.Since(start).Round(time.Millisecond), dir)
	if err := moveInstant(ctx, g, def, ng, moves); err != nil {
		return err
	}
	fmt.Fprintf(out, "Guest %s no longer depends on the repository (%s in all)\n", ng.Name, time.Since(start).Round(time.Millisecond))
	return nil
}

// restoreInPlace replaces the shut-off guest's images with the point's disks. Each
// image is written beside the original and renamed over it (RestoreDisk), so a crash
// leaves every disk either old or restored; running the same restore again finishes
// it. The guest's lock keeps snap and backup away meanwhile.
func restoreInPlace(ctx context.Context, g *GlobalOptions, o *RestoreOptions, rg *repo.Guest, p repo.Point) error {
	out := g.stdout
	d, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	b, ok := d.(driver.Backupper)
	if !ok {
		return usage(fmt.Errorf("--in-place: the %s driver cannot read a guest's disks for a backup restore", d.Name()))
	}
	guests, err := d.Guests(ctx)
	if err != nil {
		return err
	}
	var guest *driver.Guest
	for i := range guests {
		if guests[i].UUID != "" && equalUUID(guests[i].UUID, rg.ID.UUID) {
			guest = &guests[i]
		}
	}
	if guest == nil {
		return fmt.Errorf("guest %s (UUID %s) is not defined on %s: restore it with --define instead", rg.ID.Name, rg.ID.UUID, g.Host)
	}
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	unlock, err := engine.LockGuest(lctx, engine.DefaultLockDir(), guest.Key())
	cancel()
	if err != nil {
		return err
	}
	defer unlock()
	sctx, cancel := context.WithTimeout(ctx, g.timeout())
	src, err := b.BackupSource(sctx, *guest)
	cancel()
	if err != nil {
		return err
	}
	plan, err := backup.PlanInPlace(*guest, src, p, o.Disks, func(file string) (string, error) { return backingFile(ctx, file) })
	if err != nil {
		return usage(err)
	}
	for _, f := range plan {
		if g.DryRun {
			fmt.Fprintf(out, "Dry run: would replace %s (disk %s, %s) with point %s\n", f.File, f.Disk, f.Format, p.ID)
			continue
		}
		start := time.Now()
		if err := rg.RestoreDisk(ctx, p, f.Disk, f.File, f.Format); err != nil {
			return fmt.Errorf("%w; disks restored before this one stay restored: run the same restore again", err)
		}
		fmt.Fprintf(out, "Restored disk %s into %s in %s\n", f.Disk, f.File, time.Since(start).Round(time.Millisecond))
	}
	if g.DryRun {
		return nil
	}
	fctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	if err := backup.ForgetCheckpoints(fctx, b, *guest, func(s string) { fmt.Fprintln(out, s) }); err != nil {
		fmt.Fprintf(out, "WARNING: could not remove stale checkpoints: %v; remove them with autosnap bitmaps cleanup %s\n", err, guest.Name)
	}
	return nil
}

func equalUUID(a, b string) bool {
	return strings.EqualFold(a, b)
}

// backingFile is an image's backing file as qemu-img reports it ("" for none).
func backingFile(ctx context.Context, file string) (string, error) {
	b, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", file).Output()
	if err != nil {
		return "", fmt.Errorf("qemu-img info %s: %w", file, err)
	}
	var info struct {
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return "", err
	}
	return info.Backing, nil
}
