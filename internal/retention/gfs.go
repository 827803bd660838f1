package retention

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrKeepsNothing is wrapped by GFS.Apply's error when the policy is empty or would
// remove every point.
var ErrKeepsNothing = errors.New("the retention policy keeps nothing")

// GFS is a grandfather-father-son retention policy for backup points, with the keep
// options of restic's forget and Proxmox Backup Server's prune. A count of -1 means
// unlimited, 0 that the rule is off.
//
// Counting is PBS's additive model: Within first, then the rules in the order last,
// hourly, daily, weekly, monthly, yearly. Each rule walks the points newest to oldest
// and keeps the newest point of each period (hour, day, ISO week Monday to Sunday,
// month, year, in Location) until it has kept its count, skipping periods that
// already hold a point kept by an earlier rule: a rule only reaches further into the
// past, it never spends its count on what is already kept. Periods without points do
// not count.
type GFS struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	// Within keeps every point taken after now minus Within.
	Within Span
	// Location is the time zone of the calendar periods; nil means time.Local.
	Location *time.Location
}

// Span is a calendar duration: Years, Months and Days applied with time.AddDate, then
// Hours.
type Span struct {
	Years, Months, Days, Hours int
}

// IsZero reports whether the span is empty.
func (s Span) IsZero() bool { return s == Span{} }

// Before returns t minus the span.
func (s Span) Before(t time.Time) time.Time {
	return t.AddDate(-s.Years, -s.Months, -s.Days).Add(-time.Duration(s.Hours) * time.Hour)
}

func (s Span) String() string {
	var b strings.Builder
	for _, u := range []struct {
		n int
		c string
	}{{s.Years, "y"}, {s.Months, "m"}, {s.Days, "d"}, {s.Hours, "h"}} {
		if u.n != 0 {
			b.WriteString(strconv.Itoa(u.n) + u.c)
		}
	}
	if b.Len() == 0 {
		return "0h"
	}
	return b.String()
}

// ParseSpan parses a span such as "7d", "1y6m", "2w3d12h": numbers followed by y
// (years), m (months), w (weeks of 7 days), d (days) or h (hours).
func ParseSpan(s string) (Span, error) {
	var sp Span
	rest := strings.TrimSpace(s)
	if rest == "" {
		return sp, fmt.Errorf("empty duration: use e.g. 7d, 12h, 1y6m, 2w")
	}
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 || i == len(rest) {
			return Span{}, fmt.Errorf("duration %q: want numbers each followed by y, m (months), w, d or h, e.g. 1y6m or 36h", s)
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil {
			return Span{}, fmt.Errorf("duration %q: %w", s, err)
		}
		switch rest[i] {
		case 'y':
			sp.Years += n
		case 'm':
			sp.Months += n
		case 'w':
			sp.Days += 7 * n
		case 'd':
			sp.Days += n
		case 'h':
			sp.Hours += n
		default:
			return Span{}, fmt.Errorf("duration %q: unknown unit %q; use y, m (months), w, d or h", s, rest[i])
		}
		rest = rest[i+1:]
	}
	return sp, nil
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
	// Reasons name what kept the point ("daily #2 (2026-11-28)", "within 7d") or, for a
	// point removed, why no rule kept it.
	Reasons []string `json:"reasons"`
}

// IsEmpty reports whether the policy has no rule at all.
func (p GFS) IsEmpty() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 && p.Monthly == 0 && p.Yearly == 0 && p.Within.IsZero()
}

// Validate rejects counts below -1 and negative spans.
func (p GFS) Validate() error {
	for _, r := range p.rules() {
		if r.n < -1 {
			return fmt.Errorf("--keep-%s %d: use a count of 0 or more, or unlimited", r.name, r.n)
		}
	}
	if s := p.Within; s.Years < 0 || s.Months < 0 || s.Days < 0 || s.Hours < 0 {
		return fmt.Errorf("--keep-within %s is negative", s)
	}
	return nil
}

// String renders the policy as its command-line options.
func (p GFS) String() string {
	var parts []string
	if !p.Within.IsZero() {
		parts = append(parts, "--keep-within "+p.Within.String())
	}
	for _, r := range p.rules() {
		switch {
		case r.n == -1:
			parts = append(parts, "--keep-"+r.name+" unlimited")
		case r.n > 0:
			parts = append(parts, "--keep-"+r.name+" "+strconv.Itoa(r.n))
		}
	}
	return strings.Join(parts, " ")
}

type gfsRule struct {
	name string
	n    int
	key  func(t time.Time) string // the period of t; "" for last (every point its own)
}

func (p GFS) rules() []gfsRule {
	return []gfsRule{
		{"last", p.Last, nil},
		{"hourly", p.Hourly, hourKey},
		{"daily", p.Daily, dayKey},
		{"weekly", p.Weekly, weekKey},
		{"monthly", p.Monthly, monthKey},
		{"yearly", p.Yearly, yearKey},
	}
}

