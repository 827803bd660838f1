package libvirt

import (
	"fmt"
	"strings"
	"testing"
)

// graph builds a disk graph from "image:backing" pairs; live marks every image live.
func graph(active string, live bool, edges ...string) *diskGraph {
	g := newDiskGraph("vda")
	g.active = active
	for _, e := range edges {
		img, backing, _ := strings.Cut(e, ":")
		g.nodes[img] = &imgNode{backing: backing, live: live}
	}
	return g
}

func offLive(g *diskGraph, imgs ...string) *diskGraph {
	for _, i := range imgs {
		g.nodes[i].live = false
	}
	return g
}

func show(steps []mergeStep) string {
	var out []string
	for _, s := range steps {
		if s.kind == stepRemove {
			out = append(out, "rm "+s.top)
			continue
		}
		out = append(out, fmt.Sprintf("commit %s>%s%v above%v active=%v", s.top, s.base, s.between, s.above, s.activeTop))
	}
	return strings.Join(out, "; ")
}

func TestPlan(t *testing.T) {
	// Snapshots P, S, C taken in a row: states B, OP, OS; overlays OP, OS, OC (active).
	linear := func() *diskGraph { return graph("OC", true, "B:", "OP:B", "OS:OP", "OC:OS") }
	for _, tc := range []struct {
		name  string
		g     *diskGraph
		pins  map[string]string // image -> remaining snapshot
		del   map[string]string // deleted snapshot's overlay -> its state
		want  string
		final string // active image afterwards
	}{
		{name: "middle", g: linear(), pins: map[string]string{"B": "P", "OS": "C"}, del: map[string]string{"OS": "OP"},
			want: "commit OS>OP[] above[OC] active=false", final: "OC"},
		{name: "newest", g: linear(), pins: map[string]string{"B": "P", "OP": "S"}, del: map[string]string{"OC": "OS"},
			want: "commit OC>OS[] above[] active=true", final: "OS"},
		{name: "oldest", g: linear(), pins: map[string]string{"OP": "S", "OS": "C"}, del: map[string]string{"OP": "B"},
			want: "commit OP>B[] above[OS] active=false", final: "OC"},
		{name: "subtree in one job", g: linear(), pins: map[string]string{"B": "P"}, del: map[string]string{"OS": "OP", "OC": "OS"},
			want: "commit OC>OP[OS] above[] active=true", final: "OP"},
		{name: "everything", g: linear(), del: map[string]string{"OP": "B", "OS": "OP", "OC": "OS"},
			want: "commit OC>B[OP OS] above[] active=true", final: "B"},
		// After a revert to S: S's state OP got a second overlay R (now active, C2's
		// state) beside OS (C1's state, with C1's overlay OC on it).
		{name: "branch point is never written", g: graph("O2", true, "B:", "OP:B", "OS:OP", "OC:OS", "R:OP", "O2:R"),
			pins: map[string]string{"B": "P", "OS": "C1", "R": "C2"}, del: map[string]string{"OS": "OP"}, want: "", final: "O2"},
		{name: "abandoned branch removed, then merged", g: offLive(graph("O2", true, "B:", "OP:B", "OS:OP", "OC:OS", "R:OP", "O2:R"), "OS", "OC"),
			pins: map[string]string{"B": "P"}, del: map[string]string{"OS": "OP", "OC": "OS", "O2": "R"},
			want: "rm OC; rm OS; commit O2>OP[R] above[] active=true", final: "OP"},
		{name: "unknown image on the base blocks", g: graph("OC", true, "B:", "OP:B", "OS:OP", "OC:OS", "X:OS"),
			pins: map[string]string{"B": "P", "OP": "S"}, del: map[string]string{"OC": "OS"}, want: "", final: "OC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.g
			for img, s := range tc.pins {
				g.pins[img] = append(g.pins[img], s)
			}
			for ov, st := range tc.del {
				g.removable[ov] = true
				g.mergeable[st] = true
			}
			if got := show(g.plan()); got != tc.want {
				t.Errorf("plan:\n got %s\nwant %s", got, tc.want)
			}
			if g.active != tc.final {
				t.Errorf("active image afterwards %s, want %s", g.active, tc.final)
			}
		})
	}
}

func TestPlanProtected(t *testing.T) {
	g := graph("OC", false, "B:", "OS:B", "OC:OS")
	g.nodes["OC"].protected = true
	g.removable["OC"], g.mergeable["OS"] = true, true
	if got := show(g.plan()); got != "" {
		t.Errorf("an image holding internal snapshots was merged away: %s", got)
	}
}
