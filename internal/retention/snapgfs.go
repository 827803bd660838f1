package retention

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// PlanGFS is Plan with calendar rules instead of a count: it applies p (GFS.Apply) to
// a label's snapshots, existing plus planned, and returns one decision per snapshot,
// oldest first (ties by Name), with the reasons of every kept one.
//
// Items are dated by the timestamp in their names, and p.Location (which the caller
// sets to the zone names are rendered in) places them in hours, days, ISO weeks,
// months and years. now is the reference of --keep-within and of "dated after now":
// snap passes the planned snapshot's time, clean the clock.
//
// planned, when non-nil, is the snapshot about to be created: it is always kept (as
// the newest point every non-empty rule keeps it first) and its reason starts with
// "created now". Incomplete items (an earlier removal was interrupted) take no rule's
// place: they are removed, with the reason "incomplete: WHY; finishing its
// interrupted removal", as Plan does.
//
// A kept decision's Reasons are the rule that keeps it ("daily #1 (2026-11-29)"),
// then, for each coarser rule whose period it is the newest kept snapshot of and so
// why that rule skips the period ("covers weekly 2026-W48"). Reason joins them
// with ", ". A removed decision says that no rule keeps it.
//
// It fails on a policy that fails Validate, on an empty policy (wrapping
// ErrKeepsNothing), when the items that are whole would all be removed (wrapping
// ErrKeepsNothing: refusing to empty the label), and when planned's name is taken
// (wrapping ErrExists).
func PlanGFS(existing []Item, planned *Item, p GFS, now time.Time) ([]Decision, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if p.IsEmpty() {
		return nil, fmt.Errorf("%w: no --keep-… rule given; refusing to remove every snapshot", ErrKeepsNothing)
	}
	loc := p.Location
	if loc == nil {
		loc = time.Local
		p.Location = loc
	}
	byName := make(map[string]Item, len(existing)+1)
	ds := make([]Decision, 0, len(existing)+1)
	gis := make([]GFSItem, 0, len(existing)+1)
	for _, it := range existing {
		if planned != nil && it.Name == planned.Name {
			return nil, fmt.Errorf("%w: %s (taken at %s)", ErrExists, it.Name, it.Time.Format(time.RFC3339))
		}
		if it.Incomplete != "" {
			ds = append(ds, Decision{Item: it, Reason: "incomplete: " + it.Incomplete + "; finishing its interrupted removal"})
			continue
		}
		byName[it.Name] = it
		gis = append(gis, GFSItem{ID: it.Name, Time: it.Time})
	}
	if planned != nil {
		byName[planned.Name] = *planned
		gis = append(gis, GFSItem{ID: planned.Name, Time: planned.Time})
	}
	if len(gis) > 0 {
		gds, err := p.Apply(gis, now)
		if err != nil {
			return nil, err
		}
		covers := coverage(p, gds, now)
		for _, g := range gds {
			d := Decision{Item: byName[g.ID], Keep: g.Keep, Reasons: slices.Clone(g.Reasons)}
			if d.Keep {
				d.Reasons = append(d.Reasons, covers[g.ID]...)
			}
			if planned != nil && g.ID == planned.Name {
				d.New = true
				if !d.Keep {
					// Unreachable for a policy that passed IsEmpty: the newest point is
					// the first every rule takes. Kept anyway: snap never removes what it
					// has just made.
					d.Keep, d.Reasons = true, nil
				}
				d.Reasons = append([]string{"created now"}, d.Reasons...)
			}
			d.Reason = strings.Join(d.Reasons, ", ")
			ds = append(ds, d)
		}
	}
	slices.SortStableFunc(ds, func(a, b Decision) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return ds, nil
}

// coverage returns, per kept point, the "covers RULE PERIOD" reasons of the rules
// coarser than the one that keeps it whose period it is the newest kept point of.
// Points dated after now cover nothing, as in Apply.
func coverage(p GFS, ds []GFSDecision, now time.Time) map[string][]string {
	rules := p.rules()
	rank := map[string]int{"within": 0}
	for i, r := range rules {
		rank[r.name] = i
	}
	out := map[string][]string{}
	for ri, r := range rules {
		if r.n == 0 || r.key == nil {
			continue
		}
		seen := make(map[string]bool, len(ds))
		for i := len(ds) - 1; i >= 0; i-- { // newest first
			d := ds[i]
			if !d.Keep || d.Time.After(now) {
				continue
			}
			k := r.key(d.Time.In(p.Location))
			if seen[k] {
				continue
			}
			seen[k] = true
			own := ruleOf(d.Reasons)
			if own == r.name {
				continue
			}
			if or, ok := rank[own]; ok && or < ri {
				out[d.ID] = append(out[d.ID], "covers "+r.name+" "+k)
			}
		}
	}
	return out
}

// ruleOf returns the rule name that starts a GFS keep reason ("daily #2 (…)" →
// "daily", "within 7d" → "within").
func ruleOf(reasons []string) string {
	if len(reasons) == 0 {
		return ""
	}
	name, _, _ := strings.Cut(reasons[0], " ")
	return name
}
