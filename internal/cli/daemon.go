package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// PLACEHOLDER: replaced by the engineer who owns `daemon` (issue 12/13).
func newDaemonCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:    "daemon",
		Short:  "daemon (not built yet)",
		Hidden: true,
		RunE:   func(*cobra.Command, []string) error { return errors.New("daemon: not built yet") },
	}
}
