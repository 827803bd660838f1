package naming

import (
	"strings"
	"testing"
	"time"
)

var ref = time.Date(2026, 9, 29, 2, 3, 4, 567_890_123, time.UTC)

func TestRenderParseRoundTrip(t *testing.T) {
	cases := []struct {
		format, want string
		// precision is what Parse recovers of ref.
		precision time.Time
	}{
		{"yyMMddHHmmss", "260929020304", time.Date(2026, 9, 29, 2, 3, 4, 0, time.UTC)},
		{"yyyyMMddHHmmss", "20260929020304", time.Date(2026, 9, 29, 2, 3, 4, 0, time.UTC)},
		{"yyyyMMdd-HHmm", "20260929-0203", time.Date(2026, 9, 29, 2, 3, 0, 0, time.UTC)},
		{"yyyy-MM-dd_HH-mm-ss", "2026-09-29_02-03-04", time.Date(2026, 9, 29, 2, 3, 4, 0, time.UTC)},
		{"yyyyMMddHHmmssfff", "20260929020304567", time.Date(2026, 9, 29, 2, 3, 4, 567e6, time.UTC)},
		{"yyyy.MM.dd HH:mm:ss", "2026.09.29 02:03:04", time.Date(2026, 9, 29, 2, 3, 4, 0, time.UTC)},
		{"yyyy/MM/dd", "2026/09/29", time.Date(2026, 9, 29, 0, 0, 0, 0, time.UTC)},
		{"yyyyMMdd'T'HHmmss", "20260929T020304", time.Date(2026, 9, 29, 2, 3, 4, 0, time.UTC)},
		{`yyyyMMdd"T"HHmmss"Z"`, "20260929T020304Z", time.Date(2026, 9, 29, 2, 3, 4, 0, time.UTC)},
		{`yyyyMMdd\THHmmss`, "20260929T020304", time.Date(2026, 9, 29, 2, 3, 4, 0, time.UTC)},
		{`'GMT'yyyy.MM.dd-HH.mm.ss`, "GMT2026.09.29-02.03.04", time.Date(2026, 9, 29, 2, 3, 4, 0, time.UTC)},
		{`'it''s'yy`, "its26", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{`\'yy\\`, `'26\`, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{`'a\'b'yy"\"'"`, `a'b26"'`, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"yy", "26", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"HHmm", "0203", time.Date(2000, 1, 1, 2, 3, 0, 0, time.UTC)},
		{"MMdd", "0929", time.Date(2000, 9, 29, 0, 0, 0, 0, time.UTC)},
		{"yyyyMMddyy", "2026092926", time.Date(2026, 9, 29, 0, 0, 0, 0, time.UTC)},
		{"ddMMyy", "290926", time.Date(2026, 9, 29, 0, 0, 0, 0, time.UTC)},
		{"yyyy-'é'-MM", "2026-é-09", time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, c := range cases {
		t.Run(c.format, func(t *testing.T) {
			f, err := ParseFormat(c.format)
			if err != nil {
				t.Fatal(err)
			}
			if f.String() != c.format {
				t.Errorf("String() = %q", f.String())
			}
			got := f.Render(ref)
			if got != c.want {
				t.Errorf("Render = %q, want %q", got, c.want)
			}
			if f.Width() != len(got) {
				t.Errorf("Width = %d, rendering has %d bytes", f.Width(), len(got))
			}
			back, err := f.Parse(got, time.UTC)
			if err != nil {
				t.Fatal(err)
			}
			if !back.Equal(c.precision) {
				t.Errorf("Parse(%q) = %v, want %v", got, back, c.precision)
			}
		})
	}
}

func TestRenderUsesClockFieldsOfT(t *testing.T) {
	f, _ := ParseFormat("yyyyMMddHHmm")
	zone := time.FixedZone("UTC+2", 2*3600)
	if got := f.Render(ref.In(zone)); got != "202609290403" {
		t.Errorf("Render in UTC+2 = %q", got)
	}
	back, err := f.Parse("202609290403", zone)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Equal(time.Date(2026, 9, 29, 2, 3, 0, 0, time.UTC)) || back.Location() != zone {
		t.Errorf("Parse in zone = %v", back)
	}
	if back, _ := f.Parse("202609290403", nil); back.Location() != time.UTC {
		t.Errorf("Parse with nil loc: %v", back.Location())
	}
}

func TestRenderYears(t *testing.T) {
	f, _ := ParseFormat("yyyy yy")
	for _, c := range []struct {
		year int
		want string
	}{{2000, "2000 00"}, {2009, "2009 09"}, {2099, "2099 99"}, {7, "0007 07"}, {1999, "1999 99"}} {
		if got := f.Render(time.Date(c.year, 1, 1, 0, 0, 0, 0, time.UTC)); got != c.want {
			t.Errorf("year %d: %q, want %q", c.year, got, c.want)
		}
	}
}

func TestParseFormatErrors(t *testing.T) {
	cases := []struct{ format, want string }{
		{"", "timestamp format is empty"},
		{"yyyyMMddh", `"h" renders 1 or 2 digits: use "hh" (position 9`},
		{"yyyyMMMM", `"MMMM" is a full month name`},
		{"yyyyMMd", `"d" renders 1 or 2 digits`},
		{"yyyyMMdd dddd", `"dddd" is a full day name`},
		{"y", "one-character format is a .NET standard format"},
		{"ffffffff", "at most 7 f"},
		{"zz", `"zz" is a time zone offset`},
		{"yyyy'MM", "unterminated ' quote at position 5"},
		{`yyyy"MM`, `unterminated " quote`},
		{`yyyy\`, "trailing backslash"},
		{`yyyy'\'`, "unterminated ' quote at position 5"},
		{"%H", `"H" renders 1 or 2 digits`},
		{"yyyy%'", "unterminated ' quote at position 6"},
		{`yyyy%\`, "trailing backslash"},
		{"yy\xff", "invalid UTF-8"},
	}
	for _, c := range cases {
		t.Run(c.format, func(t *testing.T) {
			_, err := ParseFormat(c.format)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ParseFormat(%q) error = %v, want it to contain %q", c.format, err, c.want)
			}
		})
	}
}

func TestParseStrict(t *testing.T) {
	def, _ := ParseFormat(DefaultFormat)
	lit, _ := ParseFormat("yyyy-MM-dd")
	dup, _ := ParseFormat("yyyyMMyy")
	dup2, _ := ParseFormat("MM-MM")
	cases := []struct {
		f    Format
		s    string
		want string
	}{
		{def, "", "length 0, want 12"},
		{def, "2609290203", "length 10, want 12"},
		{def, "2609290203040", "length 13"},
		{def, "26092902030a", "want a digit at position 12"},
		{def, "26-929020304", "want a digit at position 3"},
		{def, "+60929020304", "want a digit"},
		{def, "２６0929020304", "length"},
		{def, "261329020304", "month 13 out of range"},
		{def, "260029020304", "month 0 out of range"},
		{def, "260230020304", "day 30 out of range for 2026-02"},
		{def, "260229020304", "day 29 out of range for 2026-02"},
		{def, "260900020304", "day 0 out of range"},
		{def, "260929240304", "hour 24 out of range"},
		{def, "260929026004", "minute 60 out of range"},
		{def, "260929020360", "second 60 out of range"},
		{lit, "2026/09/29", `want "-" at position 5`},
		{dup, "20260927", "conflicting values for yy and yyyy"},
		{dup2, "01-02", `conflicting values for "MM"`},
	}
	for _, c := range cases {
		t.Run(c.f.String()+"/"+c.s, func(t *testing.T) {
			got, err := c.f.Parse(c.s, time.UTC)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Parse(%q) = %v, %v; want error containing %q", c.s, got, err, c.want)
			}
		})
	}
	if got, err := def.Parse("240229235959", time.UTC); err != nil || !got.Equal(time.Date(2024, 2, 29, 23, 59, 59, 0, time.UTC)) {
		t.Errorf("leap day: %v, %v", got, err)
	}
}

func TestParseDSTGap(t *testing.T) {
	loc, err := time.LoadLocation("Europe/Rome") // embedded: see tzdata.go
	if err != nil {
		t.Fatal(err)
	}
	f, _ := ParseFormat("yyyyMMddHHmm")
	// 02:30 does not exist on 2026-03-29 in Rome; Parse must not reject it, since
	// a name rendered in another zone may carry it.
	if _, err := f.Parse("202603290230", loc); err != nil {
		t.Error(err)
	}
}
