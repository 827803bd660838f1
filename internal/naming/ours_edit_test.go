package naming

import "testing"

// TestOursEditedFieldValue: a description is ours only if it is exactly what autosnap
// wrote. autosnap records a consistency as one of its four levels; an admin who types
// a note into that line ("consistency: crash, keep until the audit") made it a note
// of their own, and retention must leave the snapshot alone.
func TestOursEditedFieldValue(t *testing.T) {
	for _, d := range []string{
		"autosnap\nconsistency: crash, keep until the audit",
		"autosnap\nlabel: hourly\nconsistency: keep me",
		"cv4pve-autosnap\nconsistency: do not delete",
		"autosnap\nconsistency:",
		"autosnap\nconsistency: Crash",
	} {
		if IsOurs(d) {
			t.Errorf("IsOurs(%q) = true: an edited consistency line must make the snapshot the admin's", d)
		}
	}
	for _, c := range ConsistencyLevels {
		d := Description(map[string]string{FieldConsistency: c})
		if !IsOurs(d) {
			t.Errorf("IsOurs(%q) = false for the level %q autosnap writes", d, c)
		}
	}
}
