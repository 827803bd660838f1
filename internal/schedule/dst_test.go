package schedule

import (
	"strings"
	"testing"
	"time"
)

// runs lists the first k runs after from, as wall times with their zone.
func runs(t *testing.T, spec string, loc *time.Location, from time.Time, k int) string {
	t.Helper()
	s, err := Parse(spec, loc)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for x := from; len(out) < k; {
		x = s.Next(x)
		out = append(out, x.Format("Mon 01-02 15:04 MST"))
	}
	return strings.Join(out, ", ")
}

// TestNextDST: slots in the hour the clock skips run at the jump; slots in the hour
// it repeats run once; hourly expressions are untouched. Before the fix, 02:30 on
// the spring night was dropped (the weekly job waited two weeks) and 02:30 on the
// autumn night ran twice.
func TestNextDST(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	spring := time.Date(2026, 3, 27, 12, 0, 0, 0, berlin)
	autumn := time.Date(2026, 10, 23, 12, 0, 0, 0, berlin)
	cases := []struct {
		spec string
		from time.Time
		want string
	}{
		{"30 2 * * *", spring, "Sat 03-28 02:30 CET, Sun 03-29 03:00 CEST, Mon 03-30 02:30 CEST"},
		{"30 2 * * 0", spring, "Sun 03-29 03:00 CEST, Sun 04-05 02:30 CEST"},
		{"0 2 * * *", spring, "Sat 03-28 02:00 CET, Sun 03-29 03:00 CEST, Mon 03-30 02:00 CEST"},
		{"0 3 * * *", spring, "Sat 03-28 03:00 CET, Sun 03-29 03:00 CEST, Mon 03-30 03:00 CEST"},
		{"15 30 2 * * *", spring, "Sat 03-28 02:30 CET, Sun 03-29 03:00 CEST, Mon 03-30 02:30 CEST"},
		{"*/30 * * * *", time.Date(2026, 3, 29, 1, 10, 0, 0, berlin), "Sun 03-29 01:30 CET, Sun 03-29 03:00 CEST, Sun 03-29 03:30 CEST"},
		{"30 2 * * *", autumn, "Sat 10-24 02:30 CEST, Sun 10-25 02:30 CEST, Mon 10-26 02:30 CET"},
		{"30 2 * * 0", autumn, "Sun 10-25 02:30 CEST, Sun 11-01 02:30 CET"},
		{"0 * * * *", time.Date(2026, 10, 25, 1, 30, 0, 0, berlin), "Sun 10-25 02:00 CEST, Sun 10-25 02:00 CET, Sun 10-25 03:00 CET"},
		{"30 2 * * *", time.Date(2026, 3, 27, 12, 0, 0, 0, time.UTC), "Sat 03-28 02:30 UTC, Sun 03-29 02:30 UTC"},
	}
	for _, c := range cases {
		loc := c.from.Location()
		if got := runs(t, c.spec, loc, c.from, strings.Count(c.want, ",")+1); got != c.want {
			t.Errorf("%q from %v:\n got  %s\n want %s", c.spec, c.from, got, c.want)
		}
	}
}

// TestCadenceDST: a daily 02:30 job's longest gap over a year in Berlin is the
// 25 hours of the autumn night, not the 47 hours of a dropped spring run.
func TestCadenceDST(t *testing.T) {
	berlin, _ := time.LoadLocation("Europe/Berlin")
	s, err := Parse("30 2 * * *", berlin)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Cadence(time.Date(2026, 1, 1, 0, 0, 0, 0, berlin)); got != 25*time.Hour {
		t.Errorf("Cadence = %v, want 25h", got)
	}
}

// TestNextDSTProperties: over two years in zones with 1-hour and 30-minute changes,
// runs strictly increase, expressions with fixed hours never repeat a wall time
// (names stay unique), and every day with a slot gets its run (robfig alone skipped
// days next to Lord Howe's 30-minute changes).
func TestNextDSTProperties(t *testing.T) {
	for _, zone := range []string{"Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham", "UTC"} {
		loc, err := time.LoadLocation(zone)
		if err != nil {
			t.Fatal(err)
		}
		for _, spec := range []string{"30 2 * * *", "0 2 * * *", "45 1 * * *", "15 2 * * 0", "0 0 * * *", "0 */6 * * *", "*/20 1-3 * * *"} {
			s, err := Parse(spec, loc)
			if err != nil {
				t.Fatal(err)
			}
			from := time.Date(2025, 12, 31, 12, 0, 0, 0, loc)
			seen := map[string]bool{}
			days := map[string]bool{}
			prev := from
			for x := s.Next(from); x.Before(from.AddDate(2, 0, 0)); x = s.Next(x) {
				if !x.After(prev) {
					t.Fatalf("%s %q: %v after %v", zone, spec, x, prev)
				}
				wall := x.Format("2006-01-02 15:04")
				if seen[wall] {
					t.Errorf("%s %q: wall time %s twice", zone, spec, wall)
				}
				seen[wall] = true
				if x.Year() >= 2026 {
					days[x.Format("2006-01-02")] = true
				}
				prev = x
			}
			if strings.HasSuffix(spec, "* * *") && len(days) != 730 {
				t.Errorf("%s %q: runs on %d days of 730", zone, spec, len(days))
			}
		}
	}
}
