package cli

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

func TestWithConsistency(t *testing.T) {
	for _, tc := range []struct {
		desc string
		c    driver.Consistency
		want string
	}{
		{"", driver.ConsistencyQuiesced, "\nconsistency: quiesced"},
		{"before upgrade", driver.ConsistencyCrash, "before upgrade\nconsistency: crash"},
		{"autosnap", driver.ConsistencyOffline, naming.Description(map[string]string{"consistency": "offline"})},
		{"a\nconsistency: crash\nb: c", driver.ConsistencyQuiesced, "a\nb: c\nconsistency: quiesced"},
		{"a\n", driver.ConsistencyMemory, "a\nconsistency: memory"},
		{"a\n\nb", driver.ConsistencyCrash, "a\n\nb\nconsistency: crash"},
		{"a", driver.ConsistencyUnknown, "a"},
		// An admin's note on the consistency line is theirs: kept, and still not ours.
		{"cv4pve-autosnap\nconsistency: crash, keep until the audit", driver.ConsistencyQuiesced, "cv4pve-autosnap\nconsistency: crash, keep until the audit\nconsistency: quiesced"},
	} {
		if got := withConsistency(tc.desc, tc.c); got != tc.want {
			t.Errorf("withConsistency(%q, %q) = %q, want %q", tc.desc, tc.c, got, tc.want)
		}
	}
}

// TestWithConsistencyProperties: for any description, the result records c, keeps
// the first line (so who manages the snapshot does not change) and every other field,
// is stable when applied twice, and shows as the description without that line.
func TestWithConsistencyProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	parts := []string{"autosnap", "cv4pve-autosnap", "note", ":", " ", "\n", "\r\n", "consistency", "consistency: crash", "x: y", "é", "|"}
	cons := []driver.Consistency{driver.ConsistencyQuiesced, driver.ConsistencyCrash, driver.ConsistencyOffline, driver.ConsistencyMemory}
	for i := 0; i < 5000; i++ {
		var b strings.Builder
		for j := r.IntN(8); j > 0; j-- {
			b.WriteString(parts[r.IntN(len(parts))])
		}
		desc, c := b.String(), cons[r.IntN(len(cons))]
		got := withConsistency(desc, c)
		fields := naming.DescriptionFields(got)
		if fields["consistency"] != string(c) {
			t.Fatalf("withConsistency(%q, %s) = %q records %q", desc, c, got, fields["consistency"])
		}
		// Who manages it is decided by the whole description (naming.IsOurs); a blank
		// first line, which withConsistency keeps as the first line, is left out.
		if strings.TrimSpace(strings.SplitN(desc, "\n", 2)[0]) != "" && naming.IsOurs(got) != naming.IsOurs(desc) {
			t.Fatalf("withConsistency(%q) = %q changes who manages the snapshot", desc, got)
		}
		for k, v := range naming.DescriptionFields(desc) {
			if k != "consistency" && fields[k] != v {
				t.Fatalf("withConsistency(%q) = %q lost the field %s", desc, got, k)
			}
		}
		if again := withConsistency(got, c); again != got {
			t.Fatalf("not stable: %q then %q", got, again)
		}
		// The recorded line is hidden; a consistency line in an admin's words stays.
		if v, ok := naming.DescriptionFields(shownDescription(got))["consistency"]; ok && slices.Contains(naming.ConsistencyLevels, v) {
			t.Fatalf("shownDescription(%q) = %q still shows the recorded line", got, shownDescription(got))
		}
	}
}

// TestStatesConsistency: only a level autosnap records counts as the description
// stating its consistency; an admin's words on that line do not, so snapshot edit
// still carries the recorded level over.
func TestStatesConsistency(t *testing.T) {
	for desc, want := range map[string]bool{
		"note\nconsistency: crash":    true,
		"note\nconsistency: quiesced": true,
		"note\nconsistency: keep me":  false,
		"note":                        false,
		"consistency: crash":          false, // a first line is the header, not a field
	} {
		if got := statesConsistency(desc); got != want {
			t.Errorf("statesConsistency(%q) = %v, want %v", desc, got, want)
		}
	}
	if got := withConsistency("note\nconsistency: keep me", driver.ConsistencyCrash); !strings.HasSuffix(got, "\nconsistency: crash") || !strings.Contains(got, "keep me") {
		t.Errorf("withConsistency kept %q", got)
	}
}
