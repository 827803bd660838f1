package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/backup"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/hook"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/repo"
	"github.com/autosnap/autosnap/internal/retention"
	"github.com/autosnap/autosnap/internal/schedule"
	"github.com/autosnap/autosnap/internal/watchdog"
)

// recordTimeout bounds one history write; writes use a context of their own so that
// a stopping daemon still records how its jobs ended.
const recordTimeout = 30 * time.Second

// jobRun is one running job.
type jobRun struct {
	d       *Daemon
	cfg     *policy.Config
	e       *entry
	id      int64
	prev    time.Time // the job's previous run (zero: none known)
	conn    driver.Config
	drv     driver.Driver
	wd      *watchdog.Client
	log     *slog.Logger
	timeout time.Duration
}

// runJob runs one job over the policy's guests and records it. stop ends the
// dispatch of guests not yet started; running guests are cancelled by d.work.
func (d *Daemon) runJob(stop context.Context, cfg *policy.Config, e *entry, trigger string, prev time.Time) {
	t0 := time.Now()
	log := d.log.With("policy", e.key.policy, "kind", string(e.key.kind))
	j := &jobRun{d: d, cfg: cfg, e: e, prev: prev, log: log, timeout: d.o.Timeout}
	if e.pol.Timeout > 0 {
		j.timeout = e.pol.Timeout
	}
	rctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
	id, err := d.o.Recorder.Begin(rctx, history.Job{Policy: e.key.policy, Kind: e.key.kind, Trigger: trigger,
		Started: d.clock.Now(), Outcome: history.Running})
	cancel()
	if err != nil {
		log.Error("recording the job's start failed; running it anyway", "err", err)
	}
	j.id = id
	log = log.With("job", id)
	j.log = log
	log.Info("job started", "trigger", trigger)

	runs, jobErr := j.run(stop)
	outcome := history.OK
	var errText string
	var failed []string
	for _, g := range runs {
		switch g.Outcome {
		case history.Failed:
			failed = append(failed, g.Guest)
			if outcome == history.OK {
				outcome = history.Failed
			}
		case history.Aborted:
			outcome = history.Aborted
		}
	}
	switch {
	case jobErr != nil:
		outcome, errText = history.Failed, jobErr.Error()
		if errors.Is(jobErr, context.Canceled) || d.work.Err() != nil {
			outcome = history.Aborted
		}
	case outcome == history.Aborted:
		errText = "the daemon stopped before every guest was done"
	case len(failed) > 0:
		errText = fmt.Sprintf("%d of %d guests failed: %s", len(failed), len(runs), strings.Join(failed, ", "))
	}
	rctx, cancel = context.WithTimeout(context.Background(), recordTimeout)
	if err := d.o.Recorder.End(rctx, id, outcome, errText, d.clock.Now()); err != nil {
		log.Error("recording the job's end failed", "err", err)
	}
	cancel()
	took := time.Since(t0)
	d.metrics.jobDuration.WithLabelValues(e.key.policy, string(e.key.kind)).Observe(took.Seconds())
	d.metrics.jobsTotal.WithLabelValues(e.key.policy, string(e.key.kind), string(outcome)).Inc()
	if outcome != history.OK {
		d.mu.Lock()
		d.failedJobs++
		d.mu.Unlock()
		log.Error("job ended", "outcome", string(outcome), "err", errText, "seconds", took.Seconds())
		return
	}
	log.Info("job ended", "outcome", string(outcome), "guests", len(runs), "seconds", took.Seconds())
}

