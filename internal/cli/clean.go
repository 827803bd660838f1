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
	// KeepSet says --keep was given; Retain holds the calendar rules (--keep-daily …).
	KeepSet bool
	Retain  gfsFlags
}

func newCleanCommand(g *GlobalOptions) *cobra.Command {
	o := &CleanOptions{}
	cmd := &cobra.Command{
		Use:   "clean",
		Short: "Remove the oldest autosnap snapshots of a label beyond --keep (0 removes all)",
		Long: `Remove each selected guest's autosnap snapshots of --label beyond the newest
--keep, oldest first. --keep 0 removes every snapshot of that label, whatever
--timestamp-format it was taken with. Snapshots autosnap (or cv4pve-autosnap) did
not make are never touched.

Instead of --keep, the calendar rules --keep-last, --keep-hourly, --keep-daily,
--keep-weekly, --keep-monthly, --keep-yearly and --keep-within keep the label's
snapshots as snap's do (docs/retention.md); each kept snapshot says why (with
--dry-run). Rules that would remove every snapshot are refused. With --strict-hooks a failing snap-remove-pre hook
stops that removal and the guest's later ones (see docs/hooks.md).`,
		Example: `  autosnap --vmid @all clean --label hourly --keep 0
  autosnap --dry-run --vmid web1 clean --label daily --keep 3
  autosnap --dry-run --vmid web1 clean --label auto --keep-daily 7 --keep-weekly 4`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			g.compat.parallelSet = cmd.Flags().Changed("max-parallel")
			o.KeepSet = cmd.Flags().Changed("keep")
			return runClean(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Label, "label", "", "label of the snapshots to prune (required)")
	f.IntVar(&o.Keep, "keep", -1, "snapshots of this label to keep per guest; 0 removes all (or the --keep-… calendar rules)")
	f.StringVar(&o.Script, "script", "", "hook script run at each phase (see docs/hooks.md)")
	f.DurationVar(&o.HookTimeout, "script-timeout", hook.DefaultTimeout, "time allowed for one hook run")
	f.BoolVar(&o.StrictHooks, "strict-hooks", false, "a failing snap-remove-pre hook aborts that removal (default: warn, as cv4pve-autosnap)")
	o.Retain.add(f)
	_ = cmd.MarkFlagRequired("label")
	return cmd
}

func runClean(ctx context.Context, g *GlobalOptions, o *CleanOptions) error {
	retain, err := o.Retain.retain(o.KeepSet)
	if err != nil {
		return err
	}
	if retain != nil && g.cv4pve() {
		return usage(errors.New("the calendar rules --keep-last … --keep-within are autosnap's own and not in cv4pve mode: run autosnap without --compat cv4pve, or use --keep"))
	}
	if retain == nil && o.Keep < 0 {
		return usage(errors.New("clean --keep must be 0 or more"))
	}
	job, err := g.newJob(o.Label, o.Keep, o.Script, o.HookTimeout)
	if err != nil {
		return err
	}
	job.Retain = retain
	job.StrictHooks = o.StrictHooks
	return g.runJob(ctx, job, "Clean", (*engine.Job).Clean)
}
