package naming

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// SupportedPatterns lists the .NET custom date and time patterns a Format renders.
const SupportedPatterns = "yy, yyyy (more y pad the year), MM, MMM, dd, ddd, HH, hh, tt, mm, ss, f to fffffff"

// DefaultFormat is cv4pve-autosnap's default --timestamp-format.
const DefaultFormat = "yyMMddHHmmss"

type field uint8

const (
	fieldLiteral field = iota
	fieldYear2
	fieldYear4 // the year, zero-padded to the element's width (yyy and longer runs)
	fieldMonth
	fieldDay
	fieldHour // HH, or hh with element.h12
	fieldMinute
	fieldSecond
	fieldMilli   // the fraction of a second, truncated to the element's width (f to fffffff)
	fieldWeekday // ddd: the abbreviated day name, checked against the date
	fieldAMPM    // t, tt: A/P, AM/PM
)

// fieldWidth is the usual width of each field; an element carries its own.
var fieldWidth = [...]int{
	fieldYear2:   2,
	fieldYear4:   4,
	fieldMonth:   2,
	fieldDay:     2,
	fieldHour:    2,
	fieldMinute:  2,
	fieldSecond:  2,
	fieldMilli:   3,
	fieldWeekday: 3,
	fieldAMPM:    2,
}

// patterns maps the usual spelling of each field to it (for messages).
var patterns = map[string]field{
	"yy":   fieldYear2,
	"yyyy": fieldYear4,
	"MM":   fieldMonth,
	"dd":   fieldDay,
	"HH":   fieldHour,
	"mm":   fieldMinute,
	"ss":   fieldSecond,
	"fff":  fieldMilli,
}

type element struct {
	field   field
	literal string // for fieldLiteral
	width   int    // digits of a field
	pad     int    // fieldYear4: the year's minimum digits (the y run's length)
	h12     bool   // fieldHour on a 12-hour clock (hh)
	name    bool   // fieldMonth as its abbreviated name (MMM)
}

// Format is a parsed timestamp format: a .NET custom DateTime format string, as
// cv4pve-autosnap's --timestamp-format takes it, restricted to the patterns that
// render with a fixed width in every culture. All renderings of a Format have the
// same length (for years 1000–9999). The zero Format renders the empty string.
type Format struct {
	src   string
	elems []element
	width int // bytes of every rendering
}

// ParseFormat parses a .NET custom DateTime format string with .NET's rules and the
// invariant culture:
//
//   - yy is the year modulo 100; a run of 3 or more y is the year zero-padded to
//     that many digits (yyy to at least 3, which is 4 for years 1000–9999);
//   - MM, dd, HH, hh (12-hour clock), mm, ss are two digits; runs of 3 or more H, h,
//     m or s are two digits too; f to fffffff are 1–7 digits of the second's
//     fraction, truncated;
//   - MMM is the month's name (Jan…Dec), ddd the day's (Sun…Sat; only with the
//     year, month and day, which it is checked against), tt AM or PM, t A or P;
//   - text in single or double quotes (a backslash inside escapes the next
//     character), a character after a backslash, '%' followed by one pattern
//     character (formatted alone) and every character that is not a .NET pattern
//     letter — including letters such as T or Z, ':' and '/' — are literals;
//   - a one-character format is a .NET standard format, not a custom one.
//
// The .NET patterns whose width varies (d, M, y, H, h, m, s alone, F…, full day and
// month names) or that render the time zone or era (z, K, g) are refused with the
// reason: snapshot names must have one length. Validate checks the rest (name
// characters, sort order).
func ParseFormat(s string) (Format, error) {
	if s == "" {
		return Format{}, errors.New("timestamp format is empty: use e.g. " + DefaultFormat)
	}
	if !utf8.ValidString(s) {
		for i := 0; i < len(s); {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				return Format{}, fmt.Errorf("timestamp format %q: invalid UTF-8 at position %d", s, i+1)
			}
			i += n
		}
	}
	if utf8.RuneCountInString(s) == 1 {
		return Format{}, fmt.Errorf("timestamp format %q: a one-character format is a .NET standard format (e.g. \"s\" renders 2026-09-29T02:00:00), not a custom one: use e.g. %s", s, DefaultFormat)
	}
	p := &formatParser{s: s, f: Format{src: s}}
	for i := 0; i < len(s); {
		next, err := p.token(i, len(s))
		if err != nil {
			return Format{}, fmt.Errorf("timestamp format %q: %w", s, err)
		}
		i = next
	}
	p.flush()
	if err := p.f.checkWeekday(); err != nil {
		return Format{}, fmt.Errorf("timestamp format %q: %w", s, err)
	}
	return p.f, nil
}

