// Package naming builds, validates and recognises autosnap snapshot names and
// descriptions, compatibly with cv4pve-autosnap.
//
// A snapshot name is "auto" + label + timestamp, where the timestamp is rendered
// with a Format (a subset of .NET custom DateTime formats, default yyMMddHHmmss).
// A snapshot is ours when its description is exactly what autosnap (or cv4pve-autosnap)
// writes (see IsOurs); only then, and only when its name parses, does retention count
// it, and never when it is protected (IsProtected). Recognizer
// reads names made with any supported format, not only the run's (see Recognize).
//
// The package is pure: it never reads the clock; times are passed in.
package naming

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Marker is the first line of the description of every snapshot autosnap creates.
const Marker = "autosnap"

// LegacyMarker is the description cv4pve-autosnap sets; snapshots carrying it are
// ours too, so existing cv4pve-autosnap snapshots rotate out normally.
const LegacyMarker = "cv4pve-autosnap"

// Prefix starts every snapshot name.
const Prefix = "auto"

// MaxNameLen is Proxmox VE's limit on snapshot names (pve-snapshot-name).
const MaxNameLen = 40

// Name returns the snapshot name for label at t: "auto" + label + f.Render(t).
func Name(label string, f Format, t time.Time) string {
	return Prefix + label + f.Render(t)
}

// probeTimes are the dates cv4pve-autosnap renders to check a format: a format is
// usable only if all renderings have one length and sort ordinally in time order.
var probeTimes = func() []time.Time {
	base := time.Date(2026, 1, 1, 1, 1, 1, 0, time.UTC)
	return []time.Time{
		base,
		base.Add(9 * time.Second),
		base.Add(9 * time.Minute),
		base.Add(9 * time.Hour),
		base.Add(12 * time.Hour),
		base.AddDate(0, 0, 9),
		base.AddDate(0, 9, 0),
		base.AddDate(0, 11, 30).Add(22 * time.Hour),
		base.AddDate(1, 0, 0),
		// Beyond cv4pve's probes: the hours a 12-hour clock renders as 12, so that
		// hh (even after AM/PM) is found not to sort.
		base.AddDate(1, 0, 1).Add(-time.Hour),
		base.AddDate(1, 0, 1),
		base.AddDate(1, 0, 1).Add(11 * time.Hour),
		base.AddDate(1, 0, 1).Add(12 * time.Hour),
	}
}()

// Validate checks that snapshots named with label and f are usable: the label
// and the rendered timestamp use only letters, digits, '-' and '_'; the name fits
// MaxNameLen; and timestamps of f sort ordinally in time order, so that the
// newest snapshot is also the last by name (this rejects e.g. ddMMyy). A format
// without seconds (or minutes…) is valid: equal renderings do not break the order.
// Error messages say what to change.
func Validate(label string, f Format) error {
	if label == "" {
		return fmt.Errorf("label is empty: use e.g. hourly, daily, weekly or monthly")
	}
	for _, r := range label {
		if validNameRune(r) {
			continue
		}
		if r == ' ' {
			return fmt.Errorf("label %q contains a space: use letters, digits, '-' or '_'", label)
		}
		return fmt.Errorf("label %q contains %q: use letters, digits, '-' or '_'", label, r)
	}
	if len(f.elems) == 0 {
		return fmt.Errorf("timestamp format is empty: use e.g. %s", DefaultFormat)
	}

	renders := make([]string, len(probeTimes))
	for i, t := range probeTimes {
		renders[i] = f.Render(t)
	}
	for _, r := range renders[0] {
		if !validNameRune(r) {
			return fmt.Errorf("timestamp format %q renders %q, which contains %q: snapshot names may only contain letters, digits, '-' or '_'", f.src, renders[0], r)
		}
	}
	for i := 1; i < len(renders); i++ {
		if len(renders[i]) != len(renders[0]) {
			return fmt.Errorf("timestamp format %q renders timestamps of different lengths (%q, %q): use fixed-width patterns (%s)", f.src, renders[0], renders[i], SupportedPatterns)
		}
		if renders[i] < renders[i-1] {
			return fmt.Errorf("timestamp format %q does not sort in time order (%s renders %q, later %s renders %q): order the patterns from year to second, e.g. yyyyMMddHHmmss",
				f.src, probeTimes[i-1].Format(time.DateTime), renders[i-1], probeTimes[i].Format(time.DateTime), renders[i])
		}
	}
	if !hasDateOrder(renders) {
		return fmt.Errorf("timestamp format %q renders the same timestamp for every probe date: include a year, e.g. yyyyMMddHHmmss", f.src)
	}

	name := Prefix + label + renders[0]
	if len(name) > MaxNameLen {
		room := MaxNameLen - len(Prefix) - len(renders[0])
		if room < 1 {
			return fmt.Errorf("name %s (%d chars) exceeds Proxmox VE's %d-character limit: timestamp format %q alone renders %d characters: use a shorter one", name, len(name), MaxNameLen, f.src, len(renders[0]))
		}
		return fmt.Errorf("name %s (%d chars) exceeds Proxmox VE's %d-character limit: shorten the label to at most %d %s", name, len(name), MaxNameLen, room, plural(room, "character"))
	}
	return nil
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// hasDateOrder reports whether the probe renderings differ at all; a format whose
// renderings are all equal (only literals) names every snapshot alike.
func hasDateOrder(renders []string) bool {
	return renders[0] != renders[len(renders)-1]
}

// validNameRune reports whether r may appear in a snapshot name after its first
// letter: Proxmox VE's configid is [a-z][a-z0-9_-]+, case-insensitive.
func validNameRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_'
}

