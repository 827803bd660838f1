package naming

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

func mustFormat(t testing.TB, s string) Format {
	t.Helper()
	f, err := ParseFormat(s)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestName(t *testing.T) {
	at := time.Date(2026, 9, 29, 2, 0, 0, 0, time.UTC)
	for _, c := range []struct{ label, format, want string }{
		{"daily", DefaultFormat, "autodaily260929020000"},
		{"daily", "yyyyMMdd-HHmm", "autodaily20260929-0200"},
		{"hourly", "yyyyMMddHHmmss", "autohourly20260929020000"},
	} {
		if got := Name(c.label, mustFormat(t, c.format), at); got != c.want {
			t.Errorf("Name(%q, %q) = %q, want %q", c.label, c.format, got, c.want)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := []struct{ label, format string }{
		{"hourly", DefaultFormat},
		{"daily", "yyyyMMddHHmmss"},
		{"daily", "yyyyMMdd-HHmm"},
		{"weekly", "yyyyMMdd"},
		{"monthly", "yyyyMM"},
		{"x", "yyyy"},
		{"a_b-C9", "yyyy_MM_dd_HH_mm_ss_fff"},
		{"daily", "yyyyMMdd'T'HHmmss"},
		{"daily", "yy-MM-dd-HH"},
		{strings.Repeat("l", 24), DefaultFormat},       // exactly 40
		{strings.Repeat("l", 18), "yyyyMMddHHmmssfff"}, // 39
		{strings.Repeat("l", 19), "yyyyMMddHHmmssfff"}, // 40
		{"9lives", "yyyyMMdd"},                         // the name still starts with "auto"
		{"-", DefaultFormat},
		{"x", "yyyyMMddHHmmssfff'-'yyyyMMddHHmmssfff"}, // exactly 40
	}
	for _, c := range ok {
		if err := Validate(c.label, mustFormat(t, c.format)); err != nil {
			t.Errorf("Validate(%q, %q) = %v", c.label, c.format, err)
		}
	}

	bad := []struct{ label, format, want string }{
		{"", DefaultFormat, "label is empty"},
		{"x y", DefaultFormat, `label "x y" contains a space: use letters, digits, '-' or '_'`},
		{"x.y", DefaultFormat, `label "x.y" contains '.': use letters, digits, '-' or '_'`},
		{"dä", DefaultFormat, `label "dä" contains 'ä'`},
		{"a/b", DefaultFormat, `contains '/'`},
		{"daily", "ddMMyy", `timestamp format "ddMMyy" does not sort in time order`},
		{"daily", "HHmmss", "does not sort in time order (2026-01-01 13:01:01 renders \"130101\", later 2026-01-10 01:01:01 renders \"010101\"): order the patterns from year to second"},
		{"daily", "MMddyyyy", "does not sort in time order"},
		{"daily", "yyyyddMM", "does not sort in time order"},
		{"daily", "mmHH", "does not sort in time order"},
		{"daily", "yyyyMMddssmm", "does not sort in time order"},
		{"daily", "'x'", "renders the same timestamp for every probe date: include a year"},
		{"daily", "yyyy.MM.dd", `timestamp format "yyyy.MM.dd" renders "2026.01.01", which contains '.': snapshot names may only contain letters, digits, '-' or '_'`},
		{"daily", "yyyyMMdd HHmm", "which contains ' '"},
		{"daily", "yyyyMMddHH:mm", "which contains ':'"},
		{strings.Repeat("l", 25), DefaultFormat, "name auto" + strings.Repeat("l", 25) + "260101010101 (41 chars) exceeds Proxmox VE's 40-character limit: shorten the label to at most 24 characters"},
		{"daily", "yyyyMMddHHmmssfff'-'yyyyMMddHHmmss", `(41 chars) exceeds Proxmox VE's 40-character limit: shorten the label to at most 4 characters`},
		{"xy", "yyyyMMddHHmmssfff'-'yyyyMMddHHmmssfff", `(41 chars) exceeds Proxmox VE's 40-character limit: shorten the label to at most 1 character`},
		{"x", "yyyyMMddHHmmssfff'-'yyyyMMddHHmmssfff''yy", `timestamp format "yyyyMMddHHmmssfff'-'yyyyMMddHHmmssfff''yy" alone renders 37 characters: use a shorter one`},
		{strings.Repeat("a", 20), "yyyyMMddHHmmssfff", "shorten the label to at most 19 characters"},
	}
	for _, c := range bad {
		t.Run(c.label+"/"+c.format, func(t *testing.T) {
			err := Validate(c.label, mustFormat(t, c.format))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate(%q, %q) = %v, want error containing %q", c.label, c.format, err, c.want)
			}
		})
	}
	if err := Validate("daily", Format{}); err == nil || !strings.Contains(err.Error(), "timestamp format is empty") {
		t.Errorf("Validate with zero Format = %v", err)
	}
}

func TestIsOurs(t *testing.T) {
	ours := []string{
		"autosnap",
		"cv4pve-autosnap",
		"cv4pve-autosnap\n",
		"autosnap\n",
		" autosnap \r\n",
		"autosnap\nconsistency: quiesced\nlabel: hourly",
		"\ncv4pve-autosnap",
		"eve4pve-autosnap",
	}
	for _, d := range ours {
		if !IsOurs(d) {
			t.Errorf("IsOurs(%q) = false", d)
		}
	}
	foreign := []string{
		"",
		"before upgrade",
		"cv4pve-\nautosnap", // cv4pve-autosnap removed newlines; an edited note is not ours
		"cv4pve-autosnap\nkeep me",
		"autosnap\nconsistency: quiesced\nguest-state: running",
		"Autosnap",
		"autosnapshot",
		"cv4pve-autosnap edited",
		"my note\nautosnap",
		"made by autosnap",
		"autosnap: consistency",
	}
	for _, d := range foreign {
		if IsOurs(d) {
			t.Errorf("IsOurs(%q) = true", d)
		}
	}
}

func TestMatch(t *testing.T) {
	def := mustFormat(t, DefaultFormat)
	long := mustFormat(t, "yyyyMMdd-HHmm")
	want := time.Date(2026, 9, 29, 2, 0, 0, 0, time.UTC)
	cases := []struct {
		name, label string
		f           Format
		ok          bool
	}{
		{"autodaily260929020000", "daily", def, true}, // made by cv4pve-autosnap
		{"autodaily20260929-0200", "daily", long, true},
		{"autodaily260929020000", "hourly", def, false},
		{"autodaily260929020000", "dail", def, false},
		{"autodaily260929020000", "daily2", def, false},
		{"autodaily260929020000", "Daily", def, false},
		{"autohourlyfoo", "hourly", def, false},
		{"autohourly26092902000", "hourly", def, false},
		{"autohourly2609290200000", "hourly", def, false},
		{"autohourly261329020000", "hourly", def, false},
		{"autodaily260929020000", "daily", long, false},
		{"autodaily20260929-0200", "daily", def, false},
		{"daily260929020000", "daily", def, false},
		{"Autodaily260929020000", "daily", def, false},
		{"before-upgrade", "daily", def, false},
		{"", "daily", def, false},
	}
	for _, c := range cases {
		got, ok := Match(c.name, c.label, c.f, time.UTC)
		if ok != c.ok || ok && !got.Equal(want) {
			t.Errorf("Match(%q, %q, %q) = %v, %v; want ok=%v", c.name, c.label, c.f, got, ok, c.ok)
		}
	}
}

func TestSplit(t *testing.T) {
	def := mustFormat(t, DefaultFormat)
	cases := []struct {
		name, label string
		ok          bool
	}{
		{"autodaily260929020000", "daily", true},
		{"autohourly260929020000", "hourly", true},
		{"autoa-b_c260929020000", "a-b_c", true},
		{"autox2609290200002609", "", false}, // trailing part does not parse
		{"auto260929020000", "", false},      // no label
		{"autohourlyfoo", "", false},
		{"auto", "", false},
		{"daily260929020000", "", false},
		{"xautodaily260929020000", "", false},
	}
	for _, c := range cases {
		label, at, ok := Split(c.name, def, time.UTC)
		if ok != c.ok || label != c.label {
			t.Errorf("Split(%q) = %q, %v, %v; want %q, %v", c.name, label, at, ok, c.label, c.ok)
		}
		if ok && !at.Equal(time.Date(2026, 9, 29, 2, 0, 0, 0, time.UTC)) {
			t.Errorf("Split(%q) time = %v", c.name, at)
		}
	}
}

func TestDescription(t *testing.T) {
	cases := []struct {
		extra  map[string]string
		want   string
		fields map[string]string
	}{
		{nil, "autosnap", map[string]string{}},
		{map[string]string{"consistency": "quiesced"}, "autosnap\nconsistency: quiesced", map[string]string{"consistency": "quiesced"}},
		{
			map[string]string{"state": "running", "consistency": "crash", "host": "pve1"},
			"autosnap\nconsistency: crash\nhost: pve1\nstate: running",
			map[string]string{"state": "running", "consistency": "crash", "host": "pve1"},
		},
		{
			map[string]string{"a:b": "x\ny", " ": "dropped", "url": "http://h:1"},
			"autosnap\na_b: x y\nurl: http://h:1",
			map[string]string{"a_b": "x y", "url": "http://h:1"},
		},
	}
	for _, c := range cases {
		got := Description(c.extra)
		if got != c.want {
			t.Errorf("Description(%v) = %q, want %q", c.extra, got, c.want)
		}
		// Only the fields autosnap records keep a description ours.
		known := true
		for k := range c.fields {
			known = known && slices.Contains(KnownFields[:], k)
		}
		if IsOurs(got) != known {
			t.Errorf("IsOurs(Description(%v)) = %v, want %v", c.extra, !known, known)
		}
		if f := DescriptionFields(got); !maps.Equal(f, c.fields) {
			t.Errorf("DescriptionFields(%q) = %v, want %v", got, f, c.fields)
		}
	}
	for _, c := range []struct {
		desc string
		want map[string]string
	}{
		{"", map[string]string{}},
		{"cv4pve-autosnap", map[string]string{}},
		{"autosnap\r\nconsistency: quiesced\r\n\nnot a field\n: empty key\n", map[string]string{"consistency": "quiesced"}},
	} {
		if got := DescriptionFields(c.desc); !maps.Equal(got, c.want) {
			t.Errorf("DescriptionFields(%q) = %v, want %v", c.desc, got, c.want)
		}
	}
}
