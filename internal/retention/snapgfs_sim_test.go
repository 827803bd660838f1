package retention

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/naming"
)

// The simulations below run calendar retention as snap does, after every snapshot,
// over three years of an injected clock: the snapshot is named from the clock in the
// zone names are written in (naming.Name), every name is read back with
// naming.Recognizer, the planned snapshot is dated by its name and is "now", and a
// name already taken fails that snap with nothing removed (engine.Job.planGFS).

const simLabel = "gfs"

// simClock yields the clock readings at which snap runs; done ends the run.
type simClock func() (t time.Time, done bool)

// simOffset, when set, is how far the host's clock is off at a real time: the test
// with clock jumps checkpoints by real time, since its readings go backwards.

// simEvent is a line of a simulation's log kept for the golden file.
type simState struct {
	loc   *time.Location
	f     naming.Format
	p     GFS
	names []string // surviving snapshots, in creation order
	// reason of each survivor's last decision
	reasons                map[string][]string
	taken, failed, removed int
	log                    []string
	// repr remembers, per surviving snapshot kept by a rule with a count, the rule
	// and its period ("" for last), for the stability property.
	repr map[string][2]string
	// times caches what naming reads from each name (it is pure).
	times map[string]time.Time
	// every is how often (in snaps taken) the idempotence property is checked: it
	// costs a second plan, and three years of snaps are many.
	every int
	keys  map[string]func(time.Time) string
}

func newSim(t *testing.T, loc *time.Location, p GFS) *simState {
	t.Helper()
	f, err := naming.ParseFormat(naming.DefaultFormat)
	if err != nil {
		t.Fatal(err)
	}
	p.Location = loc
	keys := map[string]func(time.Time) string{}
	for _, r := range p.rules() {
		keys[r.name] = r.key
	}
	return &simState{keys: keys, loc: loc, f: f, p: p, reasons: map[string][]string{}, repr: map[string][2]string{}, times: map[string]time.Time{}, every: 8}
}

// read returns the survivors as retention items, dated by their names as the engine
// reads them.
func (s *simState) read(t *testing.T) []Item {
	rec := naming.Recognizer{Format: s.f, Loc: s.loc}
	items := make([]Item, 0, len(s.names))
	for _, n := range s.names {
		tm, ok := s.times[n]
		if !ok {
			r, ok := rec.Recognize(n, naming.Marker, time.Time{}, simLabel)
			if !ok {
				t.Fatalf("name %s does not read back", n)
			}
			tm = r.Time
			s.times[n] = tm
		}
		items = append(items, Item{Name: n, Time: tm})
	}
	return items
}

func primaryRule(reasons []string) string {
	for _, r := range reasons {
		if r != "created now" {
			name, _, _ := strings.Cut(r, " ")
			return name
		}
	}
	return ""
}

func (s *simState) count(rule string) int {
	for _, r := range s.p.rules() {
		if r.name == rule {
			return r.n
		}
	}
	return 0
}

func (s *simState) key(rule string, tm time.Time) string {
	if k := s.keys[rule]; k != nil {
		return k(tm.In(s.loc))
	}
	return ""
}

// snap takes one snapshot at clock reading at and applies retention, checking the
// properties on every step.
func (s *simState) snap(t *testing.T, at time.Time) {
	t.Helper()
	name := naming.Name(simLabel, s.f, at.In(s.loc))
	existing := s.read(t)
	pt, err := s.f.Parse(strings.TrimPrefix(name, naming.Prefix+simLabel), s.loc)
	if err != nil {
		t.Fatal(err)
	}
	planned := &Item{Name: name, Time: pt}
	ds, err := PlanGFS(existing, planned, s.p, pt)
	if errors.Is(err, ErrExists) {
		s.failed++
		s.log = append(s.log, fmt.Sprintf("%s  snap fails: name %s taken (nothing removed)", at.In(s.loc).Format("2006-01-02 15:04:05 MST"), name))
		return
	}
	if err != nil {
		t.Fatalf("%s: %v", at, err)
	}
	s.taken++
	s.checkProperties(t, at, existing, planned, ds)
	var keep []string
	for _, d := range ds {
		if d.Keep {
			keep = append(keep, d.Name)
			s.reasons[d.Name] = d.Reasons
		} else {
			s.removed++
			delete(s.reasons, d.Name)
			delete(s.times, d.Name)
		}
	}
	// Creation order is what a hypervisor lists; it differs from time order after a
	// backward clock jump, which the planner must not care about.
	var next []string
	for _, n := range append(slices.Clone(s.names), name) {
		if slices.Contains(keep, n) {
			next = append(next, n)
		}
	}
	s.names = next
}

