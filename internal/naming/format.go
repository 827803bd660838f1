package naming

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// SupportedPatterns lists the .NET custom date and time patterns a Format understands.
const SupportedPatterns = "yy, yyyy, MM, dd, HH, mm, ss, fff"

// DefaultFormat is cv4pve-autosnap's default --timestamp-format.
const DefaultFormat = "yyMMddHHmmss"

type field uint8

const (
	fieldLiteral field = iota
	fieldYear2
	fieldYear4
	fieldMonth
	fieldDay
	fieldHour
	fieldMinute
	fieldSecond
	fieldMilli
)

var fieldWidth = [...]int{
	fieldYear2:  2,
	fieldYear4:  4,
	fieldMonth:  2,
	fieldDay:    2,
	fieldHour:   2,
	fieldMinute: 2,
	fieldSecond: 2,
	fieldMilli:  3,
}

// patterns maps a run of one letter to its field. Every other run of letters is
// rejected rather than passed through as .NET would, so that a typo such as YYYY
// or a culture-dependent pattern such as MMM cannot end up in snapshot names.
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
}

// Format is a parsed timestamp format: a subset of .NET custom DateTime format
// strings, as accepted by cv4pve-autosnap's --timestamp-format. Every field has a
// fixed width, so all renderings of a Format have the same length (for years
// 0–9999). The zero Format renders the empty string.
type Format struct {
	src   string
	elems []element
	width int // bytes of every rendering
}

// ParseFormat parses a .NET custom DateTime format string. It accepts the patterns
// listed in SupportedPatterns; non-letter characters, text in single or double
// quotes and characters escaped with a backslash are literals. Any other letter
// is an error: quote letters meant literally ('T'). '%' is rejected because .NET
// gives it a meaning (single-pattern prefix) that the subset does not support.
func ParseFormat(s string) (Format, error) {
	if s == "" {
		return Format{}, errors.New("timestamp format is empty: use e.g. " + DefaultFormat)
	}
	f := Format{src: s}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			f.elems = append(f.elems, element{field: fieldLiteral, literal: lit.String()})
			f.width += lit.Len()
			lit.Reset()
		}
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\'' || c == '"':
			// As in .NET, a backslash inside quotes escapes the next character.
			j := i + 1
			for ; j < len(s) && s[j] != c; j++ {
				if s[j] == '\\' && j+1 < len(s) {
					j++
				}
				lit.WriteByte(s[j])
			}
			if j >= len(s) {
				return Format{}, fmt.Errorf("timestamp format %q: unterminated %c quote at position %d", s, c, i+1)
			}
			i = j + 1
		case c == '\\':
			if i+1 >= len(s) {
				return Format{}, fmt.Errorf("timestamp format %q: trailing backslash: escape a character with \\x or remove it", s)
			}
			_, n := utf8.DecodeRuneInString(s[i+1:])
			lit.WriteString(s[i+1 : i+1+n])
			i += 1 + n
		case c == '%':
			return Format{}, fmt.Errorf("timestamp format %q: '%%' is not supported: use only %s and literals", s, SupportedPatterns)
		case isASCIILetter(c):
			j := i + 1
			for j < len(s) && s[j] == c {
				j++
			}
			run := s[i:j]
			fd, ok := patterns[run]
			if !ok {
				return Format{}, fmt.Errorf("timestamp format %q: unsupported pattern %q at position %d: supported patterns are %s; quote letters meant literally ('%s')", s, run, i+1, SupportedPatterns, run)
			}
			flush()
			f.elems = append(f.elems, element{field: fd})
			f.width += fieldWidth[fd]
			i = j
		default:
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				return Format{}, fmt.Errorf("timestamp format %q: invalid UTF-8 at position %d", s, i+1)
			}
			// Non-ASCII letters are rejected like ASCII ones: .NET would print them
			// as-is, but they are never valid in a snapshot name.
			if unicode.IsLetter(r) {
				return Format{}, fmt.Errorf("timestamp format %q: unsupported pattern %q at position %d: supported patterns are %s; quote letters meant literally", s, string(r), i+1, SupportedPatterns)
			}
			lit.WriteString(s[i : i+n])
			i += n
		}
	}
	flush()
	return f, nil
}

func isASCIILetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// String returns the format string as given to ParseFormat.
func (f Format) String() string { return f.src }

// Width is the length in bytes of every rendering of f (for years 0–9999).
func (f Format) Width() int { return f.width }

// Render formats t with f, using t's own clock fields: the caller chooses the zone
// by converting t first. yy is the year modulo 100; yyyy is zero-padded to four
// digits; fff is milliseconds, truncated.
func (f Format) Render(t time.Time) string {
	b := make([]byte, 0, f.width)
	for _, e := range f.elems {
		switch e.field {
		case fieldLiteral:
			b = append(b, e.literal...)
		case fieldYear2:
			b = appendInt(b, t.Year()%100, 2)
		case fieldYear4:
			b = appendInt(b, t.Year(), 4)
		case fieldMonth:
			b = appendInt(b, int(t.Month()), 2)
		case fieldDay:
			b = appendInt(b, t.Day(), 2)
		case fieldHour:
			b = appendInt(b, t.Hour(), 2)
		case fieldMinute:
			b = appendInt(b, t.Minute(), 2)
		case fieldSecond:
			b = appendInt(b, t.Second(), 2)
		case fieldMilli:
			b = appendInt(b, t.Nanosecond()/1e6, 3)
		}
	}
	return string(b)
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
// literals must match byte for byte and every field must be ASCII digits forming a
// valid calendar date and clock time. The result is in loc. yy means 2000–2099.
// Fields absent from f default to 2000-01-01 00:00:00.000; 2000 is a leap year,
// so a format with a day but no year still parses its rendering of 29 February. A wall-clock time that
// does not exist in loc (a DST gap) is normalised as time.Date does.
func (f Format) Parse(s string, loc *time.Location) (time.Time, error) {
	if len(s) != f.width {
		return time.Time{}, fmt.Errorf("timestamp %q does not match format %q: length %d, want %d", s, f.src, len(s), f.width)
	}
	vals := [len(fieldWidth)]int{}
	seen := [len(fieldWidth)]bool{}
	pos := 0
	for _, e := range f.elems {
		if e.field == fieldLiteral {
			if s[pos:pos+len(e.literal)] != e.literal {
				return time.Time{}, fmt.Errorf("timestamp %q does not match format %q: want %q at position %d", s, f.src, e.literal, pos+1)
			}
			pos += len(e.literal)
			continue
		}
		w := fieldWidth[e.field]
		v := 0
		for j, c := range []byte(s[pos : pos+w]) {
			if c < '0' || c > '9' {
				return time.Time{}, fmt.Errorf("timestamp %q does not match format %q: want a digit at position %d", s, f.src, pos+j+1)
			}
			v = v*10 + int(c-'0')
		}
		if seen[e.field] && vals[e.field] != v {
			return time.Time{}, fmt.Errorf("timestamp %q: conflicting values for %q", s, patternOf(e.field))
		}
		vals[e.field], seen[e.field] = v, true
		pos += w
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
	hour, minute, sec, milli := vals[fieldHour], vals[fieldMinute], vals[fieldSecond], vals[fieldMilli]
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
	if loc == nil {
		loc = time.UTC
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, milli*1e6, loc), nil
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
