// Package backup is the backup engine every driver shares: for each selected guest it
// takes the guest's locks, repairs what an interrupted run left, decides the level
// (auto, full, inc, diff, copy) and says why a full is taken, quiesces through the
// freeze watchdog, has the driver's Backupper copy the disks into files the repository
// names, commits the point and removes the checkpoints no chain needs any more. What is
// specific to a hypervisor lives behind driver.Backupper; the files belong to the
// repository (Store).
package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/hook"
)

// Guard arms the freeze watchdog for a guest before a freeze and disarms it after the
// thaw (watchdog.Client implements it).
type Guard interface {
	Arm(ctx context.Context, key string) (string, error)
	Disarm(ctx context.Context, id string) error
}

// Job is one backup run over many guests.
type Job struct {
	Driver driver.Driver
	Store  Store
	// Target is the repository directory, for messages and hooks.
	Target string
	Level  Level
	// Quiesce freezes running guests' filesystems for the instant the job starts;
	// default auto.
	Quiesce engine.Quiesce
	// IncludeDisks, when not empty, are the only disks backed up; ExcludeDisks are
	// left out.
	IncludeDisks, ExcludeDisks []string
	// Compress rewrites each new disk file with qcow2 compressed clusters (see
	// compress) before the point is committed.
	Compress    bool
	MaxParallel int
	DryRun      bool
	Debug       bool
	Hooks       *hook.Runner
	// StrictHooks makes a failing backup-pre hook fail the guest before anything is
	// written.
	StrictHooks bool
	// Guard is the freeze watchdog; without it no guest is frozen (--quiesce on then
	// fails the guest, auto takes a crash-consistent backup and says so).
	Guard Guard
	// Timeout bounds each hypervisor call other than the backup itself, and waiting
	// for a lock.
	Timeout time.Duration
	LockDir string
	Now     func() time.Time
	Out     io.Writer
	// Progress shows the copy's progress; nil shows none.
	Progress Progress
	Version  string
}

// Outcome of one guest.
type Outcome = engine.Outcome

// Result is what happened to one guest.
type Result struct {
	Guest       driver.Guest
	Outcome     Outcome
	Reason      string // why failed or skipped
	Point       string // the point created (or that would be)
	Level       driver.BackupLevel
	FullReason  string // why a full was taken
	Consistency driver.Consistency
	Bytes       uint64
	Err         error
	Duration    time.Duration
}

// Report is the result of a run.
type Report struct {
	Guests   []Result
	Duration time.Duration
}

// Failed counts the guests that failed.
func (r *Report) Failed() int {
	n := 0
	for _, g := range r.Guests {
		if g.Outcome == engine.OutcomeFailed {
			n++
		}
	}
	return n
}

func (j *Job) now() time.Time {
	if j.Now != nil {
		return j.Now()
	}
	return time.Now()
}

func (j *Job) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if j.Timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, j.Timeout)
}

// Run backs up every guest, at most MaxParallel at once. Each guest's output is one
// block, in selection order. It returns an error wrapping engine.ErrGuestsFailed when
// a guest failed.
func (j *Job) Run(ctx context.Context, guests []driver.Guest) (*Report, error) {
	if j.Level == "" {
		j.Level = LevelAuto
	}
	if _, err := ParseLevel(string(j.Level)); err != nil {
		return nil, err
	}
	start := time.Now()
	results := j.forEach(ctx, guests, j.backupGuest)
	if j.Progress != nil {
		j.Progress.Wait()
	}
	rep := &Report{Guests: results, Duration: time.Since(start)}
	if n := rep.Failed(); n > 0 {
		return rep, fmt.Errorf("%d of %d guests failed: %w", n, len(results), engine.ErrGuestsFailed)
	}
	return rep, nil
}

// run carries one guest through the job.
type run struct {
	j     *Job
	res   *Result
	out   *orderedOutput
	start time.Time
}

