package schedule

import (
	"time"

	"github.com/robfig/cron/v3"
)

// allHours are the hour bits of a cron expression that runs every hour.
const allHours = 1<<24 - 1

// cronNext is the cron expression's first run after t with daylight-saving changes
// handled as cron daemons (cronie, systemd timers) handle them: a slot in the wall
// time the clock skips runs when the clock jumps (02:30 on the spring night runs at
// 03:00 summer time), and a slot in the wall time the clock repeats runs once, at its
// first occurrence, unless the expression runs every hour (then the repeated hour is
// real time passing and runs again). robfig/cron alone drops the skipped slot, runs
// the repeated one twice, and in zones that shift by 30 minutes (Lord Howe) skips
// whole days next to a change; so it is only asked about stretches of one UTC offset.
func (s Schedule) cronNext(t time.Time) time.Time {
	spec, ok := s.s.(*cron.SpecSchedule)
	if !ok {
		return s.s.Next(t.In(s.loc))
	}
	everyHour := spec.Hour&allHours == allHours
	// cur is where the search resumes; probe is an instant of the stretch of one
	// offset being searched (cur may lie just before it).
	cur, probe := t.In(s.loc), t.In(s.loc)
	for range 64 {
		_, off := probe.Zone()
		_, end := probe.ZoneBounds()
		n := s.s.Next(cur.In(time.FixedZone("", off)))
		if n.IsZero() {
			return n
		}
		if end.IsZero() || n.Before(end) {
			n = n.In(s.loc)
			if everyHour || !repeated(n) {
				return n
			}
			cur, probe = n, n
			continue
		}
		// No slot before the change; n is the first wall time after it, read in the
		// old offset. Within the skipped span it does not exist: run at the jump.
		if _, after := end.Zone(); after > off && n.Before(end.Add(time.Duration(after-off)*time.Second)) {
			return end.In(s.loc)
		}
		// robfig works in whole seconds: a slot exactly at end is after end-1s.
		cur, probe = end.Add(-time.Second), end
	}
	return s.s.Next(t.In(s.loc))
}

// repeated reports whether the wall time of n is the second occurrence of a time the
// clock repeated when it was set back.
func repeated(n time.Time) bool {
	start, _ := n.ZoneBounds()
	if start.IsZero() {
		return false
	}
	_, before := start.Add(-time.Second).Zone()
	_, after := n.Zone()
	back := time.Duration(before-after) * time.Second
	return back > 0 && n.Sub(start) < back
}
