package web

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/history"
)

// testNow is the fake clock of every dashboard test.
var testNow = time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)

// fakeBackend is a deterministic in-memory Backend. Policy runs start at once and
// wait on gate (when not nil) before they work through their guests, so a test can
// watch a running job.
type fakeBackend struct {
	Hub
	mu       sync.Mutex
	guests   []Guest
	details  map[string]GuestDetail
	policies []Policy
	jobs     []history.Job // ascending ID
	failing  map[string]bool
	gate     chan struct{}
	actions  []string
	problems []string
}

func (f *fakeBackend) Problems(ctx context.Context) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.problems)
}

func newFake() *fakeBackend {
	return &fakeBackend{details: map[string]GuestDetail{}, failing: map[string]bool{}}
}

func (f *fakeBackend) addGuest(g Guest, snaps []Snapshot, backups []BackupPoint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g.Snapshots, g.BackupPoints = len(snaps), len(backups)
	for _, s := range snaps {
		if s.Created.After(g.NewestSnapshot) {
			g.NewestSnapshot = s.Created
		}
	}
	for _, b := range backups {
		if b.Finished.After(g.NewestBackup) {
			g.NewestBackup = b.Finished
		}
	}
	f.guests = append(f.guests, g)
	f.details[g.ID] = GuestDetail{Guest: g, Snapshots: snaps, Backups: backups}
}

func (f *fakeBackend) addJob(j history.Job) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	j.ID = int64(len(f.jobs) + 1)
	f.jobs = append(f.jobs, j)
	return j.ID
}

func (f *fakeBackend) Guests(ctx context.Context) ([]Guest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.guests), nil
}

func (f *fakeBackend) Guest(ctx context.Context, id string) (GuestDetail, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.details[id]
	if !ok {
		return GuestDetail{}, fmt.Errorf("guest %s: %w", id, ErrNotFound)
	}
	return d, nil
}

func (f *fakeBackend) Policies(ctx context.Context) ([]Policy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.policies), nil
}

func (f *fakeBackend) Jobs(ctx context.Context, q history.Query) ([]history.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []history.Job
	for i := len(f.jobs) - 1; i >= 0; i-- {
		j := f.jobs[i]
		if (q.Policy != "" && j.Policy != q.Policy) || (q.Kind != "" && j.Kind != q.Kind) ||
			(q.Outcome != "" && j.Outcome != q.Outcome) || (!q.Since.IsZero() && j.Started.Before(q.Since)) {
			continue
		}
		if q.Guest != "" && !slices.ContainsFunc(j.Guests, func(g history.GuestRun) bool { return g.Guest == q.Guest }) {
			continue
		}
		// Guests is shared, not copied: the dashboard only reads it, and RunPolicy only
		// appends (past every reader's length), so the fake's cost stays out of the
		// performance test.
		out = append(out, j)
		if q.Limit > 0 && len(out) == q.Limit {
			break
		}
	}
	return out, nil
}

func (f *fakeBackend) Job(ctx context.Context, id int64) (history.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id < 1 || int(id) > len(f.jobs) {
		return history.Job{}, fmt.Errorf("job %d: %w", id, ErrNotFound)
	}
	j := f.jobs[id-1]
	j.Guests = slices.Clone(j.Guests)
	return j, nil
}

func (f *fakeBackend) policy(name string) (Policy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.policies {
		if p.Name == name {
			return p, nil
		}
	}
	return Policy{}, fmt.Errorf("policy %s: %w", name, ErrNotFound)
}

func (f *fakeBackend) RunPolicy(ctx context.Context, name string, kind history.Kind, dryRun bool) (int64, error) {
	p, err := f.policy(name)
	if err != nil {
		return 0, err
	}
	if kind == "" {
		kind = history.KindSnapshot
	}
	id := f.addJob(history.Job{Policy: name, Kind: kind, Trigger: "web", DryRun: dryRun, Started: testNow, Outcome: history.Running})
	f.mu.Lock()
	if kind == history.KindSnapshot {
		f.actions = append(f.actions, fmt.Sprintf("run %s dry=%v", name, dryRun))
	} else {
		f.actions = append(f.actions, fmt.Sprintf("run %s %s dry=%v", name, kind, dryRun))
	}
	gate := f.gate
	f.mu.Unlock()
	f.Publish(Event{Type: "job-start", JobID: id, Policy: name, Kind: kind, Trigger: "web", DryRun: dryRun, Total: len(p.Guests), Time: testNow})
	go func() {
		if gate != nil {
			<-gate
		}
		outcome := history.OK
		for i, gid := range p.Guests {
			d, _ := f.Guest(context.Background(), gid)
			gr := history.GuestRun{Host: d.Host, Guest: d.Name, Started: testNow, Ended: testNow.Add(time.Second), Outcome: history.OK, Created: []string{"auto" + name + "new"}}
			if f.failing[gid] {
				gr.Outcome, gr.Error, gr.Created = history.Failed, "snapshot of "+d.Name+" failed: disk busy", nil
				outcome = history.Failed
			}
			f.mu.Lock()
			f.jobs[id-1].Guests = append(f.jobs[id-1].Guests, gr)
			f.mu.Unlock()
			f.Publish(Event{Type: "guest", JobID: id, Policy: name, Guest: d.Name, Outcome: gr.Outcome, Error: gr.Error, Done: i + 1, Total: len(p.Guests), Time: testNow})
		}
		f.mu.Lock()
		f.jobs[id-1].Outcome, f.jobs[id-1].Ended = outcome, testNow.Add(2*time.Second)
		f.mu.Unlock()
		f.Publish(Event{Type: "job-end", JobID: id, Policy: name, Outcome: outcome, Done: len(p.Guests), Total: len(p.Guests), Time: testNow.Add(2 * time.Second)})
	}()
	return id, nil
}

