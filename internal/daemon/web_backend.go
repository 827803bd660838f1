package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/repo"
	"github.com/autosnap/autosnap/internal/schedule"
	"github.com/autosnap/autosnap/internal/web"
)

// TriggerWeb marks jobs started from the dashboard.
const TriggerWeb = "web"

// WebBackend is the dashboard's view of a daemon (web.Backend): the guests its
// policies select, read live from the hypervisors and backup repositories (cached for
// CacheTTL), the run history, live job events, and actions that start the daemon's
// own jobs now.
type WebBackend struct {
	d      *Daemon
	reader history.Reader
	rec    history.Recorder // the daemon's recorder before the tap
	hub    web.Hub
	// CacheTTL is how long the guest list is reused (default 15s); a job's end
	// invalidates it.
	CacheTTL time.Duration

	collecting sync.Mutex
	mu         sync.Mutex
	cache      []web.Guest
	cacheAt    time.Time
	conns      map[string]string // guest ID → connection host value (policy host)
	problems   []string          // the checks the last collection could not make
	running    map[int64]*liveJob
	waiting    map[jobKey]chan int64
}

type liveJob struct {
	policy string
	kind   history.Kind
	done   int
}

// NewWebBackend returns the dashboard backend of d, reading the history from r. It
// taps d's recorder so that job events reach the dashboard: call it before d runs.
func NewWebBackend(d *Daemon, r history.Reader) *WebBackend {
	b := &WebBackend{d: d, reader: r, rec: d.o.Recorder, CacheTTL: 15 * time.Second,
		conns: map[string]string{}, running: map[int64]*liveJob{}, waiting: map[jobKey]chan int64{}}
	d.o.Recorder = webTap{b}
	return b
}

// webTap records through the daemon's recorder and publishes each step.
type webTap struct{ b *WebBackend }

func (t webTap) Begin(ctx context.Context, j history.Job) (int64, error) {
	b := t.b
	id, err := b.rec.Begin(ctx, j)
	if err != nil {
		return id, err
	}
	b.mu.Lock()
	b.running[id] = &liveJob{policy: j.Policy, kind: j.Kind}
	if w := b.waiting[jobKey{j.Policy, j.Kind}]; w != nil && j.Trigger == TriggerWeb && !j.DryRun {
		delete(b.waiting, jobKey{j.Policy, j.Kind})
		w <- id
	}
	b.mu.Unlock()
	b.hub.Publish(web.Event{Type: "job-start", JobID: id, Policy: j.Policy, Kind: j.Kind, Trigger: j.Trigger, DryRun: j.DryRun, Time: j.Started})
	return id, nil
}

func (t webTap) Guest(ctx context.Context, id int64, g history.GuestRun) error {
	b := t.b
	err := b.rec.Guest(ctx, id, g)
	b.mu.Lock()
	ev := web.Event{Type: "guest", JobID: id, Guest: g.Guest, Outcome: g.Outcome, Error: g.Error, Time: g.Ended}
	if lj := b.running[id]; lj != nil {
		lj.done++
		ev.Policy, ev.Kind, ev.Done = lj.policy, lj.kind, lj.done
	}
	b.mu.Unlock()
	b.hub.Publish(ev)
	return err
}

func (t webTap) End(ctx context.Context, id int64, outcome history.Outcome, errText string, ended time.Time) error {
	b := t.b
	err := b.rec.End(ctx, id, outcome, errText, ended)
	b.mu.Lock()
	ev := web.Event{Type: "job-end", JobID: id, Outcome: outcome, Error: errText, Time: ended}
	if lj := b.running[id]; lj != nil {
		ev.Policy, ev.Kind, ev.Done, ev.Total = lj.policy, lj.kind, lj.done, lj.done
	}
	delete(b.running, id)
	b.cacheAt = time.Time{}
	b.mu.Unlock()
	b.hub.Publish(ev)
	return err
}

