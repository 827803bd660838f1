package backup

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
)

func TestDecide(t *testing.T) {
	disks := []driver.BackupDisk{
		{Name: "vda", VirtualSize: 100, Incremental: true},
		{Name: "vdb", VirtualSize: 200, Incremental: true},
	}
	pd := []DiskInfo{{Name: "vda", VirtualSize: 100}, {Name: "vdb", VirtualSize: 200}}
	full := PointInfo{ID: "p1-full", Level: driver.LevelFull, Chain: "p1-full", Checkpoint: "cp1", Disks: pd}
	inc := PointInfo{ID: "p2-inc", Level: driver.LevelInc, Chain: "p1-full", Checkpoint: "cp2", Disks: pd}
	copyPt := PointInfo{ID: "p3-copy", Level: driver.LevelCopy, Disks: pd}
	cps := []driver.Checkpoint{{Name: "cp1", Disks: []string{"vda", "vdb"}}, {Name: "cp2", Disks: []string{"vda", "vdb"}}}

	type want struct {
		level          driver.BackupLevel
		parent, since  string
		chain          string
		reason, errSub string
		whole          map[string]string // disk → part of its reason
	}
	cases := []struct {
		name   string
		level  Level
		points []PointInfo
		cps    []driver.Checkpoint
		disks  []driver.BackupDisk
		want   want
	}{
		{"auto empty repo", LevelAuto, nil, nil, disks, want{level: driver.LevelFull, reason: "no backup of this guest"}},
		{"auto only copies", LevelAuto, []PointInfo{copyPt}, cps, disks, want{level: driver.LevelFull, reason: "only copies"}},
		{"auto continues", LevelAuto, []PointInfo{full, inc}, cps, disks, want{level: driver.LevelInc, parent: "p2-inc", since: "cp2", chain: "p1-full"}},
		{"auto ignores trailing copy", LevelAuto, []PointInfo{full, inc, copyPt}, cps, disks, want{level: driver.LevelInc, parent: "p2-inc", since: "cp2", chain: "p1-full"}},
		{"diff on full", Level(driver.LevelDiff), []PointInfo{full, inc}, cps, disks, want{level: driver.LevelDiff, parent: "p1-full", since: "cp1", chain: "p1-full"}},
		{"auto checkpoint gone", LevelAuto, []PointInfo{full, inc}, cps[:1], disks, want{level: driver.LevelFull, reason: "checkpoint cp2 of point p2-inc is gone"}},
		{"inc checkpoint gone", Level(driver.LevelInc), []PointInfo{full, inc}, cps[:1], disks, want{errSub: "checkpoint cp2 of point p2-inc is gone"}},
		{"diff full checkpoint gone", Level(driver.LevelDiff), []PointInfo{full, inc}, cps[1:], disks, want{errSub: "checkpoint cp1 of point p1-full is gone"}},
		{"auto unusable", LevelAuto, []PointInfo{full}, []driver.Checkpoint{{Name: "cp1", Unusable: "bitmap inconsistent"}}, disks,
			want{level: driver.LevelFull, reason: "cannot be used: bitmap inconsistent"}},
		{"auto disk added", LevelAuto, []PointInfo{full}, cps, append(slices.Clone(disks), driver.BackupDisk{Name: "vdc", VirtualSize: 5, Incremental: true}),
			want{level: driver.LevelInc, parent: "p1-full", since: "cp1", chain: "p1-full", whole: map[string]string{"vdc": "disk vdc was added since point p1-full"}}},
		{"auto disk removed", LevelAuto, []PointInfo{full}, cps, disks[:1], want{level: driver.LevelInc, parent: "p1-full", since: "cp1", chain: "p1-full"}},
		{"auto disk resized", LevelAuto, []PointInfo{full}, cps, []driver.BackupDisk{disks[0], {Name: "vdb", VirtualSize: 300, Incremental: true}},
			want{level: driver.LevelInc, parent: "p1-full", since: "cp1", chain: "p1-full", whole: map[string]string{"vdb": "resized from 200 to 300 bytes"}}},
		{"auto raw disk", LevelAuto, []PointInfo{full}, cps, []driver.BackupDisk{disks[0], {Name: "vdb", VirtualSize: 200, NoIncremental: "raw image"}},
			want{level: driver.LevelInc, parent: "p1-full", since: "cp1", chain: "p1-full", whole: map[string]string{"vdb": "disk vdb cannot be backed up incrementally: raw image"}}},
		{"auto checkpoint misses disk", LevelAuto, []PointInfo{full}, []driver.Checkpoint{{Name: "cp1", Disks: []string{"vda"}}}, disks,
			want{level: driver.LevelInc, parent: "p1-full", since: "cp1", chain: "p1-full", whole: map[string]string{"vdb": "does not track disk vdb"}}},
		{"auto every disk raw", LevelAuto, []PointInfo{full}, cps, []driver.BackupDisk{{Name: "vda", VirtualSize: 100, NoIncremental: "raw"}, {Name: "vdb", VirtualSize: 200, NoIncremental: "raw"}},
			want{level: driver.LevelFull, reason: "no disk can be copied incrementally: disk vda cannot"}},
		{"inc every disk raw", Level(driver.LevelInc), []PointInfo{full}, cps, []driver.BackupDisk{{Name: "vda", VirtualSize: 100, NoIncremental: "raw"}, {Name: "vdb", VirtualSize: 200, NoIncremental: "raw"}},
			want{errSub: "no disk can be copied incrementally"}},
		{"full asked", Level(driver.LevelFull), []PointInfo{full, inc}, cps, disks, want{level: driver.LevelFull, reason: "--level full"}},
		{"copy", Level(driver.LevelCopy), []PointInfo{full, inc}, cps, disks, want{level: driver.LevelCopy}},
		{"full made by a prune", Level(driver.LevelDiff), []PointInfo{{ID: "p2-inc", Level: driver.LevelFull, Chain: "p2-inc", Checkpoint: "cp2", Disks: pd},
			{ID: "p3-inc", Level: driver.LevelInc, Chain: "p2-inc", Checkpoint: "cp3", Disks: pd}}, []driver.Checkpoint{{Name: "cp2"}, {Name: "cp3"}}, disks,
			want{level: driver.LevelDiff, parent: "p2-inc", since: "cp2", chain: "p2-inc"}},
		{"chain full missing", LevelAuto, []PointInfo{inc}, cps, disks, want{level: driver.LevelFull, reason: "full p1-full that starts the newest chain"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := Decide(c.level, c.points, c.cps, c.disks)
			if c.want.errSub != "" {
				if err == nil || !errors.Is(err, ErrLevelImpossible) || !strings.Contains(err.Error(), c.want.errSub) {
					t.Fatalf("err = %v, want ErrLevelImpossible containing %q (decision %+v)", err, c.want.errSub, d)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Level != c.want.level || d.Parent != c.want.parent || d.Since != c.want.since || d.Chain != c.want.chain {
				t.Fatalf("decision %+v, want %+v", d, c.want)
			}
			if c.want.reason == "" && d.Reason != "" || !strings.Contains(d.Reason, c.want.reason) {
				t.Fatalf("reason %q, want it to contain %q", d.Reason, c.want.reason)
			}
			if len(d.DiskFull) != len(c.want.whole) {
				t.Fatalf("whole disks %v, want %v", d.DiskFull, c.want.whole)
			}
			for disk, sub := range c.want.whole {
				if !strings.Contains(d.DiskFull[disk], sub) {
					t.Fatalf("disk %s copied whole because %q, want it to contain %q", disk, d.DiskFull[disk], sub)
				}
			}
		})
	}
}

func TestNeededCheckpoints(t *testing.T) {
	pts := []PointInfo{
		{ID: "a", Level: driver.LevelFull, Chain: "a", Checkpoint: "c1"},
		{ID: "b", Level: driver.LevelInc, Chain: "a", Checkpoint: "c2"},
		{ID: "c", Level: driver.LevelFull, Chain: "c", Checkpoint: "c3"},
		{ID: "d", Level: driver.LevelInc, Chain: "c", Checkpoint: "c4"},
		{ID: "e", Level: driver.LevelDiff, Chain: "c", Checkpoint: "c5"},
		{ID: "f", Level: driver.LevelCopy},
	}
	if got := NeededCheckpoints(pts); !slices.Equal(got, []string{"c3", "c5"}) {
		t.Fatalf("needed %v, want [c3 c5]", got)
	}
	if got := NeededCheckpoints(pts[:3]); !slices.Equal(got, []string{"c3"}) {
		t.Fatalf("needed %v, want [c3]", got)
	}
	if got := NeededCheckpoints(nil); len(got) != 0 {
		t.Fatalf("needed %v, want none", got)
	}
}
