package policy

import (
	"fmt"
	"time"

	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/retention"
	"github.com/autosnap/autosnap/internal/schedule"
)

// DefaultPlanRuns is how many runs per policy and job a Plan lists by default.
const DefaultPlanRuns = 50

// maxSimulatedRuns bounds the simulation of one job (an @every 1s schedule over a
// year is 31 million runs).
const maxSimulatedRuns = 1_000_000

// PlanOptions says what Simulate simulates.
type PlanOptions struct {
	// At is when the simulated daemon starts, with no run recorded before.
	At time.Time
	// Days is how long it runs.
	Days int
	// Policy restricts the plan to one policy ("" plans all).
	Policy string
	// MaxRuns is how many runs per job the plan lists (the rest are counted);
	// 0 means DefaultPlanRuns, -1 lists every run.
	MaxRuns int
	// Format is the timestamp format of snapshot names; zero means naming.DefaultFormat.
	Format naming.Format
}

// Plan is what a daemon started at From with no recorded history would take until
// Until, and what retention would keep right after its last run.
type Plan struct {
	From     time.Time    `json:"from"`
	Until    time.Time    `json:"until"`
	TimeZone string       `json:"timezone"`
	Policies []PolicyPlan `json:"policies"`
}

// PolicyPlan is one policy's share of a Plan. Every run applies to each guest the
// policy selects at that time.
type PolicyPlan struct {
	Policy   string        `json:"policy"`
	Line     int           `json:"line"`
	Host     string        `json:"host"`
	VMID     string        `json:"vmid"`
	Guests   []string      `json:"guests,omitempty"` // filled by callers that list the host's guests
	Snapshot *SnapshotPlan `json:"snapshot,omitempty"`
	Backup   *BackupPlan   `json:"backup,omitempty"`
}

// PlannedRun is one simulated run.
type PlannedRun struct {
	At time.Time `json:"at"`
	// Name is the snapshot's name (snapshot runs only).
	Name string `json:"name,omitempty"`
	// Level is the backup's level (backup runs only).
	Level string `json:"level,omitempty"`
	// Why says why the run happens then and, for a backup, why at that level.
	Why string `json:"why"`
}

// SnapshotPlan is the simulated snapshot runs of a policy.
type SnapshotPlan struct {
	Schedule string       `json:"schedule"`
	Label    string       `json:"label"`
	Keep     string       `json:"keep"`
	Runs     []PlannedRun `json:"runs"`
	// TotalRuns counts every run, listed or not.
	TotalRuns int `json:"total_runs"`
	// Kept are the snapshots retention keeps right after the last run, oldest first,
	// each with the rule that keeps it.
	Kept []retention.GFSDecision `json:"kept"`
	// Removed counts the simulated snapshots retention has removed by then.
	Removed int `json:"removed"`
	// Failed counts the runs that would fail because their name was taken.
	Failed int `json:"failed,omitempty"`
}

// BackupPlan is the simulated backup runs of a policy.
type BackupPlan struct {
	Schedule  string         `json:"schedule"`
	Target    string         `json:"target"`
	Runs      []PlannedRun   `json:"runs"`
	TotalRuns int            `json:"total_runs"`
	Levels    map[string]int `json:"levels"`
	// Prune is the prune rule ("" when backups are never pruned); Kept and Removed
	// are as for snapshots.
	Prune   string                  `json:"prune,omitempty"`
	Kept    []retention.GFSDecision `json:"kept,omitempty"`
	Removed int                     `json:"removed"`
}

// LevelAt returns the level of a backup run at t, and why. The first level rule
// whose schedule is due at t (see schedule.Schedule.Due), given when that rule's
// level last ran (last[level]; zero or absent: never), wins; otherwise Default
// (auto: inc when the guest has a usable chain, else full). A full rule "0 3 * * 0"
// thus makes the first backup at or after each Sunday 03:00 a full, also when the
// host was down on Sunday.
func (b *BackupRule) LevelAt(t time.Time, last map[string]time.Time) (level, why string) {
	for _, r := range b.Levels {
		lt := last[r.Level]
		if due, _ := r.Schedule.Parsed().Due(lt, t); due {
			if lt.IsZero() {
				return r.Level, fmt.Sprintf("level rule %s %q: no %s recorded yet", r.Level, r.Schedule.Spec, r.Level)
			}
			return r.Level, fmt.Sprintf("level rule %s %q: due since %s", r.Level, r.Schedule.Spec, r.Schedule.Parsed().Next(lt).Format("2006-01-02 15:04:05 MST"))
		}
	}
	d := b.Default
	if d == "" {
		d = "auto"
	}
	if len(b.Levels) == 0 {
		return d, "level: " + d
	}
	return d, "no level rule due: level " + d
}

// runTimes returns the run times of s from from (the first run: a job never run is
// due at once) up to before until; it fails past limit runs.
func runTimes(s schedule.Schedule, from, until time.Time, limit int) ([]time.Time, error) {
	var out []time.Time
	for t := from; t.Before(until); {
		if len(out) == limit {
			return nil, fmt.Errorf("schedule %q runs more than %d times in the simulated time: simulate fewer days", s, limit)
		}
		out = append(out, t)
		n := s.Next(t)
		if n.IsZero() || !n.After(t) {
			break
		}
		t = n
	}
	return out, nil
}

