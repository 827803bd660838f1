package naming

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestRecognizeGolden reads many names — made by autosnap with various formats, by
// cv4pve-autosnap, and by neither — with several run formats and labels, and
// compares every verdict with testdata/recognize.golden.
func TestRecognizeGolden(t *testing.T) {
	created := time.Date(2026, 9, 29, 2, 0, 0, 0, time.UTC)
	rec := func(label, format string) string {
		f := mustFormat(t, format)
		return Description(mergeFields(map[string]string{"consistency": "crash"}, NameFields(label, f)))
	}
	legacy := Description(map[string]string{"consistency": "crash"})
	names := []struct{ name, desc string }{
		{"autohourly260929020000", "cv4pve-autosnap"},
		{"autohourly260929020000", legacy},
		{"autohourly260929020000", rec("hourly", DefaultFormat)},
		{"autohourly20260929020000", legacy},
		{"autohourly20260929-0200", legacy},
		{"autohourly2026_09_29_02_00_00", legacy},
		{"autohourly20260929T020000", legacy},
		{"autohourly260929020000123", legacy},
		{"autohourly2026092902", legacy},
		{"autohourly202609", legacy},
		{"autohourlytflit260929020000", legacy},
		{"autohourlytflit260929020000", rec("hourly", "'tflit'yyMMddHHmmss")},
		{"autohourly260929020000tflit", rec("hourly", "yyMMddHHmmss'tflit'")},
		{"autohourly260929020000tflit", legacy},
		{"autodaily2260929020000", rec("daily2", DefaultFormat)},
		{"autodaily2260929020000", legacy},
		{"autox20260929020000", legacy},
		{"autox20260929020000", rec("x20", "yyMMddHHmm")},
		{"autohourly260929020000", "before upgrade"},
		{"autohourly260929020000", "cv4pve-autosnap\nkeep me"}, // an admin's note: kept
		{"autohourly260929020000", rec("hourly", DefaultFormat) + "\nkeep me"},
		{"autohourly260929020000", "eve4pve-autosnap"},
		{"autohourly260929020000", Description(map[string]string{"label": "daily"})},
		{"before-upgrade", legacy},
		{"auto260929020000", legacy},
		{"autohourly", legacy},
		{"autohourly2613", legacy},
		{"autohourly19990929020000", legacy}, // implausible: created in 2026
		{"autohourly-260929020000", legacy},
		{"autohourly260929020000-", legacy},
		{"autohourly2026----09", legacy},
	}
	runs := []struct{ label, format string }{
		{"", DefaultFormat},
		{"hourly", DefaultFormat},
		{"hourly", "yyyyMMdd"},
		{"daily", DefaultFormat},
		{"", "'tflit'yyMMddHHmmss"},
	}
	var b strings.Builder
	r := Recognizer{Loc: time.UTC}
	for _, n := range names {
		fmt.Fprintf(&b, "%s  %s\n", n.name, strconv.Quote(n.desc))
		for _, run := range runs {
			r.Format = mustFormat(t, run.format)
			got, ok := r.Recognize(n.name, n.desc, created, run.label)
			verdict := "-"
			if ok {
				verdict = fmt.Sprintf("label=%s time=%s", got.Label, got.Time.Format("2006-01-02T15:04:05.000"))
				if !strings.HasPrefix(n.name, Prefix+got.Label) {
					t.Errorf("%s: label %q is not a prefix", n.name, got.Label)
				}
				if run.label != "" && got.Label != run.label {
					t.Errorf("%s: asked for label %q, got %q", n.name, run.label, got.Label)
				}
			}
			fmt.Fprintf(&b, "  label=%-7q format=%-22q %s\n", run.label, run.format, verdict)
		}
	}
	golden := filepath.Join("testdata", "recognize.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if b.String() != string(want) {
		t.Errorf("differs from %s (run with -update and review the diff):\n%s", golden, b.String())
	}
}

func mergeFields(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// Key verdicts of the golden file, spelled out.
func TestRecognizeCases(t *testing.T) {
	created := time.Date(2026, 9, 29, 2, 0, 0, 0, time.UTC)
	def := Recognizer{Format: mustFormat(t, DefaultFormat), Loc: time.UTC}
	legacy := Description(map[string]string{"consistency": "crash"})
	for _, c := range []struct {
		name, desc, label string
		ok                bool
		wantLabel         string
	}{
		// Another format, no recorded label: the generic grammar reads it.
		{"autohourly20260929-0200", legacy, "hourly", true, "hourly"},
		{"autohourly20260929-0200", legacy, "", true, "hourly"},
		// Milliseconds: the default format would split "hourly260" + a 2090 date;
		// the creation time rules that out.
		{"autohourly260929020000123", legacy, "", true, "hourly"},
		// A recorded label settles prefixes: daily is not daily2.
		{"autodaily2260929020000", Description(NameFields("daily2", def.Format)), "daily", false, ""},
		{"autodaily2260929020000", Description(NameFields("daily2", def.Format)), "", true, "daily2"},
		// A literal recorded in the format is not part of the label.
		{"autohourlytflit260929020000", Description(NameFields("hourly", mustFormat(t, "'tflit'yyMMddHHmmss"))), "", true, "hourly"},
		// Not ours.
		{"autohourly260929020000", "my snapshot", "", false, ""},
		{"autohourly19990929020000", legacy, "hourly", false, ""},
	} {
		got, ok := def.Recognize(c.name, c.desc, created, c.label)
		if ok != c.ok || got.Label != c.wantLabel {
			t.Errorf("Recognize(%q, label %q) = %+v, %v; want label %q, %v", c.name, c.label, got, ok, c.wantLabel, c.ok)
		}
	}
}
