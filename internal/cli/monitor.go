package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// PLACEHOLDER: replaced by the engineer who owns `monitor` (issue 12/13).
func newMonitorCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:    "monitor",
		Short:  "monitor (not built yet)",
		Hidden: true,
		RunE:   func(*cobra.Command, []string) error { return errors.New("monitor: not built yet") },
	}
}
