// Package daemon runs a policy file's snapshot and backup jobs on their schedules:
// catching up once what came due while it was not running (or the host slept, or the
// clock jumped), never working on one guest twice at once, bounding how many guests
// are worked on per host and in all, reloading the policy file on request (keeping the
// old one when the new one is invalid), and stopping so that running guests finish or
// abort safely. It records every job and guest through a history.Recorder, exports
// Prometheus metrics and posts a webhook on a guest's failure and recovery.
//
// Each guest of a job is handed to the snapshot or backup engine on its own, so that
// the daemon, not the engine, decides when a guest starts: that is where the per-guest,
// per-host and daemon-wide bounds are applied. Job-wide hook phases therefore run once
// per guest.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/schedule"
	"github.com/autosnap/autosnap/internal/selector"
	"github.com/autosnap/autosnap/internal/watchdog"
)

// Triggers recorded in history.Job.Trigger.
const (
	TriggerSchedule = "schedule"
	// TriggerCatchUp: the job's slot passed while the daemon was not running or not
	// watching (suspend, clock jump); missed slots run once.
	TriggerCatchUp = "catch-up"
)

// Options configure a Daemon. Only Recorder is required.
type Options struct {
	// Clock is the time source; nil means the wall clock.
	Clock Clock
	// Recorder receives every job and guest run.
	Recorder history.Recorder
	// Reader, when set, says when each job last ran, so that a restart catches up
	// once instead of running everything again; nil: every job is due at start.
	Reader history.Reader
	// Connect opens a hypervisor connection; nil means OpenDriver.
	Connect Connector
	// Watchdog, when set, returns the freeze watchdog for a connection: snapshots then
	// freeze through it (only for the snapshot itself, thawed even if the daemon
	// dies) and backups may quiesce. Without it libvirt quiesces natively and backups
	// are crash-consistent.
	Watchdog func(cfg driver.Config) *watchdog.Client
	Log      *slog.Logger
	// MaxJobs bounds the guests worked on at once by the whole daemon; 0 means 4.
	MaxJobs int
	// MaxPerHost bounds the guests worked on at once on one host; 0 means MaxJobs.
	MaxPerHost int
	// Grace is how long guests that are running when the daemon is stopped may go
	// on before their work is cancelled (the engine then thaws and aborts merges
	// with the chains intact). 0 cancels at once.
	Grace time.Duration
	// Timeout bounds each hypervisor operation when a policy sets none; 0 means 5m.
	Timeout time.Duration
	// LockDir is the directory of the per-guest cross-process locks ("" default).
	LockDir string
	// Format is the snapshot timestamp format; zero means the default.
	Format naming.Format
	// MaxWait is the longest the scheduler sleeps before reading the clock again, so
	// that a suspend or clock jump is noticed; 0 means 30s. A slot that is found more
	// than MaxWait late runs as a catch-up.
	MaxWait time.Duration
	// HTTPClient posts webhook notifications; nil: a client with a 10s timeout.
	HTTPClient *http.Client
	// Version goes into backup manifests.
	Version string
	// HoldFrozen keeps each guest frozen this long before its snapshot (with
	// Watchdog only). Tests only: it lets a test stop the daemon while a guest is
	// frozen.
	HoldFrozen time.Duration
}

// Daemon runs a policy file. Create it with New; Run or RunOnce drives it.
type Daemon struct {
	o        Options
	log      *slog.Logger
	clock    Clock
	mux      *http.ServeMux
	metrics  *metrics
	notifier *notifier

	guests  keyedMutex
	global  chan struct{}
	hostsMu sync.Mutex
	hosts   map[string]chan struct{}

	mu       sync.Mutex
	cfg      *policy.Config
	entries  []*entry
	state    map[jobKey]*jobState
	loaded   bool            // last runs read from the Reader
	runCtx   context.Context // Run's context, for Trigger
	stopping bool
	// failedJobs counts jobs that did not end OK (RunOnce's result).
	failedJobs int

	wake  chan struct{}
	jobs  sync.WaitGroup
	work  context.Context
	abort context.CancelFunc
}

type jobKey struct {
	policy string
	kind   history.Kind
}

// entry is one schedulable job of the current config.
type entry struct {
	key   jobKey
	pol   policy.Policy
	sched schedule.Schedule
	sel   *selector.Selector
}

// jobState survives reloads for a key that stays.
type jobState struct {
	last    time.Time
	running bool
}

