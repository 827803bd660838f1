package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/report"
)

// SnapshotRevertOptions are the flags of `snapshot revert`.
type SnapshotRevertOptions struct {
	Running bool
	Paused  bool
	Force   bool
}

func newSnapshotRevertCommand(g *GlobalOptions) *cobra.Command {
	o := &SnapshotRevertOptions{}
	cmd := &cobra.Command{
		Use:   "revert VM NAME",
		Short: "Revert a guest to a snapshot, discarding its current state",
		Long: `Make the guest's disks (and, for a snapshot with RAM, its running state) those of
snapshot NAME. The guest's current state is discarded, as with virsh snapshot-revert.
VM is the guest's name, UUID or numeric id.

Internal snapshots are reverted by the hypervisor.

External snapshots (what autosnap takes on libvirt) are reverted on the guest's
host by putting a new overlay, <vm>-<disk>.<NAME>.revert<N>.qcow2, on each disk's
snapshot image; the snapshot's own images are never written, so it can be
reverted to again. The image that held the discarded state is deleted when no
snapshot needs it. A running or paused guest is stopped hard first (like virsh
destroy): for a disk-only snapshot only with --force; for a snapshot with RAM
(snap --state) always, since the RAM is replaced. A disk-only revert leaves the
guest shut off unless --running or --paused; a snapshot with RAM comes back
running, or paused with --paused.

JSON (-o json|jsonpretty) is an array with one object: node, vmid, vmname,
snapshot, location, vmstate (snapshot has RAM), state (after the revert),
notes (what was done to the guest and its files), seconds.`,
		Example: `  autosnap snapshot revert web1 autohourly250101120000
  autosnap snapshot revert web1 autodaily250101000000 --force --running`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotRevert(cmd.Context(), g, o, args[0], args[1])
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.Running, "running", false, "start the guest after reverting")
	f.BoolVar(&o.Paused, "paused", false, "leave the guest paused after reverting")
	f.BoolVar(&o.Force, "force", false, "stop a running or paused guest hard to revert it to a disk-only snapshot; let the hypervisor take risky reverts")
	return cmd
}

// revertNoter is a driver that reports, line by line, what a revert did.
type revertNoter interface {
	RevertSnapshotNotes(ctx context.Context, g driver.Guest, name string, opts driver.RevertOptions, note func(string)) error
}

var revertColumns = []report.Column{
	{Header: "NODE", Key: "node"}, {Header: "VM", Key: "vmid"}, {Header: "VM NAME", Key: "vmname"},
	{Header: "SNAPSHOT", Key: "snapshot"}, {Header: "LOCATION", Key: "location"}, {Header: "VM STATE", Key: "vmstate"},
	{Header: "STATE", Key: "state"}, {Header: "NOTES", Key: "notes"}, {Header: "SECONDS", Key: "seconds"},
}

func runSnapshotRevert(ctx context.Context, g *GlobalOptions, o *SnapshotRevertOptions, vm, name string) error {
	if o.Running && o.Paused {
		return usage(errors.New("snapshot revert: --running and --paused exclude each other"))
	}
	s, err := g.session(ctx, vm, false, true)
	if err != nil {
		return err
	}
	defer s.Close()
	d, gu := s.d, s.guest
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	snaps, err := d.Snapshots(lctx, gu)
	cancel()
	if err != nil {
		return err
	}
	var snap *driver.Snapshot
	for i := range snaps {
		if snaps[i].Name == name {
			snap = &snaps[i]
		}
	}
	if snap == nil {
		return fmt.Errorf("guest %s has no snapshot %q (list them with: autosnap snapshot list %s): %w", gu.Name, name, gu.Name, driver.ErrNotFound)
	}
	if snap.Incomplete != "" {
		return fmt.Errorf("guest %s: refusing to revert to snapshot %s, its data is not whole (%s); nothing was changed", gu.Name, name, snap.Incomplete)
	}
	external := snap.Location != driver.LocationInternal
	if external && !snap.Memory && gu.State.Active() && !o.Force {
		return usage(fmt.Errorf("guest %s is %s: reverting it to the disk-only snapshot %s discards its current state and boots it from the snapshot's disks; shut it down first, or add --force to stop it hard (like virsh destroy)", gu.Name, gu.State, name))
	}

	machine := g.machine()
	out := g.stdout
	if machine {
		out = io.Discard
	}
	kind := string(snap.Location)
	if snap.Memory {
		kind += ", with RAM"
	} else {
		kind += ", disks only"
	}
	if g.DryRun {
		fmt.Fprintf(out, "Dry run: would revert %s (%s) to snapshot %s (%s)\n", gu.Name, gu.State, name, kind)
		if external && gu.State.Active() {
			fmt.Fprintf(out, "Dry run: would stop %s hard (like virsh destroy) first\n", gu.Name)
		}
		return nil
	}
	fmt.Fprintf(out, "Reverting %s (%s) to snapshot %s (%s)\n", gu.Name, gu.State, name, kind)
	var notes []string
	note := func(s string) {
		notes = append(notes, s)
		fmt.Fprintf(out, "  %s\n", s)
	}
	opts := driver.RevertOptions{Running: o.Running, Paused: o.Paused, Force: o.Force}
	rctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	start := time.Now()
	if n, ok := s.member.(revertNoter); ok {
		err = n.RevertSnapshotNotes(rctx, gu, name, opts, note)
	} else {
		if external && gu.State.Active() {
			note(fmt.Sprintf("stopping %s hard (like virsh destroy) first", gu.Name))
		}
		err = d.RevertSnapshot(rctx, gu, name, opts)
	}
	took := time.Since(start)
	if err != nil {
		return err
	}
	state := driver.StateUnknown
	if after, err := g.resolveGuest(ctx, d, gu.UUID, false); err == nil {
		state = after.State
	} else if after, err := g.resolveGuest(ctx, d, gu.Name, false); err == nil {
		state = after.State
	}
	fmt.Fprintf(out, "Reverted %s to %s in %s; the guest is %s\n", gu.Name, name, took.Round(time.Millisecond), state)
	if !machine {
		return nil
	}
	if notes == nil {
		notes = []string{}
	}
	t := report.Table{Columns: revertColumns, Rows: [][]any{{gu.Node, engine.GuestID(gu), gu.Name, name, string(snap.Location), snap.Memory,
		string(state), notes, took.Seconds()}}}
	return report.Render(g.stdout, g.format(), t)
}
