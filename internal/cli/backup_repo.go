package cli

import "github.com/spf13/cobra"

// PLACEHOLDER: the repository commands, replaced before this lands.

func newBackupListCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{Use: "list", RunE: func(*cobra.Command, []string) error { return errNotBuilt }}
}

func newBackupVerifyCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{Use: "verify", RunE: func(*cobra.Command, []string) error { return errNotBuilt }}
}

func newBackupPruneCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{Use: "prune", RunE: func(*cobra.Command, []string) error { return errNotBuilt }}
}