func (r *run) printf(format string, a ...any) { fmt.Fprintf(r.out, format+"\n", a...) }

func (r *run) fail(reason string, err error) {
	r.res.Outcome, r.res.Reason, r.res.Err = engine.OutcomeFailed, reason, err
	r.printf("ERROR: %v", err)
}

// backupGuest is one guest's backup; see the package doc for the order of steps.
func (j *Job) backupGuest(ctx context.Context, r *run) {
	g := r.res.Guest
	switch {
	case g.Template:
		r.res.Outcome, r.res.Reason = engine.OutcomeSkipped, "is template"
		r.printf("Skip VM is template")
		return
	case g.State == driver.StateUnknown:
		r.fail("status unknown", fmt.Errorf("guest %s: status unknown: its host %s is offline or not reachable", g.Name, g.Node))
		return
	}
	b, ok := j.Driver.(driver.Backupper)
	if !ok {
		r.fail("unsupported", fmt.Errorf("guest %s: the %s driver cannot take backups: %w", g.Name, j.Driver.Name(), driver.ErrUnsupported))
		return
	}
	lctx, cancel := j.opCtx(ctx)
	dir := j.LockDir
	if dir == "" {
		dir = engine.DefaultLockDir()
	}
	unlock, err := engine.LockGuest(lctx, dir, g.Key())
	cancel()
	if err != nil {
		r.fail("locked", fmt.Errorf("guest %s: %w", g.Name, err))
		return
	}
	defer unlock()
	gs, err := j.Store.Guest(g, j.Driver.Name())
	if err != nil {
		r.fail("repository", fmt.Errorf("guest %s: opening its directory in %s: %w", g.Name, j.Target, err))
		return
	}
	lctx, cancel = j.opCtx(ctx)
	unlockRepo, err := gs.Lock(lctx)
	cancel()
	if err != nil {
		r.fail("locked", fmt.Errorf("guest %s: locking its directory in %s: %w", g.Name, j.Target, err))
		return
	}
	defer unlockRepo()
	if !j.DryRun {
		did, err := gs.Repair(ctx)
		for _, d := range did {
			r.printf("Repaired: %s", d)
		}
		if err != nil {
			r.fail("repair failed", fmt.Errorf("guest %s: repairing its directory in %s: %w", g.Name, j.Target, err))
			return
		}
	}
	sctx, cancel := j.opCtx(ctx)
	source := b.BackupSource
	lazy, deferred := b.(deferredValidator)
	if deferred && !j.DryRun {
		source = lazy.BackupSourceUnvalidated
	}
	src, err := source(sctx, g)
	cancel()
	if err != nil {
		r.fail("source", fmt.Errorf("guest %s: reading its disks and checkpoints: %w", g.Name, err))
		return
	}
	disks, err := j.selectDisks(src.Disks)
	if err != nil {
		r.fail("disk selection", fmt.Errorf("guest %s: %w", g.Name, err))
		return
	}
	points, err := gs.Points()
	if err != nil {
		r.fail("repository", fmt.Errorf("guest %s: listing its points in %s: %w", g.Name, j.Target, err))
		return
	}
	infos := pointInfos(points)
	// Checkpoints of ours that no chain needs (left by a crash between creating a
	// checkpoint and committing its point, or between a commit and the cleanup) go
	// first: removing one merges its changes into the one before, so the chain's
	// checkpoint still covers them.
	src.Checkpoints = j.dropCheckpoints(ctx, r, b, src.Checkpoints, infos)
	for retried := false; ; retried = true {
		if !j.attempt(ctx, r, b, gs, src, infos, disks, retried) {
			return
		}
	}
}

