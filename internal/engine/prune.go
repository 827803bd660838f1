package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/hook"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/retention"
)

// recognizer reads snapshot names for this job: its format first, then any other
// supported one (see naming.Recognizer.Recognize).
func (j *Job) recognizer() naming.Recognizer {
	return naming.Recognizer{Format: j.Format, Loc: j.loc()}
}

// listing is one guest's snapshots as read once per job: all of them (for names
// already taken and chain depths) and, as retention items, those of the job's label.
// Protected snapshots of the label are not retention items: retention never removes
// them and they take no place among the kept ones.
type listing struct {
	all       []driver.Snapshot
	ours      []retention.Item
	protected []retention.Item
}

// protectedReason is the keep reason of a protected snapshot in a dry run.
const protectedReason = "protected: retention never removes it; autosnap snapshot unprotect makes it count again"

// isProtected reports whether retention must leave s alone: the driver says so, or
// its description carries the flag (for drivers that do not fill in Protected).
func isProtected(s driver.Snapshot) bool {
	return s.Protected || naming.IsProtected(s.Description)
}

func (l listing) has(name string) bool {
	for _, s := range l.all {
		if s.Name == name {
			return true
		}
	}
	return false
}

func (l listing) byName(name string) (driver.Snapshot, bool) {
	for _, s := range l.all {
		if s.Name == name {
			return s, true
		}
	}
	return driver.Snapshot{}, false
}

// list reads the guest's snapshots; on failure the guest has failed.
func (j *Job) list(ctx context.Context, gr *guestRun) (listing, bool) {
	g := gr.res.Guest
	lctx, cancel := j.opCtx(ctx)
	defer cancel()
	snaps, err := j.Driver.Snapshots(lctx, g)
	if err != nil {
		gr.fail("listing snapshots failed", err)
		return listing{}, false
	}
	l := listing{all: snaps}
	rec := j.recognizer()
	for _, s := range snaps {
		r, ok := rec.Recognize(s.Name, s.Description, s.Created, j.Label)
		if !ok {
			continue
		}
		t := r.Time
		if !s.Created.IsZero() {
			t = s.Created
		}
		it := retention.Item{Name: s.Name, Time: t, Incomplete: s.Incomplete}
		if isProtected(s) {
			l.protected = append(l.protected, it)
			continue
		}
		l.ours = append(l.ours, it)
	}
	return l, true
}

// plan applies retention to the listing; planned is the snapshot about to be created
// (nil for clean). The listing's protected snapshots are added as kept decisions with
// their reason, in time order, so a dry run lists them. On failure the guest has
// failed.
func (j *Job) plan(gr *guestRun, l listing, planned *retention.Item) ([]retention.Decision, bool) {
	ds, err := retention.Plan(l.ours, planned, j.Keep)
	if err != nil {
		gr.fail("retention", fmt.Errorf("guest %s: %w", gr.res.Guest.Name, err))
		return nil, false
	}
	for _, p := range l.protected {
		ds = append(ds, retention.Decision{Item: p, Keep: true, Reason: protectedReason})
	}
	slices.SortStableFunc(ds, func(a, b retention.Decision) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return ds, true
}

// deleteCtx bounds one removal: by --timeout, or — for drivers whose merges are
// bounded by progress (driver.StallBounded) — only by ctx, so that SIGINT/SIGTERM
// still stop it but a large merge that keeps progressing completes.
func (j *Job) deleteCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if sb, ok := j.Driver.(driver.StallBounded); ok && sb.StallBounded() {
		return context.WithCancel(ctx)
	}
	return j.opCtx(ctx)
}

// prune carries out the plan's removals, oldest first, stopping at the first failure.
// A dry run also lists every kept snapshot with the reason it is kept.
func (j *Job) prune(ctx context.Context, gr *guestRun, ds []retention.Decision) bool {
	g := gr.res.Guest
	if j.DryRun {
		for _, d := range retention.Kept(ds) {
			gr.printf("Keep snapshot: %s (%s)", d.Name, d.Reason)
		}
	}
	for _, d := range ds {
		if d.Keep {
			continue
		}
		rstart := time.Now()
		if err := gr.hook(ctx, hook.Env{Phase: hook.SnapRemovePre, SnapName: d.Name}); err != nil {
			gr.failHook(hook.SnapRemovePre, err, fmt.Sprintf("snapshot %s is not removed", d.Name))
			gr.hook(ctx, hook.Env{Phase: hook.SnapRemoveAbort, SnapName: d.Name, Duration: time.Since(rstart)})
			return false
		}
		gr.printf("Remove snapshot: %s (%s)", d.Name, d.Reason)
		if j.DryRun {
			gr.res.Removed = append(gr.res.Removed, d.Name)
			continue
		}
		dctx, cancel := j.deleteCtx(ctx)
		err := j.Driver.DeleteSnapshot(dctx, g, d.Name)
		cancel()
		if errors.Is(err, driver.ErrNotFound) {
			// Gone already: finishing an interrupted merge removed it, or someone
			// else did; either way retention's goal for it is reached.
			gr.printf("Snapshot %s was already gone", d.Name)
			err = nil
		}
		if err != nil {
			gr.fail("remove failed", err) // the driver's error names guest and snapshot
			gr.hook(ctx, hook.Env{Phase: hook.SnapRemoveAbort, SnapName: d.Name, Duration: time.Since(rstart)})
			return false
		}
		gr.res.Removed = append(gr.res.Removed, d.Name)
		gr.hook(ctx, hook.Env{Phase: hook.SnapRemovePost, SnapName: d.Name, State: true, Duration: time.Since(rstart)})
	}
	return true
}
