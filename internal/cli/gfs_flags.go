package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/autosnap/autosnap/internal/retention"
)

// gfsFlags are the calendar retention options snap, clean and status share.
type gfsFlags struct {
	Policy retention.GFS
	set    *pflag.FlagSet
}

// gfsFlagNames are the calendar retention options, in the order they count.
var gfsFlagNames = []string{"keep-within", "keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly"}

// add registers --keep-last … --keep-within on f for snapshots.
func (o *gfsFlags) add(f *pflag.FlagSet) {
	o.set = f
	addGFSFlags(f, &o.Policy, "calendar retention: ", "snapshot", " of the label", "whose name is")
}

// addGFSFlags registers the calendar retention options into p: lead starts each help
// text, item is what is kept ("snapshot", "point"), scope follows --keep-last's
// "newest N items" and when says how an item's time is read for --keep-within.
func addGFSFlags(f *pflag.FlagSet, p *retention.GFS, lead, item, scope, when string) {
	f.Var(keepCount{&p.Last}, "keep-last", lead+"keep the newest N "+item+"s"+scope+" (or unlimited)")
	for _, c := range []struct {
		n    *int
		name string
		unit string
	}{{&p.Hourly, "keep-hourly", "hours"}, {&p.Daily, "keep-daily", "days"}, {&p.Weekly, "keep-weekly", "ISO weeks"},
		{&p.Monthly, "keep-monthly", "months"}, {&p.Yearly, "keep-yearly", "years"}} {
		f.Var(keepCount{c.n}, c.name, lead+"keep the newest "+item+" of each of N "+c.unit)
	}
	f.Var(spanValue{&p.Within}, "keep-within", lead+"keep every "+item+" "+when+" within DURATION of now (e.g. 7d, 1y6m, 36h)")
}

// given reports whether any calendar option was on the command line.
func (o *gfsFlags) given() bool {
	for _, n := range gfsFlagNames {
		if o.set != nil && o.set.Changed(n) {
			return true
		}
	}
	return false
}

// retain returns the calendar policy to run with, or nil when none was given. keepSet
// says whether --keep was given too, which is refused: a label is kept by a count or
// by calendar rules, not both.
func (o *gfsFlags) retain(keepSet bool) (*retention.GFS, error) {
	if !o.given() {
		if !keepSet {
			return nil, usage(errors.New("give --keep N, or calendar rules (--keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within)"))
		}
		return nil, nil
	}
	if keepSet {
		return nil, usage(errors.New("--keep and --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly/--keep-within exclude each other: use --keep N for the newest N, or the calendar rules"))
	}
	p := o.Policy
	if err := p.Validate(); err != nil {
		return nil, usage(err)
	}
	if p.IsEmpty() {
		return nil, usage(fmt.Errorf("%w: every --keep-… rule given is 0; give at least one count above 0 (or unlimited) or a --keep-within duration", retention.ErrKeepsNothing))
	}
	return &p, nil
}