// run connects, selects the guests and runs them, at most MaxParallel at once.
func (j *jobRun) run(stop context.Context) ([]history.GuestRun, error) {
	d, e := j.d, j.e
	conn, err := ConnectionConfig(j.cfg, e.pol.Host)
	if err != nil {
		return nil, err
	}
	conn.Timeout = j.timeout
	j.conn = conn
	cctx, cancel := context.WithTimeout(d.work, j.timeout)
	drv, err := d.o.Connect(cctx, conn)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("policy %s: connecting to %s: %w", e.key.policy, conn.Host, err)
	}
	defer drv.Close()
	j.drv = drv
	lctx, cancel := context.WithTimeout(d.work, j.timeout)
	all, err := drv.Guests(lctx)
	if err == nil && e.sel.NeedsTags() {
		err = driver.LoadTags(lctx, drv, all)
	}
	cancel()
	if err != nil {
		return nil, fmt.Errorf("policy %s: listing the guests of %s: %w", e.key.policy, conn.Host, err)
	}
	res, err := e.sel.Select(all)
	for _, u := range res.Unmatched {
		j.log.Warn("vmid token matches no guest", "token", u)
	}
	if err != nil {
		return nil, fmt.Errorf("policy %s: vmid %q: %w", e.key.policy, e.pol.VMID, err)
	}
	if d.o.Watchdog != nil && j.quiesces() {
		j.wd = d.o.Watchdog(conn)
		if j.wd != nil {
			defer j.wd.Close()
		}
	}
	par := max(e.pol.MaxParallel, 1)
	sem := make(chan struct{}, par)
	runs := make([]history.GuestRun, len(res.Guests))
	var wg sync.WaitGroup
	for i, g := range res.Guests {
		release, err := acquire(stop, sem)
		if err != nil {
			for k := i; k < len(res.Guests); k++ {
				runs[k] = j.notStarted(res.Guests[k])
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer release()
			runs[i] = j.guest(stop, g)
		}()
	}
	wg.Wait()
	return runs, nil
}

func (j *jobRun) quiesces() bool {
	q := ""
	switch {
	case j.e.key.kind == history.KindSnapshot && j.e.pol.Snapshot != nil:
		q = j.e.pol.Snapshot.Quiesce
	case j.e.key.kind == history.KindBackup && j.e.pol.Backup != nil:
		q = j.e.pol.Backup.Quiesce
	}
	return !strings.EqualFold(q, string(engine.QuiesceOff))
}

// notStarted is the record of a guest the daemon stopped before it began.
func (j *jobRun) notStarted(g driver.Guest) history.GuestRun {
	now := j.d.clock.Now()
	gr := history.GuestRun{Host: j.conn.Host, Guest: g.Name, Started: now, Ended: now, Outcome: history.Aborted,
		Error: "not started: the daemon is stopping"}
	j.record(gr)
	return gr
}

func (j *jobRun) record(gr history.GuestRun) {
	rctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
	defer cancel()
	if err := j.d.o.Recorder.Guest(rctx, j.id, gr); err != nil {
		j.log.Error("recording a guest's run failed", "guest", gr.Guest, "err", err)
	}
}

// guest runs one guest once it holds the guest, a slot on its host and a slot of the
// daemon, records it and updates metrics and notifications.
func (j *jobRun) guest(stop context.Context, g driver.Guest) history.GuestRun {
	d := j.d
	unlock, err := d.guests.lock(stop, g.Key())
	if err != nil {
		return j.notStarted(g)
	}
	defer unlock()
	releaseHost, err := acquire(stop, d.hostSem(j.conn.Host))
	if err != nil {
		return j.notStarted(g)
	}
	defer releaseHost()
	releaseAll, err := acquire(stop, d.global)
	if err != nil {
		return j.notStarted(g)
	}
	defer releaseAll()
	if stop.Err() != nil {
		return j.notStarted(g)
	}
	gr := history.GuestRun{Host: j.conn.Host, Guest: g.Name, Started: d.clock.Now()}
	var out syncBuffer
	switch j.e.key.kind {
	case history.KindSnapshot:
		j.snapshot(g, &gr, &out)
	case history.KindBackup:
		j.backup(g, &gr, &out)
	}
	gr.Ended = d.clock.Now()
	if gr.Outcome == history.Failed && d.work.Err() != nil {
		gr.Outcome = history.Aborted
	}
	j.record(gr)
	log := j.log.With("guest", g.Name, "outcome", string(gr.Outcome))
	if gr.Error != "" {
		log = log.With("err", gr.Error)
	}
	if len(gr.Created) > 0 {
		log = log.With("created", gr.Created)
	}
	if len(gr.Removed) > 0 {
		log = log.With("removed", gr.Removed)
	}
	if gr.Outcome == history.Failed || gr.Outcome == history.Aborted {
		log.Error("guest failed")
	} else {
		log.Info("guest done")
	}
	d.log.Debug("engine output", "policy", j.e.key.policy, "guest", g.Name, "output", out.String())

	pol, kind := j.e.key.policy, string(j.e.key.kind)
	switch gr.Outcome {
	case history.OK:
		d.metrics.lastSuccess.WithLabelValues(pol, kind, g.Name).Set(float64(gr.Ended.UnixNano()) / 1e9)
	case history.Failed:
		d.metrics.failures.WithLabelValues(pol, g.Name).Inc()
	}
	if gr.Freeze > 0 {
		d.metrics.freeze.WithLabelValues(pol).Observe(gr.Freeze.Seconds())
	}
	if gr.Bytes > 0 {
		d.metrics.backupBytes.WithLabelValues(pol, g.Name).Add(float64(gr.Bytes))
	}
	if gr.Outcome == history.OK || gr.Outcome == history.Failed {
		d.notifier.observe(Event{Policy: pol, Kind: kind, Host: j.conn.Host, Guest: g.Name, Error: gr.Error,
			JobID: j.id, Time: gr.Ended, Daemon: hostname()}, gr.Outcome == history.Failed)
	}
	return gr
}

