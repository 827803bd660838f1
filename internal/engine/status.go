package engine

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/retention"
)

// StatusRow is one autosnap snapshot of one guest.
type StatusRow struct {
	Node        string
	VMID        string
	VMName      string
	Name        string
	Label       string
	Time        time.Time
	Parent      string
	Description string
	VMState     bool
	Location    driver.Location
	Consistency driver.Consistency
	// Incomplete, when not empty, says why the snapshot's data is not whole (see
	// driver.Snapshot.Incomplete): it must not be reverted to.
	Incomplete string
	// Protected marks a snapshot retention never removes (autosnap snapshot protect).
	Protected bool
	// Named is the timestamp in the name, which calendar retention dates it by.
	Named time.Time
	// Keep and KeepReasons are what calendar rules decide for the snapshot now (see
	// KeepStatus): the reasons it is kept, or why it would be removed.
	Keep        bool
	KeepReasons []string
}

// Status lists the autosnap (and cv4pve-autosnap) snapshots of the guests, in guest
// order and oldest first per guest. An empty label lists every label. Names are read
// with f first, then any other supported format (naming.Recognizer). The listing
// runs in one driver.ListingScope.
func Status(ctx context.Context, d driver.Driver, guests []driver.Guest, label string, f naming.Format, loc *time.Location, timeout time.Duration, parallel int) ([]StatusRow, error) {
	if loc == nil {
		loc = time.Local
	}
	if parallel < 1 {
		parallel = 1
	}
	ctx = driver.WithListingScope(ctx)
	per := make([][]StatusRow, len(guests))
	errs := make([]error, len(guests))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, g := range guests {
		if g.State == driver.StateUnknown {
			continue
		}
		wg.Add(1)
		go func(i int, g driver.Guest) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cctx, cancel := ctx, context.CancelFunc(func() {})
			if timeout > 0 {
				cctx, cancel = context.WithTimeout(ctx, timeout)
			}
			defer cancel()
			snaps, err := d.Snapshots(cctx, g)
			if err != nil {
				errs[i] = err
				return
			}
			rec := naming.Recognizer{Format: f, Loc: loc}
			// Sized for all: at fleet size the rows' growth was a fifth of status's
			// allocations, and fresh heap pages cost more than the copying.
			per[i] = make([]StatusRow, 0, len(snaps))
			for _, s := range snaps {
				r, ok := rec.Recognize(s.Name, s.Description, s.Created, label)
				if !ok {
					continue
				}
				per[i] = append(per[i], StatusRow{
					Node: g.Node, VMID: GuestID(g), VMName: g.Name, Name: s.Name, Label: r.Label,
					Time: s.Created, Parent: s.Parent, Description: firstLine(s.Description),
					VMState: s.Memory, Location: s.Location, Consistency: s.Consistency, Incomplete: s.Incomplete,
					Protected: isProtected(s), Named: r.Time,
				})
			}
		}(i, g)
	}
	wg.Wait()
	n := 0
	for _, p := range per {
		n += len(p)
	}
	rows := make([]StatusRow, 0, n)
	var failed []string
	for i := range guests {
		if errs[i] != nil {
			failed = append(failed, errs[i].Error())
		}
		rows = append(rows, per[i]...)
	}
	if len(failed) > 0 {
		return rows, fmt.Errorf("listing snapshots failed for %d guests: %s: %w", len(failed), strings.Join(failed, "; "), ErrGuestsFailed)
	}
	return rows, nil
}

// KeepStatus decides, per guest and label, what calendar rules p would keep of the
// rows now, as clean would: snapshots are dated by their names, in p.Location (the
// caller sets the zone names are written in); protected ones are kept with their
// reason and take no rule's place. A guest and label p would empty entirely (clean
// refuses that) have every row kept, with the refusal as reason.
func KeepStatus(rows []StatusRow, p retention.GFS, now time.Time) {
	type group struct{ node, vmid, label string }
	idx := map[group][]int{}
	var order []group
	for i, r := range rows {
		k := group{r.Node, r.VMID, r.Label}
		if _, ok := idx[k]; !ok {
			order = append(order, k)
		}
		idx[k] = append(idx[k], i)
	}
	for _, k := range order {
		var items []retention.Item
		for _, i := range idx[k] {
			r := &rows[i]
			if r.Protected {
				r.Keep, r.KeepReasons = true, []string{protectedReason}
				continue
			}
			items = append(items, retention.Item{Name: r.Name, Time: r.Named, Incomplete: r.Incomplete})
		}
		ds, err := retention.PlanGFS(items, nil, p, now)
		byName := map[string]retention.Decision{}
		for _, d := range ds {
			byName[d.Name] = d
		}
		for _, i := range idx[k] {
			r := &rows[i]
			if r.Protected {
				continue
			}
			if err != nil {
				r.Keep, r.KeepReasons = true, []string{"clean would refuse: " + err.Error()}
				continue
			}
			d := byName[r.Name]
			r.Keep, r.KeepReasons = d.Keep, d.Reasons
			if len(r.KeepReasons) == 0 {
				r.KeepReasons = []string{d.Reason}
			}
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}
