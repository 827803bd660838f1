package naming

import (
	"strings"
	"time"
)

// Description fields autosnap records in every snapshot it makes, so that later runs
// read the label and the timestamp back exactly, whatever --timestamp-format they use.
const (
	FieldLabel  = "label"
	FieldFormat = "timestamp-format"
)

// NameFields returns the description fields that record how a name was built; merge
// them into the map given to Description.
func NameFields(label string, f Format) map[string]string {
	return map[string]string{FieldLabel: label, FieldFormat: f.String()}
}

// Recognizer tells which snapshots are autosnap's (or cv4pve-autosnap's) and reads their
// label and time from the name.
type Recognizer struct {
	// Format is the run's --timestamp-format. It is tried before the generic
	// timestamp grammar, so any format that Validate accepts keeps working.
	Format Format
	// Loc is the zone timestamps in names are read in; nil means UTC.
	Loc *time.Location
}

// Recognized is what a snapshot name says.
type Recognized struct {
	Label string
	Time  time.Time // the name's timestamp, at the precision of its format
}

// plausibleSlack is how far a name's timestamp may lie from the snapshot's creation
// time beyond its format's precision: names are rendered in some client's local zone
// (UTC−12 to UTC+14), the creation time is absolute.
const plausibleSlack = 26 * time.Hour

// Recognize reports whether a snapshot is ours and, when label is not empty, of that
// label. A snapshot is ours when its description is exactly one autosnap,
// cv4pve-autosnap or eve4pve-autosnap wrote (see IsOurs; an edited note is not) and
// its name is "auto" + label + a timestamp. The timestamp is read with, in
// this order:
//
//  1. the label and format recorded in the description (FieldLabel, FieldFormat), when
//     autosnap made the snapshot: exact, so a literal in the format never becomes part
//     of the label, and a label is never mistaken for another one it is a prefix of;
//  2. r.Format, the run's format;
//  3. the generic grammar every supported format without letter literals at its ends
//     renders: a year (yy or yyyy) then, in order, month, day, hour, minute, second and
//     milliseconds (fff), each 2 digits (fff 3), with separators of 1–3 characters from
//     [-_A-Za-z] allowed between fields ("20260929-0200", "2026_09_29", "260929020000123",
//     "20260929T020000").
//
// created, when not zero, is the snapshot's creation time: a reading that cannot be
// its name's timestamp (more than a day apart, beyond the format's precision) is
// dropped in favour of one that can; a reading with r.Format is still taken when
// nothing else reads the name, as older autosnap versions did. Without a label, a
// plausible reading with r.Format wins, then the longest plausible generic timestamp
// (labels rarely end in digits).
func (r Recognizer) Recognize(name, description string, created time.Time, label string) (Recognized, bool) {
	o, ours := parseOurs(description, false)
	if !ours {
		return Recognized{}, false
	}
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok || rest == "" {
		return Recognized{}, false
	}
	loc := r.Loc
	if loc == nil {
		loc = time.UTC
	}
	if recorded := o.field(FieldLabel); recorded != "" {
		if label != "" && recorded != label {
			return Recognized{}, false
		}
		ts, ok := strings.CutPrefix(rest, recorded)
		if !ok || ts == "" {
			return Recognized{}, false
		}
		if fs := o.field(FieldFormat); fs != "" {
			if f, err := ParseFormat(fs); err == nil {
				if t, err := f.Parse(ts, loc); err == nil {
					return Recognized{recorded, t}, true
				}
			}
		}
		if t, ok := r.exact(ts, loc); ok {
			return Recognized{recorded, t}, true
		}
		if t, ok := pickGeneric(ts, loc, created); ok {
			return Recognized{recorded, t}, true
		}
		return Recognized{}, false
	}

	if label != "" {
		ts, ok := strings.CutPrefix(rest, label)
		if !ok || ts == "" {
			return Recognized{}, false
		}
		t, exact := r.exact(ts, loc)
		if exact && plausible(t, r.Format.unit(), created) {
			return Recognized{label, t}, true
		}
		if t, ok := pickGeneric(ts, loc, created); ok {
			return Recognized{label, t}, true
		}
		if exact {
			// As before generic reading existed: the run's format decides.
			return Recognized{label, t}, true
		}
		return Recognized{}, false
	}

	// No label known: every split of rest into a non-empty label and a timestamp is a
	// candidate. The run's format comes first, then the longest generic timestamp.
	var cur *Recognized
	if w := r.Format.width; w > 0 && len(rest) > w {
		if t, ok := r.exact(rest[len(rest)-w:], loc); ok {
			cur = &Recognized{rest[:len(rest)-w], t}
			if plausible(t, r.Format.unit(), created) {
				return *cur, true
			}
		}
	}
	for i := 1; i < len(rest); i++ {
		if !isDigit(rest[i]) {
			continue
		}
		if t, ok := pickGeneric(rest[i:], loc, created); ok {
			return Recognized{rest[:i], t}, true
		}
	}
	if cur != nil {
		return *cur, true
	}
	return Recognized{}, false
}

