package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/report"
)

func newBitmapsCommand(g *GlobalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bitmaps",
		Short: "Show or remove autosnap's backup checkpoints and dirty bitmaps of a guest",
		Long: `Incremental backups track a guest's changes with checkpoints (libvirt) backed by
persistent dirty bitmaps in the disks' qcow2 images. autosnap names its own
"autosnap-…"; others' checkpoints and bitmaps are never shown or touched.

VM is one guest: its exact name or UUID, else a --vmid style selection that
selects exactly one guest.`,
	}
	cmd.AddCommand(newBitmapsListCommand(g), newBitmapsCleanupCommand(g))
	return cmd
}

func newBitmapsListCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list VM",
		Short: "List autosnap's checkpoints with their usability, and their bitmaps per image",
		Long: `List autosnap's checkpoints of the guest, oldest first, with the disks each
tracks and whether changes since it can still be read (USABLE "yes", or why
not: a bitmap lost or left inconsistent by an unclean stop, an overlay without
it…); an unusable checkpoint makes the next backup a full. Then every bitmap of
autosnap's in the images of each disk's chain, with QEMU's flags (auto =
recording; in-use = held by the running QEMU, or, for a shut-off guest, not
stored cleanly) and ORPHAN "yes" for a bitmap no checkpoint accounts for.

JSON keys: kind (checkpoint|bitmap), name, disk, image, created, flags, usable,
orphan.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBitmapsList(cmd.Context(), g, args[0])
		},
	}
}

// bitmapState is what bitmaps list and cleanup see of a guest.
type bitmapState struct {
	checkpoints []driver.Checkpoint
	bitmaps     []driver.Bitmap
}

func readBitmapState(ctx context.Context, g *GlobalOptions, s *snapshotSession) (bitmapState, error) {
	b, err := capability[driver.Backupper](s, "take backups")
	if err != nil {
		return bitmapState{}, err
	}
	bi, err := capability[driver.BitmapInspector](s, "list backup bitmaps")
	if err != nil {
		return bitmapState{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	src, err := b.BackupSource(cctx, s.guest)
	if err != nil {
		return bitmapState{}, err
	}
	bms, err := bi.Bitmaps(cctx, s.guest)
	if err != nil {
		return bitmapState{}, err
	}
	return bitmapState{checkpoints: src.Checkpoints, bitmaps: bms}, nil
}

func runBitmapsList(ctx context.Context, g *GlobalOptions, vm string) error {
	s, err := g.openGuest(ctx, vm)
	if err != nil {
		return err
	}
	defer s.Close()
	st, err := readBitmapState(ctx, g, s)
	if err != nil {
		return err
	}
	t := report.Table{Columns: []report.Column{
		{Header: "KIND", Key: "kind"}, {Header: "NAME", Key: "name"}, {Header: "DISK", Key: "disk"},
		{Header: "IMAGE", Key: "image"}, {Header: "CREATED", Key: "created"}, {Header: "FLAGS", Key: "flags"},
		{Header: "USABLE", Key: "usable"}, {Header: "ORPHAN", Key: "orphan"},
	}}
	for _, c := range st.checkpoints {
		usable := "yes"
		if c.Unusable != "" {
			usable = "no: " + c.Unusable
		}
		t.Rows = append(t.Rows, []any{"checkpoint", c.Name, strings.Join(c.Disks, ","), "", c.Created.Format("2006-01-02T15:04:05Z07:00"), "", usable, ""})
	}
	for _, b := range st.bitmaps {
		orphan := "no"
		if !b.Checkpoint {
			orphan = "yes"
		}
		t.Rows = append(t.Rows, []any{"bitmap", b.Name, b.Disk, b.Image, "", strings.Join(b.Flags, ","), "", orphan})
	}
	if len(t.Rows) == 0 && g.format() == report.FormatText {
		fmt.Fprintf(g.stdout, "%s: no autosnap checkpoints or bitmaps\n", s.guest.Name)
		return nil
	}
	return report.Render(g.stdout, g.format(), t)
}

func newBitmapsCleanupCommand(g *GlobalOptions) *cobra.Command {
	var includeQMPBackup bool
	cmd := &cobra.Command{
		Use:   "cleanup VM",
		Short: "Remove all of autosnap's checkpoints and bitmaps from a guest (the next backup is a full)",
		Long: `Remove every checkpoint of autosnap's from the guest, with its bitmaps, and the
bitmaps of autosnap's that no checkpoint accounts for (orphans: those can only
be removed while the guest is shut off, since a running QEMU holds its images).
Others' checkpoints and bitmaps are never touched. Existing backups stay valid
and restorable, but no chain can continue: the next backup of the guest is a
full.

--include-qmpbackup (standalone QEMU guests, --host qmp://) also removes the
bitmaps qmpbackup left on the disks ("qmpbackup-…"), as its "cleanup
--remove-bitmap" would: for users who switched to autosnap. qmpbackup's chains
in its target directory stay restorable, but it can no longer continue them.

With the global --dry-run it only prints what it would remove. Interrupted, it
is simply run again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBitmapsCleanup(cmd.Context(), g, args[0], includeQMPBackup)
		},
	}
	cmd.Flags().BoolVar(&includeQMPBackup, "include-qmpbackup", false, "also remove qmpbackup's bitmaps (qmpbackup-…) from the guest's disks")
	return cmd
}