func (f *fakeBackend) PlanPolicy(ctx context.Context, name string) (Plan, error) {
	p, err := f.policy(name)
	if err != nil {
		return Plan{}, err
	}
	f.mu.Lock()
	f.actions = append(f.actions, "plan "+name)
	f.mu.Unlock()
	pl := Plan{Policy: name, At: testNow}
	j := history.Job{Policy: name, Kind: history.KindSnapshot, Trigger: "web", DryRun: true, Started: testNow, Ended: testNow, Outcome: history.OK}
	for _, g := range p.Guests {
		pl.Items = append(pl.Items, PlanItem{Guest: g, Action: "create", Name: "auto" + name + "new", Reason: "due"})
		j.Guests = append(j.Guests, history.GuestRun{Guest: g, Outcome: history.Skipped, Created: []string{"auto" + name + "new"}})
	}
	pl.JobID = f.addJob(j)
	return pl, nil
}

func (f *fakeBackend) VerifyBackup(ctx context.Context, guestID string) (int64, error) {
	d, err := f.Guest(ctx, guestID)
	if err != nil {
		return 0, err
	}
	id := f.addJob(history.Job{Policy: d.Policy, Kind: history.KindVerify, Trigger: "web", Started: testNow, Ended: testNow.Add(time.Second), Outcome: history.OK,
		Guests: []history.GuestRun{{Host: d.Host, Guest: d.Name, Started: testNow, Ended: testNow.Add(time.Second), Outcome: history.OK}}})
	f.mu.Lock()
	f.actions = append(f.actions, "verify "+guestID)
	f.mu.Unlock()
	return id, nil
}

func (f *fakeBackend) actionLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.actions)
}

// smallFleet is the fixture most tests use:
//
//	web1  host-a policy web   snapshot 10m old (cadence 1h: ok), backup 2h old (cadence 1d: ok)
//	web2  host-a policy web   snapshot 150m old (2.5×: warn), last run failed
//	db1   host-b policy db    snapshot 4h old (cadence 1h: crit), shut off, tag prod
//	lab1  host-b no policy    no snapshots
//
// db1 has a snapshot tree: base → {a → a1, b (current)}.
func smallFleet() *fakeBackend {
	f := newFake()
	f.problems = []string{"policy lab: host host-c: connecting: connection refused"}
	f.policies = []Policy{
		{Name: "web", Host: "host-a", VMID: "web%", SnapshotSchedule: "@every 1h", BackupSchedule: "@daily", Guests: []string{"host-a/web1", "host-a/web2"},
			Jobs: []PolicyJob{{Kind: history.KindSnapshot, Schedule: "@every 1h", LastRun: testNow.Add(-6 * time.Minute), Next: testNow.Add(54 * time.Minute)},
				{Kind: history.KindBackup, Schedule: "@daily", Next: testNow}}},
		{Name: "db", Host: "host-b", VMID: "db1", SnapshotSchedule: "@every 1h", Tags: []string{"prod"}, Guests: []string{"host-b/db1"}},
	}
	snap := func(name, parent string, age time.Duration, current bool, c driver.Consistency, size uint64) Snapshot {
		return Snapshot{Snapshot: driver.Snapshot{Name: name, Parent: parent, Created: testNow.Add(-age), Current: current, Consistency: c, Location: driver.LocationExternal}, Size: size}
	}
	f.addGuest(Guest{ID: "host-a/web1", Name: "web1", Host: "host-a", Policy: "web", State: driver.StateRunning, Tags: []string{"frontend"},
		SnapshotCadence: time.Hour, BackupCadence: 24 * time.Hour, ChainDepth: 2},
		[]Snapshot{snap("autoweb1", "", 10*time.Minute, true, driver.ConsistencyQuiesced, 1<<20)},
		[]BackupPoint{
			{ID: "p1", Level: "full", Chain: "c1", Started: testNow.Add(-26 * time.Hour), Finished: testNow.Add(-25 * time.Hour), Consistency: "quiesced", Size: 3 << 30, VirtualSize: 10 << 30},
			{ID: "p2", Level: "inc", Chain: "c1", Parent: "p1", Started: testNow.Add(-3 * time.Hour), Finished: testNow.Add(-2 * time.Hour), Consistency: "quiesced", Size: 200 << 20, VirtualSize: 10 << 30},
		})
	f.addGuest(Guest{ID: "host-a/web2", Name: "web2", Host: "host-a", Policy: "web", State: driver.StateRunning, Tags: []string{"frontend"},
		SnapshotCadence: time.Hour, BackupCadence: 24 * time.Hour, ChainDepth: 3,
		LastRun: &LastRun{JobID: 1, Kind: history.KindSnapshot, Ended: testNow.Add(-5 * time.Minute), Outcome: history.Failed, Error: "guest agent did not answer"}},
		[]Snapshot{snap("autoweb2", "", 150*time.Minute, true, driver.ConsistencyCrash, 0)}, nil)
	f.addGuest(Guest{ID: "host-b/db1", Name: "db1", Host: "host-b", Policy: "db", State: driver.StateShutoff, Tags: []string{"prod"},
		SnapshotCadence: time.Hour, ChainDepth: 4},
		[]Snapshot{
			snap("base", "", 10*time.Hour, false, driver.ConsistencyOffline, 5<<20),
			snap("a", "base", 8*time.Hour, false, driver.ConsistencyOffline, 6<<20),
			snap("b", "base", 4*time.Hour, true, driver.ConsistencyOffline, 7<<20),
			snap("a1", "a", 6*time.Hour, false, driver.ConsistencyOffline, 8<<20),
		}, nil)
	f.addGuest(Guest{ID: "host-b/lab1", Name: "lab1", Host: "host-b", State: driver.StateShutoff, ChainDepth: 1}, nil, nil)
	f.addJob(history.Job{Policy: "web", Kind: history.KindSnapshot, Trigger: "schedule", Started: testNow.Add(-6 * time.Minute), Ended: testNow.Add(-5 * time.Minute), Outcome: history.Failed,
		Guests: []history.GuestRun{
			{Host: "host-a", Guest: "web1", Started: testNow.Add(-6 * time.Minute), Ended: testNow.Add(-5 * time.Minute), Outcome: history.OK, Created: []string{"autoweb1"}, Freeze: 120 * time.Millisecond},
			{Host: "host-a", Guest: "web2", Started: testNow.Add(-6 * time.Minute), Ended: testNow.Add(-5 * time.Minute), Outcome: history.Failed, Error: "guest agent did not answer"},
		}})
	return f
}

