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
	// named is the time in the name of each snapshot of ours and protected: calendar
	// retention (Job.Retain) dates snapshots by their names, not by creation times.
	named map[string]time.Time
	// unreadable are the snapshots that are ours by their description and start with
	// auto+label but whose names no format reads: retention never removes them.
	unreadable []string
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
	l := listing{all: snaps, named: map[string]time.Time{}}
	rec := j.recognizer()
	for _, s := range snaps {
		r, ok := rec.Recognize(s.Name, s.Description, s.Created, j.Label)
		if !ok {
			if unreadable(s, j.Label) {
				l.unreadable = append(l.unreadable, s.Name)
			}
			continue
		}
		l.named[s.Name] = r.Time
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

// unreadable reports whether s looks like a snapshot of label that naming cannot
// read: our description (not recording another label) and the name auto+label+….
func unreadable(s driver.Snapshot, label string) bool {
	// The name first: it is cheap, and most snapshots a listing skips fail it.
	if !strings.HasPrefix(s.Name, naming.Prefix+label) || !naming.IsOurs(s.Description) {
		return false
	}
	rec := naming.DescriptionFields(s.Description)[naming.FieldLabel]
	return rec == "" || rec == label
}

// plan applies retention to the listing; planned is the snapshot about to be created
// (nil for clean). The listing's protected snapshots are added as kept decisions with
// their reason, in time order, so a dry run lists them. On failure the guest has
// failed.
func (j *Job) plan(gr *guestRun, l listing, planned *retention.Item) ([]retention.Decision, bool) {
	var ds []retention.Decision
	var err error
	if j.Retain != nil {
		ds, err = j.planGFS(gr, l, planned)
	} else {
		ds, err = retention.Plan(l.ours, planned, j.Keep)
	}
	if err != nil {
		gr.fail("retention", fmt.Errorf("guest %s: %w", gr.res.Guest.Name, err))
		return nil, false
	}
	for _, p := range l.protected {
		if j.Retain != nil {
			p.Time = l.named[p.Name]
		}
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

// gfs returns the job's calendar policy with its periods in the zone of the names
// when the policy names none.
func (j *Job) gfs() retention.GFS {
	p := *j.Retain
	if p.Location == nil {
		p.Location = j.loc()
	}
	return p
}

// planGFS applies Job.Retain to the label's snapshots dated by their names; the
// planned one is dated by its name too, and is "now", so that a run plans in the
// timeline later runs read back (in a repeated DST hour a name reads as its first
// occurrence). Snapshots whose names no format reads are reported and left alone.
func (j *Job) planGFS(gr *guestRun, l listing, planned *retention.Item) ([]retention.Decision, error) {
	for _, n := range l.unreadable {
		gr.printf("Skip snapshot: %s (its name does not read as auto%s + a timestamp of --timestamp-format %s; never removed)", n, j.Label, j.Format)
	}
	items := make([]retention.Item, len(l.ours))
	for i, it := range l.ours {
		it.Time = l.named[it.Name]
		items[i] = it
	}
	now := j.now()
	if planned != nil {
		p := *planned
		if t, err := j.Format.Parse(strings.TrimPrefix(p.Name, naming.Prefix+j.Label), j.loc()); err == nil {
			p.Time = t
		}
		planned, now = &p, p.Time
	}
	return retention.PlanGFS(items, planned, j.gfs(), now)
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

// checkRetain refuses a calendar policy that is invalid or keeps nothing.
func (j *Job) checkRetain() error {
	if j.Retain == nil {
		return nil
	}
	if err := j.Retain.Validate(); err != nil {
		return err
	}
	if j.Retain.IsEmpty() {
		return fmt.Errorf("%w: give at least one --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly or --keep-within", retention.ErrKeepsNothing)
	}
	return nil
}