func (j *jobRun) hooks() *hook.Runner {
	if j.e.pol.Script == "" {
		return nil
	}
	return &hook.Runner{Path: j.e.pol.Script}
}

func (j *jobRun) location() *time.Location {
	if j.cfg.Location != nil {
		return j.cfg.Location
	}
	return time.Local
}

// snapshot runs the snapshot engine for one guest and counts the label's snapshots
// afterwards.
func (j *jobRun) snapshot(g driver.Guest, gr *history.GuestRun, out *syncBuffer) {
	d, rule := j.d, j.e.pol.Snapshot
	label := rule.Label
	if label == "" {
		label = j.e.pol.Name
	}
	q, err := engine.ParseQuiesce(orDefault(rule.Quiesce, string(engine.QuiesceAuto)))
	if err != nil {
		gr.Outcome, gr.Error = history.Failed, fmt.Sprintf("policy %s: %v", j.e.key.policy, err)
		return
	}
	keep := rule.Keep
	if keep.Location == nil {
		keep.Location = j.location()
	}
	job := &engine.Job{
		Driver: j.drv, Hooks: j.hooks(), Label: label, Keep: max(keep.Last, 1), Retain: &keep,
		Format: d.o.Format, Location: j.location(), Memory: rule.State, OnlyRunning: rule.OnlyRunning,
		Quiesce: q, MaxPercStorage: 95, MaxParallel: 1, Timeout: j.timeout, LockDir: d.o.LockDir,
		MaxChainDepth: rule.MaxChainDepth, Now: d.clock.Now, Out: out, HoldFrozen: d.o.HoldFrozen,
	}
	if j.wd != nil {
		job.Watchdog = j.wd
	}
	rep, err := job.Snap(d.work, []driver.Guest{g})
	if rep == nil || len(rep.Guests) == 0 {
		gr.Outcome, gr.Error = history.Failed, fmt.Sprintf("guest %s: %v", g.Name, err)
		return
	}
	r := rep.Guests[0]
	gr.Outcome = outcomeOf(r.Outcome)
	if r.Err != nil {
		gr.Error = r.Err.Error()
	} else if r.Outcome == engine.OutcomeFailed {
		gr.Error = r.Reason
	}
	if r.Created != "" {
		gr.Created = []string{r.Created}
	}
	gr.Removed = r.Removed
	gr.Freeze = r.Freeze
	if d.work.Err() == nil {
		j.countSnapshots(g, label)
	}
}

// countSnapshots sets the autosnap_snapshots gauge of the guest's label.
func (j *jobRun) countSnapshots(g driver.Guest, label string) {
	ctx, cancel := context.WithTimeout(j.d.work, j.timeout)
	defer cancel()
	snaps, err := j.drv.Snapshots(ctx, g)
	if err != nil {
		j.log.Warn("counting snapshots failed", "guest", g.Name, "err", err)
		return
	}
	n := 0
	for _, s := range snaps {
		if !naming.IsOurs(s.Description) {
			continue
		}
		if _, ok := naming.Match(s.Name, label, j.d.o.Format, j.location()); ok {
			n++
		}
	}
	j.d.metrics.snapshots.WithLabelValues(g.Name, label).Set(float64(n))
}

