// Package engine runs the jobs users schedule: snap (create one snapshot per guest and
// apply retention) and clean (apply retention only), over many guests at once, with
// per-guest locks, hooks, timeouts and per-guest output kept in selection order. It
// knows hypervisors only through the driver interface.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/hook"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/retention"
	"github.com/autosnap/autosnap/internal/watchdog"
)

// Quiesce says whether to freeze guest filesystems for a snapshot.
type Quiesce string

// Quiesce modes.
const (
	// QuiesceAuto quiesces when the guest agent answers a ping, and otherwise takes a
	// crash-consistent snapshot and says so.
	QuiesceAuto Quiesce = "auto"
	// QuiesceOn fails the guest when it cannot be quiesced.
	QuiesceOn Quiesce = "on"
	// QuiesceOff never freezes.
	QuiesceOff Quiesce = "off"
)

// ParseQuiesce parses a --quiesce value.
func ParseQuiesce(s string) (Quiesce, error) {
	switch q := Quiesce(strings.ToLower(s)); q {
	case QuiesceAuto, QuiesceOn, QuiesceOff:
		return q, nil
	}
	return "", fmt.Errorf("--quiesce %q: use auto, on or off", s)
}

// Job is one snap or clean run.
type Job struct {
	Driver driver.Driver
	// Hooks runs --script; nil runs none.
	Hooks *hook.Runner

	Label string
	Keep  int
	// Retain, when set, replaces Keep with calendar (GFS) rules over the label's
	// snapshots, by the time in their names (snap/clean --keep-daily …, policies).
	Retain *retention.GFS
	Format naming.Format
	// Location is the time zone of the timestamps in names (cv4pve uses local time).
	Location *time.Location

	Memory         bool    // --state
	OnlyRunning    bool    // --only-running
	Quiesce        Quiesce // default auto
	MaxPercStorage float64 // 0 disables the storage guard
	DryRun         bool
	// StrictHooks makes a failing snap-create-pre or snap-remove-pre hook abort that
	// guest's create or removal and fail the guest (--strict-hooks); otherwise a
	// failing hook is a warning, as in cv4pve-autosnap.
	StrictHooks bool
	Debug       bool
	MaxParallel int
	// Timeout bounds every single hypervisor operation (and waiting for a guest lock).
	Timeout time.Duration
	LockDir string
	// Watchdog guards explicit freezes: with it, a guest is frozen through the driver's
	// Quiescer only for the snapshot itself and is thawed even if autosnap dies. Without
	// it (or for drivers that are not Quiescers) the driver quiesces natively.
	Watchdog *watchdog.Client
	// HoldFrozen keeps a guest frozen this long before snapshotting. Tests only, and
	// not on the command line: it lets an in-process test see a guest frozen.
	HoldFrozen time.Duration
	// MaxChainDepth fails a guest whose disks would have more than this many overlays
	// after the run, retention counted (0: no limit).
	MaxChainDepth int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Out receives the job's output; each guest's block is written in one piece, in
	// selection order, streamed while that guest is the first unfinished one.
	Out io.Writer
}

// Outcome of one guest.
type Outcome string

// Outcomes.
const (
	OutcomeOK      Outcome = "ok"
	OutcomeFailed  Outcome = "failed"
	OutcomeSkipped Outcome = "skipped" // template, --only-running: not a failure
)

// GuestResult is what happened to one guest.
type GuestResult struct {
	Guest       driver.Guest
	Outcome     Outcome
	Reason      string // why skipped or failed
	Created     string // snapshot created (or that would be, in a dry run)
	Consistency driver.Consistency
	Removed     []string // removed (or that would be)
	Err         error
	Duration    time.Duration
	// Freeze is how long the guest's filesystems were frozen by the engine (0: not
	// frozen, or frozen natively by the driver, which does not say).
	Freeze time.Duration
}

// Report is the result of a job.
type Report struct {
	SnapName string
	Guests   []GuestResult
	Duration time.Duration
}

// Failed counts the guests that failed.
func (r *Report) Failed() int {
	n := 0
	for _, g := range r.Guests {
		if g.Outcome == OutcomeFailed {
			n++
		}
	}
	return n
}

// ErrGuestsFailed is returned (wrapped) by Snap and Clean when at least one guest failed.
var ErrGuestsFailed = errors.New("some guests failed")

func (j *Job) now() time.Time {
	if j.Now != nil {
		return j.Now()
	}
	return time.Now()
}

func (j *Job) loc() *time.Location {
	if j.Location != nil {
		return j.Location
	}
	return time.Local
}

func (j *Job) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if j.Timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, j.Timeout)
}

// Snap creates one snapshot named auto{label}{timestamp} on every guest and applies
// retention. The name is computed once so all guests share it.
//
// Per guest, in order: skip or fail what cannot be snapshotted (template, unknown
// state, --only-running, the driver's own check); take the guest's lock; list its
// snapshots once and plan retention with the new snapshot counted; fail before
// changing anything when the name is taken, the storage is too full or the chains
// would end deeper than --max-chain-depth; run snap-create-pre; create (prepared
// before any freeze, see frozenCreate); remove what the plan removes; run
// snap-create-post. A dry run takes the same path and stops short of every change.
func (j *Job) Snap(ctx context.Context, guests []driver.Guest) (*Report, error) {
	if j.Keep < 1 {
		return nil, fmt.Errorf("snap needs --keep of at least 1 (it counts the new snapshot); use clean --keep 0 to remove all")
	}
	if err := naming.Validate(j.Label, j.Format); err != nil {
		return nil, err
	}
	start := time.Now()
	at := j.now().In(j.loc())
	name := naming.Name(j.Label, j.Format, at)
	j.jobHook(ctx, hook.Env{Phase: hook.SnapJobStart, VMState: j.Memory, State: true})
	results := j.forEach(ctx, guests, func(ctx context.Context, gr *guestRun) { j.snapGuest(ctx, gr, name, at) })
	rep := &Report{SnapName: name, Guests: results, Duration: time.Since(start)}
	j.jobHook(ctx, hook.Env{Phase: hook.SnapJobEnd, VMState: j.Memory, State: rep.Failed() == 0, Duration: rep.Duration})
	if n := rep.Failed(); n > 0 {
		return rep, fmt.Errorf("%d of %d guests failed: %w", n, len(results), ErrGuestsFailed)
	}
	return rep, nil
}