// qmpbackupBitmaps is implemented by drivers whose guests may carry qmpbackup's
// bitmaps (the qmp driver).
type qmpbackupBitmaps interface {
	QMPBackupBitmaps(ctx context.Context, g driver.Guest) ([]driver.Bitmap, error)
	RemoveQMPBackupBitmaps(ctx context.Context, g driver.Guest, bms []driver.Bitmap) error
}

// bitmapCleanupPlan is what cleanup removes: checkpoints (newest first, so every step
// leaves a consistent set) and orphan bitmaps.
type bitmapCleanupPlan struct {
	checkpoints []string
	orphans     []driver.Bitmap
}

func planBitmapCleanup(st bitmapState) bitmapCleanupPlan {
	var p bitmapCleanupPlan
	for i := len(st.checkpoints) - 1; i >= 0; i-- {
		p.checkpoints = append(p.checkpoints, st.checkpoints[i].Name)
	}
	for _, b := range st.bitmaps {
		if !b.Checkpoint {
			p.orphans = append(p.orphans, b)
		}
	}
	return p
}

func runBitmapsCleanup(ctx context.Context, g *GlobalOptions, vm string, includeQMPBackup bool) error {
	s, err := g.changeGuest(ctx, vm)
	if err != nil {
		return err
	}
	defer s.Close()
	st, err := readBitmapState(ctx, g, s)
	if err != nil {
		return err
	}
	p := planBitmapCleanup(st)
	out := g.messages()
	var qb qmpbackupBitmaps
	var foreign []driver.Bitmap
	if includeQMPBackup {
		var ok bool
		if qb, ok = s.member.(qmpbackupBitmaps); !ok {
			return usage(fmt.Errorf("--include-qmpbackup: the %s driver's guests carry no qmpbackup bitmaps (qmpbackup works on standalone QEMU, --host qmp://): %w", s.member.Name(), driver.ErrUnsupported))
		}
		cctx, cancel := context.WithTimeout(ctx, g.timeout())
		foreign, err = qb.QMPBackupBitmaps(cctx, s.guest)
		cancel()
		if err != nil {
			return err
		}
	}
	if len(p.checkpoints) == 0 && len(p.orphans) == 0 && len(foreign) == 0 {
		fmt.Fprintf(out, "%s: no autosnap checkpoints or bitmaps\n", s.guest.Name)
		return nil
	}
	if g.DryRun {
		for _, c := range p.checkpoints {
			fmt.Fprintf(out, "Dry run: checkpoint %s of %s and its bitmaps would be removed\n", c, s.guest.Name)
		}
		for _, b := range p.orphans {
			fmt.Fprintf(out, "Dry run: orphan bitmap %s on %s (disk %s) of %s would be removed\n", b.Name, b.Image, b.Disk, s.guest.Name)
		}
		for _, b := range foreign {
			fmt.Fprintf(out, "Dry run: qmpbackup's bitmap %s on %s (disk %s) of %s would be removed\n", b.Name, b.Image, b.Disk, s.guest.Name)
		}
		return nil
	}
	b, _ := capability[driver.Backupper](s, "take backups")
	bi, _ := capability[driver.BitmapInspector](s, "list backup bitmaps")
	cctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	for _, c := range p.checkpoints {
		if err := b.DeleteCheckpoint(cctx, s.guest, c); err != nil {
			return fmt.Errorf("%w (run bitmaps cleanup %s again to finish)", err, s.guest.Name)
		}
		fmt.Fprintf(out, "%s: checkpoint %s removed\n", s.guest.Name, c)
	}
	if len(p.orphans) > 0 {
		// Removing checkpoints may have taken some of the orphans' copies with them.
		bms, err := bi.Bitmaps(cctx, s.guest)
		if err != nil {
			return err
		}
		var left []driver.Bitmap
		for _, b := range bms {
			if !b.Checkpoint {
				left = append(left, b)
			}
		}
		if err := bi.RemoveOrphanBitmaps(cctx, s.guest, left); err != nil {
			return err
		}
		for _, b := range left {
			fmt.Fprintf(out, "%s: orphan bitmap %s removed from %s\n", s.guest.Name, b.Name, b.Image)
		}
	}
	if len(foreign) > 0 {
		if err := qb.RemoveQMPBackupBitmaps(cctx, s.guest, foreign); err != nil {
			return fmt.Errorf("%w (run bitmaps cleanup %s --include-qmpbackup again to finish)", err, s.guest.Name)
		}
		for _, b := range foreign {
			fmt.Fprintf(out, "%s: qmpbackup's bitmap %s removed from disk %s\n", s.guest.Name, b.Name, b.Disk)
		}
	}
	fmt.Fprintf(out, "%s: the next backup will be a full (no checkpoint left to continue a chain)\n", s.guest.Name)
	return nil
}
