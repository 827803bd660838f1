package schedule

import (
	"time"

	"github.com/robfig/cron/v3"
)

// allHours are the hour bits of a cron expression that runs every hour.
const allHours = 1<<24 - 1

// cronNext is the cron expression's first run after t with daylight-saving changes
// handled as cron daemons (cronie, systemd timers) handle them: a slot in the hour
// the clock skips runs when the clock jumps (02:30 on the spring night runs at 03:00
// summer time), and a slot in the hour the clock repeats runs once, at its first
// occurrence. robfig/cron alone drops the first slot and runs the second twice. An
// expression that runs every hour is left alone: it has slots on both sides of the
// change, and its repeated hour is real time passing.
func (s Schedule) cronNext(t time.Time) time.Time {
	t = t.In(s.loc)
	if spec, ok := s.s.(*cron.SpecSchedule); !ok || spec.Hour&allHours == allHours {
		return s.s.Next(t)
	}
	for range 4 {
		n := s.s.Next(t)
		if n.IsZero() {
			return n
		}
		if g, ok := s.gapSlot(t, n); ok {
			return g
		}
		if !repeated(n) {
			return n
		}
		t = n
	}
	return s.s.Next(t)
}

// gapSlot returns the first clock jump after t and before n at which a slot of the
// expression fell into the skipped wall-clock time.
func (s Schedule) gapSlot(t, n time.Time) (time.Time, bool) {
	_, jump := t.ZoneBounds()
	for i := 0; i < 8 && !jump.IsZero() && jump.Before(n); i++ {
		_, before := jump.Add(-time.Second).Zone()
		_, after := jump.Zone()
		if skipped := time.Duration(after-before) * time.Second; skipped > 0 {
			// Read the skipped wall times in the offset before the jump, where they exist.
			old := time.FixedZone("", before)
			if slot := s.s.Next(jump.Add(-time.Second).In(old)); !slot.IsZero() && slot.Before(jump.Add(skipped)) {
				return jump.In(s.loc), true
			}
		}
		_, jump = jump.ZoneBounds()
	}
	return time.Time{}, false
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
