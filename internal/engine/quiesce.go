package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/retry"
	"github.com/autosnap/autosnap/internal/watchdog"
)

// consistencyFor is what a snapshot of g taken by this job holds: the guest's RAM with
// --state on a live guest, else frozen filesystems when quiesced, else a crash image.
func (j *Job) consistencyFor(g driver.Guest, quiesce bool) driver.Consistency {
	switch {
	case !g.State.Active():
		return driver.ConsistencyOffline
	case j.Memory:
		return driver.ConsistencyMemory
	case quiesce:
		return driver.ConsistencyQuiesced
	}
	return driver.ConsistencyCrash
}

// createOptions are the options of the job's snapshot of g. The description records
// the consistency, and the label and format the name was built with (so any later run
// reads the name back, whatever its --timestamp-format).
func (j *Job) createOptions(g driver.Guest, name string, quiesce bool) driver.CreateOptions {
	fields := naming.NameFields(j.Label, j.Format)
	maps.Copy(fields, map[string]string{"consistency": string(j.consistencyFor(g, quiesce))})
	return driver.CreateOptions{Name: name, Memory: j.Memory, Quiesce: quiesce, Description: naming.Description(fields)}
}

// createFailed fails the guest after a failed create (or prepare), saying plainly
// when the name is taken.
func (j *Job) createFailed(gr *guestRun, name string, err error) {
	var w wrapped
	if errors.Is(err, driver.ErrExists) && !errors.As(err, &w) {
		err = existsError(name, gr.res.Guest, err)
	}
	if errors.Is(err, driver.ErrExists) {
		gr.fail("name exists", err)
		return
	}
	gr.fail("create failed", err)
}

// existsError says that the name is taken; it wraps err (which wraps
// driver.ErrExists) and repeats err's text unless it is driver.ErrExists itself.
func existsError(name string, g driver.Guest, err error) error {
	msg := fmt.Sprintf("snapshot %s already exists on guest %s (two runs within one timestamp unit? use a finer --timestamp-format)", name, g.Name)
	if err != driver.ErrExists {
		msg += ": " + err.Error()
	}
	return wrapped{msg, err}
}

// wrapped is an error with its own text that still unwraps to err.
type wrapped struct {
	msg string
	err error
}

func (w wrapped) Error() string { return w.msg }
func (w wrapped) Unwrap() error { return w.err }

// create takes the snapshot; with --quiesce auto a failed freeze falls back to a
// crash-consistent snapshot, and the output says so. The driver's notes on the new
// snapshot are shown as warnings.
func (j *Job) create(ctx context.Context, gr *guestRun, name string, quiesce bool) bool {
	g := gr.res.Guest
	s, err := j.createOnce(ctx, gr, name, quiesce)
	if err != nil && quiesce && j.quiesce() == QuiesceAuto && errors.Is(err, driver.ErrAgent) && ctx.Err() == nil {
		gr.printf("WARNING: quiesce failed (%v); retrying crash-consistent", err)
		quiesce = false
		s, err = j.createOnce(ctx, gr, name, false)
	}
	if err != nil {
		j.createFailed(gr, name, err)
		return false
	}
	gr.res.Consistency = j.consistencyFor(g, quiesce)
	if s.Consistency != "" {
		gr.res.Consistency = s.Consistency
	}
	gr.printf("Snapshot %s created (%s)", name, gr.res.Consistency.Describe())
	for _, n := range s.Notes {
		gr.printf("WARNING: %s", n)
	}
	return true
}

// dryCreate shows what create would do. A driver that can prepare a snapshot checks
// it for real (and releases it unused), so a dry run fails where the real run would.
func (j *Job) dryCreate(ctx context.Context, gr *guestRun, name string, quiesce bool) bool {
	g := gr.res.Guest
	opts := j.createOptions(g, name, quiesce)
	opts.DryRun = true
	if p, ok := j.Driver.(driver.SnapshotPreparer); ok {
		pctx, cancel := j.opCtx(ctx)
		ps, err := p.PrepareSnapshot(pctx, g, opts)
		cancel()
		if err != nil {
			j.createFailed(gr, name, err)
			return false
		}
		ps.Close()
	}
	gr.res.Consistency = j.consistencyFor(g, quiesce)
	gr.printf("Dry run: would create %s (%s)", name, gr.res.Consistency.Describe())
	return true
}

