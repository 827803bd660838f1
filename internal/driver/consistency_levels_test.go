package driver

import (
	"slices"
	"testing"

	"github.com/autosnap/autosnap/internal/naming"
)

// Every consistency level a driver records is one naming accepts as autosnap's: a
// level missing there would make new snapshots look edited, and retention would never
// remove them.
func TestConsistencyLevelsKnownToNaming(t *testing.T) {
	levels := []Consistency{ConsistencyQuiesced, ConsistencyCrash, ConsistencyOffline, ConsistencyMemory}
	if len(levels) != len(naming.ConsistencyLevels) {
		t.Errorf("naming.ConsistencyLevels %v, driver levels %v", naming.ConsistencyLevels, levels)
	}
	for _, c := range levels {
		if !slices.Contains(naming.ConsistencyLevels, string(c)) {
			t.Errorf("driver.Consistency %q is not in naming.ConsistencyLevels", c)
		}
		if d := naming.Description(map[string]string{naming.FieldConsistency: string(c)}); !naming.IsOurs(d) {
			t.Errorf("%q is not ours", d)
		}
	}
}
