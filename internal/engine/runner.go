package engine

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/hook"
)

// guestRun carries one guest's state through a job.
type guestRun struct {
	j     *Job
	res   *GuestResult
	out   *bytes.Buffer
	start time.Time
}

func (gr *guestRun) printf(format string, a ...any) { fmt.Fprintf(gr.out, format+"\n", a...) }

func (gr *guestRun) hook(ctx context.Context, env hook.Env) {
	j := gr.j
	if j.Hooks == nil || j.DryRun {
		return
	}
	g := gr.res.Guest
	env.VMID, env.VMName, env.VMType, env.Node = GuestID(g), g.Name, string(g.Kind), g.Node
	env.Label, env.Keep, env.Debug = j.Label, j.Keep, j.Debug
	if err := j.Hooks.Run(hookCtx(ctx, env.Phase), env, gr.out); err != nil {
		gr.printf("WARNING: %v", err)
	}
}

// hookCtx lets the phases that report an outcome run even after SIGINT/SIGTERM, so
// monitoring hooks learn about the interrupted run (bounded by the hook's timeout).
func hookCtx(ctx context.Context, p hook.Phase) context.Context {
	switch p {
	case hook.SnapCreateAbort, hook.SnapRemoveAbort, hook.SnapJobEnd, hook.CleanJobEnd:
		return context.WithoutCancel(ctx)
	}
	return ctx
}

// GuestID is the VMID a hook and status show: the numeric id where there is one,
// otherwise the guest's name (libvirt domains that are not running have no id).
func GuestID(g driver.Guest) string {
	if g.ID > 0 {
		return strconv.Itoa(g.ID)
	}
	return g.Name
}

func (j *Job) jobHook(ctx context.Context, env hook.Env) {
	if j.Hooks == nil || j.DryRun {
		return
	}
	env.Label, env.Keep, env.Debug = j.Label, j.Keep, j.Debug
	var buf bytes.Buffer
	if err := j.Hooks.Run(hookCtx(ctx, env.Phase), env, &buf); err != nil {
		fmt.Fprintf(&buf, "WARNING: %v\n", err)
	}
	_, _ = j.Out.Write(buf.Bytes())
}

// forEach runs fn for every guest with at most MaxParallel at once and writes each
// guest's buffered output in selection order as soon as it and its predecessors are done.
func (j *Job) forEach(ctx context.Context, guests []driver.Guest, fn func(ctx context.Context, gr *guestRun)) []GuestResult {
	n := len(guests)
	results := make([]GuestResult, n)
	runs := make([]*guestRun, n)
	done := make([]chan struct{}, n)
	par := j.MaxParallel
	if par < 1 {
		par = 1
	}
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i, g := range guests {
		results[i] = GuestResult{Guest: g}
		runs[i] = &guestRun{j: j, res: &results[i], out: &bytes.Buffer{}}
		done[i] = make(chan struct{})
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer close(done[i])
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				results[i].Outcome, results[i].Err = OutcomeFailed, ctx.Err()
				results[i].Reason = "interrupted before start"
				runs[i].printf("----- VM %s: not started, the run was interrupted -----", results[i].Guest.Name)
				return
			}
			defer func() { <-sem }()
			gr := runs[i]
			gr.start = time.Now()
			g := gr.res.Guest
			gr.printf("----- VM %s %s %s (%s) -----", GuestID(g), g.Kind, g.State, g.Node+"/"+g.Name)
			fn(ctx, gr)
			gr.res.Duration = time.Since(gr.start)
			if gr.res.Outcome == "" {
				gr.res.Outcome = OutcomeOK
			}
			gr.printf("VM execution %s", gr.res.Duration.Round(time.Millisecond))
		}(i)
	}
	for i := range guests {
		<-done[i]
		_, _ = j.Out.Write(runs[i].out.Bytes())
	}
	wg.Wait()
	return results
}

func (gr *guestRun) fail(reason string, err error) {
	gr.res.Outcome, gr.res.Reason, gr.res.Err = OutcomeFailed, reason, err
	if err != nil {
		gr.printf("ERROR: %v", err)
	} else {
		gr.printf("ERROR: %s", reason)
	}
}

func (gr *guestRun) skip(reason string) {
	gr.res.Outcome, gr.res.Reason = OutcomeSkipped, reason
	gr.printf("Skip VM %s", reason)
}

// lock takes the guest's cross-process lock; on failure the guest has failed.
func (gr *guestRun) lock(ctx context.Context) (func(), bool) {
	lctx, cancel := gr.j.opCtx(ctx)
	defer cancel()
	dir := gr.j.LockDir
	if dir == "" {
		dir = DefaultLockDir()
	}
	unlock, err := LockGuest(lctx, dir, gr.res.Guest.Key())
	if err != nil {
		gr.fail("locked", fmt.Errorf("guest %s: %w", gr.res.Guest.Name, err))
		return nil, false
	}
	return unlock, true
}
