// Package engine runs the jobs users schedule: snap (create one snapshot per guest and
// apply retention) and clean (apply retention only), over many guests at once, with
// per-guest locks, hooks, timeouts and buffered per-guest output. It knows hypervisors
// only through the driver interface.
package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
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

	Label  string
	Keep   int
	Format naming.Format
	// Location is the time zone of the timestamps in names (cv4pve uses local time).
	Location *time.Location

	Memory         bool    // --state
	OnlyRunning    bool    // --only-running
	Quiesce        Quiesce // default auto
	MaxPercStorage float64 // 0 disables the storage guard
	DryRun         bool
	Debug          bool
	MaxParallel    int
	// Timeout bounds every single hypervisor operation (and waiting for a guest lock).
	Timeout time.Duration
	LockDir string
	// Watchdog guards explicit freezes: with it, a guest is frozen through the driver's
	// Quiescer only for the snapshot itself and is thawed even if autosnap dies. Without
	// it (or for drivers that are not Quiescers) the driver quiesces natively.
	Watchdog *watchdog.Client
	// HoldFrozen keeps a guest frozen this long before snapshotting (tests only: it
	// lets a test kill autosnap while a guest is frozen).
	HoldFrozen time.Duration
	// MaxChainDepth fails a guest whose disks would get more than this many overlays
	// (0: no limit).
	MaxChainDepth int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Out receives the job's output; each guest's block is written in one piece, in
	// selection order.
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

// Snap creates one snapshot named auto{label}{timestamp} on every guest and applies
// retention. The name is computed once so all guests share it.
func (j *Job) Snap(ctx context.Context, guests []driver.Guest) (*Report, error) {
	if j.Keep < 1 {
		return nil, fmt.Errorf("snap needs --keep of at least 1 (it counts the new snapshot); use clean --keep 0 to remove all")
	}
	if err := naming.Validate(j.Label, j.Format); err != nil {
		return nil, err
	}
	start := time.Now()
	name := naming.Name(j.Label, j.Format, j.now().In(j.loc()))
	j.jobHook(ctx, hook.Env{Phase: hook.SnapJobStart, VMState: j.Memory, State: true})
	results := j.forEach(ctx, guests, func(ctx context.Context, gr *guestRun) { j.snapGuest(ctx, gr, name) })
	rep := &Report{SnapName: name, Guests: results, Duration: time.Since(start)}
	j.jobHook(ctx, hook.Env{Phase: hook.SnapJobEnd, VMState: j.Memory, State: rep.Failed() == 0, Duration: rep.Duration})
	if n := rep.Failed(); n > 0 {
		return rep, fmt.Errorf("%d of %d guests failed: %w", n, len(results), ErrGuestsFailed)
	}
	return rep, nil
}

func (j *Job) snapGuest(ctx context.Context, gr *guestRun, name string) {
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

	if !j.storageOK(ctx, gr) || !j.chainOK(ctx, gr) {
		return
	}
	gr.res.Created = name
	// The quiesce decision belongs to creating: a guest that cannot be quiesced with
	// --quiesce on has failed creation, and its hook sees snap-create-abort.
	gr.hook(ctx, hook.Env{Phase: hook.SnapCreatePre, SnapName: name, VMState: j.Memory, State: true})
	gr.printf("Create snapshot: %s", name)
	quiesce, ok := j.decideQuiesce(ctx, gr)
	switch {
	case !ok:
	case j.DryRun:
		gr.res.Consistency = consistencyFor(g, quiesce)
		gr.printf("Dry run: would create %s (%s)", name, describeConsistency(gr.res.Consistency))
	default:
		ok = j.create(ctx, gr, name, quiesce)
	}
	if !ok {
		gr.res.Created = ""
		gr.hook(ctx, hook.Env{Phase: hook.SnapCreateAbort, SnapName: name, VMState: j.Memory, State: false, Duration: time.Since(gr.start)})
		return
	}
	var planned *retention.Item
	if j.DryRun {
		planned = &retention.Item{Name: name, Time: j.now()}
	}
	if !j.prune(ctx, gr, planned) {
		return
	}
	gr.hook(ctx, hook.Env{Phase: hook.SnapCreatePost, SnapName: name, VMState: j.Memory, State: true, Duration: time.Since(gr.start)})
}

func consistencyFor(g driver.Guest, quiesce bool) driver.Consistency {
	switch {
	case !g.State.Active():
		return driver.ConsistencyOffline
	case quiesce:
		return driver.ConsistencyQuiesced
	}
	return driver.ConsistencyCrash
}

func describeConsistency(c driver.Consistency) string {
	switch c {
	case driver.ConsistencyQuiesced:
		return "quiesced through the guest agent"
	case driver.ConsistencyOffline:
		return "guest shut off"
	}
	return "crash-consistent only"
}

// create takes the snapshot; with --quiesce auto a failed freeze falls back to a
// crash-consistent snapshot, and the output says so.
func (j *Job) create(ctx context.Context, gr *guestRun, name string, quiesce bool) bool {
	g := gr.res.Guest
	s, err := j.createOnce(ctx, gr, name, quiesce)
	if err != nil && quiesce && j.quiesce() == QuiesceAuto && errors.Is(err, driver.ErrAgent) && ctx.Err() == nil {
		gr.printf("WARNING: quiesce failed (%v); retrying crash-consistent", err)
		quiesce = false
		s, err = j.createOnce(ctx, gr, name, false)
	}
	if err != nil {
		gr.fail("create failed", err)
		return false
	}
	gr.res.Consistency = consistencyFor(g, quiesce)
	if s.Consistency != "" {
		gr.res.Consistency = s.Consistency
	}
	gr.printf("Snapshot %s created (%s)", name, describeConsistency(gr.res.Consistency))
	return true
}

