package backup

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
)

// TestManifestConsistencyIsTheReportsWord: the manifest of a quiesced point (and of a
// crash-consistent one) stores the word the backup report prints, driver.Consistency's
// value, and listing the repository gives it back unchanged.
func TestManifestConsistencyIsTheReportsWord(t *testing.T) {
	f := newEngineFixture(t)
	j := f.job(LevelAuto)
	j.Guard = &fakeGuard{}
	for _, q := range []engine.Quiesce{engine.QuiesceOn, engine.QuiesceOff} {
		j.Quiesce = q
		res := mustRun(t, f, j)
		if res.Consistency != driver.ConsistencyQuiesced && res.Consistency != driver.ConsistencyCrash {
			t.Fatalf("--quiesce %v: consistency %q", q, res.Consistency)
		}
		pts := f.points(t)
		last := pts[len(pts)-1]
		data, err := os.ReadFile(filepath.Join(last.Dir, "manifest.json"))
		if err != nil {
			t.Fatal(err)
		}
		var m struct{ Consistency string }
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		if m.Consistency != string(res.Consistency) {
			t.Errorf("--quiesce %v: the report says %q, the manifest %q", q, res.Consistency, m.Consistency)
		}
	}
}
