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

// add registers --keep-last … --keep-within on f; what says what is kept ("snapshots").
func (o *gfsFlags) add(f *pflag.FlagSet) {
	o.set = f
	f.Var(keepCount{&o.Policy.Last}, "keep-last", "calendar retention: keep the newest N snapshots of the label (or unlimited)")
	f.Var(keepCount{&o.Policy.Hourly}, "keep-hourly", "calendar retention: keep the newest snapshot of each of N hours")
	f.Var(keepCount{&o.Policy.Daily}, "keep-daily", "calendar retention: keep the newest snapshot of each of N days")
	f.Var(keepCount{&o.Policy.Weekly}, "keep-weekly", "calendar retention: keep the newest snapshot of each of N ISO weeks")
	f.Var(keepCount{&o.Policy.Monthly}, "keep-monthly", "calendar retention: keep the newest snapshot of each of N months")
	f.Var(keepCount{&o.Policy.Yearly}, "keep-yearly", "calendar retention: keep the newest snapshot of each of N years")
	f.Var(spanValue{&o.Policy.Within}, "keep-within", "calendar retention: keep every snapshot whose name is within DURATION of now (e.g. 7d, 1y6m, 36h)")
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