func (j *Job) createOnce(ctx context.Context, gr *guestRun, name string, quiesce bool) (driver.Snapshot, error) {
	g := gr.res.Guest
	opts := driver.CreateOptions{Name: name, Memory: j.Memory, Quiesce: quiesce,
		Description: naming.Description(map[string]string{"consistency": string(consistencyFor(g, quiesce))})}
	if q, ok := j.Driver.(driver.Quiescer); ok && quiesce && j.Watchdog != nil {
		return j.frozenCreate(ctx, gr, q, opts)
	}
	cctx, cancel := j.opCtx(ctx)
	defer cancel()
	return j.Driver.CreateSnapshot(cctx, g, opts)
}

// freezeTimeout bounds the agent's freeze and thaw calls.
const freezeTimeout = 10 * time.Second

// frozenCreate freezes the guest's filesystems, takes the snapshot and thaws, with the
// watchdog armed for the whole window: the guest is thawed on every error path, on
// SIGINT/SIGTERM (ctx) and, through the watchdog, even if autosnap is killed.
func (j *Job) frozenCreate(ctx context.Context, gr *guestRun, q driver.Quiescer, opts driver.CreateOptions) (driver.Snapshot, error) {
	g := gr.res.Guest
	actx, cancel := context.WithTimeout(ctx, freezeTimeout)
	id, err := j.Watchdog.Arm(actx, g.Key())
	cancel()
	if err != nil {
		gr.printf("WARNING: freeze watchdog unavailable (%v); letting the hypervisor quiesce", err)
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
		if j.HoldFrozen > 0 {
			select {
			case <-time.After(j.HoldFrozen):
			case <-ctx.Done():
			}
		}
		o := opts
		o.Quiesce = false // frozen already
		cctx, cancel := j.opCtx(ctx)
		snap, cerr = j.Driver.CreateSnapshot(cctx, g, o)
		cancel()
	}
	// Thaw even after a failed freeze (the agent may have frozen some filesystems) and
	// even when ctx is done: this must not be skipped.
	terr := j.thaw(g, q)
	window := time.Since(start)
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

// thaw retries for up to freezeTimeout, independent of the job's context.
func (j *Job) thaw(g driver.Guest, q driver.Quiescer) error {
	ctx, cancel := context.WithTimeout(context.Background(), freezeTimeout)
	defer cancel()
	var err error
	for attempt := 0; ; attempt++ {
		if _, err = q.Thaw(ctx, g); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt+1) * 50 * time.Millisecond):
		}
	}
}

func (j *Job) timeout() time.Duration {
	if j.Timeout > 0 {
		return j.Timeout
	}
	return 30 * time.Second
}

// chainOK applies --max-chain-depth: the new snapshot adds one overlay per disk.
func (j *Job) chainOK(ctx context.Context, gr *guestRun) bool {
	cr, ok := j.Driver.(driver.ChainReporter)
	if j.MaxChainDepth <= 0 || !ok {
		return true
	}
	cctx, cancel := j.opCtx(ctx)
	defer cancel()
	chains, err := cr.Chains(cctx, gr.res.Guest)
	if err != nil {
		gr.fail("chain check failed", fmt.Errorf("guest %s: reading backing chains: %w", gr.res.Guest.Name, err))
		return false
	}
	for _, c := range chains {
		if overlays := len(c.Images) - 1; overlays+1 > j.MaxChainDepth {
			gr.fail("chain too deep", fmt.Errorf("guest %s: disk %s already has %d overlays; another snapshot would exceed --max-chain-depth %d: remove snapshots or run `autosnap snapshot chain collapse`", gr.res.Guest.Name, c.Disk, overlays, j.MaxChainDepth))
			return false
		}
	}
	return true
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

// storageOK applies --max-perc-storage. A guest whose storage is too full fails.
func (j *Job) storageOK(ctx context.Context, gr *guestRun) bool {
	if j.MaxPercStorage <= 0 {
		return true
	}
	sr, ok := j.Driver.(driver.StorageReporter)
	if !ok {
		return true
	}
	sctx, cancel := j.opCtx(ctx)
	defer cancel()
	us, err := sr.Storage(sctx, gr.res.Guest)
	if err != nil {
		gr.fail("storage check failed", fmt.Errorf("guest %s: checking storage: %w", gr.res.Guest.Name, err))
		return false
	}
	for _, u := range us {
		if u.Capacity == 0 {
			continue // unknown size: cannot judge, do not block
		}
		if u.Percent > j.MaxPercStorage {
			gr.fail("storage full", fmt.Errorf("guest %s: skipped: storage %s is %.1f%% full, above --max-perc-storage %g%%: free space or raise the limit", gr.res.Guest.Name, u.Name, u.Percent, j.MaxPercStorage))
			return false
		}
	}
	return true
}

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
		j.prune(ctx, gr, nil)
	})
	rep := &Report{Guests: results, Duration: time.Since(start)}
	j.jobHook(ctx, hook.Env{Phase: hook.CleanJobEnd, State: rep.Failed() == 0, Duration: rep.Duration})
	if n := rep.Failed(); n > 0 {
		return rep, fmt.Errorf("%d of %d guests failed: %w", n, len(results), ErrGuestsFailed)
	}
	return rep, nil
}