// prepared is a snapshot ready to be taken: take creates it, release gives back what
// preparing held (safe to call more than once, and after take).
type prepared struct {
	take    func(ctx context.Context) (driver.Snapshot, error)
	release func()
}

// frozenPreparer is a driver that can prepare a snapshot further when the caller will
// take it inside a freeze (the libvirt driver creates the overlays beforehand).
type frozenPreparer interface {
	PrepareFrozenSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.PreparedSnapshot, error)
}

// prepare does the driver's lookups and checks before any freeze when the driver can
// (driver.SnapshotPreparer), so that only the snapshot call itself runs while frozen;
// frozen says the snapshot will be taken inside a freeze.
func (j *Job) prepare(ctx context.Context, g driver.Guest, opts driver.CreateOptions, frozen bool) (prepared, error) {
	if fp, ok := j.Driver.(frozenPreparer); ok && frozen {
		pctx, cancel := j.opCtx(ctx)
		ps, err := fp.PrepareFrozenSnapshot(pctx, g, opts)
		cancel()
		if err != nil {
			return prepared{}, err
		}
		return prepared{take: ps.Create, release: sync.OnceFunc(ps.Close)}, nil
	}
	p, ok := j.Driver.(driver.SnapshotPreparer)
	if !ok {
		return prepared{
			take:    func(ctx context.Context) (driver.Snapshot, error) { return j.Driver.CreateSnapshot(ctx, g, opts) },
			release: func() {},
		}, nil
	}
	pctx, cancel := j.opCtx(ctx)
	ps, err := p.PrepareSnapshot(pctx, g, opts)
	cancel()
	if err != nil {
		return prepared{}, err
	}
	return prepared{take: ps.Create, release: sync.OnceFunc(ps.Close)}, nil
}

func (j *Job) createOnce(ctx context.Context, gr *guestRun, name string, quiesce bool) (driver.Snapshot, error) {
	g := gr.res.Guest
	opts := j.createOptions(g, name, quiesce)
	q, canFreeze := j.Driver.(driver.Quiescer)
	if !quiesce || !canFreeze || j.Watchdog == nil {
		p, err := j.prepare(ctx, g, opts, false)
		if err != nil {
			return driver.Snapshot{}, err
		}
		defer p.release()
		cctx, cancel := j.opCtx(ctx)
		defer cancel()
		return p.take(cctx)
	}
	return j.frozenCreate(ctx, gr, q, opts)
}

// freezeTimeout bounds the agent's freeze and thaw calls.
const freezeTimeout = 10 * time.Second

// frozenCreate prepares the snapshot, then freezes the guest's filesystems, takes the
// snapshot and thaws, with the watchdog armed from just before the freeze: only the
// snapshot call runs while frozen. The guest is thawed on every error path, on
// SIGINT/SIGTERM (ctx) and, through the watchdog, even if autosnap is killed; the
// prepared snapshot is released on every path.
func (j *Job) frozenCreate(ctx context.Context, gr *guestRun, q driver.Quiescer, opts driver.CreateOptions) (driver.Snapshot, error) {
	g := gr.res.Guest
	o := opts
	o.Quiesce = false // frozen by us
	p, err := j.prepare(ctx, g, o, true)
	if err != nil {
		return driver.Snapshot{}, err
	}
	defer p.release()
	actx, cancel := context.WithTimeout(ctx, freezeTimeout)
	id, err := j.Watchdog.Arm(actx, g.Key())
	cancel()
	if err != nil {
		gr.printf("WARNING: freeze watchdog unavailable (%v); letting the hypervisor quiesce", err)
		p.release() // the driver may hold the guest until then
		cctx, cancel := j.opCtx(ctx)
		defer cancel()
		return j.Driver.CreateSnapshot(cctx, g, opts)
	}
	start := time.Now()
	fctx, cancel := context.WithTimeout(ctx, min(freezeTimeout, j.timeout()))
	n, ferr := q.Freeze(fctx, g)
	cancel()
	var snap driver.Snapshot
	var cerr error
	if ferr == nil {
		crash.Point(crash.FreezeFrozen)
		if j.HoldFrozen > 0 {
			select {
			case <-time.After(j.HoldFrozen):
			case <-ctx.Done():
			}
		}
		cctx, cancel := j.opCtx(ctx)
		snap, cerr = p.take(cctx)
		cancel()
	}
	// Thaw even after a failed freeze (the agent may have frozen some filesystems) and
	// even when ctx is done: this must not be skipped.
	terr := j.thaw(g, q)
	window := time.Since(start)
	gr.res.Freeze = window
	if terr != nil {
		// Leave the watchdog armed: it keeps trying until the bound.
		gr.printf("ERROR: guest %s may still be frozen: thaw failed: %v; the watchdog retries within %s", g.Name, terr, watchdog.DefaultBound)
		return snap, fmt.Errorf("guest %s: thaw failed: %w", g.Name, terr)
	}
	dctx, cancel := context.WithTimeout(context.Background(), freezeTimeout)
	derr := j.Watchdog.Disarm(dctx, id)
	cancel()
	if errors.Is(derr, watchdog.ErrFired) && cerr == nil {
		gr.printf("WARNING: the guest stayed frozen longer than %s and the watchdog thawed it: snapshot %s may be only crash-consistent", watchdog.DefaultBound, opts.Name)
	}
	if ferr != nil {
		return snap, fmt.Errorf("guest %s: freezing filesystems failed: %w", g.Name, ferr)
	}
	if cerr == nil {
		gr.printf("Filesystems frozen for %s (%d filesystems)", window.Round(100*time.Microsecond), n)
	}
	return snap, cerr
}

