package cli

import "github.com/spf13/cobra"

// PLACEHOLDER: bitmaps list|cleanup, replaced before this lands.
func newBitmapsCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{Use: "bitmaps", RunE: func(*cobra.Command, []string) error { return errNotBuilt }}
}
