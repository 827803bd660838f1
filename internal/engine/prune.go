package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/hook"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/retention"
)

// ours lists the guest's snapshots made by autosnap (or cv4pve-autosnap) with the
// job's label, as retention items.
func (j *Job) ours(ctx context.Context, g driver.Guest) ([]retention.Item, error) {
	lctx, cancel := j.opCtx(ctx)
	defer cancel()
	snaps, err := j.Driver.Snapshots(lctx, g)
	if err != nil {
		return nil, err
	}
	var items []retention.Item
	for _, s := range snaps {
		if !naming.IsOurs(s.Description) {
			continue
		}
		t, ok := naming.Match(s.Name, j.Label, j.Format, j.loc())
		if !ok {
			continue
		}
		if !s.Created.IsZero() {
			t = s.Created
		}
		items = append(items, retention.Item{Name: s.Name, Time: t})
	}
	return items, nil
}

// prune removes the guest's snapshots of the label beyond --keep, oldest first,
// stopping at the first failure.
func (j *Job) prune(ctx context.Context, gr *guestRun, planned *retention.Item) bool {
	g := gr.res.Guest
	items, err := j.ours(ctx, g)
	if err != nil {
		gr.fail("listing snapshots failed", err)
		return false
	}
	plan, err := retention.Plan(items, planned, j.Keep)
	if err != nil {
		gr.fail("retention", fmt.Errorf("guest %s: %w", g.Name, err))
		return false
	}
	for _, it := range retention.Removals(plan) {
		rstart := time.Now()
		gr.hook(ctx, hook.Env{Phase: hook.SnapRemovePre, SnapName: it.Name})
		gr.printf("Remove snapshot: %s", it.Name)
		gr.res.Removed = append(gr.res.Removed, it.Name)
		if j.DryRun {
			continue
		}
		dctx, cancel := j.opCtx(ctx)
		err := j.Driver.DeleteSnapshot(dctx, g, it.Name)
		cancel()
		if err != nil {
			gr.res.Removed = gr.res.Removed[:len(gr.res.Removed)-1]
			gr.fail("remove failed", err)
			gr.hook(ctx, hook.Env{Phase: hook.SnapRemoveAbort, SnapName: it.Name, Duration: time.Since(rstart)})
			return false
		}
		gr.hook(ctx, hook.Env{Phase: hook.SnapRemovePost, SnapName: it.Name, State: true, Duration: time.Since(rstart)})
	}
	return true
}