func (s *simState) checkProperties(t *testing.T, at time.Time, existing []Item, planned *Item, ds []Decision) {
	t.Helper()
	p := s.p
	when := at.In(s.loc).Format("2006-01-02 15:04:05 MST")
	kept, future, within := 0, 0, 0
	byName := map[string]Decision{}
	for _, d := range ds {
		byName[d.Name] = d
		if !d.Keep {
			continue
		}
		kept++
		switch primaryRule(d.Reasons) {
		case "dated":
			future++
		case "within":
			within++
		}
	}
	// The newest, the snapshot just taken, is kept.
	if d := byName[planned.Name]; !d.Keep || !d.New {
		t.Fatalf("%s: the new snapshot %s is not kept: %+v", when, planned.Name, d)
	}
	// Never more than the rules' sum, plus what --keep-within and skew keep.
	if sum := p.Last + p.Hourly + p.Daily + p.Weekly + p.Monthly + p.Yearly; !slices.Contains([]int{p.Last, p.Hourly, p.Daily, p.Weekly, p.Monthly, p.Yearly}, -1) && kept > sum+within+future {
		t.Fatalf("%s: %d kept > %d (rules) + %d (within) + %d (future-dated)", when, kept, sum, within, future)
	}
	// Idempotent: applying the policy again to what survives removes nothing and
	// gives every survivor the same reasons.
	var survivors []Item
	for _, d := range ds {
		if d.Keep {
			survivors = append(survivors, d.Item)
		}
	}
	if s.taken%s.every != 0 {
		survivors = nil
	}
	again, err := PlanGFS(survivors, nil, p, planned.Time)
	if err != nil {
		t.Fatalf("%s: re-applying: %v", when, err)
	}
	for _, d := range again {
		if !d.Keep {
			t.Fatalf("%s: re-applying removes %s (%s): not idempotent", when, d.Name, d.Reason)
		}
		want := byName[d.Name].Reasons
		if d.Name == planned.Name {
			want = want[1:] // without "created now"
		}
		if !slices.Equal(d.Reasons, want) {
			t.Fatalf("%s: re-applying changes the reasons of %s: %q, was %q", when, d.Name, d.Reasons, want)
		}
	}
	// Stability: a snapshot kept by a rule with a count for one of its periods is
	// removed only once that rule has its count of newer periods (newer snapshots
	// for last), or when a newer kept snapshot now stands for the same period.
	for _, it := range existing {
		d, ok := byName[it.Name]
		r, had := s.repr[it.Name]
		if !ok || !had {
			continue
		}
		if d.Keep {
			continue
		}
		rule, period := r[0], r[1]
		n := s.count(rule)
		newer, covered := 0, false
		for _, o := range ds {
			if !o.Keep || primaryRule(o.Reasons) == "dated" {
				continue
			}
			if rule != "last" && s.key(rule, o.Time) == period {
				covered = true
			}
			if primaryRule(o.Reasons) != rule {
				continue
			}
			if rule == "last" && o.Time.After(it.Time) || rule != "last" && s.key(rule, o.Time) > period {
				newer++
			}
		}
		if n == -1 || newer < n && !covered {
			t.Fatalf("%s: %s, kept by %s for %q, removed while that rule keeps %d newer of %d and nothing else stands for its period", when, it.Name, rule, period, newer, n)
		}
	}
	for _, d := range ds {
		if !d.Keep {
			delete(s.repr, d.Name)
			continue
		}
		switch rule := primaryRule(d.Reasons); rule {
		case "last", "hourly", "daily", "weekly", "monthly", "yearly":
			s.repr[d.Name] = [2]string{rule, s.key(rule, d.Time)}
		default:
			delete(s.repr, d.Name)
		}
	}
}

