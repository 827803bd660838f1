package cli

import (
	"github.com/spf13/cobra"
)

func newSnapshotRevertCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{Use: "revert VM NAME", Short: "Revert a guest to a snapshot", Hidden: true}
}
