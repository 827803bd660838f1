package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/report"
)

// newJob validates what snap and clean share and builds the engine job.
func (g *GlobalOptions) newJob(label string, keep int, script string, hookTimeout time.Duration) (*engine.Job, error) {
	f := g.tsFormat()
	if err := naming.Validate(label, f); err != nil {
		return nil, usage(err)
	}
	hooks := g.hookRunner(script, hookTimeout)
	return &engine.Job{
		Hooks: hooks, Label: label, Keep: keep, Format: f, DryRun: g.DryRun, Debug: g.Debug,
		MaxParallel: g.MaxParallel, Timeout: g.timeout(),
	}, nil
}

// runJob connects, selects, runs the job and prints its report.
func (g *GlobalOptions) runJob(ctx context.Context, job *engine.Job, action string, run func(*engine.Job, context.Context, []driver.Guest) (*engine.Report, error)) error {
	if g.cv4pve() {
		return g.runJobCV4PVE(ctx, job, action, run)
	}
	d, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	guests, err := g.selectGuests(ctx, d, false)
	if err != nil {
		return err
	}
	job.Driver = d
	machine := g.machine()
	job.Out = g.stdout
	if machine {
		job.Out = g.stderr // the JSON report alone goes to stdout
	}
	keep := fmt.Sprint(job.Keep)
	if job.Retain != nil {
		keep = job.Retain.String()
	}
	fmt.Fprintf(job.Out, "ACTION %s\nHost: %s\nVMs: %s\nLabel: %s\nKeep: %s\nTimeout: %d sec.\nTimestamp format: %s\n",
		action, g.Host, g.VMID, job.Label, keep, g.Timeout, g.TimestampFormat)
	if g.DryRun {
		fmt.Fprintln(job.Out, "Dry run: nothing will be changed and no hook runs")
	}
	if g.adjustJob != nil {
		g.adjustJob(job)
	}
	rep, jobErr := run(job, ctx, guests)
	if rep != nil {
		fmt.Fprintf(job.Out, "Total execution %s\n", rep.Duration.Round(time.Millisecond))
		if machine {
			if err := printJobReport(g, rep); err != nil {
				return err
			}
		}
	}
	return jobErr
}

func printJobReport(g *GlobalOptions, rep *engine.Report) error {
	t := report.Table{Columns: []report.Column{
		{Header: "NODE", Key: "node"}, {Header: "VMID", Key: "vmid"}, {Header: "VM NAME", Key: "vmname"},
		{Header: "OUTCOME", Key: "outcome"}, {Header: "REASON", Key: "reason"}, {Header: "CREATED", Key: "created"},
		{Header: "CONSISTENCY", Key: "consistency"}, {Header: "REMOVED", Key: "removed"}, {Header: "ERROR", Key: "error"},
		{Header: "SECONDS", Key: "seconds"},
	}}
	for _, r := range rep.Guests {
		var errText any
		if r.Err != nil {
			errText = r.Err.Error()
		}
		removed := r.Removed
		if removed == nil {
			removed = []string{}
		}
		t.Rows = append(t.Rows, []any{r.Guest.Node, engine.GuestID(r.Guest), r.Guest.Name, string(r.Outcome), r.Reason, r.Created,
			string(r.Consistency), removed, errText, r.Duration.Seconds()})
	}
	return report.Render(g.stdout, g.format(), t)
}