// Problems implements web.ProblemReporter: the hosts and repositories the last
// guest collection could not read (it collects when none was made yet).
func (b *WebBackend) Problems(ctx context.Context) []string {
	b.mu.Lock()
	never := b.cache == nil
	b.mu.Unlock()
	if never {
		if _, err := b.Guests(ctx); err != nil {
			return []string{err.Error()}
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.problems)
}

// Subscribe implements web.Backend.
func (b *WebBackend) Subscribe() (<-chan web.Event, func()) { return b.hub.Subscribe() }

// Jobs implements web.Backend.
func (b *WebBackend) Jobs(ctx context.Context, q history.Query) ([]history.Job, error) {
	return b.reader.Jobs(ctx, q)
}

// Job implements web.Backend; an unknown id is web.ErrNotFound.
func (b *WebBackend) Job(ctx context.Context, id int64) (history.Job, error) {
	j, err := b.reader.Job(ctx, id)
	if errors.Is(err, history.ErrNotFound) {
		return j, fmt.Errorf("%w: %w", web.ErrNotFound, err)
	}
	return j, err
}

// Policies implements web.Backend.
func (b *WebBackend) Policies(ctx context.Context) ([]web.Policy, error) {
	cfg := b.d.Config()
	gs, err := b.Guests(ctx)
	if err != nil {
		return nil, err
	}
	jobs := b.d.Jobs()
	var out []web.Policy
	for _, p := range cfg.Policies {
		wp := web.Policy{Name: p.Name, Host: p.Host, VMID: p.VMID, Tags: p.Tags, Guests: []string{}}
		if p.Snapshot != nil {
			wp.SnapshotSchedule = p.Snapshot.Schedule.Spec
		}
		if p.Backup != nil {
			wp.BackupSchedule = p.Backup.Schedule.Spec
		}
		for _, g := range gs {
			if g.Policy == p.Name {
				wp.Guests = append(wp.Guests, g.ID)
			}
		}
		for _, j := range jobs {
			if j.Policy == p.Name {
				wp.Jobs = append(wp.Jobs, web.PolicyJob{Kind: j.Kind, Schedule: j.Schedule, LastRun: j.LastRun, Next: j.Next, Running: j.Running})
			}
		}
		out = append(out, wp)
	}
	return out, nil
}

// guestID names a guest in dashboard URLs: its connection and its stable key.
func guestID(host string, g driver.Guest) string { return host + "|" + g.Key() }

// Guests implements web.Backend: every guest on the policies' hosts, with the policy
// that selects it (none: unprotected).
func (b *WebBackend) Guests(ctx context.Context) ([]web.Guest, error) {
	b.mu.Lock()
	if b.cache != nil && time.Since(b.cacheAt) < b.CacheTTL {
		gs := b.cache
		b.mu.Unlock()
		return gs, nil
	}
	b.mu.Unlock()
	// One collection at a time: the others wait and take its result.
	b.collecting.Lock()
	defer b.collecting.Unlock()
	b.mu.Lock()
	if b.cache != nil && time.Since(b.cacheAt) < b.CacheTTL {
		gs := b.cache
		b.mu.Unlock()
		return gs, nil
	}
	b.mu.Unlock()
	gs, conns, problems, err := b.collect(ctx)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.cache, b.cacheAt, b.conns, b.problems = gs, time.Now(), conns, problems
	b.mu.Unlock()
	return gs, nil
}

// hostGuests is one connection's guest list.
type hostGuests struct {
	drv    driver.Driver
	guests []driver.Guest
	err    error
}

func (b *WebBackend) connect(ctx context.Context, cfg *policy.Config, host string) hostGuests {
	conn, err := ConnectionConfig(cfg, host)
	if err != nil {
		return hostGuests{err: err}
	}
	conn.Timeout = b.d.o.Timeout
	cctx, cancel := context.WithTimeout(ctx, b.d.o.Timeout)
	defer cancel()
	drv, err := b.d.o.Connect(cctx, conn)
	if err != nil {
		return hostGuests{err: fmt.Errorf("connecting to %s: %w", conn.Host, err)}
	}
	gs, err := drv.Guests(cctx)
	if err == nil {
		err = driver.LoadTags(cctx, drv, gs)
	}
	if err != nil {
		drv.Close()
		return hostGuests{err: fmt.Errorf("listing the guests of %s: %w", conn.Host, err)}
	}
	return hostGuests{drv: drv, guests: gs}
}

func (b *WebBackend) collect(ctx context.Context) ([]web.Guest, map[string]string, []string, error) {
	cfg := b.d.Config()
	now := b.d.clock.Now()
	loc := cfg.Location
	if loc == nil {
		loc = time.Local
	}
	rec := naming.Recognizer{Format: b.d.o.Format, Loc: loc}
	hosts := map[string]hostGuests{}
	defer func() {
		for _, h := range hosts {
			if h.drv != nil {
				h.drv.Close()
			}
		}
	}()
	var out []web.Guest
	var problems []string
	conns := map[string]string{}
	seen := map[string]bool{}
	var hostOrder []string
	for i := range cfg.Policies {
		p := &cfg.Policies[i]
		h, ok := hosts[p.Host]
		if !ok {
			h = b.connect(ctx, cfg, p.Host)
			hosts[p.Host] = h
			hostOrder = append(hostOrder, p.Host)
		}
		if h.err != nil {
			problems = append(problems, fmt.Sprintf("policy %s: %v", p.Name, h.err))
			continue
		}
		label := ""
		var snapCad, backupCad time.Duration
		if p.Snapshot != nil {
			label = orDefault(p.Snapshot.Label, p.Name)
			snapCad = cadence(p.Snapshot.Schedule, loc, now)
		}
		var rguests []*repo.Guest
		if p.Backup != nil {
			backupCad = cadence(p.Backup.Schedule, loc, now)
			r, err := repo.OpenExisting(p.Backup.Target)
			if err == nil {
				rguests, err = r.Guests()
			}
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				problems = append(problems, fmt.Sprintf("policy %s: backup repository %s cannot be read: %v", p.Name, p.Backup.Target, err))
			}
		}
		for _, g := range p.SelectGuests(h.guests) {
			if g.Template {
				continue
			}
			id := guestID(p.Host, g)
			seen[id] = true
			conns[id] = p.Host
			wg := web.Guest{ID: id, Name: g.Name, Host: p.Host, Node: g.Node, Policy: p.Name, State: g.State,
				Tags: mergeTags(g.Tags, p.Tags), SnapshotCadence: snapCad, BackupCadence: backupCad, ChainDepth: 1}
			b.fillSnapshots(ctx, h.drv, g, rec, label, &wg)
			if rg := repo.FindGuest(rguests, g.UUID, g.ID, g.Node, g.Name); rg != nil {
				if ps, err := rg.Points(); err == nil {
					wg.BackupPoints = len(ps)
					for _, pt := range ps {
						if pt.Finished.After(wg.NewestBackup) {
							wg.NewestBackup = pt.Finished
						}
					}
				}
			}
			wg.LastRun = b.lastRun(ctx, p.Name, g.Name)
			out = append(out, wg)
		}
	}
	// Guests no policy selects: shown as unprotected.
	for _, host := range hostOrder {
		h := hosts[host]
		if h.err != nil {
			continue
		}
		for _, g := range h.guests {
			id := guestID(host, g)
			if seen[id] || g.Template {
				continue
			}
			seen[id] = true
			conns[id] = host
			wg := web.Guest{ID: id, Name: g.Name, Host: host, Node: g.Node, State: g.State, Tags: mergeTags(g.Tags, nil), ChainDepth: 1}
			b.fillSnapshots(ctx, h.drv, g, rec, "", &wg)
			out = append(out, wg)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Host != out[j].Host {
			return out[i].Host < out[j].Host
		}
		return out[i].Name < out[j].Name
	})
	return out, conns, problems, nil
}