// The period keys: what time.Format renders with "2006-01-02 15h", "2006-01-02",
// "2006-01" and "2006", and the ISO week as "2006-W01", built without parsing a
// layout (they are computed for every point and rule on every run).

func hourKey(t time.Time) string {
	y, m, d := t.Date()
	b := make([]byte, 0, 14)
	b = pad(b, y, 4)
	b = pad(append(b, '-'), int(m), 2)
	b = pad(append(b, '-'), d, 2)
	b = pad(append(b, ' '), t.Hour(), 2)
	return string(append(b, 'h'))
}

func dayKey(t time.Time) string {
	y, m, d := t.Date()
	b := make([]byte, 0, 10)
	b = pad(b, y, 4)
	b = pad(append(b, '-'), int(m), 2)
	return string(pad(append(b, '-'), d, 2))
}

func weekKey(t time.Time) string {
	y, w := t.ISOWeek()
	b := make([]byte, 0, 8)
	b = pad(b, y, 4)
	return string(pad(append(b, "-W"...), w, 2))
}

func monthKey(t time.Time) string {
	y, m, _ := t.Date()
	b := make([]byte, 0, 7)
	b = pad(b, y, 4)
	return string(pad(append(b, '-'), int(m), 2))
}

func yearKey(t time.Time) string { return string(pad(nil, t.Year(), 4)) }

// pad appends v (≥ 0) zero-padded to w digits.
func pad(b []byte, v, w int) []byte {
	var d [20]byte
	i := len(d)
	for v > 0 || w > 0 || i == len(d) {
		i--
		d[i] = byte('0' + v%10)
		v /= 10
		w--
	}
	return append(b, d[i:]...)
}

// Apply decides for every item whether the policy keeps it, with the reasons, and
// returns the decisions oldest first (ties by ID). now is the reference of Within.
// Items dated after now (clock skew) are kept and take no rule's count or period.
// It fails, wrapping ErrKeepsNothing, on an empty policy and when items is not empty
// but nothing would be kept; a policy that fails Validate fails too.
func (p GFS) Apply(items []GFSItem, now time.Time) ([]GFSDecision, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if p.IsEmpty() {
		return nil, fmt.Errorf("%w: no --keep-… option given; refusing to remove every point", ErrKeepsNothing)
	}
	loc := p.Location
	if loc == nil {
		loc = time.Local
	}
	ds := make([]GFSDecision, len(items))
	for i, it := range items {
		ds[i] = GFSDecision{GFSItem: it}
	}
	// Newest first for the walk. Callers mostly pass items oldest first, strictly
	// ordered: reversing them gives what the stable sort would.
	ascending := func(a, b GFSDecision) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	}
	strict := true
	for i := 1; i < len(ds) && strict; i++ {
		strict = ascending(ds[i-1], ds[i]) < 0
	}
	if strict {
		slices.Reverse(ds)
	} else {
		slices.SortStableFunc(ds, func(a, b GFSDecision) int { return ascending(b, a) })
	}
	future := func(d GFSDecision) bool { return d.Time.After(now) }
	for i := range ds {
		if future(ds[i]) {
			ds[i].Keep = true
			ds[i].Reasons = []string{"dated after now (" + now.In(loc).Format(time.RFC3339) + "): clock skew? kept, counted by no rule"}
		}
	}
	if !p.Within.IsZero() {
		cut := p.Within.Before(now)
		for i := range ds {
			if !ds[i].Keep && ds[i].Time.After(cut) {
				ds[i].Keep = true
				ds[i].Reasons = []string{"within " + p.Within.String()}
			}
		}
	}
	for _, r := range p.rules() {
		if r.n == 0 {
			continue
		}
		covered := make(map[string]bool, len(ds))
		if r.key != nil {
			for _, d := range ds {
				if d.Keep && !future(d) {
					covered[r.key(d.Time.In(loc))] = true
				}
			}
		}
		kept := 0
		for i := range ds {
			if r.n > 0 && kept >= r.n {
				break
			}
			if ds[i].Keep {
				continue
			}
			label := ""
			if r.key != nil {
				k := r.key(ds[i].Time.In(loc))
				if covered[k] {
					continue
				}
				covered[k] = true
				label = " (" + k + ")"
			}
			kept++
			ds[i].Keep = true
			ds[i].Reasons = []string{r.name + " #" + strconv.Itoa(kept) + label}
		}
	}
	keptAny := false
	none := "kept by no rule of " + p.String()
	for i := range ds {
		if ds[i].Keep {
			keptAny = true
			continue
		}
		ds[i].Reasons = []string{none}
	}
	if !keptAny && len(ds) > 0 {
		return nil, fmt.Errorf("%w: %s would remove all %d points; refusing", ErrKeepsNothing, p.String(), len(ds))
	}
	slices.Reverse(ds)
	return ds, nil
}