// checkpoint appends the survivors with their reasons to the log.
func (s *simState) checkpoint(t *testing.T, title string) {
	s.log = append(s.log, fmt.Sprintf("== %s: %d taken, %d failed, %d removed, %d kept", title, s.taken, s.failed, s.removed, len(s.names)))
	items := s.read(t)
	slices.SortStableFunc(items, func(a, b Item) int { return a.Time.Compare(b.Time) })
	for _, it := range items {
		s.log = append(s.log, fmt.Sprintf("%s  %s  %s", it.Name, it.Time.In(s.loc).Format("Mon 2006-01-02 15:04:05 MST"), strings.Join(s.reasons[it.Name], ", ")))
	}
}

func (s *simState) golden(t *testing.T, file string) {
	t.Helper()
	got := []byte(strings.Join(s.log, "\n") + "\n")
	golden := filepath.Join("testdata", file)
	if *update {
		if err := os.WriteFile(golden, got, 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := 0; i < max(len(gl), len(wl)); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("%s differs at line %d (run go test -update after checking):\n got: %s\nwant: %s", golden, i+1, g, w)
			}
		}
	}
}

func mustLoad(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// simulate runs snap at every reading of clock, checkpointing at the given times (the
// first reading at or after each).
func simulate(t *testing.T, s *simState, clock simClock, checkpoints map[time.Time]string) {
	simulateSkewed(t, s, clock, nil, checkpoints)
}

// simulateSkewed is simulate for a clock that is off by skew(real) from the real
// times clock yields; checkpoints are real times.
func simulateSkewed(t *testing.T, s *simState, clock simClock, skew func(time.Time) time.Duration, checkpoints map[time.Time]string) {
	t.Helper()
	var cps []time.Time
	for c := range checkpoints {
		cps = append(cps, c)
	}
	slices.SortFunc(cps, time.Time.Compare)
	for {
		at, done := clock()
		if done {
			break
		}
		for len(cps) > 0 && !at.Before(cps[0]) {
			s.checkpoint(t, checkpoints[cps[0]])
			cps = cps[1:]
		}
		if skew != nil {
			at = at.Add(skew(at))
		}
		s.snap(t, at)
	}
	s.checkpoint(t, "end")
}

// regular returns a clock that reads start, start+every, … until end (exclusive),
// plus jitter (seeded, under a minute) as cron runs never start on the second.
func regular(start, end time.Time, every time.Duration, seed int64) simClock {
	rng := rand.New(rand.NewSource(seed))
	t := start
	return func() (time.Time, bool) {
		if !t.Before(end) {
			return time.Time{}, true
		}
		at := t
		if seed != 0 {
			at = at.Add(time.Duration(rng.Intn(60)) * time.Second)
		}
		t = t.Add(every)
		return at, false
	}
}

var (
	simStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	simEnd   = time.Date(2029, 1, 1, 0, 0, 0, 0, time.UTC)
	// cv4pve's classic three cron lines as one policy, plus the long term.
	simPolicy = GFS{Hourly: 24, Daily: 7, Weekly: 4, Monthly: 12, Yearly: 5}
)

// dstCheckpoints are the readings right after the DST changes of 2026 in loc
// (the end of the transition day), and mid-2027.
func dstCheckpoints(loc *time.Location, spring, fall time.Time) map[time.Time]string {
	return map[time.Time]string{
		spring: "after the spring change " + spring.In(loc).Format("2006-01-02 15:04 MST"),
		fall:   "after the fall change " + fall.In(loc).Format("2006-01-02 15:04 MST"),
		time.Date(2027, 7, 1, 0, 0, 0, 0, time.UTC): "2027-07-01",
	}
}

// TestGFSSimHourlyBerlin: a snapshot every hour for three years in Europe/Berlin.
// The repeated hour of each October names its snapshot as the hour before did: that
// snap fails on the taken name and removes nothing; the missing March hour has no
// name and no gap in the hourly count.
func TestGFSSimHourlyBerlin(t *testing.T) {
	t.Parallel()
	loc := mustLoad(t, "Europe/Berlin")
	s := newSim(t, loc, simPolicy)
	simulate(t, s, regular(simStart, simEnd, time.Hour, 0), dstCheckpoints(loc,
		time.Date(2026, 3, 29, 22, 0, 0, 0, loc), time.Date(2026, 10, 25, 22, 0, 0, 0, loc)))
	if s.failed != 3 {
		t.Errorf("%d snaps failed; want 3 (the repeated hour of 2026, 2027 and 2028)", s.failed)
	}
	s.golden(t, "sim_hourly_berlin.golden")
}

// TestGFSSimQuarterNewYork: every 15 minutes (with cron jitter) for three years in
// America/New_York, with --keep-last and --keep-within and an unlimited yearly rule.
// With jitter the repeated hour's names differ by their seconds from the first pass,
// so no snap fails; they read as the first pass's hour.
func TestGFSSimQuarterNewYork(t *testing.T) {
	t.Parallel()
	loc := mustLoad(t, "America/New_York")
	s := newSim(t, loc, GFS{Within: Span{Hours: 2}, Last: 4, Hourly: 12, Daily: 10, Weekly: 6, Monthly: 18, Yearly: -1})
	s.every = 32
	cps := dstCheckpoints(loc, time.Date(2026, 3, 8, 22, 0, 0, 0, loc), time.Date(2026, 11, 1, 22, 0, 0, 0, loc))
	// 01:50 EST, the second 01:50 of the night: the names of the repeated hour read as
	// EDT, an hour early, so the EDT ones are dated after "now".
	cps[time.Date(2026, 11, 1, 6, 50, 0, 0, time.UTC)] = "in the repeated hour 2026-11-01 01:50 EST"
	simulate(t, s, regular(simStart, simEnd, 15*time.Minute, 15), cps)
	s.golden(t, "sim_quarter_newyork.golden")
}

// TestGFSSimIrregularBerlin: snapshots at irregular intervals (10 minutes to 30
// hours) with outages of up to three weeks, for three years in Europe/Berlin.
func TestGFSSimIrregularBerlin(t *testing.T) {
	t.Parallel()
	loc := mustLoad(t, "Europe/Berlin")
	rng := rand.New(rand.NewSource(12))
	t0 := simStart
	clock := func() (time.Time, bool) {
		switch r := rng.Intn(200); {
		case r == 0:
			t0 = t0.Add(time.Duration(3+rng.Intn(19)) * 24 * time.Hour) // host down
		case r < 20:
			t0 = t0.Add(time.Duration(2+rng.Intn(28)) * time.Hour)
		default:
			t0 = t0.Add(time.Duration(10+rng.Intn(110)) * time.Minute)
		}
		t0 = t0.Add(time.Duration(rng.Intn(60)) * time.Second)
		return t0, !t0.Before(simEnd)
	}
	s := newSim(t, loc, simPolicy)
	simulate(t, s, clock, dstCheckpoints(loc,
		time.Date(2026, 3, 29, 22, 0, 0, 0, loc), time.Date(2026, 10, 25, 22, 0, 0, 0, loc)))
	s.golden(t, "sim_irregular_berlin.golden")
}

// TestGFSSimClockJumps: hourly in America/New_York, with the host's clock set back
// by 2h on 2026-06-10 and forward by a day on 2026-09-15 (both stay), and back by 2h
// again just before the fall DST change. After a backward jump the snapshots named
// in the 2h now "in the future" are kept, by no rule, until the clock passes them.
func TestGFSSimClockJumps(t *testing.T) {
	t.Parallel()
	loc := mustLoad(t, "America/New_York")
	back1 := time.Date(2026, 6, 10, 12, 30, 0, 0, loc)
	fwd := time.Date(2026, 9, 15, 12, 30, 0, 0, loc)
	back2 := time.Date(2026, 11, 1, 0, 30, 0, 0, loc)
	skew := func(real time.Time) time.Duration {
		switch {
		case !real.Before(back2):
			return -4*time.Hour + 24*time.Hour
		case !real.Before(fwd):
			return -2*time.Hour + 24*time.Hour
		case !real.Before(back1):
			return -2 * time.Hour
		}
		return 0
	}
	s := newSim(t, loc, simPolicy)
	simulateSkewed(t, s, regular(simStart, simEnd, time.Hour, 7), skew, map[time.Time]string{
		back1.Add(time.Hour):      "after the first snap past the 2h backward jump",
		back1.Add(2 * time.Hour):  "after the second snap past the 2h backward jump",
		fwd.Add(2 * time.Hour):    "after two snaps past the one-day forward jump",
		back2.Add(time.Hour):      "after the first snap past the second backward jump",
		back2.Add(27 * time.Hour): "a day later, past the fall DST change",
	})
	s.golden(t, "sim_clock_jumps.golden")
}