func cadence(s policy.Schedule, loc *time.Location, now time.Time) time.Duration {
	ps := s.Parsed()
	if ps.String() == "" {
		var err error
		if ps, err = schedule.Parse(s.Spec, loc); err != nil {
			return 0
		}
	}
	return ps.Cadence(now)
}

func mergeTags(a, b []string) []string {
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	out = slices.Compact(out)
	if out == nil {
		out = []string{}
	}
	return out
}

// fillSnapshots sets the snapshot count, the newest snapshot of label (by the time in
// its name, as monitor reads it; "" label: any) and the chain depth.
func (b *WebBackend) fillSnapshots(ctx context.Context, drv driver.Driver, g driver.Guest, rec naming.Recognizer, label string, wg *web.Guest) {
	cctx, cancel := context.WithTimeout(ctx, b.d.o.Timeout)
	defer cancel()
	snaps, err := drv.Snapshots(cctx, g)
	if err != nil {
		b.d.log.Warn("dashboard: listing snapshots failed", "guest", g.Name, "err", err)
		return
	}
	wg.Snapshots = len(snaps)
	for _, s := range snaps {
		t := s.Created
		if label != "" {
			r, ok := rec.Recognize(s.Name, s.Description, s.Created, label)
			if !ok || s.Incomplete != "" {
				continue
			}
			t = r.Time
		}
		if t.After(wg.NewestSnapshot) {
			wg.NewestSnapshot = t
		}
	}
	if cr, ok := drv.(driver.ChainReporter); ok {
		if chains, err := cr.Chains(cctx, g); err == nil {
			for _, c := range chains {
				wg.ChainDepth = max(wg.ChainDepth, len(c.Images))
			}
		}
	}
}

