package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// errNotBuilt marks a command whose implementation has not landed yet.
// PLACEHOLDER: replaced by the backup engine's command before this lands.
var errNotBuilt = errors.New("not built yet")

// newBackupCommand runs a backup of the selected guests; its subcommands work on the
// repository.
func newBackupCommand(g *GlobalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Back up the selected guests into a repository of plain qcow2 chains",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return errNotBuilt },
	}
	cmd.AddCommand(newBackupListCommand(g), newBackupVerifyCommand(g), newBackupPruneCommand(g))
	return cmd
}
