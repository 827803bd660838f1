package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// PLACEHOLDER: replaced by the engineer who owns `policy` (issue 12/13).
func newPolicyCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:    "policy",
		Short:  "policy (not built yet)",
		Hidden: true,
		RunE:   func(*cobra.Command, []string) error { return errors.New("policy: not built yet") },
	}
}