// lastGuestRunner is the history store's fast path for a guest's last run.
type lastGuestRunner interface {
	LastGuestRun(ctx context.Context, q history.Query) (history.GuestRun, history.Job, bool, error)
}

func (b *WebBackend) lastRun(ctx context.Context, policyName, guest string) *web.LastRun {
	if lr, ok := b.reader.(lastGuestRunner); ok {
		gr, j, found, err := lr.LastGuestRun(ctx, history.Query{Policy: policyName, Guest: guest})
		if err != nil || !found {
			return nil
		}
		return &web.LastRun{JobID: j.ID, Kind: j.Kind, Ended: gr.Ended, Outcome: gr.Outcome, Error: gr.Error}
	}
	jobs, err := b.reader.Jobs(ctx, history.Query{Policy: policyName, Guest: guest, Limit: 20})
	if err != nil {
		return nil
	}
	for _, j := range jobs {
		if j.DryRun {
			continue
		}
		for i := len(j.Guests) - 1; i >= 0; i-- {
			if gr := j.Guests[i]; gr.Guest == guest && gr.Outcome != history.Running {
				return &web.LastRun{JobID: j.ID, Kind: j.Kind, Ended: gr.Ended, Outcome: gr.Outcome, Error: gr.Error}
			}
		}
	}
	return nil
}

// find returns the cached guest id and its connection host.
func (b *WebBackend) find(ctx context.Context, id string) (web.Guest, string, error) {
	gs, err := b.Guests(ctx)
	if err != nil {
		return web.Guest{}, "", err
	}
	for _, g := range gs {
		if g.ID == id {
			b.mu.Lock()
			host := b.conns[id]
			b.mu.Unlock()
			return g, host, nil
		}
	}
	return web.Guest{}, "", fmt.Errorf("guest %s: %w (it may have been removed; reload the overview)", id, web.ErrNotFound)
}

// Guest implements web.Backend: the guest's snapshots (with the space their images
// take, where the driver reports chains) and backup points.
func (b *WebBackend) Guest(ctx context.Context, id string) (web.GuestDetail, error) {
	wg, host, err := b.find(ctx, id)
	if err != nil {
		return web.GuestDetail{}, err
	}
	cfg := b.d.Config()
	h := b.connect(ctx, cfg, host)
	if h.err != nil {
		return web.GuestDetail{}, fmt.Errorf("guest %s: %w", wg.Name, h.err)
	}
	defer h.drv.Close()
	i := slices.IndexFunc(h.guests, func(g driver.Guest) bool { return guestID(host, g) == id })
	if i < 0 {
		return web.GuestDetail{}, fmt.Errorf("guest %s: %w", wg.Name, web.ErrNotFound)
	}
	g := h.guests[i]
	cctx, cancel := context.WithTimeout(ctx, b.d.o.Timeout)
	defer cancel()
	snaps, err := h.drv.Snapshots(cctx, g)
	if err != nil {
		return web.GuestDetail{}, fmt.Errorf("guest %s: listing snapshots: %w", wg.Name, err)
	}
	sizes := map[string]uint64{}
	if ci, ok := h.drv.(driver.ChainInspector); ok {
		if details, err := ci.ChainDetails(cctx, g); err == nil {
			for _, d := range details {
				for _, im := range d.Images {
					for _, s := range im.Snapshots {
						sizes[s] += im.ActualSize
					}
				}
			}
		}
	}
	d := web.GuestDetail{Guest: wg}
	for _, s := range snaps {
		d.Snapshots = append(d.Snapshots, web.Snapshot{Snapshot: s, Size: sizes[s.Name]})
	}
	if p := cfg.Policy(wg.Policy); p != nil && p.Backup != nil {
		if r, err := repo.OpenExisting(p.Backup.Target); err == nil {
			rgs, _ := r.Guests()
			if rg := repo.FindGuest(rgs, g.UUID, g.ID, g.Node, g.Name); rg != nil {
				ps, err := rg.Points()
				if err != nil {
					return web.GuestDetail{}, fmt.Errorf("guest %s: reading backup points in %s: %w", wg.Name, p.Backup.Target, err)
				}
				for _, pt := range ps {
					d.Backups = append(d.Backups, web.BackupPoint{ID: pt.ID, Level: pt.Level, Chain: pt.Chain, Parent: pt.Parent,
						Started: pt.Started, Finished: pt.Finished, Consistency: pt.Consistency, Size: pt.Size(), VirtualSize: pt.VirtualSize()})
				}
			}
		}
	}
	return d, nil
}