// backup runs the backup engine for one guest at the level the policy's rules pick.
func (j *jobRun) backup(g driver.Guest, gr *history.GuestRun, out *syncBuffer) {
	d, rule := j.d, j.e.pol.Backup
	level, err := j.level(rule)
	if err == nil {
		var q engine.Quiesce
		if q, err = engine.ParseQuiesce(orDefault(rule.Quiesce, string(engine.QuiesceAuto))); err == nil {
			var r *repo.Repo
			if r, err = repo.Open(rule.Target); err == nil {
				job := &backup.Job{
					Driver: j.drv, Store: backup.RepoStore{R: r}, Target: rule.Target, Level: level, Quiesce: q,
					IncludeDisks: rule.IncludeDisks, ExcludeDisks: rule.ExcludeDisks, Compress: rule.Compress,
					MaxParallel: 1, Hooks: j.hooks(), Timeout: j.timeout, LockDir: d.o.LockDir, Now: d.clock.Now,
					Out: out, Version: d.o.Version,
				}
				if j.wd != nil {
					job.Guard = j.wd
				}
				var rep *backup.Report
				rep, err = job.Run(d.work, []driver.Guest{g})
				if rep != nil && len(rep.Guests) > 0 {
					res := rep.Guests[0]
					gr.Outcome = outcomeOf(res.Outcome)
					if res.Err != nil {
						gr.Error = res.Err.Error()
					}
					if res.Point != "" {
						gr.Created = []string{res.Point}
					}
					gr.Bytes = int64(res.Bytes)
					if gr.Outcome == history.OK && hasRules(rule.Prune) {
						removed, perr := j.prune(g, r, rule.Prune)
						gr.Removed = removed
						if perr != nil {
							gr.Outcome = history.Failed
							gr.Error = fmt.Sprintf("guest %s: backup %s taken, but pruning %s failed: %v (autosnap backup prune retries it)",
								g.Name, res.Point, rule.Target, perr)
						}
					}
					return
				}
			}
		}
	}
	gr.Outcome, gr.Error = history.Failed, fmt.Sprintf("guest %s: backup: %v", g.Name, err)
}

// level is the policy's level for this run: the first level rule with a slot since
// the job's previous run (policy.BackupRule.LevelAt), else the default (auto).
func (j *jobRun) level(rule *policy.BackupRule) (backup.Level, error) {
	now := j.d.clock.Now()
	last := map[string]time.Time{}
	parsed := true
	for _, lr := range rule.Levels {
		last[lr.Level] = j.prev
		parsed = parsed && lr.Schedule.Parsed().String() != ""
	}
	if parsed {
		level, why := rule.LevelAt(now, last)
		j.log.Debug("backup level", "level", level, "why", why)
		return backup.ParseLevel(orDefault(level, string(backup.LevelAuto)))
	}
	// A rule built in code rather than read by policy.Load: parse its schedules here.
	for _, lr := range rule.Levels {
		s, err := schedule.Parse(lr.Schedule.Spec, j.location())
		if err != nil {
			return "", fmt.Errorf("level %s: %w", lr.Level, err)
		}
		if due, _ := s.Due(j.prev, now); due {
			return backup.ParseLevel(lr.Level)
		}
	}
	return backup.ParseLevel(orDefault(rule.Default, string(backup.LevelAuto)))
}

// prune applies the policy's prune rules to the guest's points after a successful
// backup, under the guest's repository lock, and returns the removed points.
func (j *jobRun) prune(g driver.Guest, r *repo.Repo, keep retention.GFS) ([]string, error) {
	if keep.Location == nil {
		keep.Location = j.location()
	}
	uuid := g.UUID
	if uuid == "" {
		uuid = g.Key()
	}
	rg, err := r.Guest(repo.GuestID{UUID: uuid, Name: g.Name, Node: g.Node, Driver: j.drv.Name()})
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(j.d.work, j.timeout)
	unlock, err := rg.Lock(lctx)
	cancel()
	if err != nil {
		return nil, err
	}
	defer unlock()
	plan, err := rg.PlanPrune(keep, j.d.clock.Now())
	if err != nil || len(plan.Remove) == 0 {
		return nil, err
	}
	if err := rg.Prune(j.d.work, plan); err != nil {
		return nil, err
	}
	return plan.Remove, nil
}

// hasRules reports whether a retention policy has any keep rule.
func hasRules(g retention.GFS) bool {
	return g.Last != 0 || g.Hourly != 0 || g.Daily != 0 || g.Weekly != 0 || g.Monthly != 0 || g.Yearly != 0 ||
		!g.Within.IsZero()
}

func outcomeOf(o engine.Outcome) history.Outcome {
	switch o {
	case engine.OutcomeOK:
		return history.OK
	case engine.OutcomeSkipped:
		return history.Skipped
	}
	return history.Failed
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// syncBuffer collects a guest's engine output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
