package schedule

import (
	"testing"
	"time"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	l, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestParseRejects(t *testing.T) {
	for _, spec := range []string{"", "  ", "* * *", "@every", "@every 0s", "@every 10ms", "@sometimes", "TZ=UTC 0 * * * *", "61 * * * *"} {
		if _, err := Parse(spec, time.UTC); err == nil {
			t.Errorf("Parse(%q) accepted", spec)
		}
	}
}

func TestNext(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")
	at := time.Date(2026, 3, 29, 1, 30, 0, 0, berlin) // the night clocks go forward at 02:00
	for _, c := range []struct {
		spec string
		loc  *time.Location
		from time.Time
		want time.Time
	}{
		{"0 * * * *", time.UTC, time.Date(2026, 1, 1, 10, 15, 0, 0, time.UTC), time.Date(2026, 1, 1, 11, 0, 0, 0, time.UTC)},
		{"30 0 * * * *", time.UTC, time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 10, 0, 30, 0, time.UTC)},
		{"@daily", time.UTC, time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC), time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)},
		{"@every 2s", time.UTC, time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 10, 0, 2, 0, time.UTC)},
		// 02:30 does not exist in Berlin that night: it runs when the clock jumps, at
		// 03:00 summer time, as cron daemons do (see TestNextDST).
		{"30 2 * * *", berlin, at, time.Date(2026, 3, 29, 3, 0, 0, 0, berlin)},
		{"0 3 * * *", berlin, at, time.Date(2026, 3, 29, 3, 0, 0, 0, berlin)},
	} {
		s, err := Parse(c.spec, c.loc)
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.spec, err)
		}
		if got := s.Next(c.from); !got.Equal(c.want) {
			t.Errorf("%q.Next(%v) = %v, want %v", c.spec, c.from, got, c.want)
		}
	}
}

func TestDueCollapsesMissedSlots(t *testing.T) {
	s, err := Parse("0 * * * *", time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	last := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	if due, next := s.Due(last, last.Add(59*time.Minute)); due || !next.Equal(last.Add(time.Hour)) {
		t.Errorf("before the next slot: due=%v next=%v", due, next)
	}
	// A week down: due once, now.
	now := last.Add(7 * 24 * time.Hour).Add(30 * time.Minute)
	due, _ := s.Due(last, now)
	if !due {
		t.Fatal("not due after a week of downtime")
	}
	// Once run at now, the next is the next slot, not one of the missed ones.
	if due, next := s.Due(now, now.Add(time.Minute)); due || !next.Equal(time.Date(2026, 1, 8, 11, 0, 0, 0, time.UTC)) {
		t.Errorf("after the catch-up run: due=%v next=%v", due, next)
	}
	if due, _ := s.Due(time.Time{}, now); !due {
		t.Error("a job that never ran is not due")
	}
	// The clock jumped back an hour: nothing is due until the slot after last.
	if due, _ := s.Due(now, now.Add(-time.Hour)); due {
		t.Error("due after the clock jumped back")
	}
}

func TestCadence(t *testing.T) {
	for spec, want := range map[string]time.Duration{
		"@every 90s":   90 * time.Second,
		"0 * * * *":    time.Hour,
		"0 3 * * *":    24 * time.Hour,
		"0 3 * * 1,4":  4 * 24 * time.Hour,
		"0 0 1 */3 *":  92 * 24 * time.Hour,
		"*/15 * * * *": 15 * time.Minute,
	} {
		s, err := Parse(spec, time.UTC)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Cadence(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); got != want {
			t.Errorf("Cadence(%q) = %v, want %v", spec, got, want)
		}
	}
}
