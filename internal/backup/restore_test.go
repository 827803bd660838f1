package backup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/repo"
)

func TestSelectPointAndPlan(t *testing.T) {
	f := newEngineFixture(t)
	for range 3 {
		mustRun(t, f, f.job(LevelAuto)) // 06:01 full, 06:03 inc, 06:05 inc (UTC)
	}
	rs := f.store.(RepoStore)
	g, err := FindGuest(rs.R, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := FindGuest(rs.R, "nope"); err == nil || !strings.Contains(err.Error(), "has no guest \"nope\" (it has: vm1)") {
		t.Fatalf("unknown guest: %v", err)
	}
	pts, _ := g.Points()
	cases := []struct{ until, want string }{
		{"", pts[2].ID},
		{pts[0].ID, pts[0].ID},
		{"2026-11-30T06:03:30Z", pts[1].ID},
		{"2026-11-30 06:04:59", pts[1].ID}, // UTC as the location
		{"2026-11-30", pts[2].ID},          // the end of that day
	}
	for _, c := range cases {
		p, err := SelectPoint(g, c.until, time.UTC)
		if err != nil || p.ID != c.want {
			t.Errorf("--until %q: %s (%v), want %s", c.until, p.ID, err, c.want)
		}
	}
	if _, err := SelectPoint(g, "2026-11-30T05:00:00Z", time.UTC); err == nil {
		t.Error("a time before every point selected one")
	}
	if _, err := SelectPoint(g, "yesterday", time.UTC); err == nil || !strings.Contains(err.Error(), "give a point ID") {
		t.Errorf("bad --until: %v", err)
	}
	dir := t.TempDir()
	plan, err := PlanRestore(pts[2], []string{"vdb"}, dir, "new-", "raw")
	if err != nil || len(plan) != 1 || plan[0].Out != filepath.Join(dir, "new-vdb.raw") {
		t.Fatalf("plan %+v, %v", plan, err)
	}
	if _, err := PlanRestore(pts[2], []string{"vdz"}, dir, "", "qcow2"); err == nil || !strings.Contains(err.Error(), "has no disk vdz") {
		t.Fatalf("unknown disk: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "vda.qcow2"), nil, 0o600)
	if _, err := PlanRestore(pts[2], nil, dir, "", "qcow2"); err == nil || !strings.Contains(err.Error(), "never overwrites") {
		t.Fatalf("existing file: %v", err)
	}
}

func TestPlanInPlace(t *testing.T) {
	p := repo.Point{Manifest: repo.Manifest{ID: "p", Disks: []repo.DiskManifest{{Name: "vda", VirtualSize: 10}, {Name: "vdb", VirtualSize: 20}}}}
	src := driver.BackupSource{Disks: []driver.BackupDisk{{Name: "vda", File: "/i/a", Format: "qcow2", VirtualSize: 10}, {Name: "vdb", File: "/i/b", Format: "raw", VirtualSize: 20}}}
	off := driver.Guest{Name: "g", State: driver.StateShutoff}
	none := func(string) (string, error) { return "", nil }
	plan, err := PlanInPlace(off, src, p, nil, none)
	if err != nil || len(plan) != 2 || plan[1] != (InPlaceFile{Disk: "vdb", File: "/i/b", Format: "raw"}) {
		t.Fatalf("%+v %v", plan, err)
	}
	if _, err := PlanInPlace(driver.Guest{Name: "g", State: driver.StateRunning}, src, p, nil, none); err == nil || !strings.Contains(err.Error(), "shut it down first") {
		t.Fatalf("running: %v", err)
	}
	if _, err := PlanInPlace(off, src, p, nil, func(f string) (string, error) { return f + ".base", nil }); err == nil || !strings.Contains(err.Error(), "has a backing file /i/a.base") {
		t.Fatalf("chain: %v", err)
	}
	src.Disks[1].VirtualSize = 30
	if _, err := PlanInPlace(off, src, p, []string{"vdb"}, none); err == nil || !strings.Contains(err.Error(), "is 30 bytes now and was 20") {
		t.Fatalf("resized: %v", err)
	}
}
