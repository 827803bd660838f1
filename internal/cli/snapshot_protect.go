package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
)

// SnapshotProtectOptions are the arguments of `snapshot protect` and `unprotect`.
type SnapshotProtectOptions struct {
	VM, Name string
	// Protected is what the command sets: true for protect, false for unprotect.
	Protected bool
}

func newSnapshotProtectCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "protect VM NAME",
		Short: "Keep one of autosnap's snapshots for good: snap and clean never remove it",
		Long: `Mark one of autosnap's (or cv4pve-autosnap's) snapshots as protected: snap and
clean never remove it, and it takes no place among the --keep newest, so the
rotation goes on around it. A dry run lists it as kept with the reason; status,
snapshot list and snapshot info show it as protected.

The flag is recorded on the hypervisor, in the snapshot's description (a line
"protected: yes"), so it survives restarts and every autosnap sees it. On
Proxmox VE a cv4pve-autosnap snapshot becomes "cv4pve-autosnap" plus that line,
which cv4pve-autosnap itself no longer removes either. A snapshot that is not
autosnap's is refused: retention never touches it anyway. Undo with
autosnap snapshot unprotect VM NAME.`,
		Example: `  autosnap snapshot protect web1 autodaily260929020000`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotProtect(cmd.Context(), g, &SnapshotProtectOptions{VM: args[0], Name: args[1], Protected: true})
		},
	}
}

func newSnapshotUnprotectCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "unprotect VM NAME",
		Short: "Hand a protected snapshot back to retention",
		Long: `Clear the protected flag set by snapshot protect: the snapshot counts for
--keep again, and the next snap or clean of its label may remove it. A
cv4pve-autosnap snapshot gets back exactly the description "cv4pve-autosnap".`,
		Example: `  autosnap snapshot unprotect web1 autodaily260929020000`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotProtect(cmd.Context(), g, &SnapshotProtectOptions{VM: args[0], Name: args[1], Protected: false})
		},
	}
}

// runSnapshotProtect sets or clears the protected flag of one snapshot, holding the
// guest's lock so that no snap or clean of the guest runs meanwhile.
func runSnapshotProtect(ctx context.Context, g *GlobalOptions, o *SnapshotProtectOptions) error {
	s, err := g.changeGuest(ctx, o.VM)
	if err != nil {
		return err
	}
	defer s.Close()
	p, err := capability[driver.Protector](s, "protect snapshots")
	if err != nil {
		return err
	}
	what := "protected"
	if !o.Protected {
		what = "unprotected"
	}
	if g.DryRun {
		if _, _, err := s.findSnapshot(ctx, g, o.Name); err != nil {
			return err
		}
		fmt.Fprintf(g.messages(), "Dry run: snapshot %s of %s would be %s\n", o.Name, s.guest.Name, what)
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	if err := p.SetProtected(cctx, s.guest, o.Name, o.Protected); err != nil {
		return err
	}
	return g.printActions(s.guest.Name, [][2]string{{o.Name, what}})
}