// attempt decides the level and takes the backup; it reports true when the backup did
// not start because the checkpoint it was to start from proved unusable only then
// (deferredValidator) and !retried: src then marks the checkpoint unusable, and the
// caller attempts again (a full, or the refusal of an explicit inc).
func (j *Job) attempt(ctx context.Context, r *run, b driver.Backupper, gs GuestStore, src driver.BackupSource, infos []PointInfo, disks []driver.BackupDisk, retried bool) bool {
	g := r.res.Guest
	dec, err := Decide(j.Level, infos, src.Checkpoints, disks)
	if err != nil {
		r.fail("level", fmt.Errorf("guest %s: %w", g.Name, err))
		return false
	}
	r.res.Level, r.res.FullReason = dec.Level, dec.Reason
	started := j.now().UTC()
	id := pointID(started, dec.Level)
	r.res.Point = id
	for _, d := range disks {
		if why := dec.DiskFull[d.Name]; why != "" {
			verb := "Copying"
			if j.DryRun {
				verb = "Dry run: would copy"
			}
			r.printf("%s disk %s whole in this %s: %s", verb, d.Name, dec.Level, why)
		}
	}
	if j.DryRun {
		r.printf("Dry run: would take %s backup %s of %s into %s%s", article(dec.Level), id, diskNames(disks), j.Target, describe(dec))
		r.res.Consistency = driver.ConsistencyUnknown
		return false
	}
	quiesce, ok := j.decideQuiesce(ctx, r)
	if !ok {
		return false
	}
	if dec.Reason != "" && dec.Level == driver.LevelFull {
		r.printf("Taking a full backup: %s", dec.Reason)
	}
	if err := j.hook(ctx, r, hook.BackupPre, true, dec); err != nil {
		r.fail("backup-pre hook failed", fmt.Errorf("guest %s: %w; with --strict-hooks no backup is taken", g.Name, err))
		return false
	}
	meta := Meta{
		ID: id, Level: dec.Level, Chain: dec.Chain, Parent: dec.Parent,
		Started: started, Config: src.Config, AutosnapVersion: j.Version,
	}
	if dec.Level == driver.LevelFull {
		meta.Chain = id
	}
	for _, d := range disks {
		md := MetaDisk{Name: d.Name, Format: "qcow2", VirtualSize: d.VirtualSize}
		if dec.Level == driver.LevelFull {
			md.FullReason = dec.Reason
		}
		if why := dec.DiskFull[d.Name]; why != "" {
			md.FullReason = why
		}
		meta.Disks = append(meta.Disks, md)
	}
	if err := j.take(ctx, r, b, gs, meta, dec, disks, src.Checkpoints, quiesce); err != nil {
		var uc unusableCheckpoint
		if !retried && dec.Since != "" && errors.As(err, &uc) {
			if name, why := uc.UnusableCheckpoint(); name == dec.Since {
				if i := slices.IndexFunc(src.Checkpoints, func(c driver.Checkpoint) bool { return c.Name == name }); i >= 0 {
					j.hook(ctx, r, hook.BackupAbort, false, dec)
					src.Checkpoints[i].Unusable = why
					r.res.Consistency = ""
					return true
				}
			}
		}
		r.fail("backup failed", err)
		j.hook(ctx, r, hook.BackupAbort, false, dec)
		return false
	}
	j.hook(ctx, r, hook.BackupPost, true, dec)
	return false
}

// deferredValidator is a Backupper that can list a guest's checkpoints without judging
// their usability up front (a costly hypervisor job per checkpoint) because its Backup
// checks the checkpoint it starts from atomically before anything starts, and fails
// with an error that has unusableCheckpoint when it cannot be used.
type deferredValidator interface {
	BackupSourceUnvalidated(ctx context.Context, g driver.Guest) (driver.BackupSource, error)
}

// unusableCheckpoint is an error of a Backup that did not start because the checkpoint
// it was to start from cannot be used; why is in driver.Checkpoint.Unusable's words.
type unusableCheckpoint interface {
	UnusableCheckpoint() (name, why string)
}

