package retention

import (
	"time"
)

// GFS is a grandfather-father-son retention policy for backup points, with the
// options of restic's forget and PBS prune. A count of -1 means unlimited, 0 that the
// rule is off.
type GFS struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	// Within keeps every point taken after now minus Within.
	Within Span
	// Location is the time zone of the calendar periods (days, weeks…); nil means
	// time.Local.
	Location *time.Location
}

// Span is a calendar duration: years, months and days added with time.AddDate, then
// Duration.
type Span struct {
	Years, Months, Days int
	Duration            time.Duration
}

// GFSItem is one point as GFS sees it.
type GFSItem struct {
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
}

// GFSDecision is what GFS decided for one point, and why.
type GFSDecision struct {
	GFSItem
	Keep bool `json:"keep"`
	// Reasons name the rule that kept the point ("daily #2 2026-11-28") or why it goes.
	Reasons []string `json:"reasons"`
}
