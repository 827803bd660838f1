package libvirt

import (
	"fmt"
	"sort"
	"strings"
)

// The merge planner decides, for one disk, which image files a snapshot deletion may
// merge or remove. It is pure: it works on a graph of image files (each pointing at its
// backing file) and returns steps that the caller executes in order.
//
// Model: an external snapshot S of a disk created an overlay O_S on top of the image
// that was active then, B. B is S's state image (S's point in time); O_S received the
// writes made after S. A child snapshot C of S has O_S as its state. After a revert a
// state image can have several overlays on top of it (branches).
//
// An image's content may only change when nothing needs it as it is: it is no
// remaining snapshot's state (not pinned) and exactly one image sits on it. Committing
// that single overlay J into it (J's content moves down, J disappears, whatever
// referenced J now references the base) keeps every view that someone needs. Runs of
// such images are merged with one commit into the lowest, so every byte moves once
// (root first; leaf first would copy the newest data once per level). Overlays of
// deleted snapshots that nothing uses any more (no overlay on them, not the disk's
// active image, nobody's state) are removed.
//
// Images outside the guest's ownership are never written or removed, nor merged away
// from under what builds on them: foreign images (found beside the guest's, building
// on one of them) and images with users elsewhere on the host (another guest's chain,
// a storage pool volume). They count as used, and an image with a foreign child has
// more than the one child a commit needs.

// imgNode is one image file of a disk's graph.
type imgNode struct {
	backing string // "" for a base image, or when unknown
	// live: QEMU has the image open (it is in the running domain's chain).
	live bool
	// protected images hold internal snapshots and must never be removed.
	protected bool
	// foreign images are not the guest's (found beside its images, building on one of
	// them): they are never written or removed, nor is anything they need.
	foreign bool
	// users name what outside this disk's graph uses the image as it is (another
	// guest's disk, a file in a storage pool): it is never written or removed.
	users []string
}

// diskGraph is the image graph of one disk.
type diskGraph struct {
	disk   string
	nodes  map[string]*imgNode
	active string // the image the domain's disk uses
	// pins maps images to the remaining snapshots whose state they hold.
	pins map[string][]string
	// mergeable are images whose content may change: state images of deleted
	// snapshots, and images autosnap created or created an overlay on that no remaining
	// snapshot needs (see buildGraphs).
	mergeable map[string]bool
	// removable are overlays of deleted snapshots: they may be deleted when unused.
	removable map[string]bool
}

func newDiskGraph(disk string) *diskGraph {
	return &diskGraph{disk: disk, nodes: map[string]*imgNode{}, pins: map[string][]string{},
		mergeable: map[string]bool{}, removable: map[string]bool{}}
}