// take writes, compresses and commits the point; on any error it aborts the pending
// point and removes the checkpoint it asked for, so the next run starts clean.
func (j *Job) take(ctx context.Context, r *run, b driver.Backupper, gs GuestStore, meta Meta, dec Decision, disks []driver.BackupDisk, cpsBefore []driver.Checkpoint, quiesce bool) (err error) {
	g := r.res.Guest
	p, err := gs.Begin(meta)
	if err != nil {
		return fmt.Errorf("guest %s: starting point %s in %s: %w", g.Name, meta.ID, j.Target, err)
	}
	defer func() {
		if err == nil {
			return
		}
		if aerr := p.Abort(); aerr != nil {
			r.printf("WARNING: removing the partial point %s: %v (the next run removes it)", meta.ID, aerr)
		}
		if meta.Checkpoint != "" {
			dctx, cancel := j.opCtx(context.WithoutCancel(ctx))
			derr := b.DeleteCheckpoint(dctx, g, meta.Checkpoint)
			cancel()
			if derr != nil && !errors.Is(derr, driver.ErrNotFound) {
				r.printf("WARNING: removing checkpoint %s after the failure: %v (the next run removes it)", meta.Checkpoint, derr)
			}
		}
	}()
	// The checkpoint is named after the point's final ID (the repository adds a suffix
	// when two points start within one second), so names never collide.
	meta.ID = p.ID()
	r.res.Point = meta.ID
	if dec.Level != driver.LevelCopy {
		meta.Checkpoint = j.checkpointPrefix() + meta.ID
	}
	crash.Point(CrashBegun)
	req := driver.BackupRequest{Level: dec.Level, Since: dec.Since, Checkpoint: meta.Checkpoint}
	for _, d := range disks {
		t := driver.BackupTarget{Disk: d.Name, File: p.File(d.Name)}
		if dec.Level == driver.LevelInc || dec.Level == driver.LevelDiff {
			t.Backing = p.Backing(d.Name)
		}
		req.Targets = append(req.Targets, t)
	}
	r.res.Consistency = driver.ConsistencyCrash
	if !g.State.Active() {
		r.res.Consistency = driver.ConsistencyOffline
	}
	if quiesce {
		req.Freeze = j.freezer(r)
	}
	var bar Bar
	if j.Progress != nil {
		bar = j.Progress.Bar(fmt.Sprintf("%s %s", g.Name, dec.Level))
	}
	var once sync.Once
	req.Progress = func(done, total uint64) {
		once.Do(func() { crash.Point(CrashCopying) })
		if bar != nil {
			bar.Update(done, total)
		}
	}
	res, err := b.Backup(ctx, g, req)
	if bar != nil {
		bar.Done(err == nil)
	}
	if err != nil {
		return fmt.Errorf("guest %s: %s backup failed: %w", g.Name, dec.Level, err)
	}
	crash.Point(CrashCopied)
	for _, n := range res.Bytes {
		r.res.Bytes += n
	}
	if j.Compress {
		for _, t := range req.Targets {
			if err := compress(ctx, t.File, t.Backing); err != nil {
				return fmt.Errorf("guest %s: compressing %s: %w", g.Name, t.File, err)
			}
		}
	}
	meta.Finished = j.now().UTC()
	meta.Consistency = r.res.Consistency
	pt, err := p.Commit(ctx, meta)
	if err != nil {
		return fmt.Errorf("guest %s: committing point %s in %s: %w", g.Name, meta.ID, j.Target, err)
	}
	r.res.Point = pt.ID
	crash.Point(CrashCommitted)
	r.printf("Backup %s (%s) of %s complete: %s copied, %s", pt.ID, dec.Level, diskNames(disks), humanBytes(r.res.Bytes), r.res.Consistency.Describe())
	points, perr := gs.Points()
	if perr != nil {
		r.printf("WARNING: listing points after the backup: %v; unneeded checkpoints stay until the next run", perr)
		return nil
	}
	// The guest's checkpoints now are those seen before plus the new one: no second
	// listing needed.
	cps := cpsBefore
	if meta.Checkpoint != "" {
		cps = append(slices.Clone(cps), driver.Checkpoint{Name: meta.Checkpoint})
	}
	j.dropCheckpoints(ctx, r, b, cps, pointInfos(points))
	return nil
}

