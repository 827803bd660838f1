package repo

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/retention"
)

// history builds a guest with 16 points over a year: three chains (fulls, incs,
// diffs stacked on fulls and incs on diffs) and a copy, with distinct writes to two
// disks between points, including zeroed regions.
func history(t *testing.T) (*sim, string) {
	t.Helper()
	s := newSim(t, "vda", "vdb")
	dir := filepath.Join(t.TempDir(), "repo")
	g := openGuest(t, dir, s.id)
	at := func(s string) time.Time {
		tm, err := time.Parse("2006-01-02 15:04", s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	steps := []struct{ when, level, parent string }{
		{"2025-12-20 10:00", "full", ""},  // 0
		{"2026-01-15 10:00", "inc", "0"},  // 1
		{"2026-10-01 10:00", "full", ""},  // 2
		{"2026-10-20 10:00", "inc", "2"},  // 3
		{"2026-11-02 10:00", "diff", "2"}, // 4
		{"2026-11-10 10:00", "inc", "4"},  // 5
		{"2026-11-23 10:00", "full", ""},  // 6
		{"2026-11-24 10:00", "inc", "6"},  // 7
		{"2026-11-26 10:00", "inc", "7"},  // 8
		{"2026-11-28 09:00", "diff", "6"}, // 9
		{"2026-11-28 18:00", "inc", "9"},  // 10
		{"2026-11-29 08:00", "copy", ""},  // 11
		{"2026-11-29 20:00", "inc", "10"}, // 12
		{"2026-11-30 03:00", "inc", "12"}, // 13
		{"2026-11-30 04:30", "diff", "6"}, // 14
		{"2026-11-30 05:10", "inc", "14"}, // 15
	}
	var pts []Point
	for i, st := range steps {
		s.write("vda", byte(0x40+i), int64(i)*(1<<20)+int64(i)*4096, 300000)
		s.write("vdb", byte(0x80+i), int64(15-i)*(1<<20), 1<<20)
		if i%3 == 2 {
			s.zero("vda", int64(i-2)*(1<<20), 65536)
		}
		if i%4 == 1 {
			s.write("vdb", byte(0xc0+i), 0, 4096)
		}
		parent := ""
		if st.parent != "" {
			var n int
			fmt.Sscan(st.parent, &n)
			parent = pts[n].ID
		}
		// A diff is taken from the full's bitmap: its writes are everything since the
		// full, which sim tracks per disk.
		pts = append(pts, s.backup(g, st.level, parent, at(st.when)))
	}
	return s, dir
}

// copyRepo copies a repository directory (relative backing names keep working).
func copyRepo(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "repo")
	run(t, "cp", "-a", "--sparse=always", src, dst)
	return dst
}

var pruneNow = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)

// checkPruned checks that the guest's points are exactly kept, that every one
// restores as it did before the prune, that no file refers to a removed point and
// that Verify (reading every block) finds nothing.
func checkPruned(t *testing.T, s *sim, g *Guest, kept []string) {
	t.Helper()
	ps, err := g.Points()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(ps), kept) {
		t.Fatalf("points after prune %v, want %v", ids(ps), kept)
	}
	for _, p := range ps {
		if p.Parent != "" && !slices.Contains(kept, p.Parent) {
			t.Errorf("point %s has removed parent %s", p.ID, p.Parent)
		}
		if p.Chain != "" {
			if root, ok, _ := g.ChainRoot(p.Chain); !ok || root.ID != p.Chain || root.Level != LevelFull || root.Parent != "" {
				t.Errorf("point %s is in chain %s whose full is not there (root %+v)", p.ID, p.Chain, root.Manifest)
			}
		}
		for _, d := range p.Disks {
			if b, ok := backingPoint(d.Backing); ok && !slices.Contains(kept, b) {
				t.Errorf("point %s disk %s backed by removed point %s", p.ID, d.Name, b)
			}
		}
		s.checkRestore(g, p)
	}
	faults, err := g.Verify(context.Background(), VerifyOptions{ReadData: true})
	if err != nil || len(faults) != 0 {
		t.Fatalf("verify after prune: %v %v", faults, err)
	}
	ents, _ := os.ReadDir(g.Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") && e.Name() != LockFile && e.Name() != ReadersLockFile && e.Name() != JournalDir {
			t.Errorf("left over in the guest directory: %s", e.Name())
		}
	}
	if keys, _ := g.journal().Keys(""); len(keys) != 0 {
		t.Errorf("journal records left: %v", keys)
	}
	checkModes(t, g.repo.Dir)
}