func (r Recognizer) exact(ts string, loc *time.Location) (time.Time, bool) {
	if r.Format.width == 0 {
		return time.Time{}, false
	}
	t, err := r.Format.Parse(ts, loc)
	return t, err == nil
}

// unit is the precision of f's finest field.
func (f Format) unit() time.Duration {
	u := 366 * 24 * time.Hour
	for _, e := range f.elems {
		u = min(u, fieldUnit(e.field))
	}
	return u
}

func fieldUnit(fd field) time.Duration {
	switch fd {
	case fieldYear2, fieldYear4:
		return 366 * 24 * time.Hour
	case fieldMonth:
		return 31 * 24 * time.Hour
	case fieldDay:
		return 24 * time.Hour
	case fieldHour:
		return time.Hour
	case fieldMinute:
		return time.Minute
	case fieldSecond:
		return time.Second
	case fieldMilli:
		return time.Millisecond
	}
	return 366 * 24 * time.Hour
}

func plausible(t time.Time, unit time.Duration, created time.Time) bool {
	if created.IsZero() {
		return true
	}
	return !created.Before(t.Add(-plausibleSlack)) && created.Before(t.Add(unit+plausibleSlack))
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isSeparator(c byte) bool { return c == '-' || c == '_' || isASCIILetter(c) }

// genericOrder is the order of fields in the generic grammar, after the year.
var genericOrder = []field{fieldMonth, fieldDay, fieldHour, fieldMinute, fieldSecond, fieldMilli}

type reading struct {
	t    time.Time
	unit time.Duration
}

// pickGeneric reads ts with the generic grammar and returns the plausible reading
// closest to created (the first one when created is zero).
func pickGeneric(ts string, loc *time.Location, created time.Time) (time.Time, bool) {
	var best reading
	found := false
	for _, rd := range genericReadings(ts, loc) {
		if !plausible(rd.t, rd.unit, created) {
			continue
		}
		if !found || !created.IsZero() && absDur(created.Sub(rd.t)) < absDur(created.Sub(best.t)) {
			best, found = rd, true
		}
	}
	return best.t, found
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// genericReadings returns every valid reading of ts in the generic grammar: 4-digit
// years (1970–2199) first, then 2-digit ones.
func genericReadings(ts string, loc *time.Location) []reading {
	// Split into digit runs separated by separator runs; the string must start and
	// end with digits.
	var runs []string
	for i := 0; i < len(ts); {
		if !isDigit(ts[i]) {
			return nil
		}
		j := i
		for j < len(ts) && isDigit(ts[j]) {
			j++
		}
		runs = append(runs, ts[i:j])
		k := j
		for k < len(ts) && !isDigit(ts[k]) {
			if !isSeparator(ts[k]) {
				return nil
			}
			k++
		}
		if k-j > 3 || k == len(ts) && k > j {
			return nil
		}
		i = k
	}
	if len(runs) == 0 {
		return nil
	}
	var out []reading
	for _, yw := range []int{4, 2} {
		var vals [len(fieldWidth)]int
		var seen [len(fieldWidth)]bool
		yf := fieldYear4
		if yw == 2 {
			yf = fieldYear2
		}
		if len(runs[0]) < yw {
			continue
		}
		vals[yf], seen[yf] = atoi(runs[0][:yw]), true
		if yw == 4 && (vals[yf] < 1970 || vals[yf] > 2199) {
			continue
		}
		last := yf
		ri, off, fi := 0, yw, 0
		ok := true
		for ok {
			if off == len(runs[ri]) {
				ri, off = ri+1, 0
				if ri == len(runs) {
					break
				}
			}
			if fi == len(genericOrder) {
				ok = false
				break
			}
			fd := genericOrder[fi]
			w := fieldWidth[fd]
			if off+w > len(runs[ri]) {
				ok = false
				break
			}
			vals[fd], seen[fd] = atoi(runs[ri][off:off+w]), true
			last = fd
			off += w
			fi++
		}
		if !ok {
			continue
		}
		if t, valid := dateOf(vals, seen, loc); valid {
			out = append(out, reading{t, fieldUnit(last)})
		}
	}
	return out
}

func atoi(s string) int {
	v := 0
	for _, c := range []byte(s) {
		v = v*10 + int(c-'0')
	}
	return v
}

// dateOf builds the time of parsed field values, as Format.Parse does, and reports
// whether they form a valid date and clock time.
func dateOf(vals [len(fieldWidth)]int, seen [len(fieldWidth)]bool, loc *time.Location) (time.Time, bool) {
	year := 2000
	switch {
	case seen[fieldYear4]:
		year = vals[fieldYear4]
	case seen[fieldYear2]:
		year = 2000 + vals[fieldYear2]
	}
	month, day := 1, 1
	if seen[fieldMonth] {
		month = vals[fieldMonth]
	}
	if seen[fieldDay] {
		day = vals[fieldDay]
	}
	hour, minute, sec, milli := vals[fieldHour], vals[fieldMinute], vals[fieldSecond], vals[fieldMilli]
	if month < 1 || month > 12 || day < 1 || day > daysIn(year, time.Month(month)) || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, milli*1e6, loc), true
}
