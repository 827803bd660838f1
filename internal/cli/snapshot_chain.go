package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/report"
)

func newSnapshotChainCommand(g *GlobalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "chain VM",
		Short: "Show each disk's backing chain with image sizes",
		Long: `Show each disk's backing chain, active image first, with format, virtual and
actual size (read with qemu-img info -U on the guest's host; 0 when autosnap
runs elsewhere) and the snapshots whose state each image holds.

JSON keys: disk, depth (0 = active image), file, format, virtual_size,
actual_size (bytes), snapshots.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotChain(cmd.Context(), g, args[0])
		},
	}
	cmd.AddCommand(newSnapshotCollapseCommand(g))
	return cmd
}

func runSnapshotChain(ctx context.Context, g *GlobalOptions, vm string) error {
	s, err := g.openGuest(ctx, vm)
	if err != nil {
		return err
	}
	defer s.Close()
	ci, err := capability[driver.ChainInspector](s, "show backing chains")
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	chains, err := ci.ChainDetails(cctx, s.guest)
	if err != nil {
		return err
	}
	t := report.Table{Columns: []report.Column{
		{Header: "DISK", Key: "disk"}, {Header: "DEPTH", Key: "depth", AlignRight: true}, {Header: "FILE", Key: "file"},
		{Header: "FORMAT", Key: "format"}, {Header: "VIRTUAL", Key: "virtual_size", AlignRight: true},
		{Header: "ACTUAL", Key: "actual_size", AlignRight: true}, {Header: "SNAPSHOTS", Key: "snapshots"},
	}}
	for _, c := range chains {
		for i, im := range c.Images {
			var virt, act any = im.VirtualSize, im.ActualSize
			if !g.machine() && g.format() != report.FormatCSV {
				virt, act = humanBytes(im.VirtualSize), humanBytes(im.ActualSize)
			}
			t.Rows = append(t.Rows, []any{c.Disk, i, im.File, im.Format, virt, act, im.Snapshots})
		}
	}
	return report.Render(g.stdout, g.format(), t)
}

func humanBytes(n uint64) string {
	if n == 0 {
		return "-"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// SnapshotCollapseOptions are the flags of `snapshot chain collapse`.
type SnapshotCollapseOptions struct {
	Disk            string
	ForgetSnapshots bool
	ForceBase       []string
}

func newSnapshotCollapseCommand(g *GlobalOptions) *cobra.Command {
	o := &SnapshotCollapseOptions{}
	cmd := &cobra.Command{
		Use:   "collapse VM [--disk D] [--forget-snapshots] [--force-base PATH]...",
		Short: "Merge every overlay of a disk (all disks) into its bottom image",
		Long: `Merge every overlay of the disk (every disk without --disk) into the chain's
bottom image in one job and delete the overlays: a live active commit and
pivot for a running guest, qemu-img commit for a shut-off one. The guest's
data is kept.

It refuses, changing nothing, while a snapshot still needs an image of the
chain, and names those snapshots: delete them first (snapshot delete merges
just as well), or pass --forget-snapshots to drop their metadata (every
snapshot covering the disk) before collapsing. It also refuses while another
image builds on one of the chain's images or an overlay holds internal
snapshots.

The chain's bottom image is written to. An image autosnap did not create,
usually the disk's original image, may be a template that linked clones
anywhere on the host build on: writing into it would corrupt each of them
silently. So the collapse refuses to write into such an image, changing
nothing and naming it, unless you pass it with --force-base PATH after making
sure nothing else uses it (repeatable, one per disk). Over a remote
connection, where autosnap cannot check the host's other images, naming it is
the only way.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotCollapse(cmd.Context(), g, o, args[0])
		},
	}
	cmd.Flags().StringVar(&o.Disk, "disk", "", "only this disk (target such as vda)")
	cmd.Flags().BoolVar(&o.ForgetSnapshots, "forget-snapshots", false, "first forget (metadata only) the snapshots that cover the disk(s)")
	cmd.Flags().StringArrayVar(&o.ForceBase, "force-base", nil, "allow writing into this base image although autosnap did not create it; only if nothing else (no linked clone, no other guest) uses it (repeatable)")
	return cmd
}

func runSnapshotCollapse(ctx context.Context, g *GlobalOptions, o *SnapshotCollapseOptions, vm string) error {
	s, err := g.changeGuest(ctx, vm)
	if err != nil {
		return err
	}
	defer s.Close()
	cc, err := capability[driver.ChainCollapser](s, "collapse chains")
	if err != nil {
		return err
	}
	var forget []string
	if o.ForgetSnapshots {
		lctx, cancel := context.WithTimeout(ctx, g.timeout())
		snaps, err := s.d.Snapshots(lctx, s.guest)
		cancel()
		if err != nil {
			return err
		}
		for _, sn := range snaps {
			for _, dk := range sn.Disks {
				if (o.Disk == "" || dk.Name == o.Disk) && dk.Snapshot == "external" {
					forget = append(forget, sn.Name)
					break
				}
			}
		}
	}
	if g.DryRun {
		for _, n := range forget {
			fmt.Fprintf(g.messages(), "Dry run: snapshot %s of %s would be forgotten\n", n, s.guest.Name)
		}
		fmt.Fprintf(g.messages(), "Dry run: the chain of %s of %s would be collapsed\n", orAll(o.Disk), s.guest.Name)
		return nil
	}
	var rows [][2]string
	if len(forget) > 0 {
		cctx, cancel := context.WithTimeout(ctx, g.timeout())
		defer cancel()
		td, err := capability[driver.TreeDeleter](s, "forget snapshots")
		if err != nil {
			return err
		}
		for _, n := range forget {
			err := td.DeleteSnapshotTree(cctx, s.guest, n, driver.DeleteOptions{MetadataOnly: true})
			if err != nil && !errors.Is(err, driver.ErrNotFound) {
				return err
			}
			rows = append(rows, [2]string{n, "forgotten (files kept)"})
		}
	}
	mctx, cancel := s.mergeCtx(ctx, g)
	defer cancel()
	p := g.newProgress()
	err = cc.CollapseChain(mctx, s.guest, driver.CollapseOptions{Disk: o.Disk, ForceBase: o.ForceBase, Progress: p.report})
	p.done()
	if err != nil {
		if len(rows) > 0 {
			return fmt.Errorf("%w (already forgotten: %s)", err, strings.Join(forget, ", "))
		}
		return err
	}
	if g.format() == "text" {
		for _, r := range rows {
			fmt.Fprintf(g.stdout, "%s: snapshot %s %s\n", s.guest.Name, r[0], r[1])
		}
		fmt.Fprintf(g.stdout, "%s: chain of %s collapsed\n", s.guest.Name, orAll(o.Disk))
		return nil
	}
	return g.printActions(s.guest.Name, rows)
}

func orAll(disk string) string {
	if disk == "" {
		return "every disk"
	}
	return disk
}
