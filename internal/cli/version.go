package cli

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
)

func newVersionCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print autosnap's version and the drivers it was built with",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(g.stdout, "autosnap %s (%s, %s/%s)\ndrivers: %s\n", Version, runtime.Version(), runtime.GOOS, runtime.GOARCH, strings.Join(driver.Registered(), ", "))
			return nil
		},
	}
}