// New returns a daemon for cfg. It fails, saying which policy, when a schedule or
// guest selection cannot be parsed (policy.Load has normally checked both).
func New(cfg *policy.Config, o Options) (*Daemon, error) {
	if o.Recorder == nil {
		return nil, errors.New("daemon: no history recorder")
	}
	if o.Clock == nil {
		o.Clock = SystemClock()
	}
	if o.Connect == nil {
		o.Connect = OpenDriver
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.MaxJobs <= 0 {
		o.MaxJobs = 4
	}
	if o.MaxPerHost <= 0 {
		o.MaxPerHost = o.MaxJobs
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.MaxWait <= 0 {
		o.MaxWait = 30 * time.Second
	}
	if o.Format.String() == "" {
		f, err := naming.ParseFormat(naming.DefaultFormat)
		if err != nil {
			return nil, err
		}
		o.Format = f
	}
	entries, err := buildEntries(cfg)
	if err != nil {
		return nil, err
	}
	work, abort := context.WithCancel(context.Background())
	d := &Daemon{
		o: o, log: o.Log, clock: o.Clock, mux: http.NewServeMux(), metrics: newMetrics(),
		global: make(chan struct{}, o.MaxJobs), hosts: map[string]chan struct{}{},
		cfg: cfg, entries: entries, state: map[jobKey]*jobState{},
		wake: make(chan struct{}, 1), work: work, abort: abort,
	}
	secret, err := notifySecret(cfg)
	if err != nil {
		return nil, err
	}
	d.notifier = newNotifier(cfg.Notify.Webhook, secret, o.HTTPClient, d.log)
	d.mux.Handle("/metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{ErrorLog: slogPromLogger{d.log}}))
	return d, nil
}

func notifySecret(cfg *policy.Config) (string, error) {
	if cfg.Notify.Secret == "" {
		return "", nil
	}
	s, err := ResolveSecret(cfg.Notify.Secret)
	if err != nil {
		return "", fmt.Errorf("notify: reading the webhook secret: %w", err)
	}
	return s, nil
}

func buildEntries(cfg *policy.Config) ([]*entry, error) {
	var out []*entry
	for _, p := range cfg.Policies {
		sel, err := selector.Parse(p.VMID)
		if err != nil {
			return nil, fmt.Errorf("policy %s (line %d): vmid: %w", p.Name, p.Line, err)
		}
		add := func(kind history.Kind, spec string) error {
			s, err := schedule.Parse(spec, cfg.Location)
			if err != nil {
				return fmt.Errorf("policy %s (line %d): %s schedule: %w", p.Name, p.Line, kind, err)
			}
			out = append(out, &entry{key: jobKey{p.Name, kind}, pol: p, sched: s, sel: sel})
			return nil
		}
		if p.Snapshot != nil {
			if err := add(history.KindSnapshot, p.Snapshot.Schedule.Spec); err != nil {
				return nil, err
			}
		}
		if p.Backup != nil {
			if err := add(history.KindBackup, p.Backup.Schedule.Spec); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// Handle registers an extra handler on the daemon's HTTP mux (the dashboard mounts
// itself at "/"). /metrics is taken.
func (d *Daemon) Handle(pattern string, h http.Handler) { d.mux.Handle(pattern, h) }

// Handler is the daemon's HTTP handler: /metrics and whatever Handle added.
func (d *Daemon) Handler() http.Handler { return d.mux }

// Config returns the policy file the daemon runs now.
func (d *Daemon) Config() *policy.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// Reload switches to cfg. When cfg is invalid it returns the error and the old
// config keeps running. Jobs running under the old config finish; the last-run
// times of policies that stay are kept.
func (d *Daemon) Reload(cfg *policy.Config) error {
	entries, err := buildEntries(cfg)
	if err == nil {
		var secret string
		if secret, err = notifySecret(cfg); err == nil {
			d.notifier.setTarget(cfg.Notify.Webhook, secret)
		}
	}
	if err != nil {
		d.metrics.reloadErrors.Inc()
		d.log.Error("reload refused: the new policy file is invalid; the old one keeps running", "err", err)
		return err
	}
	d.mu.Lock()
	d.cfg, d.entries, d.loaded = cfg, entries, false
	d.mu.Unlock()
	d.log.Info("policy file reloaded", "policies", len(cfg.Policies), "path", cfg.Path)
	d.poke()
	return nil
}

// ReloadWith loads a config with load and switches to it; a load error is logged
// and returned, and the old config keeps running (SIGHUP).
func (d *Daemon) ReloadWith(load func() (*policy.Config, error)) error {
	cfg, err := load()
	if err != nil {
		d.metrics.reloadErrors.Inc()
		d.log.Error("reload refused: the new policy file is invalid; the old one keeps running", "err", err)
		return err
	}
	return d.Reload(cfg)
}

func (d *Daemon) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// loadLastRuns reads, for each job whose last run is not known, when it last ran.
func (d *Daemon) loadLastRuns(ctx context.Context) {
	d.mu.Lock()
	if d.loaded {
		d.mu.Unlock()
		return
	}
	d.loaded = true
	var missing []jobKey
	for _, e := range d.entries {
		if _, ok := d.state[e.key]; !ok {
			missing = append(missing, e.key)
		}
	}
	d.mu.Unlock()
	for _, k := range missing {
		var last time.Time
		if d.o.Reader != nil {
			t, err := LastRun(ctx, d.o.Reader, k.policy, k.kind)
			if err != nil {
				d.log.Warn("reading the run history failed: the job runs as if it never ran", "policy", k.policy, "kind", k.kind, "err", err)
			}
			last = t
		}
		d.mu.Lock()
		if _, ok := d.state[k]; !ok {
			d.state[k] = &jobState{last: last}
		}
		d.mu.Unlock()
	}
}

// LastRun is when policy's job of kind last started (zero: never), dry runs left out.
func LastRun(ctx context.Context, r history.Reader, policy string, kind history.Kind) (time.Time, error) {
	jobs, err := r.Jobs(ctx, history.Query{Policy: policy, Kind: kind, Limit: 10})
	if err != nil {
		return time.Time{}, err
	}
	for _, j := range jobs {
		if !j.DryRun {
			return j.Started, nil
		}
	}
	return time.Time{}, nil
}

// startDue starts every idle job that is due at now and returns when the next idle
// job falls due (zero when none is scheduled).
func (d *Daemon) startDue(stop context.Context, now time.Time, trigger string) time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	var next time.Time
	for _, e := range d.entries {
		st := d.state[e.key]
		if st == nil {
			st = &jobState{}
			d.state[e.key] = st
		}
		if st.running {
			continue
		}
		if st.last.After(now) {
			d.log.Warn("the clock went back: the job's schedule restarts from now", "policy", e.key.policy, "kind", e.key.kind,
				"last_run", st.last, "now", now)
			st.last = now
		}
		due, at := e.sched.Due(st.last, now)
		if !due {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		tr := trigger
		if tr == "" {
			tr = TriggerSchedule
			if now.Sub(at) > d.o.MaxWait {
				tr = TriggerCatchUp
			}
		}
		d.launch(stop, e, st, tr, now)
	}
	return next
}

// JobStatus is one scheduled job as the daemon sees it now.
type JobStatus struct {
	Policy   string
	Kind     history.Kind
	Schedule string
	// LastRun is when the job last started (zero: never, or not read yet).
	LastRun time.Time
	// Next is when it is due next (now or earlier: due, waiting for its turn).
	Next    time.Time
	Running bool
}

// Jobs lists the current config's jobs with their last and next runs, in file order
// (for the dashboard).
func (d *Daemon) Jobs() []JobStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock.Now()
	out := make([]JobStatus, 0, len(d.entries))
	for _, e := range d.entries {
		js := JobStatus{Policy: e.key.policy, Kind: e.key.kind, Schedule: e.sched.String()}
		if st := d.state[e.key]; st != nil {
			js.LastRun, js.Running = st.last, st.running
		}
		_, js.Next = e.sched.Due(js.LastRun, now)
		out = append(out, js)
	}
	return out
}

// ErrBusy is returned by Trigger when the job is running already.
var ErrBusy = errors.New("the job is running already")

// Trigger starts policy's job of kind now, outside its schedule (the dashboard's
// "run now"), recorded with trigger (e.g. "manual", "web"). It returns at once; the
// job counts as the job's last run for its schedule. Only while Run runs.
func (d *Daemon) Trigger(policy string, kind history.Kind, trigger string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return errors.New("the daemon is stopping")
	}
	if d.runCtx == nil {
		return errors.New("the daemon is not running")
	}
	for _, e := range d.entries {
		if e.key != (jobKey{policy, kind}) {
			continue
		}
		st := d.state[e.key]
		if st == nil {
			st = &jobState{}
			d.state[e.key] = st
		}
		if st.running {
			return fmt.Errorf("policy %s %s: %w", policy, kind, ErrBusy)
		}
		d.launch(d.runCtx, e, st, trigger, d.clock.Now())
		return nil
	}
	return fmt.Errorf("policy %s has no %s job", policy, kind)
}

// launch starts e's job; d.mu is held.
func (d *Daemon) launch(stop context.Context, e *entry, st *jobState, trigger string, now time.Time) {
	prev := st.last
	st.running, st.last = true, now
	d.jobs.Add(1)
	go func(cfg *policy.Config) {
		defer d.jobs.Done()
		d.runJob(stop, cfg, e, trigger, prev)
		d.mu.Lock()
		st.running = false
		d.mu.Unlock()
		d.poke()
	}(d.cfg)
}

// Run schedules jobs until ctx is done, then stops taking work, lets running guests
// go on for Grace, cancels them, waits for them and returns nil.
func (d *Daemon) Run(ctx context.Context) error {
	d.log.Info("daemon started", "policies", len(d.Config().Policies), "path", d.Config().Path, "max_jobs", d.o.MaxJobs)
	d.mu.Lock()
	d.runCtx = ctx
	d.mu.Unlock()
	for {
		d.loadLastRuns(ctx)
		now := d.clock.Now()
		next := d.startDue(ctx, now, "")
		wait := d.o.MaxWait
		if !next.IsZero() {
			wait = min(max(next.Sub(now), 0), d.o.MaxWait)
		}
		select {
		case <-ctx.Done():
			d.shutdown()
			return nil
		case <-d.clock.After(wait):
		case <-d.wake:
		}
	}
}

// RunOnce runs every job that is due now, waits for them and returns an error
// wrapping ErrFailed when a guest or a job failed.
func (d *Daemon) RunOnce(ctx context.Context) error {
	d.loadLastRuns(ctx)
	d.mu.Lock()
	failedBefore := d.failedJobs
	d.mu.Unlock()
	d.startDue(ctx, d.clock.Now(), "")
	done := make(chan struct{})
	go func() { d.jobs.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		d.shutdown()
	}
	d.mu.Lock()
	failed := d.failedJobs - failedBefore
	d.mu.Unlock()
	if failed > 0 {
		return fmt.Errorf("%d job(s) failed (see the log and `autosnap history`): %w", failed, ErrFailed)
	}
	return nil
}

// Close sends the webhook notifications still queued (waiting up to 30s) and stops
// the notifier. Run does it when it returns; call it after RunOnce.
func (d *Daemon) Close() { d.notifier.close(30 * time.Second) }

// ErrFailed is wrapped by RunOnce's error when a job or one of its guests failed.
var ErrFailed = errors.New("scheduled work failed")

func (d *Daemon) shutdown() {
	d.mu.Lock()
	d.stopping = true
	d.mu.Unlock()
	d.log.Info("stopping: no new work; running guests may finish", "grace", d.o.Grace)
	done := make(chan struct{})
	go func() { d.jobs.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d.o.Grace):
		d.log.Warn("grace period over: cancelling running guests (they are thawed and merges aborted with the chains intact)")
		d.abort()
		<-done
	}
	d.abort()
	d.notifier.close(10 * time.Second)
	d.log.Info("daemon stopped")
}

// hostSem returns the semaphore bounding the guests worked on at once on host.
func (d *Daemon) hostSem(host string) chan struct{} {
	d.hostsMu.Lock()
	defer d.hostsMu.Unlock()
	s, ok := d.hosts[host]
	if !ok {
		s = make(chan struct{}, d.o.MaxPerHost)
		d.hosts[host] = s
	}
	return s
}

// keyedMutex is one lock per key (a guest), taken with a context.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

func (k *keyedMutex) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]chan struct{}{}
	}
	c, ok := k.m[key]
	if !ok {
		c = make(chan struct{}, 1)
		k.m[key] = c
	}
	k.mu.Unlock()
	select {
	case c <- struct{}{}:
		return func() { <-c }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// acquire takes one slot of sem, or fails when ctx ends first.
func acquire(ctx context.Context, sem chan struct{}) (func(), error) {
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type slogPromLogger struct{ l *slog.Logger }

func (s slogPromLogger) Println(v ...any) { s.l.Error("metrics: " + fmt.Sprint(v...)) }

// hostname names this daemon in notifications.
func hostname() string {
	h, _ := os.Hostname()
	return h
}