// bigFleet fills a fake with guests × snaps snapshots each and jobs history jobs.
func bigFleet(guests, snaps, jobs int) *fakeBackend {
	f := newFake()
	var ids []string
	for i := range guests {
		id := fmt.Sprintf("host-%d/vm%04d", i%5, i)
		ids = append(ids, id)
		var ss []Snapshot
		for k := range snaps {
			parent := ""
			if k > 0 {
				parent = fmt.Sprintf("auto%02d", k-1)
			}
			ss = append(ss, Snapshot{Snapshot: driver.Snapshot{Name: fmt.Sprintf("auto%02d", k), Parent: parent, Created: testNow.Add(-time.Duration(snaps-k) * time.Hour), Current: k == snaps-1, Consistency: driver.ConsistencyQuiesced}, Size: uint64(k) << 20})
		}
		var lr *LastRun
		if i%7 == 0 {
			lr = &LastRun{JobID: 1, Outcome: history.Failed, Error: "boom", Ended: testNow}
		}
		f.addGuest(Guest{ID: id, Name: fmt.Sprintf("vm%04d", i), Host: fmt.Sprintf("host-%d", i%5), Policy: fmt.Sprintf("p%d", i%10), State: driver.StateRunning,
			Tags: []string{fmt.Sprintf("t%d", i%3)}, SnapshotCadence: time.Duration(1+i%4) * time.Hour, BackupCadence: 24 * time.Hour, ChainDepth: 1 + i%6, LastRun: lr}, ss,
			[]BackupPoint{{ID: "p1", Level: "full", Chain: "c", Started: testNow.Add(-30 * time.Hour), Finished: testNow.Add(-29 * time.Hour), Size: 1 << 30}})
	}
	for k := range jobs {
		st := testNow.Add(-time.Duration(jobs-k) * time.Minute)
		j := history.Job{Policy: fmt.Sprintf("p%d", k%10), Kind: history.KindSnapshot, Trigger: "schedule", Started: st, Ended: st.Add(30 * time.Second), Outcome: history.OK}
		for g := range 50 {
			j.Guests = append(j.Guests, history.GuestRun{Host: "host-0", Guest: ids[(k*50+g)%len(ids)], Started: st, Ended: st.Add(time.Second), Outcome: history.OK, Created: []string{"x"}, Removed: []string{"y"}, Freeze: 50 * time.Millisecond})
		}
		f.addJob(j)
	}
	sort.Slice(f.guests, func(i, j int) bool { return f.guests[i].ID < f.guests[j].ID })
	return f
}

type (
	historyJob   = history.Job
	historyQuery = history.Query
)
