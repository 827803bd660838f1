package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
	out   *guestOutput
	start time.Time
	// dryHookNoted is set once a dry run said that hooks do not run.
	dryHookNoted bool
}

func (gr *guestRun) printf(format string, a ...any) { fmt.Fprintf(gr.out, format+"\n", a...) }

// guestOutput holds one guest's output until every guest before it in selection order
// is done, then streams it to the job's output as it comes: the guest being shown
// writes through, the others buffer.
type guestOutput struct {
	mu   sync.Mutex
	w    io.Writer
	buf  bytes.Buffer
	live bool
}

func (o *guestOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.live {
		return o.w.Write(p)
	}
	return o.buf.Write(p)
}

// goLive writes what was buffered and lets later writes through.
func (o *guestOutput) goLive() {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, _ = o.w.Write(o.buf.Bytes())
	o.buf = bytes.Buffer{}
	o.live = true
}

// isPre reports whether a failure of the phase's hook aborts the guest's operation
// under --strict-hooks.
func isPre(p hook.Phase) bool { return p == hook.SnapCreatePre || p == hook.SnapRemovePre }

// hook runs the --script for one phase of this guest. A failing hook is a warning,
// except for a *-pre phase under --strict-hooks: then hook returns the error and the
// caller aborts that operation. In a dry run no hook runs.
func (gr *guestRun) hook(ctx context.Context, env hook.Env) error {
	j := gr.j
	if j.Hooks == nil {
		return nil
	}
	if j.DryRun {
		if j.StrictHooks && isPre(env.Phase) && !gr.dryHookNoted {
			gr.dryHookNoted = true
			gr.printf("Dry run: hooks do not run in a dry run; with --strict-hooks a failing %s hook would stop this guest's operation here", env.Phase)
		}
		return nil
	}
	g := gr.res.Guest
	env.VMID, env.VMName, env.VMType, env.Node = GuestID(g), g.Name, string(g.Kind), g.Node
	env.Label, env.Keep, env.Debug = j.Label, j.Keep, j.Debug
	if j.Retain != nil {
		env.Retention = j.Retain.String()
	}
	err := j.Hooks.Run(hookCtx(ctx, env.Phase), env, gr.out)
	if err == nil {
		return nil
	}
	if j.StrictHooks && isPre(env.Phase) {
		return err
	}
	gr.printf("WARNING: %v", err)
	return nil
}

// failHook fails the guest because its *-pre hook failed under --strict-hooks; what
// says what was therefore not done.
func (gr *guestRun) failHook(phase hook.Phase, err error, what string) {
	reason := string(phase) + " hook failed"
	var ee *hook.ExitError
	if errors.As(err, &ee) {
		reason = fmt.Sprintf("%s hook failed (exit status %d)", phase, ee.Code)
	}
	gr.fail(reason, fmt.Errorf("guest %s: %w; with --strict-hooks %s", gr.res.Guest.Name, err, what))
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

// jobHook runs the --script for a job phase; its output goes straight to the job's
// output (no guest runs then). Failures are warnings.
func (j *Job) jobHook(ctx context.Context, env hook.Env) {
	if j.Hooks == nil || j.DryRun || j.SkipJobHooks {
		return
	}
	env.Label, env.Keep, env.Debug = j.Label, j.Keep, j.Debug
	if j.Retain != nil {
		env.Retention = j.Retain.String()
	}
	if err := j.Hooks.Run(hookCtx(ctx, env.Phase), env, j.Out); err != nil {
		fmt.Fprintf(j.Out, "WARNING: %v\n", err)
	}
}

// forEach runs fn for every guest with at most MaxParallel at once, starting them in
// selection order: a guest starts only after every guest before it has started, so
// with MaxParallel 1 they run one after the other in that order. Each guest's output
// appears in one piece, in selection order: the first unfinished guest's output
// streams to Out as it is written, the others' is held until their turn.
func (j *Job) forEach(ctx context.Context, guests []driver.Guest, fn func(ctx context.Context, gr *guestRun)) []GuestResult {
	n := len(guests)
	results := make([]GuestResult, n)
	runs := make([]*guestRun, n)
	done := make([]chan struct{}, n)
	par := j.MaxParallel
	if par < 1 {
		par = 1
	}
	for i, g := range guests {
		results[i] = GuestResult{Guest: g}
		runs[i] = &guestRun{j: j, res: &results[i], out: &guestOutput{w: j.Out}}
		done[i] = make(chan struct{})
	}
	// The dispatcher takes a slot for each guest in turn and only then starts it;
	// goroutines competing for slots would start in whatever order the scheduler
	// picks (often the last guest first).
	sem := make(chan struct{}, par)
	go func() {
		for i := range guests {
			started := false
			select {
			case sem <- struct{}{}:
				// A slot may free up just as the run is interrupted: check again.
				if started = ctx.Err() == nil; !started {
					<-sem
				}
			case <-ctx.Done():
			}
			if !started {
				for k := i; k < n; k++ {
					results[k].Outcome, results[k].Err = OutcomeFailed, ctx.Err()
					results[k].Reason = "interrupted before start"
					runs[k].printf("----- VM %s: not started, the run was interrupted -----", results[k].Guest.Name)
					close(done[k])
				}
				return
			}
			go func(i int) {
				defer close(done[i])
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
	}()
	for i := range guests {
		runs[i].out.goLive()
		<-done[i]
	}
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
