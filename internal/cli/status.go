package cli

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/report"
)

// StatusOptions are the flags of `status`.
type StatusOptions struct {
	Label string
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
	rows, err := engine.Status(ctx, d, guests, o.Label, f, time.Local, g.timeout(), g.MaxParallel)
	t := report.Table{Columns: statusColumns}
	machine := g.machine()
	for _, r := range rows {
		var tm any = r.Time.Local().Format("2006-01-02 15:04:05")
		if machine {
			tm = r.Time.UTC()
		}
		t.Rows = append(t.Rows, []any{r.Node, r.VMID, r.VMName, tm, r.Parent, r.Name, r.Label, r.Description,
			r.VMState, string(r.Location), string(r.Consistency), r.Protected, r.Incomplete})
	}
	if rerr := report.Render(g.stdout, g.format(), t); rerr != nil {
		return rerr
	}
	return err
}
