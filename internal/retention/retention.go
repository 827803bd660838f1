// Package retention decides which of a guest's snapshots of one label to keep,
// with a reason for every decision.
//
// The policy is cv4pve-autosnap's: keep the newest N snapshots, counting the one
// about to be created. The package is pure: it never reads the clock, so a dry
// run computes exactly the plan a real run carries out.
package retention

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ErrExists is wrapped by Plan's error when the planned snapshot's name is taken.
var ErrExists = errors.New("snapshot already exists")

// Item is one snapshot as retention sees it.
type Item struct {
	Name string    `json:"name"`
	Time time.Time `json:"time"`
	// Incomplete, when not empty, says why the snapshot's data is no longer whole: an
	// earlier removal of it was interrupted (see driver.Snapshot.Incomplete).
	Incomplete string `json:"incomplete,omitempty"`
}

// Decision is what Plan decided for one item, and why.
type Decision struct {
	Item
	Keep bool `json:"keep"`
	// New marks the planned snapshot, the one not created yet.
	New    bool   `json:"new,omitempty"`
	Reason string `json:"reason"`
	// Reasons are Reason's parts when calendar rules decided (PlanGFS): the rule that
	// keeps the item, then the periods of coarser rules it covers.
	Reasons []string `json:"reasons,omitempty"`
}

// Plan keeps the newest keep items of existing plus planned and removes the rest,
// with a reason for every decision, in the style of restic's forget: kept items say
// "newest N of KEEP" (N = 1 is the newest), the planned one "created now; newest N
// of KEEP", removed ones "beyond keep KEEP".
//
// planned, when non-nil, is the snapshot about to be created: it always counts as
// one of the keep and is always kept, even if clock skew dates an existing snapshot
// after it; existing snapshots dated after it still compete for the remaining places
// by time, and their reason says they are future-dated. Incomplete items (an earlier
// removal was interrupted) take no place: they are removed, with the reason
// "incomplete: WHY; finishing its interrupted removal". Items are ordered by Time,
// ties broken by Name (byte order). The decisions come back sorted oldest to newest,
// so removals are oldest first.
//
// keep < 0 is an error; keep == 0 removes every existing item and is an error
// when planned is non-nil, since it would remove the snapshot just taken. A
// planned name equal to an existing one is an error wrapping ErrExists.
func Plan(existing []Item, planned *Item, keep int) ([]Decision, error) {
	if keep < 0 {
		return nil, fmt.Errorf("keep %d is negative: use 0 or more", keep)
	}
	if planned != nil && keep == 0 {
		return nil, fmt.Errorf("refusing --keep 0 with snap: it would remove the new snapshot %s at once; use --keep 1 or more, or clean --keep 0 to remove them all", planned.Name)
	}
	ds := make([]Decision, 0, len(existing)+1)
	for _, it := range existing {
		if planned != nil && it.Name == planned.Name {
			return nil, fmt.Errorf("%w: %s (taken at %s)", ErrExists, it.Name, it.Time.Format(time.RFC3339))
		}
		ds = append(ds, Decision{Item: it})
	}
	if planned != nil {
		ds = append(ds, Decision{Item: *planned, New: true})
	}
	slices.SortStableFunc(ds, func(a, b Decision) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})

	// The planned snapshot takes its place first, then the newest whole existing ones.
	slots := keep
	if planned != nil {
		slots--
	}
	for i := len(ds) - 1; i >= 0; i-- {
		switch {
		case ds[i].New:
			ds[i].Keep = true
		case ds[i].Incomplete != "":
		case slots > 0:
			ds[i].Keep = true
			slots--
		}
	}

	rank := 0
	for i := len(ds) - 1; i >= 0; i-- {
		d := &ds[i]
		switch {
		case d.Keep:
			rank++
			d.Reason = fmt.Sprintf("newest %d of %d", rank, keep)
			if d.New {
				d.Reason = "created now; " + d.Reason
			}
		case d.Incomplete != "":
			d.Reason = "incomplete: " + d.Incomplete + "; finishing its interrupted removal"
		default:
			d.Reason = fmt.Sprintf("beyond keep %d", keep)
		}
		if planned != nil && !d.New && d.Time.After(planned.Time) {
			d.Reason += "; dated after the new snapshot (clock skew?)"
		}
	}
	return ds, nil
}

// Removals returns the items of ds that are not kept, in order.
func Removals(ds []Decision) []Item {
	var out []Item
	for _, d := range ds {
		if !d.Keep {
			out = append(out, d.Item)
		}
	}
	return out
}

// Kept returns the decisions that keep their item, in order.
func Kept(ds []Decision) []Decision {
	var out []Decision
	for _, d := range ds {
		if d.Keep {
			out = append(out, d)
		}
	}
	return out
}