// TestPruneEveryKeepOption prunes copies of one history with each keep option (and
// combinations): exactly the selected points remain, every one restores exactly as
// before (dependants of removed points were rebased), nothing refers to a removed
// point.
func TestPruneEveryKeepOption(t *testing.T) {
	s, tmpl := history(t)
	policies := []struct {
		name string
		p    retention.GFS
		want []string
	}{
		{"last3", retention.GFS{Last: 3}, []string{"20261130T030000Z-inc", "20261130T043000Z-diff", "20261130T051000Z-inc"}},
		{"hourly4", retention.GFS{Hourly: 4}, []string{"20261129T200000Z-inc", "20261130T030000Z-inc", "20261130T043000Z-diff", "20261130T051000Z-inc"}},
		{"daily3", retention.GFS{Daily: 3}, []string{"20261128T180000Z-inc", "20261129T200000Z-inc", "20261130T051000Z-inc"}},
		{"weekly2", retention.GFS{Weekly: 2}, []string{"20261129T200000Z-inc", "20261130T051000Z-inc"}},
		{"monthly2", retention.GFS{Monthly: 2}, []string{"20261020T100000Z-inc", "20261130T051000Z-inc"}},
		{"yearly2", retention.GFS{Yearly: 2}, []string{"20251220T100000Z-full", "20261130T051000Z-inc"}},
		{"within2d", retention.GFS{Within: retention.Span{Days: 2}}, []string{"20261128T090000Z-diff", "20261128T180000Z-inc", "20261129T080000Z-copy", "20261129T200000Z-inc", "20261130T030000Z-inc", "20261130T043000Z-diff", "20261130T051000Z-inc"}},
		{"mixed", retention.GFS{Last: 2, Daily: 2, Weekly: 2, Monthly: 3, Yearly: 1, Within: retention.Span{Hours: 2}},
			// within: 14 15; last: 13 12; daily: 10 8; weekly: 5 4 (W49, W48 covered);
			// monthly: 3 1 0 (2026-11 covered); yearly: 2026 and 2025 covered. Full 2
			// goes with its inc 3 and diff 4 kept: both become standalone.
			[]string{"20251220T100000Z-full", "20260115T100000Z-inc", "20261020T100000Z-inc", "20261102T100000Z-diff", "20261110T100000Z-inc", "20261126T100000Z-inc", "20261128T180000Z-inc", "20261129T200000Z-inc", "20261130T030000Z-inc", "20261130T043000Z-diff", "20261130T051000Z-inc"}},
	}
	for _, pc := range policies {
		t.Run(pc.name, func(t *testing.T) {
			g := openGuest(t, copyRepo(t, tmpl), s.id)
			plan, err := g.PlanPrune(pc.p, pruneNow)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(plan.Kept(), pc.want) {
				t.Fatalf("kept %v, want %v", plan.Kept(), pc.want)
			}
			for _, d := range plan.Decisions {
				if len(d.Reasons) == 0 {
					t.Errorf("%s has no reason", d.ID)
				}
			}
			unlock, err := g.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer unlock()
			if err := g.Prune(context.Background(), plan); err != nil {
				t.Fatal(err)
			}
			checkPruned(t, s, g, plan.Kept())
		})
	}
}