// thaw retries with the retry policy for up to freezeTimeout, independent of the
// job's context.
func (j *Job) thaw(g driver.Guest, q driver.Quiescer) error {
	ctx, cancel := context.WithTimeout(context.Background(), freezeTimeout)
	defer cancel()
	return retry.Do(ctx, retry.Default, func() error {
		_, err := q.Thaw(ctx, g)
		return err
	})
}

func (j *Job) timeout() time.Duration {
	if j.Timeout > 0 {
		return j.Timeout
	}
	return 30 * time.Second
}

func (j *Job) quiesce() Quiesce {
	if j.Quiesce == "" {
		return QuiesceAuto
	}
	return j.Quiesce
}

// decideQuiesce pings the agent of a running guest. A guest found frozen (left so by a
// crashed earlier run or another tool) is thawed with a warning first, whatever the
// mode. ok=false means the guest failed.
func (j *Job) decideQuiesce(ctx context.Context, gr *guestRun) (quiesce, ok bool) {
	g := gr.res.Guest
	mode := j.quiesce()
	if !g.State.Active() {
		return false, true
	}
	pinger, can := j.Driver.(driver.AgentPinger)
	var err error
	switch {
	case g.State != driver.StateRunning:
		err = fmt.Errorf("guest is %s", g.State)
	case !can:
		err = fmt.Errorf("the %s driver cannot reach guest agents: %w", j.Driver.Name(), driver.ErrUnsupported)
	default:
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = pinger.AgentPing(pctx, g)
		cancel()
	}
	if err == nil {
		j.thawIfFrozen(ctx, gr)
	}
	// A memory snapshot is restored together with RAM, so freezing adds nothing.
	if mode == QuiesceOff || j.Memory {
		return false, true
	}
	if err == nil {
		return true, true
	}
	if mode == QuiesceOn {
		gr.fail("cannot quiesce", fmt.Errorf("guest %s: --quiesce on, but the guest agent does not answer (%v): install and start qemu-guest-agent in the guest, or use --quiesce auto", g.Name, err))
		return false, false
	}
	gr.printf("Guest agent not available (%v): snapshot will be crash-consistent only", err)
	return false, true
}

func (j *Job) thawIfFrozen(ctx context.Context, gr *guestRun) {
	q, ok := j.Driver.(driver.Quiescer)
	if !ok || j.DryRun {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	frozen, err := q.FrozenState(sctx, gr.res.Guest)
	cancel()
	if err != nil || !frozen {
		return
	}
	if err := j.thaw(gr.res.Guest, q); err != nil {
		gr.printf("WARNING: guest %s was found frozen and could not be thawed: %v", gr.res.Guest.Name, err)
		return
	}
	gr.printf("WARNING: guest %s was found with frozen filesystems (left by an interrupted run or another tool); thawed them", gr.res.Guest.Name)
}
