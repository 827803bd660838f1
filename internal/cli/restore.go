package cli

import "github.com/spf13/cobra"

// PLACEHOLDER: restore, replaced before this lands.
func newRestoreCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{Use: "restore", RunE: func(*cobra.Command, []string) error { return errNotBuilt }}
}