// IsOurs reports whether a snapshot description is one autosnap (or cv4pve-autosnap,
// or its predecessor eve4pve-autosnap) wrote, so that retention may count and remove
// the snapshot. After trimming the whole description it is either exactly
// LegacyMarker or EveMarker, or a header line (Marker, LegacyMarker or EveMarker)
// followed only by the "key: value" lines autosnap records (see KnownFields), each
// with a value autosnap writes: the consistency (one of ConsistencyLevels), the label
// and timestamp format of the name, and the protected flag.
// Blank lines and whitespace around a line are ignored (Proxmox VE and editors add
// them), nothing else is: a description an admin edited — "cv4pve-autosnap\nkeep me",
// or any other line added — is no longer ours, and retention never touches it.
func IsOurs(description string) bool {
	_, ok := parseOurs(description, false)
	return ok
}

// EveMarker is the description eve4pve-autosnap, cv4pve-autosnap's predecessor, set;
// cv4pve-autosnap 2.0.1 still rotated such snapshots out, and so does autosnap.
const EveMarker = "eve4pve-autosnap"

// Description fields autosnap records besides FieldLabel and FieldFormat.
const (
	// FieldConsistency records how the snapshot's disks were captured.
	FieldConsistency = "consistency"
	// FieldProtected, with the value ProtectedValue, marks a snapshot retention never
	// removes (autosnap snapshot protect).
	FieldProtected = "protected"
	ProtectedValue = "yes"
)

// ConsistencyLevels are the values autosnap writes in the FieldConsistency line (the
// levels of driver.Consistency); a description whose line holds anything else was
// edited, and is not ours.
var ConsistencyLevels = []string{"quiesced", "crash", "offline", "memory"}

// KnownFields are the description fields autosnap writes; a description with any
// other field is not ours (see IsOurs). A new field must be added here, or snapshots
// carrying it would never be rotated out.
var KnownFields = [...]string{FieldConsistency, FieldLabel, FieldFormat, FieldProtected}

// ours is a description IsOurs accepts, taken apart.
type ours struct {
	header string
	lines  []string // the "key: value" lines, trimmed, in order (when asked for)
	vals   [len(KnownFields)]string
}

// field returns the value of the known field k ("" when absent).
func (o *ours) field(k string) string {
	for i, f := range KnownFields {
		if f == k {
			return o.vals[i]
		}
	}
	return ""
}

func isMarker(s string) bool { return s == Marker || s == LegacyMarker || s == EveMarker }

