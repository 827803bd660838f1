package naming

import (
	"strings"
	"testing"
	"time"
)

// .NET custom format strings as cv4pve-autosnap renders them: letters that are not
// .NET patterns are literals, quotes and backslashes make literals, '%' formats one
// pattern alone, h/H/m/s runs longer than two render two digits, y runs of three or
// more pad the year, f runs give 1–7 fraction digits.
func TestDotNetCustomFormats(t *testing.T) {
	at := time.Date(2026, 9, 29, 14, 5, 7, 123456789, time.UTC)
	cases := []struct{ format, want string }{
		{"yyyyMMddTHHmm", "20260929T1405"},
		{"yyyyMMddTHHmmssZ", "20260929T140507Z"},
		{"yyyyMMdd'T'HHmm", "20260929T1405"},
		{`yyyyMMdd\THHmm`, "20260929T1405"},
		{"yyyy-MM-dd_HH-mm-ss", "2026-09-29_14-05-07"},
		{"yyMMddHHmmssf", "2609291405071"},
		{"yyMMddHHmmssff", "26092914050712"},
		{"yyMMddHHmmssffff", "2609291405071234"},
		{"yyyyMMddHHmmssfffffff", "202609291405071234567"},
		{"yyyyMMddhhmm", "202609290205"},
		{"yyyyMMddHHH", "2026092914"},
		{"yyyyMMddHHmmmsss", "20260929140507"},
		{"yyy", "2026"},
		{"yyyyy", "02026"},
		{"yyyyyyyy", "00002026"},
		{"yyyyMMdd%T", "20260929T"},
		{"yyyyMMdd%-x", "20260929-x"},
		{"yyyyMMddéHH", "20260929é14"},
		{"YYYYMMDD", "YYYY09DD"},
		{`yyyy"Tx"MM`, "2026Tx09"},
		{`yyyy'\''MM`, "2026'09"},
		{"yyyy:MM/dd", "2026:09/29"},
		{"yyyyMMdd-ddd", "20260929-Tue"},
		{"yyyyMM-MMM", "202609-Sep"},
		{"yyMMddHHtt", "26092914PM"},
		{"yyMMddtthhmm", "260929PM0205"},
		{"yyMMddHHt", "26092914P"},
	}
	for _, c := range cases {
		f, err := ParseFormat(c.format)
		if err != nil {
			t.Errorf("ParseFormat(%q): %v", c.format, err)
			continue
		}
		got := f.Render(at)
		if got != c.want {
			t.Errorf("Render(%q) = %q, want %q", c.format, got, c.want)
		}
		if len(got) != f.Width() {
			t.Errorf("%q: Width %d, rendered %d bytes", c.format, f.Width(), len(got))
		}
		back, err := f.Parse(got, time.UTC)
		if err != nil {
			t.Errorf("%q: Parse(%q): %v", c.format, got, err)
		} else if f.Render(back) != got {
			t.Errorf("%q: Parse(%q) = %v renders %q", c.format, got, back, f.Render(back))
		}
	}
}

// hh alone knows the hour only modulo 12: it parses to the morning hour, and a 12 is
// midnight's.
func TestTwelveHourClockParse(t *testing.T) {
	f := mustFormat(t, "yyyyMMddhhmm")
	for _, c := range []struct{ s, want string }{
		{"202609291205", "2026-09-29 00:05:00"},
		{"202609290205", "2026-09-29 02:05:00"},
		{"202609291105", "2026-09-29 11:05:00"},
	} {
		got, err := f.Parse(c.s, time.UTC)
		if err != nil || got.Format(time.DateTime) != c.want {
			t.Errorf("Parse(%q) = %v, %v; want %s", c.s, got, err, c.want)
		}
	}
	for _, bad := range []string{"202609290005", "202609291305"} {
		if _, err := f.Parse(bad, time.UTC); err == nil {
			t.Errorf("Parse(%q) accepted an hour hh never renders", bad)
		}
	}
	both := mustFormat(t, "HHhh")
	if _, err := both.Parse("1402", time.UTC); err != nil {
		t.Errorf("HHhh 1402: %v", err)
	}
	if _, err := both.Parse("1403", time.UTC); err == nil {
		t.Errorf("HHhh 1403: conflicting hours accepted")
	}
}

