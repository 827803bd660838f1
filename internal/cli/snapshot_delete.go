package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
)

// SnapshotDeleteOptions are the flags of `snapshot delete`.
type SnapshotDeleteOptions struct {
	Children     bool
	ChildrenOnly bool
	Metadata     bool
}

func newSnapshotDeleteCommand(g *GlobalOptions) *cobra.Command {
	o := &SnapshotDeleteOptions{}
	cmd := &cobra.Command{
		Use:   "delete VM NAME [--children | --children-only] [--metadata]",
		Short: "Delete a snapshot, its descendants, or only its metadata (virsh snapshot-delete)",
		Long: `Delete a snapshot and release its data, keeping the guest's current data and
every other snapshot intact, for running and shut-off guests alike.

External snapshots are merged: images that only the deleted snapshots needed
are committed into the image below (a live block commit and pivot for images
the running guest uses, qemu-img for the others), oldest first so that each
byte is copied once, and unused overlays of deleted snapshots are removed. An
image another branch still builds on (after a revert) is never written: a
snapshot at such a branch point loses its metadata, its images stay.

--children deletes the descendants too; --children-only only them.
--metadata only forgets the snapshot(s) and leaves every file as it is.

Long merges print their progress (every 10% when stdout is not a terminal).
Interrupted (error, --timeout, Ctrl-C), the running merge is aborted and every
chain stays valid; snapshots whose data was already merged are gone, the error
lists the others, and running the command again finishes the job. Raise
--timeout for large disks.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotDelete(cmd.Context(), g, o, args[0], args[1])
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.Children, "children", false, "also delete every descendant")
	f.BoolVar(&o.ChildrenOnly, "children-only", false, "delete only the descendants")
	f.BoolVar(&o.Metadata, "metadata", false, "forget the snapshot(s) only; leave every file")
	return cmd
}

func runSnapshotDelete(ctx context.Context, g *GlobalOptions, o *SnapshotDeleteOptions, vm, name string) error {
	if o.Children && o.ChildrenOnly {
		return usage(errors.New("--children and --children-only exclude each other"))
	}
	s, err := g.changeGuest(ctx, vm)
	if err != nil {
		return err
	}
	defer s.Close()
	sn, all, err := s.findSnapshot(ctx, g, name)
	if err != nil {
		return err
	}
	var names []string
	if !o.ChildrenOnly {
		names = append(names, sn.Name)
	}
	if o.Children || o.ChildrenOnly {
		names = append(names, newSnapTree(all).descendants(sn.Name)...)
	}
	action := "deleted"
	if o.Metadata {
		action = "forgotten (files kept)"
	}
	if g.DryRun {
		for _, n := range names {
			fmt.Fprintf(g.messages(), "Dry run: snapshot %s of %s would be %s\n", n, s.guest.Name, action)
		}
		return nil
	}
	if len(names) == 0 {
		fmt.Fprintf(g.messages(), "%s: snapshot %s has no children\n", s.guest.Name, sn.Name)
		return g.printActions(s.guest.Name, nil)
	}
	opts := driver.DeleteOptions{Children: o.Children, ChildrenOnly: o.ChildrenOnly, MetadataOnly: o.Metadata}
	dctx, cancel := s.mergeCtx(ctx, g)
	defer cancel()
	if td, ok := s.member.(driver.TreeDeleter); ok {
		p := g.newProgress()
		opts.Progress = p.report
		err = td.DeleteSnapshotTree(dctx, s.guest, sn.Name, opts)
		p.done()
	} else if !o.Children && !o.ChildrenOnly && !o.Metadata {
		err = s.d.DeleteSnapshot(dctx, s.guest, sn.Name)
	} else {
		_, err = capability[driver.TreeDeleter](s, "delete children or metadata only")
	}
	if err != nil {
		return err
	}
	rows := make([][2]string, len(names))
	for i, n := range names {
		rows[i] = [2]string{n, action}
	}
	return g.printActions(s.guest.Name, rows)
}