// Simulate plans cfg's policies: each job runs at opts.At (the daemon runs a job
// with no recorded run at once), then at each following slot of its schedule until
// opts.Days days later; retention is applied as right after the last run. It is
// pure: no hypervisor is contacted and guests are not listed.
func (c *Config) Simulate(opts PlanOptions) (*Plan, error) {
	if opts.Days < 1 {
		return nil, fmt.Errorf("plan: days must be at least 1")
	}
	loc := c.Location
	if loc == nil {
		loc = time.Local
	}
	f := opts.Format
	if f.String() == "" {
		f, _ = naming.ParseFormat(naming.DefaultFormat)
	}
	limit := opts.MaxRuns
	if limit == 0 {
		limit = DefaultPlanRuns
	}
	from := opts.At.In(loc)
	until := from.AddDate(0, 0, opts.Days)
	plan := &Plan{From: from, Until: until, TimeZone: loc.String()}
	found := false
	for i := range c.Policies {
		p := &c.Policies[i]
		if opts.Policy != "" && p.Name != opts.Policy {
			continue
		}
		found = true
		host, _ := c.HostOf(p)
		pp := PolicyPlan{Policy: p.Name, Line: p.Line, Host: host, VMID: p.VMID}
		if p.Snapshot != nil {
			sp, err := simulateSnapshots(p.Snapshot, f, from, until, loc, limit)
			if err != nil {
				return nil, fmt.Errorf("policy %q: %w", p.Name, err)
			}
			pp.Snapshot = sp
		}
		if p.Backup != nil {
			bp, err := simulateBackups(p.Backup, from, until, loc, limit)
			if err != nil {
				return nil, fmt.Errorf("policy %q: %w", p.Name, err)
			}
			pp.Backup = bp
		}
		plan.Policies = append(plan.Policies, pp)
	}
	if opts.Policy != "" && !found {
		return nil, fmt.Errorf("no policy named %q in %s", opts.Policy, c.Path)
	}
	return plan, nil
}

func listed(limit, n int) bool { return limit < 0 || n < limit }

func runWhy(i int) string {
	if i == 0 {
		return "first run: none recorded, so due at once"
	}
	return "schedule"
}

func simulateSnapshots(r *SnapshotRule, f naming.Format, from, until time.Time, loc *time.Location, limit int) (*SnapshotPlan, error) {
	sp := &SnapshotPlan{Schedule: r.Schedule.Spec, Label: r.Label, Keep: KeepString(r.Keep)}
	times, err := runTimes(r.Schedule.Parsed(), from, until, maxSimulatedRuns)
	if err != nil {
		return nil, err
	}
	items := make([]retention.GFSItem, 0, len(times))
	taken := map[string]time.Time{}
	for i, t := range times {
		name := naming.Name(r.Label, f, t.In(loc))
		why := runWhy(i)
		if first, dup := taken[name]; dup {
			// The clock was set back (or the format lacks seconds): the name exists.
			why = fmt.Sprintf("fails: the run at %s took this name (the clock went back, or the timestamp format is too coarse; timezone: UTC avoids it)", first.Format(time.RFC3339))
		} else {
			taken[name] = t
			items = append(items, retention.GFSItem{ID: name, Time: t})
		}
		if listed(limit, len(sp.Runs)) {
			sp.Runs = append(sp.Runs, PlannedRun{At: t, Name: name, Why: why})
		}
	}
	sp.TotalRuns = len(times)
	if len(times) == 0 {
		return sp, nil
	}
	keep := r.Keep
	keep.Location = loc
	ds, err := keep.Apply(items, times[len(times)-1])
	if err != nil {
		return nil, err
	}
	sp.Failed = len(times) - len(items)
	for _, d := range ds {
		if d.Keep {
			sp.Kept = append(sp.Kept, d)
		} else {
			sp.Removed++
		}
	}
	return sp, nil
}

func simulateBackups(r *BackupRule, from, until time.Time, loc *time.Location, limit int) (*BackupPlan, error) {
	bp := &BackupPlan{Schedule: r.Schedule.Spec, Target: r.Target, Levels: map[string]int{}}
	if !r.Prune.IsEmpty() {
		bp.Prune = KeepString(r.Prune)
	}
	times, err := runTimes(r.Schedule.Parsed(), from, until, maxSimulatedRuns)
	if err != nil {
		return nil, err
	}
	last := map[string]time.Time{}
	items := make([]retention.GFSItem, 0, len(times))
	for i, t := range times {
		level, why := r.LevelAt(t, last)
		last[level] = t
		bp.Levels[level]++
		items = append(items, retention.GFSItem{ID: level, Time: t})
		if listed(limit, len(bp.Runs)) {
			w := runWhy(i)
			if w == "schedule" {
				w = why
			} else {
				w += "; " + why
			}
			bp.Runs = append(bp.Runs, PlannedRun{At: t, Level: level, Why: w})
		}
	}
	bp.TotalRuns = len(times)
	if bp.Prune == "" || len(times) == 0 {
		return bp, nil
	}
	keep := r.Prune
	keep.Location = loc
	ds, err := keep.Apply(items, times[len(times)-1])
	if err != nil {
		return nil, err
	}
	for _, d := range ds {
		if d.Keep {
			bp.Kept = append(bp.Kept, d)
		} else {
			bp.Removed++
		}
	}
	return bp, nil
}

// KeepString renders a retention rule in the file's words: "keep_last 3, keep_daily 7".
func KeepString(g retention.GFS) string {
	var s string
	add := func(k string, v string) {
		if s != "" {
			s += ", "
		}
		s += k + " " + v
	}
	if !g.Within.IsZero() {
		add("keep_within", g.Within.String())
	}
	for _, r := range []struct {
		k string
		n int
	}{{"keep_last", g.Last}, {"keep_hourly", g.Hourly}, {"keep_daily", g.Daily}, {"keep_weekly", g.Weekly}, {"keep_monthly", g.Monthly}, {"keep_yearly", g.Yearly}} {
		switch {
		case r.n == -1:
			add(r.k, "unlimited")
		case r.n > 0:
			add(r.k, fmt.Sprint(r.n))
		}
	}
	return s
}
