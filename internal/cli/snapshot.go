package cli

import (
	"github.com/spf13/cobra"
)

// newSnapshotCommand groups the virsh-style snapshot lifecycle commands.
func newSnapshotCommand(g *GlobalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Manage individual snapshots (virsh parity): create, list, info, revert, delete, chain …",
	}
	cmd.AddCommand(newSnapshotRevertCommand(g))
	return cmd
}