// dropCheckpoints removes this repository's checkpoints that the points' chains no
// longer need (NeededCheckpoints) and returns the ones left. A dry run only says what
// it would remove.
func (j *Job) dropCheckpoints(ctx context.Context, r *run, b driver.Backupper, cps []driver.Checkpoint, points []PointInfo) []driver.Checkpoint {
	if j.Store.Tag() == "" {
		return cps // a dry run without a repository: no checkpoint is this one's
	}
	prefix := j.checkpointPrefix()
	keep := NeededCheckpoints(points)
	var left []driver.Checkpoint
	for _, c := range cps {
		if !strings.HasPrefix(c.Name, prefix) || slices.Contains(keep, c.Name) {
			left = append(left, c)
			continue
		}
		why := "no complete point has it: an interrupted backup left it, or its point was pruned"
		if slices.ContainsFunc(points, func(p PointInfo) bool { return p.Checkpoint == c.Name }) {
			why = "the chain no longer needs it"
		}
		if j.DryRun {
			r.printf("Dry run: would remove checkpoint %s (%s)", c.Name, why)
			continue
		}
		dctx, cancel := j.opCtx(ctx)
		err := b.DeleteCheckpoint(dctx, r.res.Guest, c.Name)
		cancel()
		if err != nil && !errors.Is(err, driver.ErrNotFound) {
			r.printf("WARNING: could not remove checkpoint %s: %v (the next run tries again)", c.Name, err)
			left = append(left, c)
			continue
		}
		r.printf("Removed checkpoint %s (%s)", c.Name, why)
	}
	return left
}

// checkpointPrefix starts the names of the checkpoints this repository's backups
// create; checkpoints of other repositories (and not autosnap's) are never touched.
func (j *Job) checkpointPrefix() string { return "autosnap-" + j.Store.Tag() + "-" }

// pointID is a point's name, sortable by time.
func pointID(t time.Time, l driver.BackupLevel) string {
	return t.UTC().Format("20060102T150405Z") + "-" + string(l)
}