func (j *Job) snapGuest(ctx context.Context, gr *guestRun, name string, at time.Time) {
	g := gr.res.Guest
	switch {
	case g.Template:
		gr.skip("is template")
		return
	case g.State == driver.StateUnknown:
		gr.fail("status unknown", fmt.Errorf("guest %s: status unknown: its host %s is offline or not reachable", GuestID(g), g.Node))
		return
	case j.OnlyRunning && g.State != driver.StateRunning:
		gr.skip("'--only-running' parameter used!")
		return
	}
	if sc, ok := j.Driver.(driver.SnapshotChecker); ok {
		cctx, cancel := j.opCtx(ctx)
		err := sc.CheckSnapshot(cctx, g)
		cancel()
		if errors.Is(err, driver.ErrUnsupported) {
			gr.skip(err.Error())
			return
		}
	}
	unlock, ok := gr.lock(ctx)
	if !ok {
		return
	}
	defer unlock()

	l, ok := j.list(ctx, gr)
	if !ok {
		return
	}
	if l.has(name) {
		j.createFailed(gr, name, existsError(name, g, driver.ErrExists))
		return
	}
	plan, ok := j.plan(gr, l, &retention.Item{Name: name, Time: at})
	if !ok || !j.storageOK(ctx, gr) || !j.chainOK(ctx, gr, l, plan) {
		return
	}
	gr.res.Created = name
	if !j.DryRun && removes(plan) {
		j.prefetchMerges(ctx)
	}
	// The quiesce decision belongs to creating: a guest that cannot be quiesced with
	// --quiesce on has failed creation, and its hook sees snap-create-abort.
	if err := gr.hook(ctx, hook.Env{Phase: hook.SnapCreatePre, SnapName: name, VMState: j.Memory, State: true}); err != nil {
		gr.failHook(hook.SnapCreatePre, err, "the snapshot is not taken")
		ok = false
	} else {
		gr.printf("Create snapshot: %s", name)
		var quiesce bool
		quiesce, ok = j.decideQuiesce(ctx, gr)
		switch {
		case !ok:
		case j.DryRun:
			ok = j.dryCreate(ctx, gr, name, quiesce)
		default:
			ok = j.create(ctx, gr, name, quiesce)
		}
	}
	if !ok {
		gr.res.Created = ""
		gr.hook(ctx, hook.Env{Phase: hook.SnapCreateAbort, SnapName: name, VMState: j.Memory, State: false, Duration: time.Since(gr.start)})
		return
	}
	if !j.prune(ctx, gr, plan) {
		return
	}
	gr.hook(ctx, hook.Env{Phase: hook.SnapCreatePost, SnapName: name, VMState: j.Memory, State: true, Duration: time.Since(gr.start)})
}

// Clean removes each guest's snapshots of the label beyond --keep (0 removes all).
func (j *Job) Clean(ctx context.Context, guests []driver.Guest) (*Report, error) {
	if j.Keep < 0 {
		return nil, fmt.Errorf("--keep must be 0 or more")
	}
	if err := naming.Validate(j.Label, j.Format); err != nil {
		return nil, err
	}
	start := time.Now()
	j.jobHook(ctx, hook.Env{Phase: hook.CleanJobStart})
	results := j.forEach(ctx, guests, func(ctx context.Context, gr *guestRun) {
		g := gr.res.Guest
		switch {
		case g.Template:
			gr.skip("is template")
			return
		case g.State == driver.StateUnknown:
			gr.fail("status unknown", fmt.Errorf("guest %s: status unknown: its host %s is offline or not reachable", GuestID(g), g.Node))
			return
		}
		unlock, ok := gr.lock(ctx)
		if !ok {
			return
		}
		defer unlock()
		l, ok := j.list(ctx, gr)
		if !ok {
			return
		}
		if plan, ok := j.plan(gr, l, nil); ok {
			j.prune(ctx, gr, plan)
		}
	})
	rep := &Report{Guests: results, Duration: time.Since(start)}
	j.jobHook(ctx, hook.Env{Phase: hook.CleanJobEnd, State: rep.Failed() == 0, Duration: rep.Duration})
	if n := rep.Failed(); n > 0 {
		return rep, fmt.Errorf("%d of %d guests failed: %w", n, len(results), ErrGuestsFailed)
	}
	return rep, nil
}

// mergePrefetcher is a driver that can prepare ahead what its merges need (the
// libvirt driver's host-wide scan of image users), so that it overlaps the creates.
type mergePrefetcher interface {
	PrefetchMergeScan(ctx context.Context)
}

func removes(plan []retention.Decision) bool {
	for _, d := range plan {
		if !d.Keep {
			return true
		}
	}
	return false
}

// prefetchMerges lets the driver prepare its merges in the background once a guest's
// plan removes snapshots.
func (j *Job) prefetchMerges(ctx context.Context) {
	if p, ok := j.Driver.(mergePrefetcher); ok {
		p.PrefetchMergeScan(ctx)
	}
}
