package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/report"
	"github.com/autosnap/autosnap/internal/selector"
)

// cvStatusHeaders are cv4pve-autosnap's status columns, in its order.
var cvStatusHeaders = []string{"NODE", "VM", "TIME", "PARENT", "NAME", "DESCRIPTION", "VM STATUS"}

// runStatusCV4PVE is status in cv4pve mode: cv4pve-autosnap's seven columns in each of
// its formats (report.RenderCV4PVE), TIME as yy/MM/dd HH:mm:ss in UTC (as its API
// library converts snaptime), PARENT no-parent for none, VM STATUS X for a snapshot with
// RAM, VM a number in JSON. A selection without guests prints nothing, as cv4pve.
func (g *GlobalOptions) runStatusCV4PVE(ctx context.Context, o *StatusOptions) error {
	f := g.format()
	if !slices.Contains(report.CV4PVEFormats, f) {
		return usage(fmt.Errorf("status -o %s does not exist in cv4pve-autosnap: use Text, Html, Markdown, Json or JsonPretty (or --compat native)", f))
	}
	tf := g.tsFormat()
	if o.Label != "" {
		if err := naming.Validate(o.Label, tf); err != nil {
			return usage(err)
		}
	}
	d, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	g.IgnoreMissing = true
	guests, err := g.selectGuests(ctx, d, true)
	if errors.Is(err, selector.ErrNoMatch) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(guests) == 0 {
		return nil
	}
	rows, err := engine.Status(ctx, d, guests, o.Label, tf, nil, g.timeout(), g.MaxParallel)
	var cells [][]any
	for _, r := range rows {
		cells = append(cells, cvStatusRow(r))
	}
	if rerr := report.RenderCV4PVE(g.stdout, f, cvStatusHeaders, cells); rerr != nil {
		return rerr
	}
	return err
}

// cvStatusRow is one status row as cv4pve-autosnap shows it.
func cvStatusRow(r engine.StatusRow) []any {
	var vm any = r.VMID
	if n, err := strconv.Atoi(r.VMID); err == nil {
		vm = n
	}
	parent := r.Parent
	if parent == "" {
		parent = "no-parent"
	}
	ram := ""
	if r.VMState {
		ram = "X"
	}
	return []any{r.Node, vm, r.Time.UTC().Format("06/01/02 15:04:05"), parent, r.Name, r.Description, ram}
}
