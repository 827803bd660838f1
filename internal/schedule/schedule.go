// Package schedule parses the `schedule:` values of policy files and answers when a
// job is next due, including after downtime: a job whose slot passed while the host
// was down (or suspended, or the clock jumped) is due once, not once per missed slot.
// The clock is always passed in.
package schedule

import (
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// parser accepts 5-field cron expressions, 6 fields with seconds first, and the
// descriptors (@every 2s, @hourly, @daily …).
var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Schedule is a parsed schedule in a time zone.
type Schedule struct {
	spec string
	loc  *time.Location
	s    cron.Schedule
	// every is set for @every: the interval between runs, counted from the last run
	// (the anchor) rather than from wall-clock slots.
	every time.Duration
}

// Parse parses spec in loc (nil: time.Local). A TZ= or CRON_TZ= prefix is refused:
// the policy file states its time zone once.
func Parse(spec string, loc *time.Location) (Schedule, error) {
	if loc == nil {
		loc = time.Local
	}
	s := strings.TrimSpace(spec)
	if s == "" {
		return Schedule{}, fmt.Errorf("empty schedule: use a cron expression such as \"0 */4 * * *\" or \"@every 1h\"")
	}
	if strings.HasPrefix(s, "TZ=") || strings.HasPrefix(s, "CRON_TZ=") {
		return Schedule{}, fmt.Errorf("schedule %q: set the time zone with the file's timezone: key, not in the expression", spec)
	}
	if rest, ok := strings.CutPrefix(s, "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil {
			return Schedule{}, fmt.Errorf("schedule %q: %w", spec, err)
		}
		if d < time.Second {
			return Schedule{}, fmt.Errorf("schedule %q: the interval must be at least 1s", spec)
		}
		return Schedule{spec: s, loc: loc, every: d}, nil
	}
	cs, err := parser.Parse(s)
	if err != nil {
		return Schedule{}, fmt.Errorf("schedule %q: %w (use 5 cron fields, 6 with seconds first, or @every DURATION)", spec, err)
	}
	return Schedule{spec: s, loc: loc, s: cs}, nil
}

// String returns the spec as written.
func (s Schedule) String() string { return s.spec }

// Location is the schedule's time zone.
func (s Schedule) Location() *time.Location { return s.loc }

// Next returns the first run strictly after t. For @every, runs fall at t plus the
// interval: pass the previous run's time.
func (s Schedule) Next(t time.Time) time.Time {
	if s.every > 0 {
		return t.Add(s.every)
	}
	return s.cronNext(t)
}

// Cadence is the longest gap between two consecutive runs over the year after from:
// what `monitor` compares a guest's newest snapshot with. For @every it is the
// interval.
func (s Schedule) Cadence(from time.Time) time.Duration {
	if s.every > 0 {
		return s.every
	}
	var longest time.Duration
	t := s.Next(from)
	end := from.AddDate(1, 0, 0)
	for i := 0; i < 100000 && t.Before(end); i++ {
		n := s.Next(t)
		if n.IsZero() {
			break
		}
		if g := n.Sub(t); g > longest {
			longest = g
		}
		t = n
	}
	return longest
}

// Due reports whether a job last run at last (zero: never) is due at now, and when
// it became due. Missed slots collapse into one: after a week of downtime an hourly
// job is due once, at the newest slot not after now. A job that never ran is due at
// once (its first slot is now).
func (s Schedule) Due(last, now time.Time) (bool, time.Time) {
	if last.IsZero() {
		return true, now
	}
	next := s.Next(last)
	if next.After(now) {
		return false, next
	}
	return true, next
}
