package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// PLACEHOLDER: replaced by the engineer who owns `history` (issue 12/13).
func newHistoryCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:    "history",
		Short:  "history (not built yet)",
		Hidden: true,
		RunE:   func(*cobra.Command, []string) error { return errors.New("history: not built yet") },
	}
}
