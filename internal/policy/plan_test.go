package policy

import (
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	cfg, err := Parse([]byte(src), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestSimulateRepeatedHour: an hourly schedule on the night the clock goes back
// renders one name twice; the plan says that run fails and counts it once.
func TestSimulateRepeatedHour(t *testing.T) {
	cfg := mustParse(t, "timezone: Europe/Berlin\npolicies:\n  - name: h\n    vmid: x\n    snapshot: {schedule: \"0 * * * *\", keep_last: 3}\n")
	berlin, _ := time.LoadLocation("Europe/Berlin")
	p, err := cfg.Simulate(PlanOptions{At: time.Date(2026, 10, 25, 1, 0, 0, 0, berlin), Days: 1, MaxRuns: -1})
	if err != nil {
		t.Fatal(err)
	}
	s := p.Policies[0].Snapshot
	if s.TotalRuns != 25 || s.Failed != 1 || len(s.Kept) != 3 || s.Removed != 21 {
		t.Fatalf("runs %d failed %d kept %d removed %d", s.TotalRuns, s.Failed, len(s.Kept), s.Removed)
	}
	if r := s.Runs[2]; r.Name != "autoh261025020000" || !strings.HasPrefix(r.Why, "fails: the run at 2026-10-25T02:00:00+02:00 took this name") {
		t.Errorf("third run = %+v", r)
	}
	cfg = mustParse(t, "timezone: UTC\npolicies:\n  - name: h\n    vmid: x\n    snapshot: {schedule: \"0 * * * *\", keep_last: 3}\n")
	if p, err = cfg.Simulate(PlanOptions{At: time.Date(2026, 10, 24, 23, 0, 0, 0, time.UTC), Days: 1}); err != nil || p.Policies[0].Snapshot.Failed != 0 {
		t.Errorf("UTC: %v %+v", err, p)
	}
}

func TestSimulateLimits(t *testing.T) {
	cfg := mustParse(t, minimal)
	if _, err := cfg.Simulate(PlanOptions{At: time.Now(), Days: 30}); err == nil || !strings.Contains(err.Error(), "simulate fewer days") {
		t.Errorf("30 days of @every 2s: %v", err)
	}
	if _, err := cfg.Simulate(PlanOptions{At: time.Now(), Days: 0}); err == nil {
		t.Error("0 days accepted")
	}
	if _, err := cfg.Simulate(PlanOptions{At: time.Now(), Days: 1, Policy: "nope"}); err == nil {
		t.Error("unknown policy accepted")
	}
	p, err := cfg.Simulate(PlanOptions{At: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Days: 1})
	if err != nil {
		t.Fatal(err)
	}
	if s := p.Policies[0].Snapshot; s.TotalRuns != 43200 || len(s.Runs) != DefaultPlanRuns || len(s.Kept) != 3 || s.Removed != 43197 {
		t.Errorf("runs %d listed %d kept %d removed %d", s.TotalRuns, len(s.Runs), len(s.Kept), s.Removed)
	}
}

// TestLevelAt: the first due rule wins, measured from when its level last ran, so a
// full missed on Sunday (host down) is taken by the next backup.
func TestLevelAt(t *testing.T) {
	cfg := mustParse(t, `timezone: UTC
policies:
  - name: b
    vmid: x
    backup:
      schedule: "0 2 * * *"
      target: /b
      levels:
        - {level: full, schedule: "0 0 1 * *"}
        - {level: diff, schedule: "0 0 * * 0"}
      level: inc
`)
	b := cfg.Policies[0].Backup
	day := func(d int) time.Time { return time.Date(2026, 11, d, 2, 0, 0, 0, time.UTC) } // 2026-11-01 is a Sunday
	for _, c := range []struct {
		at   time.Time
		last map[string]time.Time
		want string
	}{
		{day(3), nil, "full"}, // no full yet
		{day(3), map[string]time.Time{"full": day(1)}, "diff"},
		{day(3), map[string]time.Time{"full": day(1), "diff": day(2)}, "inc"},
		{day(8), map[string]time.Time{"full": day(1), "diff": day(3)}, "diff"},
		{day(10), map[string]time.Time{"full": day(1), "diff": day(3)}, "diff"}, // Sunday 8th missed
		{time.Date(2026, 12, 2, 2, 0, 0, 0, time.UTC), map[string]time.Time{"full": day(1), "diff": day(29)}, "full"},
	} {
		if got, why := b.LevelAt(c.at, c.last); got != c.want {
			t.Errorf("LevelAt(%v, %v) = %s (%s), want %s", c.at, c.last, got, why, c.want)
		}
	}
	b.Levels = nil
	if got, _ := b.LevelAt(day(3), nil); got != "inc" {
		t.Errorf("no rules: %s", got)
	}
}

func TestScheduleParsedInCode(t *testing.T) {
	s := Schedule{Spec: "@every 2s"}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := s.Parsed().Next(at); !got.Equal(at.Add(2 * time.Second)) {
		t.Errorf("Next = %v", got)
	}
}