// parseOurs takes apart a description IsOurs accepts; o.lines is filled only when
// withLines is set. Listings call it for every snapshot of every guest, so it
// allocates nothing else.
func parseOurs(description string, withLines bool) (o ours, ok bool) {
	for description != "" {
		var line string
		line, description, _ = strings.Cut(description, "\n")
		// TrimSpace also drops the '\r' of a "\r\n" line end.
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if o.header == "" {
			if !isMarker(line) {
				return ours{}, false
			}
			o.header = line
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || !validField(k, v) {
			return ours{}, false
		}
		if withLines {
			o.lines = append(o.lines, k+": "+v)
		}
		for i, f := range KnownFields {
			if f == k {
				o.vals[i] = v
			}
		}
	}
	return o, o.header != ""
}

// validField reports whether "k: v" is a line autosnap could have written.
func validField(k, v string) bool {
	switch k {
	case FieldConsistency:
		return slices.Contains(ConsistencyLevels, v)
	case FieldLabel:
		if v == "" {
			return false
		}
		for _, r := range v {
			if !validNameRune(r) {
				return false
			}
		}
		return true
	case FieldFormat:
		_, err := ParseFormat(v)
		return err == nil
	case FieldProtected:
		return v == ProtectedValue
	}
	return false
}

// IsProtected reports whether a description of ours carries the protected flag:
// retention never removes such a snapshot. A description that is not ours is never
// protected (retention does not touch it anyway).
func IsProtected(description string) bool {
	// Listings ask this of every snapshot; most carry no flag at all.
	if !strings.Contains(description, FieldProtected) {
		return false
	}
	o, ok := parseOurs(description, false)
	return ok && o.field(FieldProtected) == ProtectedValue
}

// WithProtected returns the description of one of our snapshots with the protected
// flag set (on) or cleared, everything else kept: the header line, and the other
// fields in their order. It is the description "autosnap snapshot protect" writes,
// and IsOurs accepts it. Protecting a snapshot whose description is just
// LegacyMarker gives "cv4pve-autosnap\nprotected: yes", which cv4pve-autosnap itself
// no longer counts, so it never removes it either; unprotecting it gives back exactly
// LegacyMarker. A description that is not ours is an error: retention never touches
// that snapshot, so there is nothing to protect it from.
func WithProtected(description string, on bool) (string, error) {
	o, ok := parseOurs(description, true)
	if !ok {
		return "", fmt.Errorf("its description %q was not written by autosnap (nor cv4pve-autosnap), so snap and clean never remove it: nothing to protect", description)
	}
	lines := []string{o.header}
	for _, l := range o.lines {
		if k, _, _ := strings.Cut(l, ":"); k != FieldProtected {
			lines = append(lines, l)
		}
	}
	if on {
		lines = append(lines, FieldProtected+": "+ProtectedValue)
	}
	return strings.Join(lines, "\n"), nil
}

// Match reports whether name is "auto" + label + a timestamp that f parses (in
// loc), and returns that time. It does not look at the description: callers
// check IsOurs too.
func Match(name, label string, f Format, loc *time.Location) (time.Time, bool) {
	rest, ok := strings.CutPrefix(name, Prefix+label)
	if !ok {
		return time.Time{}, false
	}
	t, err := f.Parse(rest, loc)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

// Split takes a name apart into a non-empty label and the time of its trailing
// timestamp, for listing every label at once: the name must start with "auto"
// and end with f.Width() bytes that f parses (in loc).
func Split(name string, f Format, loc *time.Location) (label string, t time.Time, ok bool) {
	rest, found := strings.CutPrefix(name, Prefix)
	if !found || len(rest) <= f.width {
		return "", time.Time{}, false
	}
	cut := len(rest) - f.width
	t, err := f.Parse(rest[cut:], loc)
	if err != nil {
		return "", time.Time{}, false
	}
	return rest[:cut], t, true
}

// Description returns the description for a new snapshot: Marker, then one
// "key: value" line per entry of extra, sorted by key. Line breaks in keys and
// values become spaces and ':' in keys becomes '_', so DescriptionFields reads
// back exactly what it is given after that cleaning; entries with an empty key
// are dropped.
func Description(extra map[string]string) string {
	var b strings.Builder
	b.WriteString(Marker)
	clean := make(map[string]string, len(extra))
	for k, v := range extra {
		k = strings.TrimSpace(strings.ReplaceAll(oneLine(k), ":", "_"))
		if k == "" {
			continue
		}
		clean[k] = strings.TrimSpace(oneLine(v))
	}
	for _, k := range slices.Sorted(maps.Keys(clean)) {
		b.WriteString("\n")
		b.WriteString(k)
		b.WriteString(": ")
		b.WriteString(clean[k])
	}
	return b.String()
}

func oneLine(s string) string {
	return strings.NewReplacer("\r\n", " ", "\r", " ", "\n", " ").Replace(s)
}

// DescriptionFields parses the "key: value" lines after a description's first
// line, as written by Description. Lines without ':' or with an empty key are
// ignored; keys and values are trimmed. It never returns nil.
func DescriptionFields(desc string) map[string]string {
	fields := map[string]string{}
	_, rest, _ := strings.Cut(desc, "\n")
	for line := range strings.Lines(rest) {
		k, v, ok := strings.Cut(line, ":")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			continue
		}
		fields[k] = strings.TrimSpace(v)
	}
	return fields
}
