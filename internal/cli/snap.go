package cli

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/hook"
)

// SnapOptions are the flags of `snap`.
type SnapOptions struct {
	Label          string
	Keep           int
	State          bool
	OnlyRunning    bool
	Script         string
	Quiesce        string
	MaxPercStorage float64
	HookTimeout    time.Duration
	MaxChainDepth  int
	StrictHooks    bool
	// KeepSet says --keep was given; Retain holds the calendar rules (--keep-daily …).
	KeepSet bool
	Retain  gfsFlags
}

func newSnapCommand(g *GlobalOptions) *cobra.Command {
	o := &SnapOptions{}
	cmd := &cobra.Command{
		Use:   "snap",
		Short: "Take one snapshot of every selected guest and remove the oldest beyond --keep",
		Long: `Take one snapshot named auto{label}{timestamp} of every selected guest, then
remove that label's oldest snapshots so that --keep remain (the new one counts).

Instead of --keep, calendar rules keep the label's snapshots as restic and Proxmox
Backup Server do: --keep-last N, --keep-hourly N, --keep-daily N, --keep-weekly N,
--keep-monthly N, --keep-yearly N (a count or unlimited) and --keep-within DURATION,
counted additively, by the timestamp in each name, in the zone names are written in
(docs/retention.md). The new snapshot is always kept; every snapshot kept says why
("daily #2 (2026-11-28), covers weekly 2026-W48"), with --dry-run for each one. A
name no format reads is reported and never removed. --keep and the calendar rules
exclude each other; rules that keep nothing are refused.

On libvirt a running or paused guest gets an external, disk-only, atomic snapshot
of all its disks, quiesced through the guest agent when it answers (--quiesce
auto); --state adds the guest's RAM. A shut-off guest gets an offline external
snapshot. Removing a snapshot merges its overlay back, so each disk's chain stays
--keep+1 images deep. Snapshots autosnap did not make are never touched.

--timeout bounds each merge too. Where the driver bounds merges by progress
(libvirt), it is the longest a merge may go without progress, so a large merge that
keeps moving completes; elsewhere it is the merge's total time. A merge cut off is
aborted with the chain intact and the snapshot kept; the next run tries again.

--max-chain-depth counts each disk's overlays as they will be after this run's
removals. With --strict-hooks a failing snap-create-pre hook stops that guest's
snapshot and a failing snap-remove-pre hook that removal (see docs/hooks.md).`,
		Example: `  autosnap --vmid @all snap --label hourly --keep 24
  autosnap --vmid 'web%,-web-test' snap --label daily --keep 7 --script /etc/autosnap/hook.sh
  autosnap --vmid @all snap --label auto --keep-hourly 24 --keep-daily 7 --keep-weekly 4 --keep-monthly 6`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			g.compat.parallelSet = cmd.Flags().Changed("max-parallel")
			o.KeepSet = cmd.Flags().Changed("keep")
			return runSnap(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Label, "label", "", "label in the snapshot name, e.g. hourly, daily (required)")
	f.IntVar(&o.Keep, "keep", 0, "snapshots of this label to keep per guest, the new one included (≥ 1; or the --keep-… calendar rules)")
	f.BoolVar(&o.State, "state", false, "include the guest's RAM (running guests)")
	f.BoolVar(&o.OnlyRunning, "only-running", false, "skip guests that are not running")
	f.StringVar(&o.Script, "script", "", "hook script run at each phase (see docs/hooks.md)")
	f.StringVar(&o.Quiesce, "quiesce", "auto", "freeze guest filesystems via the agent: auto, on, off")
	f.Float64Var(&o.MaxPercStorage, "max-perc-storage", 95, "fail a guest whose storage is fuller than this percentage")
	f.DurationVar(&o.HookTimeout, "script-timeout", hook.DefaultTimeout, "time allowed for one hook run")
	f.IntVar(&o.MaxChainDepth, "max-chain-depth", 0, "fail a guest whose disks would have more overlays than this after retention (0: no limit)")
	f.BoolVar(&o.StrictHooks, "strict-hooks", false, "a failing *-pre hook aborts that guest's snapshot or removal (default: warn, as cv4pve-autosnap)")
	o.Retain.add(f)
	_ = cmd.MarkFlagRequired("label")
	return cmd
}

func runSnap(ctx context.Context, g *GlobalOptions, o *SnapOptions) error {
	retain, err := o.Retain.retain(o.KeepSet)
	if err != nil {
		return err
	}
	if retain != nil && g.cv4pve() {
		return usage(errors.New("the calendar rules --keep-last … --keep-within are autosnap's own and not in cv4pve mode: run autosnap without --compat cv4pve, or use --keep"))
	}
	if retain == nil && o.Keep < 1 {
		return usage(errors.New("snap --keep must be at least 1 (it counts the new snapshot); to remove all of a label use clean --keep 0"))
	}
	q, err := engine.ParseQuiesce(o.Quiesce)
	if err != nil {
		return usage(err)
	}
	if o.MaxPercStorage <= 0 || o.MaxPercStorage > 100 {
		return usage(errors.New("--max-perc-storage must be in (0, 100]"))
	}
	job, err := g.newJob(o.Label, o.Keep, o.Script, o.HookTimeout)
	if err != nil {
		return err
	}
	job.Retain = retain
	if o.MaxChainDepth < 0 {
		return usage(errors.New("--max-chain-depth must be 0 (no limit) or more"))
	}
	job.Memory, job.OnlyRunning, job.Quiesce, job.MaxPercStorage = o.State, o.OnlyRunning, q, o.MaxPercStorage
	job.MaxChainDepth, job.StrictHooks = o.MaxChainDepth, o.StrictHooks
	if q != engine.QuiesceOff && !g.DryRun {
		job.Watchdog = g.newWatchdogClient()
		defer job.Watchdog.Close()
	}
	return g.runJob(ctx, job, "Snap", (*engine.Job).Snap)
}
