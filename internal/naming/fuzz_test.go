package naming

import (
	"testing"
	"time"
)

// fuzzTime maps arbitrary integers to a time in the years 2000–2099.
func fuzzTime(sec int64, nsec uint32) time.Time {
	const span = int64(100 * 365.2425 * 24 * 3600)
	base := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	if sec < 0 {
		sec = -(sec + 1)
	}
	t := base.Add(time.Duration(sec%span) * time.Second).Add(time.Duration(nsec % 1e9))
	if t.Year() > 2099 {
		t = t.AddDate(-1, 0, 0)
	}
	return t
}

// atPrecision keeps only the fields f renders, with Parse's defaults for the rest.
func atPrecision(f Format, t time.Time) time.Time {
	year, month, day, hour, minute, sec, nsec := 2000, time.January, 1, 0, 0, 0, 0
	var has24, has12, hasAMPM bool
	for _, e := range f.elems {
		has24 = has24 || e.field == fieldHour && !e.h12
		has12 = has12 || e.field == fieldHour && e.h12
		hasAMPM = hasAMPM || e.field == fieldAMPM
	}
	for _, e := range f.elems {
		switch e.field {
		case fieldYear2, fieldYear4:
			year = t.Year()
		case fieldMonth:
			month = t.Month()
		case fieldDay:
			day = t.Day()
		case fieldHour, fieldAMPM:
			// HH, or hh with AM/PM, give the hour; hh alone knows it modulo 12,
			// AM/PM alone the half day.
			switch {
			case has24 || has12 && hasAMPM:
				hour = t.Hour()
			case has12:
				hour = t.Hour() % 12
			default:
				hour = t.Hour() / 12 * 12
			}
		case fieldMinute:
			minute = t.Minute()
		case fieldSecond:
			sec = t.Second()
		case fieldMilli:
			unit := pow10(9 - e.width)
			nsec = max(nsec, t.Nanosecond()/unit*unit)
		}
	}
	return time.Date(year, month, day, hour, minute, sec, nsec, time.UTC)
}

func FuzzParseFormat(f *testing.F) {
	for _, s := range []string{
		DefaultFormat, "yyyyMMddHHmmss", "yyyyMMdd-HHmm", "yyyyMMddHHmmssfff", "ddMMyy",
		"yyyy'T'MM\"x\"dd\\HHH", "'", "\\", "%", "yyyyy", "MMM", "é", "yy\xff", "",
		"yyyy-MM-dd HH:mm:ss.fff", "MMdd", "yyyyMMyy",
		"yyyyMMddTHHmm", "yyyyMMddhhmm", "HHhh", "hhHH", "yyyyMMddHHmmssfffffff", "ffff", "f'x'fff", "yyy",
		"yyyyy", "yyyyMMdd%T", "%fss", "YYYYMMDD", "HHH:mmm:sss",
		"yyyyMMdd-ddd", "MMM", "MMMdd", "yyMMddtthhmm", "tt", "%t", "HHtt", "hht", "ttHH",
	} {
		f.Add(s, "daily", int64(0), uint32(0))
	}
	leapDay := time.Date(2024, 2, 29, 23, 59, 59, 999_999_999, time.UTC).Unix() - time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	f.Add("MMdd", "x", leapDay, uint32(999_999_999))
	f.Add("dd", "x", leapDay, uint32(0))
	f.Fuzz(func(t *testing.T, format, label string, sec int64, nsec uint32) {
		fm, err := ParseFormat(format)
		if err != nil {
			return
		}
		if fm.String() != format {
			t.Fatalf("String() = %q, want %q", fm.String(), format)
		}
		_ = Validate(label, fm)
		at := fuzzTime(sec, nsec)
		r := fm.Render(at)
		if len(r) != fm.Width() {
			t.Fatalf("Render(%v) = %q, %d bytes; Width() = %d", at, r, len(r), fm.Width())
		}
		back, err := fm.Parse(r, time.UTC)
		if err != nil {
			t.Fatalf("Parse(Render(%v) = %q): %v", at, r, err)
		}
		if want := atPrecision(fm, at); !back.Equal(want) {
			t.Fatalf("Parse(Render(%v) = %q) = %v, want %v", at, r, back, want)
		}
		if again := fm.Render(back); again != r {
			t.Fatalf("Render(Parse(%q)) = %q", r, again)
		}
		name := Name(label, fm, at)
		if got, ok := Match(name, label, fm, time.UTC); !ok || !got.Equal(back) {
			t.Fatalf("Match(%q, %q) = %v, %v; want %v", name, label, got, ok, back)
		}
		if label != "" {
			if l, got, ok := Split(name, fm, time.UTC); !ok || l != label || !got.Equal(back) {
				t.Fatalf("Split(%q) = %q, %v, %v; want %q, %v", name, l, got, ok, label, back)
			}
		}
	})
}

func FuzzFormatParse(f *testing.F) {
	for _, c := range [][2]string{
		{DefaultFormat, "260929020000"},
		{DefaultFormat, "261329020000"},
		{DefaultFormat, "260229020000"},
		{"yyyyMMdd-HHmm", "20260929-0200"},
		{"yyyyMMddHHmmssfff", "20260929020000999"},
		{"yyyyMMyy", "20260926"},
		{"'T'dd", "T31"},
		{"yyyy'é'", "2026é"},
		{"yyyyMMddTHHmm", "20260929T0200"},
		{"yyyyMMddhhmm", "202609291200"},
		{"yyy", "0999"},
		{"HHhh", "1302"},
		{"fff'-'f", "123-1"},
		{"yyyyyMM", "0202609"},
		{"yyyyMMdd-ddd", "20260929-Tue"},
		{"MMM-MM", "Sep-09"},
		{"tthh", "PM12"},
		{"HHt", "13P"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, format, s string) {
		fm, err := ParseFormat(format)
		if err != nil {
			return
		}
		got, err := fm.Parse(s, time.UTC)
		if err != nil {
			return
		}
		// Parse accepts exactly the strings Render produces.
		if r := fm.Render(got); r != s {
			t.Fatalf("Parse(%q) = %v, which renders as %q", s, got, r)
		}
	})
}
