package naming

import (
	"strings"
	"testing"
	"time"
)

// genericFamily reports whether the generic grammar reads every rendering of f: a year
// first, then the next fields in order, with 1–3 separator characters between fields
// and nothing before or after.
func genericFamily(f Format) bool {
	next := 0 // index into genericOrder of the next field allowed
	sawYear, lastLit := false, false
	for i, e := range f.elems {
		switch {
		case e.field != fieldLiteral && (e.width != fieldWidth[e.field] || e.h12):
			return false // the grammar reads 4-digit years, fff, HH
		case e.field == fieldLiteral:
			if i == 0 || i == len(f.elems)-1 || len(e.literal) > 3 || lastLit {
				return false
			}
			for _, c := range []byte(e.literal) {
				if !isSeparator(c) {
					return false
				}
			}
			lastLit = true
			continue
		case !sawYear:
			if e.field != fieldYear2 && e.field != fieldYear4 {
				return false
			}
			sawYear = true
		default:
			if next >= len(genericOrder) || genericOrder[next] != e.field {
				return false
			}
			next++
		}
		lastLit = false
	}
	return sawYear
}

// FuzzRecognizeRoundTrip: a name autosnap builds is read back with its label and time
// — by any later run (the description records them), by a run with the same format
// (legacy description), and, for formats of the generic family, by a run with any
// other format.
func FuzzRecognizeRoundTrip(f *testing.F) {
	for _, c := range [][2]string{
		{"hourly", DefaultFormat}, {"daily", "yyyyMMdd-HHmm"}, {"x", "yyyyMMddHHmmssfff"},
		{"lit", "'tflit'yyMMddHHmmss"}, {"t", "yyyyMMdd'T'HHmmss"}, {"a2", "yyMMdd"},
		{"w", "yyyy_MM_dd"}, {"m", "yyyyMM"}, {"z", "yyMMddHHmmss'Z'"}, {"d", "yyyyMMddyy"},
	} {
		f.Add(c[0], c[1], int64(841_000_000), uint32(123_456_789), "yyyyMMdd")
	}
	f.Fuzz(func(t *testing.T, label, format string, sec int64, nsec uint32, other string) {
		fm, err := ParseFormat(format)
		if err != nil || Validate(label, fm) != nil {
			return
		}
		otherFm, err := ParseFormat(other)
		if err != nil {
			otherFm = mustFormat(t, DefaultFormat)
		}
		at := fuzzTime(sec, nsec)
		want := atPrecision(fm, at)
		name := Name(label, fm, at)
		created := at.Truncate(time.Second)

		recorded := Description(mergeFields(map[string]string{"consistency": "crash"}, NameFields(label, fm)))
		for _, l := range []string{"", label} {
			got, ok := (Recognizer{Format: otherFm, Loc: time.UTC}).Recognize(name, recorded, created, l)
			if !ok || got.Label != label || !got.Time.Equal(want) {
				t.Fatalf("recorded: Recognize(%q, label %q) with format %q = %+v, %v; want %q at %v", name, l, other, got, ok, label, want)
			}
		}
		legacy := Description(map[string]string{"consistency": "crash"})
		if got, ok := (Recognizer{Format: fm, Loc: time.UTC}).Recognize(name, legacy, created, label); !ok || got.Label != label || !got.Time.Equal(want) {
			t.Fatalf("same format: Recognize(%q, %q) = %+v, %v; want %v", name, label, got, ok, want)
		}
		if genericFamily(fm) {
			if got, ok := (Recognizer{Format: otherFm, Loc: time.UTC}).Recognize(name, legacy, created, label); !ok || got.Label != label || !got.Time.Equal(want) {
				t.Fatalf("generic: Recognize(%q, %q) with format %q = %+v, %v; want %v", name, label, other, got, ok, want)
			}
			// Without a label, the generic reading recovers it when it does not end in
			// a digit and the run's format cannot read the name.
			if last := label[len(label)-1]; !isDigit(last) && otherFm.width == 0 {
				if got, ok := (Recognizer{Loc: time.UTC}).Recognize(name, legacy, created, ""); !ok || got.Label != label || !got.Time.Equal(want) {
					t.Fatalf("generic, no label: Recognize(%q) = %+v, %v; want %q at %v", name, got, ok, label, want)
				}
			}
		}
	})
}

// FuzzRecognize: arbitrary input never panics, and a verdict is always consistent.
func FuzzRecognize(f *testing.F) {
	f.Add("autohourly260929020000", "autosnap", int64(0), "", DefaultFormat)
	f.Add("autohourly20260929-0200", "cv4pve-autosnap", int64(1790000000), "hourly", "yyyyMMdd")
	f.Add("autox2026T09", "autosnap\nlabel: x\ntimestamp-format: yyyy'T'MM", int64(1790000000), "", "yy")
	f.Fuzz(func(t *testing.T, name, desc string, createdUnix int64, label, format string) {
		fm, _ := ParseFormat(format)
		var created time.Time
		if createdUnix > 0 {
			created = time.Unix(createdUnix%(1<<33), 0)
		}
		got, ok := (Recognizer{Format: fm, Loc: time.UTC}).Recognize(name, desc, created, label)
		if !ok {
			return
		}
		if !IsOurs(desc) || got.Label == "" || !strings.HasPrefix(name, Prefix+got.Label) || len(name) == len(Prefix+got.Label) {
			t.Fatalf("Recognize(%q, %q) = %+v", name, desc, got)
		}
		if label != "" && got.Label != label {
			t.Fatalf("asked for %q, got %q", label, got.Label)
		}
	})
}