// TestPruneRebasesDependants: removing a full with incs and diffs on it merges its
// data into them. The oldest kept point of the full's chain, left without any kept
// ancestor, becomes standalone and the chain's new full; the kept diff that stood on
// the removed full is rebased onto that new full, which costs it next to no space.
func TestPruneRebasesDependants(t *testing.T) {
	s, tmpl := history(t)
	g := openGuest(t, copyRepo(t, tmpl), s.id)
	plan, err := g.PlanPrune(retention.GFS{Last: 3}, pruneNow)
	if err != nil {
		t.Fatal(err)
	}
	const oldFull, newFull, diff = "20261123T100000Z-full", "20261130T030000Z-inc", "20261130T043000Z-diff"
	var rootAlone, diffOnNew int
	for _, st := range plan.Rebase {
		if st.Point == newFull && st.To == "" {
			rootAlone++
		}
		if st.Point == diff && st.From == "../"+oldFull+"/"+st.Disk+".qcow2" && st.To == "../"+newFull+"/"+st.Disk+".qcow2" {
			diffOnNew++
		}
	}
	if rootAlone != 2 || diffOnNew != 2 {
		t.Fatalf("rebase steps: %+v", plan.Rebase)
	}
	if plan.Reparent[diff] != newFull || plan.Reparent[newFull] != "" || plan.Rechain[oldFull] != newFull {
		t.Errorf("reparent %v rechain %v", plan.Reparent, plan.Rechain)
	}
	diffBefore, _ := g.Point(diff)
	unlock, err := g.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := g.Prune(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	checkPruned(t, s, g, plan.Kept())
	diffAfter, _ := g.Point(diff)
	if grew := int64(diffAfter.Size()) - int64(diffBefore.Size()); grew > 512<<10 {
		t.Errorf("rebasing the diff onto the new full grew it by %d bytes", grew)
	}
	if diffAfter.Parent != newFull {
		t.Errorf("diff's parent %q, want the new full %s", diffAfter.Parent, newFull)
	}
	p, _ := g.Point("20261130T051000Z-inc")
	if p.Parent != "20261130T043000Z-diff" {
		t.Errorf("kept inc's parent changed to %q", p.Parent)
	}
	// The chain of the removed full goes on: its oldest remaining point, now
	// standalone, is its full and names it.
	if _, ok, _ := g.ChainRoot("20261123T100000Z-full"); ok {
		t.Error("the removed full still names a chain")
	}
	root, ok, err := g.ChainRoot("20261130T030000Z-inc")
	if err != nil || !ok || root.ID != "20261130T030000Z-inc" || root.Level != LevelFull || root.Parent != "" ||
		root.Disks[0].Backing != "" || !strings.Contains(root.Merged, "taken as inc") {
		t.Errorf("chain root after the prune: %+v %v %v", root.Manifest, ok, err)
	}
	for _, id := range []string{"20261130T043000Z-diff", "20261130T051000Z-inc"} {
		if p, _ := g.Point(id); p.Chain != root.ID {
			t.Errorf("%s is in chain %q after the prune, want %s", id, p.Chain, root.ID)
		}
	}
}

// TestPruneRefusesKeepingNothing: an empty policy, and one that selects nothing,
// are refused before anything changes.
func TestPruneRefusesKeepingNothing(t *testing.T) {
	s := newSim(t, "vda")
	g := openGuest(t, t.TempDir(), s.id)
	s.write("vda", 1, 0, 4096)
	s.backup(g, LevelFull, "", t0)
	if _, err := g.PlanPrune(retention.GFS{}, t0.Add(time.Hour)); err == nil {
		t.Error("empty policy accepted")
	}
	if _, err := g.PlanPrune(retention.GFS{Within: retention.Span{Hours: 1}}, t0.Add(48*time.Hour)); err == nil {
		t.Error("a policy keeping nothing accepted")
	}
	ps, _ := g.Points()
	if len(ps) != 1 {
		t.Errorf("points %v", ids(ps))
	}
}

// TestPrunePlanStale: a plan made before another point was added is refused.
func TestPrunePlanStale(t *testing.T) {
	s := newSim(t, "vda")
	g := openGuest(t, t.TempDir(), s.id)
	s.write("vda", 1, 0, 4096)
	f := s.backup(g, LevelFull, "", t0)
	s.backup(g, LevelInc, f.ID, t0.Add(time.Hour))
	plan, err := g.PlanPrune(retention.GFS{Last: 1}, t0.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	s.backup(g, LevelCopy, "", t0.Add(90*time.Minute))
	unlock, _ := g.Lock(context.Background())
	defer unlock()
	if err := g.Prune(context.Background(), plan); err == nil || !strings.Contains(err.Error(), "plan again") {
		t.Fatalf("stale plan: %v", err)
	}
}

func planJSON(t *testing.T, pl PrunePlan) string {
	b, err := json.MarshalIndent(pl, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