// selectDisks applies --include-disk and --exclude-disk.
func (j *Job) selectDisks(all []driver.BackupDisk) ([]driver.BackupDisk, error) {
	names := map[string]bool{}
	for _, d := range all {
		names[d.Name] = true
	}
	for _, n := range append(slices.Clone(j.IncludeDisks), j.ExcludeDisks...) {
		if !names[n] {
			return nil, fmt.Errorf("no disk %s (the guest has %s): fix --include-disk/--exclude-disk", n, diskNames(all))
		}
	}
	var out []driver.BackupDisk
	for _, d := range all {
		if len(j.IncludeDisks) > 0 && !slices.Contains(j.IncludeDisks, d.Name) || slices.Contains(j.ExcludeDisks, d.Name) {
			continue
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no disk left to back up (the guest has %s): fix --include-disk/--exclude-disk", diskNames(all))
	}
	return out, nil
}

func pointInfos(points []Point) []PointInfo {
	out := make([]PointInfo, len(points))
	for i, p := range points {
		out[i] = p.PointInfo
	}
	return out
}

func diskNames(disks []driver.BackupDisk) string {
	n := make([]string, len(disks))
	for i, d := range disks {
		n[i] = d.Name
	}
	return strings.Join(n, ", ")
}

func describe(d Decision) string {
	switch {
	case d.Level == driver.LevelFull && d.Reason != "":
		return ": full because " + d.Reason
	case d.Level == driver.LevelInc || d.Level == driver.LevelDiff:
		return fmt.Sprintf(" on %s (changes since checkpoint %s)", d.Parent, d.Since)
	}
	return ""
}

// article is the level with its indefinite article: "a full", "an inc".
func article(l driver.BackupLevel) string {
	if l == driver.LevelInc {
		return "an inc"
	}
	return "a " + string(l)
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// hook runs --script for a backup phase. A failure is a warning, except backup-pre
// under --strict-hooks, which returns it.
func (j *Job) hook(ctx context.Context, r *run, phase hook.Phase, state bool, dec Decision) error {
	if j.Hooks == nil || j.DryRun {
		return nil
	}
	g := r.res.Guest
	env := hook.Env{
		Phase: phase, VMID: engine.GuestID(g), VMName: g.Name, VMType: string(g.Kind), Node: g.Node,
		SnapName: r.res.Point, State: state, Debug: j.Debug,
		Extra: []string{
			"AUTOSNAP_BACKUP_TARGET=" + j.Target,
			"AUTOSNAP_BACKUP_POINT=" + r.res.Point,
			"AUTOSNAP_BACKUP_LEVEL=" + string(dec.Level),
			"AUTOSNAP_BACKUP_REASON=" + dec.Reason,
		},
	}
	if phase != hook.BackupPre {
		env.Duration = time.Since(r.start)
	}
	hctx := ctx
	if phase != hook.BackupPre {
		hctx = context.WithoutCancel(ctx)
	}
	err := j.Hooks.Run(hctx, env, r.out)
	if err == nil {
		return nil
	}
	if j.StrictHooks && phase == hook.BackupPre {
		return err
	}
	r.printf("WARNING: %v", err)
	return nil
}

// forEach runs fn for every guest, at most MaxParallel at once, each guest's output
// one block in selection order (the first unfinished guest's streams).
func (j *Job) forEach(ctx context.Context, guests []driver.Guest, fn func(ctx context.Context, r *run)) []Result {
	out := j.Out
	if j.Progress != nil {
		out = j.Progress.Writer(out)
	}
	n := len(guests)
	results := make([]Result, n)
	runs := make([]*run, n)
	done := make([]chan struct{}, n)
	sem := make(chan struct{}, max(j.MaxParallel, 1))
	var wg sync.WaitGroup
	for i, g := range guests {
		results[i] = Result{Guest: g}
		runs[i] = &run{j: j, res: &results[i], out: &orderedOutput{w: out}}
		done[i] = make(chan struct{})
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer close(done[i])
			r := runs[i]
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				r.res.Outcome, r.res.Err, r.res.Reason = engine.OutcomeFailed, ctx.Err(), "interrupted before start"
				r.printf("----- VM %s: not started, the run was interrupted -----", g.Name)
				return
			}
			defer func() { <-sem }()
			r.start = time.Now()
			r.printf("----- VM %s %s %s (%s) -----", engine.GuestID(g), g.Kind, g.State, g.Node+"/"+g.Name)
			fn(ctx, r)
			r.res.Duration = time.Since(r.start)
			if r.res.Outcome == "" {
				r.res.Outcome = engine.OutcomeOK
			}
			r.printf("VM execution %s", r.res.Duration.Round(time.Millisecond))
		}(i)
	}
	for i := range guests {
		runs[i].out.goLive()
		<-done[i]
	}
	wg.Wait()
	return results
}

// orderedOutput holds a guest's output until the guests before it are done, then
// writes through.
type orderedOutput struct {
	mu   sync.Mutex
	w    io.Writer
	buf  []byte
	live bool
}

func (o *orderedOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.live {
		return o.w.Write(p)
	}
	o.buf = append(o.buf, p...)
	return len(p), nil
}

func (o *orderedOutput) goLive() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.buf) > 0 {
		_, _ = o.w.Write(o.buf)
	}
	o.buf, o.live = nil, true
}