// RunPolicy implements web.Backend: it starts the policy's snapshot job (or its
// backup job when it has no snapshots) now through Trigger, as its schedule would,
// and returns the job's ID. A dry run records the plan of the next day as a dry-run
// job and touches no guest.
func (b *WebBackend) RunPolicy(ctx context.Context, name string, kind history.Kind, dryRun bool) (int64, error) {
	p := b.d.Config().Policy(name)
	if p == nil {
		return 0, fmt.Errorf("policy %s: %w in %s", name, web.ErrNotFound, b.d.Config().Path)
	}
	switch {
	case kind == "" && p.Snapshot == nil:
		kind = history.KindBackup
	case kind == "":
		kind = history.KindSnapshot
	case kind == history.KindSnapshot && p.Snapshot == nil, kind == history.KindBackup && p.Backup == nil:
		return 0, fmt.Errorf("policy %s has no %s job: %w", name, kind, web.ErrNotFound)
	}
	if dryRun {
		return b.dryRun(ctx, name, kind)
	}
	key := jobKey{name, kind}
	got := make(chan int64, 1)
	b.mu.Lock()
	if b.waiting[key] != nil {
		b.mu.Unlock()
		return 0, fmt.Errorf("policy %s: a run from the dashboard is starting already", name)
	}
	b.waiting[key] = got
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		if b.waiting[key] == got {
			delete(b.waiting, key)
		}
		b.mu.Unlock()
	}()
	if err := b.d.Trigger(name, kind, TriggerWeb); err != nil {
		if errors.Is(err, ErrBusy) {
			return 0, fmt.Errorf("policy %s: its %s job is running now; wait for it to end (see the runs page): %w", name, kind, err)
		}
		return 0, fmt.Errorf("policy %s: %w", name, err)
	}
	select {
	case id := <-got:
		return id, nil
	case <-time.After(recordTimeout):
		return 0, fmt.Errorf("policy %s: the job started but its history record did not appear within %v; see the log", name, recordTimeout)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// planOf simulates the policy from now for a day.
func (b *WebBackend) planOf(name string) (*policy.PolicyPlan, time.Time, error) {
	cfg := b.d.Config()
	if cfg.Policy(name) == nil {
		return nil, time.Time{}, fmt.Errorf("policy %s: %w in %s", name, web.ErrNotFound, cfg.Path)
	}
	now := b.d.clock.Now()
	pl, err := cfg.Simulate(policy.PlanOptions{At: now, Days: 1, Policy: name, MaxRuns: 5, Format: b.d.o.Format})
	if err != nil {
		return nil, now, err
	}
	return &pl.Policies[0], now, nil
}

// PlanPolicy implements web.Backend: the policy's runs over the next day for each
// guest it selects now, and what its retention keeps, as `policy plan` says; it is
// recorded as a dry-run job.
func (b *WebBackend) PlanPolicy(ctx context.Context, name string) (web.Plan, error) {
	pp, now, err := b.planOf(name)
	if err != nil {
		return web.Plan{}, err
	}
	gs, err := b.Guests(ctx)
	if err != nil {
		return web.Plan{}, err
	}
	out := web.Plan{Policy: name, At: now}
	for _, g := range gs {
		if g.Policy != name {
			continue
		}
		if s := pp.Snapshot; s != nil {
			for _, r := range s.Runs {
				out.Items = append(out.Items, web.PlanItem{Guest: g.Name, Action: "snapshot", Name: r.Name, Reason: r.At.Format(time.RFC3339) + ": " + r.Why})
			}
			out.Items = append(out.Items, web.PlanItem{Guest: g.Name, Action: "keep", Name: s.Label, Reason: s.Keep})
		}
		if bp := pp.Backup; bp != nil {
			for _, r := range bp.Runs {
				out.Items = append(out.Items, web.PlanItem{Guest: g.Name, Action: "backup-" + r.Level, Reason: r.At.Format(time.RFC3339) + ": " + r.Why})
			}
			if bp.Prune != "" {
				out.Items = append(out.Items, web.PlanItem{Guest: g.Name, Action: "prune", Name: bp.Target, Reason: bp.Prune})
			}
		}
	}
	out.JobID, err = b.dryRun(ctx, name, "")
	return out, err
}

// dryRun records the policy's next planned run of each guest as a dry-run job.
func (b *WebBackend) dryRun(ctx context.Context, name string, kind history.Kind) (int64, error) {
	pp, now, err := b.planOf(name)
	if err != nil {
		return 0, err
	}
	gs, err := b.Guests(ctx)
	if err != nil {
		return 0, err
	}
	if kind == "" {
		kind = history.KindSnapshot
		if pp.Snapshot == nil {
			kind = history.KindBackup
		}
	}
	rec := b.d.o.Recorder
	id, err := rec.Begin(ctx, history.Job{Policy: name, Kind: kind, Trigger: TriggerWeb, DryRun: true, Started: now, Outcome: history.Running})
	if err != nil {
		return 0, fmt.Errorf("policy %s: recording the dry run: %w", name, err)
	}
	for _, g := range gs {
		if g.Policy != name {
			continue
		}
		gr := history.GuestRun{Host: g.Host, Guest: g.Name, Started: now, Ended: now, Outcome: history.Skipped, Error: "dry run: nothing changed"}
		switch {
		case kind == history.KindSnapshot && pp.Snapshot != nil && len(pp.Snapshot.Runs) > 0:
			gr.Created = []string{pp.Snapshot.Runs[0].Name}
		case kind == history.KindBackup && pp.Backup != nil && len(pp.Backup.Runs) > 0:
			gr.Error = "dry run: nothing changed; the backup would be " + pp.Backup.Runs[0].Level
		}
		if err := rec.Guest(ctx, id, gr); err != nil {
			return id, err
		}
	}
	return id, rec.End(ctx, id, history.OK, "", b.d.clock.Now())
}

// VerifyBackup implements web.Backend: it checks every backup point of the guest in
// its policy's repository (files, checksums, qemu-img check) as `backup verify`
// does, recorded as a verify job.
func (b *WebBackend) VerifyBackup(ctx context.Context, id string) (int64, error) {
	wg, _, err := b.find(ctx, id)
	if err != nil {
		return 0, err
	}
	p := b.d.Config().Policy(wg.Policy)
	if p == nil || p.Backup == nil {
		return 0, fmt.Errorf("guest %s: no policy backs it up, so there is no repository to verify", wg.Name)
	}
	r, err := repo.OpenExisting(p.Backup.Target)
	if err != nil {
		return 0, fmt.Errorf("guest %s: opening the repository %s: %w", wg.Name, p.Backup.Target, err)
	}
	rgs, err := r.Guests()
	if err != nil {
		return 0, fmt.Errorf("guest %s: reading the repository %s: %w", wg.Name, p.Backup.Target, err)
	}
	var rg *repo.Guest
	for _, x := range rgs {
		if x.ID.Name == wg.Name {
			rg = x
		}
	}
	if rg == nil {
		return 0, fmt.Errorf("guest %s: %w in %s (no backup yet)", wg.Name, web.ErrNotFound, p.Backup.Target)
	}
	rec := b.d.o.Recorder
	start := b.d.clock.Now()
	jid, err := rec.Begin(ctx, history.Job{Policy: p.Name, Kind: history.KindVerify, Trigger: TriggerWeb, Started: start, Outcome: history.Running})
	if err != nil {
		return 0, fmt.Errorf("guest %s: recording the verification: %w", wg.Name, err)
	}
	b.d.jobs.Add(1)
	go func() {
		defer b.d.jobs.Done()
		vctx, cancel := context.WithCancel(b.d.work)
		defer cancel()
		gr := history.GuestRun{Host: wg.Host, Guest: wg.Name, Started: start, Outcome: history.OK}
		unlock, err := rg.RLock(vctx)
		var faults []repo.Fault
		if err == nil {
			faults, err = rg.Verify(vctx, repo.VerifyOptions{})
			unlock()
		}
		switch {
		case err != nil:
			gr.Outcome, gr.Error = history.Failed, err.Error()
		case len(faults) > 0:
			var msgs []string
			for _, f := range faults {
				msgs = append(msgs, f.String())
			}
			gr.Outcome, gr.Error = history.Failed, fmt.Sprintf("%d fault(s): %s", len(faults), strings.Join(msgs, "; "))
		}
		gr.Ended = b.d.clock.Now()
		rctx, rcancel := context.WithTimeout(context.Background(), recordTimeout)
		defer rcancel()
		_ = rec.Guest(rctx, jid, gr)
		_ = rec.End(rctx, jid, gr.Outcome, gr.Error, gr.Ended)
	}()
	return jid, nil
}

var (
	_ web.Backend         = (*WebBackend)(nil)
	_ web.ProblemReporter = (*WebBackend)(nil)
)
