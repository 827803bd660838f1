package repo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLegacyApplicationReadsAsQuiesced: a manifest written by an earlier version with
// consistency "application" lists as "quiesced", the word backup prints.
func TestLegacyApplicationReadsAsQuiesced(t *testing.T) {
	s := newSim(t, "vda")
	g := openGuest(t, t.TempDir(), s.id)
	s.write("vda", 0x41, 0, 65536)
	full := s.backup(g, LevelFull, "", t0)
	mf := filepath.Join(full.Dir, ManifestFile)
	data, err := os.ReadFile(mf)
	if err != nil {
		t.Fatal(err)
	}
	old := strings.Replace(string(data), `"consistency": "crash"`, `"consistency": "application"`, 1)
	if old == string(data) {
		t.Fatalf("manifest has no crash consistency to rewrite:\n%s", data)
	}
	if err := os.WriteFile(mf, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	ps, err := g.Points()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Consistency != "quiesced" {
		t.Fatalf("points %+v: want one, consistency quiesced", ps)
	}
}