// checkWeekday refuses a day name without the date it belongs to: its name could
// not be read back.
func (f Format) checkWeekday() error {
	var has [len(fieldWidth)]bool
	for _, e := range f.elems {
		has[e.field] = true
	}
	if has[fieldWeekday] && !((has[fieldYear2] || has[fieldYear4]) && has[fieldMonth] && has[fieldDay]) {
		return errors.New(`"ddd" (day name) needs the year, month and day in the format too`)
	}
	return nil
}

// The invariant culture's names, as cv4pve-autosnap renders them.
var (
	monthAbbr   = [...]string{"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}
	weekdayAbbr = [...]string{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}
)

type formatParser struct {
	s   string
	f   Format
	lit strings.Builder
}

func (p *formatParser) flush() {
	if p.lit.Len() > 0 {
		p.f.elems = append(p.f.elems, element{field: fieldLiteral, literal: p.lit.String()})
		p.f.width += p.lit.Len()
		p.lit.Reset()
	}
}

func (p *formatParser) add(fd field, width int, h12 bool) {
	p.flush()
	p.f.elems = append(p.f.elems, element{field: fd, width: width, h12: h12})
	p.f.width += width
}

// token parses the token at s[i:end] and returns where the next one starts. end is
// len(s), or i+1 for the character after a '%', which .NET formats on its own.
func (p *formatParser) token(i, end int) (int, error) {
	s := p.s
	c := s[i]
	switch {
	case c == '\'' || c == '"':
		j := i + 1
		for ; j < end && s[j] != c; j++ {
			if s[j] == '\\' && j+1 < end {
				j++
			}
			p.lit.WriteByte(s[j])
		}
		if j >= end {
			return 0, fmt.Errorf("unterminated %c quote at position %d", c, i+1)
		}
		return j + 1, nil
	case c == '\\':
		if i+1 >= end {
			return 0, errors.New("trailing backslash: escape a character with \\x or remove it")
		}
		_, n := utf8.DecodeRuneInString(s[i+1:])
		p.lit.WriteString(s[i+1 : i+1+n])
		return i + 1 + n, nil
	case c == '%':
		if i+1 >= len(s) {
			return 0, errors.New("'%' at the end: '%' must be followed by the pattern character to format alone")
		}
		if s[i+1] == '%' {
			return 0, fmt.Errorf("'%%%%' at position %d: .NET refuses it; quote a literal percent sign ('%%')", i+1)
		}
		_, n := utf8.DecodeRuneInString(s[i+1:])
		return p.token(i+1, i+1+n)
	case isASCIILetter(c):
		j := i + 1
		for j < end && s[j] == c {
			j++
		}
		return j, p.pattern(c, j-i, i)
	default:
		_, n := utf8.DecodeRuneInString(s[i:])
		p.lit.WriteString(s[i : i+n])
		return i + n, nil
	}
}

// pattern adds the run of n letters c found at position i.
func (p *formatParser) pattern(c byte, n, i int) error {
	run := strings.Repeat(string(c), n)
	varies := func(use string) error {
		return fmt.Errorf("%q renders 1 or 2 digits: use %q (position %d; snapshot names need a fixed width)", run, use, i+1)
	}
	switch c {
	case 'y':
		switch {
		case n == 1:
			return varies("yy")
		case n == 2:
			p.add(fieldYear2, 2, false)
		default:
			p.add(fieldYear4, max(n, 4), false)
			p.f.elems[len(p.f.elems)-1].pad = n
		}
	case 'M':
		switch {
		case n == 1:
			return varies("MM")
		case n == 2:
			p.add(fieldMonth, 2, false)
		case n == 3:
			p.add(fieldMonth, 3, false)
			p.f.elems[len(p.f.elems)-1].name = true
		default:
			return fmt.Errorf("%q is a full month name (position %d): names differ in length: use MM", run, i+1)
		}
	case 'd':
		switch {
		case n == 1:
			return varies("dd")
		case n == 2:
			p.add(fieldDay, 2, false)
		case n == 3:
			p.add(fieldWeekday, 3, false)
		default:
			return fmt.Errorf("%q is a full day name (position %d): names differ in length: use ddd or leave it out", run, i+1)
		}
	case 'H', 'h', 'm', 's':
		if n == 1 {
			return varies(run + run)
		}
		fd := map[byte]field{'H': fieldHour, 'h': fieldHour, 'm': fieldMinute, 's': fieldSecond}[c]
		p.add(fd, 2, c == 'h')
	case 'f':
		if n > 7 {
			return fmt.Errorf("%q: at most 7 f (fffffff, 100 ns) (position %d)", run, i+1)
		}
		p.add(fieldMilli, n, false)
	case 'F':
		return fmt.Errorf("%q drops trailing zeros, so names would differ in length: use %q (position %d)", run, strings.Repeat("f", n), i+1)
	case 't':
		p.add(fieldAMPM, min(n, 2), false)
	case 'z':
		return fmt.Errorf("%q is a time zone offset (position %d; '+' and ':' are not allowed in snapshot names)", run, i+1)
	case 'K':
		return fmt.Errorf("%q is a time zone (position %d; '+', ':' are not allowed in snapshot names)", run, i+1)
	case 'g':
		return fmt.Errorf("%q is an era (position %d; \"A.D.\" is not allowed in snapshot names)", run, i+1)
	default:
		// Not a .NET pattern letter: .NET copies it as it is.
		p.lit.WriteString(run)
	}
	return nil
}

func isASCIILetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// String returns the format string as given to ParseFormat.
func (f Format) String() string { return f.src }

// Width is the length in bytes of every rendering of f (for years 0–9999).
func (f Format) Width() int { return f.width }

// Render formats t with f, using t's own clock fields: the caller chooses the zone
// by converting t first. yy is the year modulo 100; longer y runs zero-pad the year;
// hh is the 12-hour clock (12 for hour 0); f runs are the fraction, truncated.
func (f Format) Render(t time.Time) string {
	b := make([]byte, 0, f.width)
	for _, e := range f.elems {
		switch e.field {
		case fieldLiteral:
			b = append(b, e.literal...)
		case fieldYear2:
			b = appendInt(b, t.Year()%100, 2)
		case fieldYear4:
			b = appendInt(b, t.Year(), e.pad)
		case fieldMonth:
			if e.name {
				b = append(b, monthAbbr[t.Month()-1]...)
			} else {
				b = appendInt(b, int(t.Month()), 2)
			}
		case fieldWeekday:
			b = append(b, weekdayAbbr[t.Weekday()]...)
		case fieldAMPM:
			b = append(b, "AM"[:e.width]...)
			if t.Hour() >= 12 {
				b[len(b)-e.width] = 'P'
			}
		case fieldDay:
			b = appendInt(b, t.Day(), 2)
		case fieldHour:
			h := t.Hour()
			if e.h12 {
				h = (h+11)%12 + 1
			}
			b = appendInt(b, h, 2)
		case fieldMinute:
			b = appendInt(b, t.Minute(), 2)
		case fieldSecond:
			b = appendInt(b, t.Second(), 2)
		case fieldMilli:
			b = appendInt(b, t.Nanosecond()/pow10(9-e.width), e.width)
		}
	}
	return string(b)
}

func pow10(n int) int {
	v := 1
	for range n {
		v *= 10
	}
	return v
}

func appendInt(b []byte, v, width int) []byte {
	if v < 0 {
		b = append(b, '-')
		v = -v
	}
	var buf [20]byte
	i := len(buf)
	for v > 0 || i == len(buf) {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	for n := len(buf) - i; n < width; n++ {
		b = append(b, '0')
	}
	return append(b, buf[i:]...)
}

// Parse is the inverse of Render: s must have exactly f's rendered length, its
// literals must match byte for byte, every field must be ASCII digits forming a
// valid calendar date and clock time, and s must be what Render makes of that time.
// The result is in loc. yy means 2000–2099. Fields absent from f default to
// 2000-01-01 00:00:00.000; 2000 is a leap year, so a format with a day but no year
// still parses its rendering of 29 February. hh without HH gives the hour before
// noon (hh 12 is hour 0). A wall-clock time that does not exist in loc (a DST gap)
// is normalised as time.Date does.
func (f Format) Parse(s string, loc *time.Location) (time.Time, error) {
	if len(s) != f.width {
		return time.Time{}, fmt.Errorf("timestamp %q does not match format %q: length %d, want %d", s, f.src, len(s), f.width)
	}
	vals := [len(fieldWidth)]int{}
	seen := [len(fieldWidth)]bool{}
	h12, h12Seen := 0, false
	frac, fracWidth := 0, 0 // nanoseconds, and the digits they were read with
	pm, pmSeen := false, false
	pos := 0
	for _, e := range f.elems {
		if e.field == fieldLiteral {
			if s[pos:pos+len(e.literal)] != e.literal {
				return time.Time{}, fmt.Errorf("timestamp %q does not match format %q: want %q at position %d", s, f.src, e.literal, pos+1)
			}
			pos += len(e.literal)
			continue
		}
		w := e.width
		text := s[pos : pos+w]
		switch {
		case e.field == fieldWeekday:
			// Checked against the date by the final rendering.
			if !slices.Contains(weekdayAbbr[:], text) {
				return time.Time{}, fmt.Errorf("timestamp %q does not match format %q: want a day name (Mon…Sun) at position %d", s, f.src, pos+1)
			}
			pos += w
			continue
		case e.field == fieldAMPM:
			if text != "AM"[:w] && text != "PM"[:w] {
				return time.Time{}, fmt.Errorf("timestamp %q does not match format %q: want %s at position %d", s, f.src, map[int]string{1: "A or P", 2: "AM or PM"}[w], pos+1)
			}
			if pmSeen && pm != (text[0] == 'P') {
				return time.Time{}, fmt.Errorf("timestamp %q: conflicting AM/PM designators", s)
			}
			pm, pmSeen = text[0] == 'P', true
			pos += w
			continue
		case e.field == fieldMonth && e.name:
			i := slices.Index(monthAbbr[:], text)
			if i < 0 {
				return time.Time{}, fmt.Errorf("timestamp %q does not match format %q: want a month name (Jan…Dec) at position %d", s, f.src, pos+1)
			}
			if seen[fieldMonth] && vals[fieldMonth] != i+1 {
				return time.Time{}, fmt.Errorf("timestamp %q: conflicting values for the month", s)
			}
			vals[fieldMonth], seen[fieldMonth] = i+1, true
			pos += w
			continue
		}
		v := 0
		for j, c := range []byte(text) {
			if c < '0' || c > '9' {
				return time.Time{}, fmt.Errorf("timestamp %q does not match format %q: want a digit at position %d", s, f.src, pos+j+1)
			}
			v = v*10 + int(c-'0')
		}
		pos += w
		switch {
		case e.field == fieldHour && e.h12:
			if h12Seen && h12 != v {
				return time.Time{}, fmt.Errorf("timestamp %q: conflicting values for \"hh\"", s)
			}
			h12, h12Seen = v, true
		case e.field == fieldMilli:
			ns := v * pow10(9-w)
			if fracWidth > 0 {
				unit := pow10(9 - min(w, fracWidth))
				if ns/unit != frac/unit {
					return time.Time{}, fmt.Errorf("timestamp %q: conflicting values for the fraction of a second", s)
				}
			}
			if w > fracWidth {
				frac, fracWidth = ns, w
			}
		default:
			if seen[e.field] && vals[e.field] != v {
				return time.Time{}, fmt.Errorf("timestamp %q: conflicting values for %q", s, patternOf(e.field))
			}
			vals[e.field], seen[e.field] = v, true
		}
	}

	year := 2000
	switch {
	case seen[fieldYear4]:
		year = vals[fieldYear4]
		if seen[fieldYear2] && year%100 != vals[fieldYear2] {
			return time.Time{}, fmt.Errorf("timestamp %q: conflicting values for yy and yyyy", s)
		}
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
	hour, minute, sec := vals[fieldHour], vals[fieldMinute], vals[fieldSecond]
	if h12Seen {
		switch {
		case h12 < 1 || h12 > 12:
			return time.Time{}, fmt.Errorf("timestamp %q: 12-hour clock hour %d out of range", s, h12)
		case !seen[fieldHour]:
			hour = h12 % 12
		case (hour+11)%12+1 != h12:
			return time.Time{}, fmt.Errorf("timestamp %q: conflicting values for HH and hh", s)
		}
	}
	// AM/PM sets the half day when HH does not give the hour (the final rendering
	// checks it against HH).
	if pm && !seen[fieldHour] {
		hour += 12
	}
	switch {
	case month < 1 || month > 12:
		return time.Time{}, fmt.Errorf("timestamp %q: month %d out of range", s, month)
	case day < 1 || day > daysIn(year, time.Month(month)):
		return time.Time{}, fmt.Errorf("timestamp %q: day %d out of range for %04d-%02d", s, day, year, month)
	case hour > 23:
		return time.Time{}, fmt.Errorf("timestamp %q: hour %d out of range", s, hour)
	case minute > 59:
		return time.Time{}, fmt.Errorf("timestamp %q: minute %d out of range", s, minute)
	case sec > 59:
		return time.Time{}, fmt.Errorf("timestamp %q: second %d out of range", s, sec)
	}
	// Some digit strings are never rendered (a 3-digit year padded to 4 by yyy):
	// accept only what Render gives back, on the wall clock (UTC has no DST gaps).
	if r := f.Render(time.Date(year, time.Month(month), day, hour, minute, sec, frac, time.UTC)); r != s {
		return time.Time{}, fmt.Errorf("timestamp %q does not match format %q: that time renders as %q", s, f.src, r)
	}
	if loc == nil {
		loc = time.UTC
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, frac, loc), nil
}

func daysIn(year int, m time.Month) int {
	return time.Date(year, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

func patternOf(fd field) string {
	for p, f := range patterns {
		if f == fd {
			return p
		}
	}
	return "?"
}