func (g *diskGraph) children(p string) []string {
	var out []string
	for f, n := range g.nodes {
		if n.backing == p {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

func (g *diskGraph) depth(p string) int {
	d := 0
	for seen := map[string]bool{}; p != "" && !seen[p]; d++ {
		seen[p] = true
		n, ok := g.nodes[p]
		if !ok {
			break
		}
		p = n.backing
	}
	return d
}

// used reports whether anyone needs the image as it is or builds on it.
func (g *diskGraph) used(p string) bool {
	return p == g.active || len(g.pins[p]) > 0 || len(g.children(p)) > 0 || g.outside(p)
}

// outside reports whether the image is foreign or has users outside the graph.
func (g *diskGraph) outside(p string) bool {
	n := g.nodes[p]
	return n != nil && (n.foreign || len(n.users) > 0)
}

type stepKind int

const (
	stepRemove stepKind = iota // delete an unused overlay file
	stepCommit                 // commit top (and the images between) into base
)

// mergeStep is one planned operation on one disk.
type mergeStep struct {
	kind stepKind
	disk string
	// base receives the data; top is the highest image merged; between are the images
	// strictly between them, bottom up. For stepRemove only top is set.
	base, top string
	between   []string
	// above are the images whose backing file is top: they are rebased onto base.
	above []string
	// live: the images are in the running domain's chain (a libvirt block commit);
	// otherwise qemu-img works on the files.
	live bool
	// activeTop: top is the disk's active image (an active commit and pivot, or a
	// change of the domain definition for a shut-off guest).
	activeTop bool
}

// removed lists the files a step deletes.
func (s mergeStep) removed() []string {
	if s.kind == stepRemove {
		return []string{s.top}
	}
	return append(append([]string{}, s.between...), s.top)
}

// plan returns the steps that release what the deleted snapshots held on this disk,
// applying them to g as it goes (g ends as the graph after all steps).
func (g *diskGraph) plan() []mergeStep {
	var steps []mergeStep
	for {
		if s, ok := g.nextRemove(); ok {
			steps = append(steps, s)
			g.apply(s)
			continue
		}
		if s, ok := g.nextCommit(); ok {
			steps = append(steps, s)
			g.apply(s)
			continue
		}
		return steps
	}
}

func (g *diskGraph) nextRemove() (mergeStep, bool) {
	var cands []string
	for p := range g.removable {
		n, ok := g.nodes[p]
		if ok && !n.protected && !n.live && !n.foreign && !g.used(p) {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		return mergeStep{}, false
	}
	sort.Strings(cands)
	return mergeStep{kind: stepRemove, disk: g.disk, top: cands[0]}, true
}

// canAbsorb reports whether p's content may change and exactly one image sits on it,
// which may go.
func (g *diskGraph) canAbsorb(p string) (child string, ok bool) {
	if !g.mergeable[p] || len(g.pins[p]) > 0 || p == g.active || g.outside(p) {
		return "", false
	}
	kids := g.children(p)
	if len(kids) != 1 {
		return "", false
	}
	if n := g.nodes[kids[0]]; n == nil || n.protected || g.outside(kids[0]) {
		return "", false
	}
	return kids[0], true
}

func (g *diskGraph) nextCommit() (mergeStep, bool) {
	var bases []string
	for p := range g.mergeable {
		if _, ok := g.nodes[p]; !ok {
			continue
		}
		if top, ok := g.canAbsorb(p); ok && g.used(top) {
			bases = append(bases, p)
		}
	}
	if len(bases) == 0 {
		return mergeStep{}, false
	}
	sort.Slice(bases, func(i, j int) bool {
		di, dj := g.depth(bases[i]), g.depth(bases[j])
		if di != dj {
			return di < dj
		}
		return bases[i] < bases[j]
	})
	base := bases[0]
	top, _ := g.canAbsorb(base)
	var between []string
	for {
		next, ok := g.canAbsorb(top)
		if !ok || !g.used(next) {
			break
		}
		between = append(between, top)
		top = next
	}
	// A chain is live from the active image down, so base and top agree.
	return mergeStep{kind: stepCommit, disk: g.disk, base: base, top: top, between: between,
		above: g.children(top), live: g.nodes[base].live, activeTop: top == g.active}, true
}

// apply changes g as the step changes the files.
func (g *diskGraph) apply(s mergeStep) {
	if s.kind == stepRemove {
		delete(g.nodes, s.top)
		delete(g.removable, s.top)
		delete(g.mergeable, s.top)
		return
	}
	for _, a := range s.above {
		g.nodes[a].backing = s.base
	}
	if s.activeTop {
		g.active = s.base
	}
	g.pins[s.base] = g.pins[s.top]
	g.mergeable[s.base] = g.mergeable[s.top]
	for _, f := range s.removed() {
		delete(g.nodes, f)
		delete(g.pins, f)
		delete(g.mergeable, f)
		delete(g.removable, f)
	}
}

// clone returns a deep copy of g.
func (g *diskGraph) clone() *diskGraph {
	c := newDiskGraph(g.disk)
	c.active = g.active
	for f, n := range g.nodes {
		cn := *n
		cn.users = append([]string(nil), n.users...)
		c.nodes[f] = &cn
	}
	for f, p := range g.pins {
		c.pins[f] = append([]string(nil), p...)
	}
	for f := range g.mergeable {
		c.mergeable[f] = true
	}
	for f := range g.removable {
		c.removable[f] = true
	}
	return c
}

// sharedTouches returns, for each image that a plan blind to everything outside the
// guest (foreign images and users dropped) would write into or remove although
// something outside uses it, what uses it. The real plan leaves such images alone;
// this tells the caller that the merge it asked for cannot be done.
func (g *diskGraph) sharedTouches() map[string][]string {
	blind := g.clone()
	for f, n := range blind.nodes {
		if n.foreign {
			delete(blind.nodes, f)
			continue
		}
		n.users = nil
	}
	out := map[string][]string{}
	for _, s := range blind.plan() {
		touched := s.removed()
		if s.kind == stepCommit {
			touched = append(touched, s.base)
		}
		for _, f := range touched {
			if who := g.outsideUsers(f); len(who) > 0 {
				out[f] = who
			}
		}
	}
	return out
}

// outsideUsers names what outside the guest uses f: its users and the foreign images
// building on it.
func (g *diskGraph) outsideUsers(f string) []string {
	n := g.nodes[f]
	if n == nil {
		return nil
	}
	who := append([]string(nil), n.users...)
	for _, c := range g.children(f) {
		if g.nodes[c].foreign {
			who = append(who, "the image "+c)
		}
	}
	return who
}

// refuseShared returns an error when releasing what the deleted snapshots held would
// write into or remove an image that something outside the guest uses.
func (g *diskGraph) refuseShared(guest string, deleted []string) error {
	touches := g.sharedTouches()
	if len(touches) == 0 {
		return nil
	}
	var parts []string
	for _, f := range sortedKeys(touches) {
		parts = append(parts, fmt.Sprintf("%s (used by %s)", f, strings.Join(touches[f], ", ")))
	}
	return fmt.Errorf("guest %s: disk %s: deleting snapshot %s would write into or remove %s; nothing was changed and the snapshots stay. If those users do not need the image as it is, remove them first; otherwise forget the snapshot and keep its files (autosnap snapshot delete %s NAME --metadata)",
		guest, g.disk, strings.Join(deleted, ", "), strings.Join(parts, "; "), guest)
}
