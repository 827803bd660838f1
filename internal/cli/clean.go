package cli

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/hook"
)

// CleanOptions are the flags of `clean`.
type CleanOptions struct {
	Label       string
	Keep        int
	Script      string
	HookTimeout time.Duration
	StrictHooks bool
}

func newCleanCommand(g *GlobalOptions) *cobra.Command {
	o := &CleanOptions{}
	cmd := &cobra.Command{
		Use:   "clean",
		Short: "Remove the oldest autosnap snapshots of a label beyond --keep (0 removes all)",
		Long: `Remove each selected guest's autosnap snapshots of --label beyond the newest
--keep, oldest first. --keep 0 removes every snapshot of that label, whatever
--timestamp-format it was taken with. Snapshots autosnap (or cv4pve-autosnap) did
not make are never touched. With --strict-hooks a failing snap-remove-pre hook
stops that removal and the guest's later ones (see docs/hooks.md).`,
		Example: `  autosnap --vmid @all clean --label hourly --keep 0
  autosnap --dry-run --vmid web1 clean --label daily --keep 3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			g.compat.parallelSet = cmd.Flags().Changed("max-parallel")
			return runClean(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Label, "label", "", "label of the snapshots to prune (required)")
	f.IntVar(&o.Keep, "keep", -1, "snapshots of this label to keep per guest; 0 removes all (required)")
	f.StringVar(&o.Script, "script", "", "hook script run at each phase (see docs/hooks.md)")
	f.DurationVar(&o.HookTimeout, "script-timeout", hook.DefaultTimeout, "time allowed for one hook run")
	f.BoolVar(&o.StrictHooks, "strict-hooks", false, "a failing snap-remove-pre hook aborts that removal (default: warn, as cv4pve-autosnap)")
	_ = cmd.MarkFlagRequired("label")
	_ = cmd.MarkFlagRequired("keep")
	return cmd
}

func runClean(ctx context.Context, g *GlobalOptions, o *CleanOptions) error {
	if o.Keep < 0 {
		return usage(errors.New("clean --keep must be 0 or more"))
	}
	job, err := g.newJob(o.Label, o.Keep, o.Script, o.HookTimeout)
	if err != nil {
		return err
	}
	job.StrictHooks = o.StrictHooks
	return g.runJob(ctx, job, "Clean", (*engine.Job).Clean)
}
