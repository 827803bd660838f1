package cli

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/report"
	"github.com/autosnap/autosnap/internal/retention"
)

// StatusOptions are the flags of `status`.
type StatusOptions struct {
	Label string
	// Retain holds calendar rules (--keep-daily …): given, status shows what they
	// keep of each snapshot and why.
	Retain gfsFlags
}

func newStatusCommand(g *GlobalOptions) *cobra.Command {
	o := &StatusOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List the autosnap snapshots of the selected guests (all guests without --vmid)",
		Long: `List the snapshots autosnap (or cv4pve-autosnap) made on the selected guests,
oldest first per guest, whatever --timestamp-format they were taken with.

JSON (-o json|jsonpretty) is an array of objects with the keys:
  node         host of the guest
  vmid         numeric id, or the name of a libvirt domain that is not running
  vmname       guest name
  name         snapshot name
  label        label parsed from the name
  time         creation time, RFC 3339
  parent       parent snapshot, "" for none
  description  first line of the description (autosnap or cv4pve-autosnap)
  vmstate      true when the snapshot holds the guest's RAM
  location     internal | external | mixed
  consistency  quiesced | crash | offline | memory (RAM saved with the disks) |
               "" (unknown, e.g. made by cv4pve)
  protected    true when retention never removes it (autosnap snapshot protect)
  incomplete   why the snapshot's data is not whole (an interrupted merge that
               removes it; the next run finishes it): do not revert to it; "" when whole

With calendar rules (--keep-last, --keep-hourly, --keep-daily, --keep-weekly,
--keep-monthly, --keep-yearly, --keep-within; see snap) a KEEP column shows what
clean with the same rules would do now to each snapshot, per guest and label, and
why: "keep (daily #1 (2026-11-29), covers weekly 2026-W48)" or "remove (…)". JSON
then has two more keys:
  keep          true when the rules keep the snapshot
  keep_reasons  the reasons, as an array of strings

In cv4pve mode (--compat cv4pve, or run as cv4pve-autosnap) the columns are
cv4pve-autosnap's: NODE, VM, TIME (yy/MM/dd HH:mm:ss, UTC), PARENT (no-parent),
NAME, DESCRIPTION, VM STATUS (X with RAM), in -o Text, Html, Markdown, Json or
JsonPretty; JSON keys are those headers, VM a number (docs/cv4pve-mode.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStatus(cmd.Context(), g, o)
		},
	}
	cmd.Flags().StringVar(&o.Label, "label", "", "only this label")
	o.Retain.add(cmd.Flags())
	return cmd
}

var statusColumns = []report.Column{
	{Header: "NODE", Key: "node"}, {Header: "VM", Key: "vmid"}, {Header: "VM NAME", Key: "vmname"},
	{Header: "TIME", Key: "time"}, {Header: "PARENT", Key: "parent"}, {Header: "NAME", Key: "name"},
	{Header: "LABEL", Key: "label"}, {Header: "DESCRIPTION", Key: "description"}, {Header: "VM STATE", Key: "vmstate"},
	{Header: "LOCATION", Key: "location"}, {Header: "CONSISTENCY", Key: "consistency"}, {Header: "PROTECTED", Key: "protected"},
	{Header: "INCOMPLETE", Key: "incomplete"},
}

func runStatus(ctx context.Context, g *GlobalOptions, o *StatusOptions) error {
	var retain *retention.GFS
	if o.Retain.given() {
		var err error
		if retain, err = o.Retain.retain(false); err != nil {
			return err
		}
		if g.cv4pve() {
			return usage(errors.New("the calendar rules --keep-last … --keep-within are autosnap's own and not in cv4pve mode: run autosnap without --compat cv4pve"))
		}
	}
	if g.cv4pve() {
		return g.runStatusCV4PVE(ctx, o)
	}
	f := g.tsFormat()
	if o.Label != "" {
		if err := naming.Validate(o.Label, f); err != nil {
			return usage(err)
		}
	}
	d, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	guests, err := g.selectGuests(ctx, d, true)
	if err != nil {
		return err
	}
	// The zone and clock of the names, as snap and clean read them (tests adjust them
	// through the job hook, for the calendar rules only).
	clock := &engine.Job{Location: time.Local, Now: time.Now}
	if retain != nil && g.adjustJob != nil {
		g.adjustJob(clock)
	}
	rows, err := engine.Status(ctx, d, guests, o.Label, f, clock.Location, g.timeout(), g.MaxParallel)
	machine := g.machine()
	columns := statusColumns
	if retain != nil {
		p := *retain
		if p.Location == nil {
			p.Location = clock.Location
		}
		engine.KeepStatus(rows, p, clock.Now())
		if machine {
			columns = append(slices.Clone(columns), report.Column{Header: "KEEP", Key: "keep"}, report.Column{Header: "KEEP REASONS", Key: "keep_reasons"})
		} else {
			columns = append(slices.Clone(columns), report.Column{Header: "KEEP", Key: "keep"})
		}
	}
	t := report.Table{Columns: columns, Rows: make([][]any, 0, len(rows))}
	for _, r := range rows {
		var tm any = r.Time.Local().Format("2006-01-02 15:04:05")
		if machine {
			tm = r.Time.UTC()
		}
		row := []any{r.Node, r.VMID, r.VMName, tm, r.Parent, r.Name, r.Label, r.Description,
			r.VMState, string(r.Location), string(r.Consistency), r.Protected, r.Incomplete}
		switch {
		case retain == nil:
		case machine:
			row = append(row, r.Keep, r.KeepReasons)
		default:
			row = append(row, keepCell(r))
		}
		t.Rows = append(t.Rows, row)
	}
	if rerr := report.Render(g.stdout, g.format(), t); rerr != nil {
		return rerr
	}
	return err
}

// keepCell is the KEEP column's text: "keep (REASONS)" or "remove (WHY)".
func keepCell(r engine.StatusRow) string {
	verb := "remove"
	if r.Keep {
		verb = "keep"
	}
	return verb + " (" + strings.Join(r.KeepReasons, ", ") + ")"
}