// Patterns that .NET renders with a varying width, from the culture, or with
// characters a snapshot name cannot hold are refused with a reason.
func TestDotNetFormatsRefused(t *testing.T) {
	cases := []struct{ format, want string }{
		{"y", "one-character format"},
		{"T", "one-character format"},
		{"yyyyMMd", `"d" renders 1 or 2 digits: use "dd"`},
		{"yyyyMMddH", `"H" renders 1 or 2 digits: use "HH"`},
		{"yyMdd", `"M" renders 1 or 2 digits: use "MM"`},
		{"yMMdd", `"y" renders 1 or 2 digits: use "yy"`},
		{"yyyyMMMM", `"MMMM" is a full month name`},
		{"yyyyMMdd-dddd", `"dddd" is a full day name`},
		{"yyyyMM-ddd", `"ddd" (day name) needs the year, month and day`},
		{"yyyyMMddHHmmssFFF", `"FFF" drops trailing zeros`},
		{"yyyyMMddHHmmssffffffff", `"ffffffff": at most 7`},
		{"yyyyMMddzz", `"zz" is a time zone offset`},
		{"yyyyMMddK", `"K" is a time zone`},
		{"yyyyMMddgg", `"gg" is an era`},
		{"yyyy%%", "'%%'"},
		{"yyyy%", "'%' at the end"},
		{"%H", `"H" renders 1 or 2 digits`},
	}
	for _, c := range cases {
		_, err := ParseFormat(c.format)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseFormat(%q) = %v, want an error containing %q", c.format, err, c.want)
		}
	}
}

// Formats that parse are still only usable for names when they render name characters
// and sort in time order.
func TestDotNetFormatsValidated(t *testing.T) {
	for _, ok := range []string{"yyyyMMddTHHmm", "yyyyMMdd'T'HHmmss", "yyMMddHHmmssfffffff", "yyyyy-MM-dd",
		"yyyyMMdd-ddd-HHmm", "yyyyMM-MMM-dd", "yyMMddHHtt"} {
		if err := Validate("daily", mustFormat(t, ok)); err != nil {
			t.Errorf("Validate(%q): %v", ok, err)
		}
	}
	for _, c := range []struct{ format, want string }{
		{"yyyyMMddhhmm", "does not sort"},
		{"yyyyMMddtthhmm", "does not sort"}, // 12 AM (00:01) renders after 1 AM
		{"yyyyMMMdd", "does not sort"},
		{"YYYYMMDD", "does not sort"},
		{"yyyy:MM", "contains ':'"},
		{"yyyyMMddéHH", "contains 'é'"},
	} {
		err := Validate("daily", mustFormat(t, c.format))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%q) = %v, want %q", c.format, err, c.want)
		}
	}
}

// Names made with a format that has letter literals are read back by the Recognizer,
// also when the run's label contains the same letter.
func TestRecognizeFormatWithLetterLiterals(t *testing.T) {
	f := mustFormat(t, "yyyyMMddTHHmm")
	at := time.Date(2026, 9, 29, 2, 0, 0, 0, time.UTC)
	for _, label := range []string{"daily", "T", "xT"} {
		name := Name(label, f, at)
		for _, desc := range []string{"cv4pve-autosnap", Description(NameFields(label, f))} {
			got, ok := Recognizer{Format: f}.Recognize(name, desc, at.Add(time.Minute), label)
			if !ok || got.Label != label || !got.Time.Equal(at) {
				t.Errorf("Recognize(%q, %q) = %+v, %v", name, desc, got, ok)
			}
		}
		if l, got, ok := Split(name, f, time.UTC); !ok || l != label || !got.Equal(at) {
			t.Errorf("Split(%q) = %q, %v, %v", name, l, got, ok)
		}
	}
}

// Names and AM/PM parse back: a month name is the month, a day name must be the
// date's, AM/PM with hh gives the hour, AM/PM alone the half day.
func TestNamePatternsParse(t *testing.T) {
	for _, c := range []struct{ format, s, want string }{
		{"yyyyMMM", "2026Sep", "2026-09-01 00:00:00"},
		{"yyyyMMdd-ddd", "20260929-Tue", "2026-09-29 00:00:00"},
		{"yyMMddtthhmm", "260929PM1205", "2026-09-29 12:05:00"},
		{"yyMMddtthhmm", "260929AM1205", "2026-09-29 00:05:00"},
		{"yyMMddtt", "260929PM", "2026-09-29 12:00:00"},
		{"yyMMddHHt", "26092914P", "2026-09-29 14:00:00"},
	} {
		got, err := mustFormat(t, c.format).Parse(c.s, time.UTC)
		if err != nil || got.Format(time.DateTime) != c.want {
			t.Errorf("%q: Parse(%q) = %v, %v; want %s", c.format, c.s, got, err, c.want)
		}
	}
	for _, c := range [][2]string{
		{"yyyyMMdd-ddd", "20260929-Wed"},
		{"yyyyMMdd-ddd", "20260929-tue"},
		{"yyyyMMM", "2026Foo"},
		{"yyyyMM-MMM", "202609-Oct"},
		{"yyMMddHHtt", "26092914AM"},
		{"yyMMddtt", "260929XM"},
	} {
		if got, err := mustFormat(t, c[0]).Parse(c[1], time.UTC); err == nil {
			t.Errorf("%q: Parse(%q) = %v, want an error", c[0], c[1], got)
		}
	}
}
