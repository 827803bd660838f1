package libvirt

import (
	"fmt"
	"maps"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"
)

// The planner's rules as properties: random guests live through random histories —
// writes, snapshots, reverts (branches), linked clones of their images by other guests
// and files in storage pools or beside them, a template below the guest's disk, images
// with internal snapshots, qcow2 headers naming files through a symlinked directory,
// snapshots redefined from another's metadata (two snapshots, one state) —
// and rounds of deleting random sets of snapshots. Each round builds the graphs from
// the fake file system as buildGraphs does, plans, and simulates every step on the
// files (a commit copies the merged images' blocks into the base, rebases the images
// above, deletes the merged files). After each round:
//
//   - every kept snapshot's view (its state image, as the rewritten metadata names it)
//     and the guest's view (its active image) read the same blocks as before;
//   - nothing outside the guest (foreign images, images other guests or files use) is
//     written or removed, and what uses those images reads the same;
//   - every file a step removes is unused: no image builds on it, it is no snapshot's
//     state and not the active image; no image with internal snapshots is removed.
//
// Each round runs twice: as the driver does (buildGraphs refuses a merge that would
// touch a shared image) and with the raw planner, which must leave such images alone
// by itself.
//
// Once the history is over, every snapshot left is deleted, in random rounds. When
// nothing outside the guest ever built on its images and none held internal
// snapshots, the disk is then back to its base image alone: every image a snapshot or
// a revert added is merged or removed, however the reverts branched the tree and in
// whatever order the snapshots went.
//
// AUTOSNAP_PLAN_SEED=N replays one seed; AUTOSNAP_PLAN_ITER sets the number of worlds.

const propBlocks = 8

func TestPlanProperties(t *testing.T) {
	iters := 2000
	if v, err := strconv.Atoi(os.Getenv("AUTOSNAP_PLAN_ITER")); err == nil && v > 0 {
		iters = v
	}
	first := int64(1)
	if v, err := strconv.ParseInt(os.Getenv("AUTOSNAP_PLAN_SEED"), 10, 64); err == nil {
		first, iters = v, 1
	}
	var st propStats
	for seed := first; seed < first+int64(iters); seed++ {
		w := newPropWorld(seed, &st)
		if err := w.run(); err != nil {
			t.Fatalf("seed %d: %v\nreplay: AUTOSNAP_PLAN_SEED=%d go test -run TestPlanProperties ./internal/driver/libvirt/\nhistory:\n  %s\nfiles:\n%s",
				seed, err, seed, strings.Join(w.log, "\n  "), w.fs.dump())
		}
	}
	t.Logf("%d worlds, %d delete rounds: %d removes, %d commits (%d into the active image, %d with images between), %d naming images through the symlinked directory; %d refused (shared image), raw planner left %d shared images alone; %d worlds back to their base image once every snapshot was deleted, %d of them after reverts",
		iters, st.rounds, st.removes, st.commits, st.activeCommits, st.betweens, st.aliased, st.refused, st.sparedShared, st.emptied, st.reverted)
	if st.commits == 0 || st.removes == 0 || st.refused == 0 || st.betweens == 0 || st.aliased == 0 || st.sparedShared == 0 || st.reverted == 0 {
		t.Errorf("the random worlds do not exercise every rule: %+v", st)
	}
}

type propStats struct {
	rounds, removes, commits, activeCommits, betweens, aliased, refused, sparedShared int
	// emptied: worlds whose chain was checked to be the base alone once every snapshot
	// was deleted; reverted: those of them with reverts in their history.
	emptied, reverted int
}

type propSnap struct {
	name             string
	overlay, state   string // as libvirt records them
	deleted, removed bool
}

type propOther struct{ name, top string }

// propWorld is one guest with one disk (vda) on the fake host.
type propWorld struct {
	seed   int64
	rnd    *rand.Rand
	st     *propStats
	fs     *fakeFS
	active string // the domain's disk source, as libvirt knows it
	live   bool
	snaps  []*propSnap
	others []propOther // other guests, by their top images
	n      int
	log    []string
	// shared: something outside the guest built on one of its images, or one of them
	// held internal snapshots; the chain may then stay longer than its base.
	shared bool
	// reverts counts the reverts in the history.
	reverts int
}

func newPropWorld(seed int64, st *propStats) *propWorld {
	w := &propWorld{seed: seed, rnd: rand.New(rand.NewSource(seed)), st: st, fs: newFakeFS()}
	w.fs.links["/lnk"] = "/img"
	w.live = w.rnd.Intn(2) == 0
	return w
}

func (w *propWorld) logf(format string, args ...any) {
	w.log = append(w.log, fmt.Sprintf(format, args...))
}

func (w *propWorld) next() int { w.n++; return w.n }

// alias returns a random one of the paths that name the file at p.
func (w *propWorld) alias(p string) string {
	if w.rnd.Intn(2) == 0 {
		return p
	}
	dir, base := filepath.Split(p)
	switch filepath.Clean(dir) {
	case "/img":
		return "/lnk/" + base
	case "/lnk":
		return "/img/" + base
	}
	return p
}

func (w *propWorld) write(path string, k int) {
	f := w.fs.file(path)
	for range k {
		f.data[w.rnd.Intn(propBlocks)] = w.next()
	}
}

// guestImages lists the guest's image files (real paths) in /img.
func (w *propWorld) guestImages() []string {
	var out []string
	for p := range w.fs.names {
		if strings.HasPrefix(p, "/img/") && !strings.Contains(p, "stray") {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func (w *propWorld) run() error {
	base := "/img/base"
	if w.rnd.Intn(3) == 0 {
		// The guest's disk is a linked clone of a template another guest uses too.
		w.write(w.fs.create("/tpl/T", "").path, 4)
		w.write(w.fs.create("/tpl/user", "/tpl/T").path, 2)
		w.others = append(w.others, propOther{"tplguest", "/tpl/user"})
		w.fs.create(base, "/tpl/T")
		w.logf("template /tpl/T under %s, used by guest tplguest", base)
	} else {
		w.fs.create(base, "")
	}
	w.write(base, 3)
	w.active = w.alias(base)
	w.logf("guest disk %s (live=%v)", w.active, w.live)
	for ops := 3 + w.rnd.Intn(14); ops > 0; ops-- {
		switch r := w.rnd.Intn(100); {
		case r < 25:
			w.write(w.active, 1+w.rnd.Intn(3))
		case r < 50:
			w.snapshot()
		case r < 60:
			w.revert()
		case r < 70:
			w.foreign()
		case r < 77:
			w.rebaseAlias()
		case r < 80:
			w.twin()
		case r < 84:
			imgs := w.guestImages()
			f := w.fs.file(imgs[w.rnd.Intn(len(imgs))])
			f.internal = true
			w.shared = true
			w.logf("%s holds internal snapshots", f.path)
		default:
			if err := w.deleteRound(); err != nil {
				return err
			}
		}
	}
	if err := w.deleteRound(); err != nil {
		return err
	}
	if w.shared {
		return nil // a delete that would touch a shared image is refused
	}
	for round := 0; w.snapsLeft() > 0; round++ {
		if round == 100 {
			return fmt.Errorf("%d snapshots are left after %d rounds of deleting them", w.snapsLeft(), round)
		}
		if err := w.deleteRound(); err != nil {
			return err
		}
	}
	chain := headerChain(w.fs, w.active)
	if !w.fs.same(w.active, base) {
		return fmt.Errorf("every snapshot is deleted and nothing outside uses the guest's images, yet its disk's chain is %v, not its base image %s alone", chain, base)
	}
	if imgs := w.guestImages(); len(imgs) != 1 {
		return fmt.Errorf("every snapshot is deleted and nothing outside uses the guest's images, yet %v are left beside the base image %s", imgs, base)
	}
	w.st.emptied++
	if w.reverts > 0 {
		w.st.reverted++
	}
	return nil
}

// snapsLeft counts the snapshots not deleted yet.
func (w *propWorld) snapsLeft() int {
	n := 0
	for _, s := range w.snaps {
		if !s.removed {
			n++
		}
	}
	return n
}

func (w *propWorld) snapshot() {
	name := fmt.Sprintf("s%d", w.next())
	ov := overlayPath("dom", "vda", w.active, name)
	w.fs.create(ov, w.active)
	w.snaps = append(w.snaps, &propSnap{name: name, overlay: ov, state: w.active})
	w.logf("snapshot %s: overlay %s on %s", name, ov, w.active)
	w.active = ov
}

// revert does what RevertSnapshotNotes does to the files and the metadata.
func (w *propWorld) revert() {
	var cands []*propSnap
	for _, s := range w.snaps {
		if !s.removed {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		return
	}
	s := cands[w.rnd.Intn(len(cands))]
	r := filepath.Join(filepath.Dir(w.active), revertOverlayName("dom", "vda", s.name, w.next()))
	w.fs.create(r, s.state)
	old := w.active
	w.active = r
	w.reverts++
	w.logf("revert to %s: %s on %s", s.name, r, s.state)
	needed := false
	for _, o := range w.snaps {
		if o.removed {
			continue
		}
		for p := o.state; p != "" && !needed; p = w.fs.file(p).backing {
			needed = w.fs.same(p, old)
		}
	}
	// revert.go (dropDiscarded) deletes the image without asking whether anything
	// outside the snapshots builds on it; the model keeps such an image, as it should.
	for _, f := range w.fs.files {
		needed = needed || (f.backing != "" && w.fs.same(f.backing, old))
	}
	created := strings.Contains(old, ".revert")
	for _, o := range w.snaps {
		created = created || (!o.removed && w.fs.same(o.overlay, old))
	}
	if !needed && created && !w.fs.file(old).internal {
		w.fs.remove(old)
		w.logf("  discarded %s", old)
	}
	if w.fs.file(s.overlay) == nil {
		shared := false
		for _, f := range w.fs.files {
			if f.backing != "" && w.fs.same(f.backing, s.state) && !w.fs.same(f.path, r) {
				shared = true
			}
		}
		if !shared {
			s.overlay = r
			w.logf("  %s's overlay is now %s", s.name, r)
		}
	}
}

// twin redefines a copy of a snapshot's metadata under a new name (snapshot dumpxml
// + redefine): two snapshots then hold the same state.
func (w *propWorld) twin() {
	for _, s := range w.snaps {
		if !s.removed && w.rnd.Intn(2) == 0 {
			name := fmt.Sprintf("s%d", w.next())
			w.snaps = append(w.snaps, &propSnap{name: name, overlay: s.overlay, state: s.state})
			w.logf("snapshot %s redefined as a copy of %s", name, s.name)
			return
		}
	}
}

// foreign makes something outside the guest build on one of its images: a stray file
// beside it, another guest's disk, a file in a storage pool.
func (w *propWorld) foreign() {
	imgs := w.guestImages()
	on := w.alias(imgs[w.rnd.Intn(len(imgs))])
	i := w.next()
	var p string
	switch w.rnd.Intn(3) {
	case 0:
		p = fmt.Sprintf("/img/stray%d", i)
	case 1:
		p = fmt.Sprintf("/other/clone%d", i)
		w.others = append(w.others, propOther{fmt.Sprintf("g%d", i), p})
	default:
		p = fmt.Sprintf("/pool/vol%d", i)
	}
	w.fs.create(p, on)
	w.write(p, 2)
	w.shared = true
	w.logf("%s builds on %s", p, on)
}

// rebaseAlias rewrites an image's header to name its backing file through the other
// directory name.
func (w *propWorld) rebaseAlias() {
	imgs := w.guestImages()
	f := w.fs.file(imgs[w.rnd.Intn(len(imgs))])
	if f.backing == "" || !strings.HasPrefix(f.backing, "/img/") && !strings.HasPrefix(f.backing, "/lnk/") {
		return
	}
	old := f.backing
	if strings.HasPrefix(old, "/img/") {
		f.backing = "/lnk/" + strings.TrimPrefix(old, "/img/")
	} else {
		f.backing = "/img/" + strings.TrimPrefix(old, "/lnk/")
	}
	w.logf("header of %s now names %s", f.path, f.backing)
}

// outside lists the files the guest does not own, with why.
func (w *propWorld) outside() map[fileID]string {
	out := map[fileID]string{}
	for p, id := range w.fs.names {
		if !strings.HasPrefix(p, "/img/") || strings.Contains(p, "stray") {
			out[id] = p
		}
	}
	for _, o := range w.others {
		for _, p := range headerChain(w.fs, o.top) {
			if f := w.fs.file(p); f != nil {
				out[f.id] = "used by guest " + o.name
			}
		}
	}
	for _, id := range w.fs.names {
		if f := w.fs.files[id]; strings.HasPrefix(f.path, "/pool/") && f.backing != "" {
			if b := w.fs.file(f.backing); b != nil {
				out[b.id] = "used by " + f.path
			}
		}
	}
	return out
}

// users is the host-wide scan as scanHost makes it, including the guest's own disk.
func (w *propWorld) users() *hostUsers {
	h := newHostUsers()
	for _, o := range w.others {
		for _, p := range headerChain(w.fs, o.top) {
			h.add(p, imageUser{what: "guest " + o.name + " disk vda", uuid: "uuid-" + o.name, disk: "vda"})
		}
	}
	for _, p := range headerChain(w.fs, w.active) {
		h.add(p, imageUser{what: "guest dom disk vda", uuid: "uuid-dom", disk: "vda"})
	}
	files, _ := w.fs.List("/pool")
	for _, f := range files {
		if b, _ := w.fs.Backing(f); b != "" {
			h.add(b, imageUser{what: f + " (storage pool p)", path: f})
		}
	}
	h = h.identified(w.fs)
	return h
}

// tree is the snapshot metadata as loadTree reads it.
func (w *propWorld) tree() *snapTree {
	t := &snapTree{byName: map[string]*snapMeta{}}
	for _, s := range w.snaps {
		if s.removed {
			continue
		}
		x := &libvirtxml.DomainSnapshot{Name: s.name, Domain: &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{{Target: &libvirtxml.DomainDiskTarget{Dev: "vda"},
				Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: s.state}}}},
		}}}
		t.byName[s.name] = &snapMeta{x: x, overlays: map[string]string{"vda": s.overlay}, states: map[string]string{"vda": s.state}}
		t.order = append(t.order, s.name)
	}
	return t
}

type propView struct {
	kept    map[string][]int // snapshot -> view of its state
	active  []int
	outside map[fileID][2]string // own data and view, printed
}

func (w *propWorld) views() (propView, error) {
	v := propView{kept: map[string][]int{}, outside: map[fileID][2]string{}}
	var err error
	for _, s := range w.snaps {
		if !s.removed && !s.deleted {
			if v.kept[s.name], err = w.fs.view(s.state, propBlocks); err != nil {
				return v, fmt.Errorf("snapshot %s: %w", s.name, err)
			}
		}
	}
	if v.active, err = w.fs.view(w.active, propBlocks); err != nil {
		return v, fmt.Errorf("the guest's disk: %w", err)
	}
	for id := range w.outside() {
		f := w.fs.files[id]
		view, err := w.fs.view(f.path, propBlocks)
		if err != nil {
			return v, fmt.Errorf("outside image %s: %w", f.path, err)
		}
		v.outside[id] = [2]string{fmt.Sprint(sortedData(f.data)), fmt.Sprint(view)}
	}
	return v, nil
}

func sortedData(m map[int]int) []int {
	var out []int
	for k := range propBlocks {
		if v, ok := m[k]; ok {
			out = append(out, k, v)
		}
	}
	return out
}

// deleteRound deletes a random set of snapshots, first with the raw planner on a copy
// of the world, then as the driver does.
func (w *propWorld) deleteRound() error {
	var live []*propSnap
	for _, s := range w.snaps {
		if !s.removed {
			live = append(live, s)
		}
	}
	if len(live) == 0 {
		return nil
	}
	w.st.rounds++
	del := map[string]bool{}
	for _, s := range live {
		if w.rnd.Intn(2) == 0 {
			del[s.name] = true
		}
	}
	if len(del) == 0 {
		del[live[w.rnd.Intn(len(live))].name] = true
	}
	names := slices.Sorted(maps.Keys(del))
	w.logf("delete %v", names)
	raw := w.clone()
	err := raw.apply(del, false)
	for _, l := range raw.log {
		w.logf("  raw planner: %s", strings.TrimSpace(l))
	}
	if err != nil {
		return fmt.Errorf("raw planner, deleting %v: %w", names, err)
	}
	if err := w.apply(del, true); err != nil {
		return fmt.Errorf("deleting %v: %w", names, err)
	}
	return nil
}

func (w *propWorld) clone() *propWorld {
	c := *w
	c.fs = w.fs.clone()
	c.snaps = nil
	for _, s := range w.snaps {
		cs := *s
		c.snaps = append(c.snaps, &cs)
	}
	c.others = append([]propOther(nil), w.others...)
	c.log = nil
	return &c
}

// apply plans and simulates the deletion of del and checks the properties.
func (w *propWorld) apply(del map[string]bool, driver bool) error {
	for _, s := range w.snaps {
		s.deleted = del[s.name]
	}
	defer func() {
		for _, s := range w.snaps {
			s.deleted = false
		}
	}()
	before, err := w.views()
	if err != nil {
		return fmt.Errorf("the world is broken before the round: %w", err)
	}
	outside := w.outside()
	chain := headerChain(w.fs, w.active)
	t := w.tree()
	in := graphInput{guest: "dom", domain: "dom", uuid: "uuid-dom", chains: map[string][]string{"vda": chain}, live: w.live,
		tree: t, deleted: del, fs: w.fs, users: func() (*hostUsers, error) { return w.users(), nil }}
	graphs, err := in.build()
	if err != nil {
		return fmt.Errorf("building the graph: %w", err)
	}
	if driver {
		if err := in.refuseShared(graphs); err != nil {
			if !strings.Contains(err.Error(), "would write into or remove") {
				return fmt.Errorf("unexpected refusal: %w", err)
			}
			w.st.refused++
			w.logf("  refused: %v", err)
			return nil
		}
	} else {
		w.st.sparedShared += len(graphs["vda"].sharedTouches())
	}
	steps := graphs["vda"].plan()
	replaced := map[string]string{}
	for _, s := range steps {
		w.logf("  %s", show([]mergeStep{s}))
		if err := w.step(s, outside, t, replaced); err != nil {
			return fmt.Errorf("step %s: %w", show([]mergeStep{s}), err)
		}
	}
	// The metadata as rewriteRemaining leaves it.
	for _, s := range w.snaps {
		if s.removed {
			continue
		}
		if del[s.name] {
			s.removed = true
			continue
		}
		s.state = resolve(replaced, t.byName[s.name].x.Domain.Devices.Disks[0].Source.File.File)
	}
	after, err := w.views()
	if err != nil {
		return fmt.Errorf("after the plan: %w", err)
	}
	for name, v := range before.kept {
		if !del[name] && !slices.Equal(v, after.kept[name]) {
			return fmt.Errorf("snapshot %s read %v, now %v", name, v, after.kept[name])
		}
	}
	if !slices.Equal(before.active, after.active) {
		return fmt.Errorf("the guest's disk read %v, now %v", before.active, after.active)
	}
	for id, v := range before.outside {
		if after.outside[id] != v {
			return fmt.Errorf("outside image %s (%s) changed: %v, now %v", w.fs.files[id].path, outside[id], v, after.outside[id])
		}
	}
	return nil
}

// step simulates one merge step on the files and checks that it touches only what
// the guest owns and nobody needs.
func (w *propWorld) step(s mergeStep, outside map[fileID]string, t *snapTree, replaced map[string]string) error {
	fs := w.fs
	kept := func(p string) string {
		for _, sn := range w.snaps {
			if !sn.removed && !sn.deleted {
				st := resolve(replaced, t.byName[sn.name].x.Domain.Devices.Disks[0].Source.File.File)
				if fs.same(st, p) {
					return sn.name
				}
			}
		}
		return ""
	}
	users := func(p string, except ...string) []string {
		var out []string
		for _, f := range fs.files {
			if f.backing != "" && fs.same(f.backing, p) && !slices.ContainsFunc(except, func(e string) bool { return fs.same(e, f.path) }) {
				out = append(out, f.path)
			}
		}
		return out
	}
	if s.kind == stepRemove {
		f := fs.file(s.top)
		switch {
		case f == nil:
			return fmt.Errorf("%s does not exist", s.top)
		case outside[f.id] != "":
			return fmt.Errorf("removes %s, which is outside the guest: %s", s.top, outside[f.id])
		case f.internal:
			return fmt.Errorf("removes %s, which holds internal snapshots", s.top)
		case fs.same(s.top, w.active):
			return fmt.Errorf("removes the active image %s", s.top)
		case kept(s.top) != "":
			return fmt.Errorf("removes %s, the state of snapshot %s", s.top, kept(s.top))
		case len(users(s.top)) > 0:
			return fmt.Errorf("removes %s, which %v build on", s.top, users(s.top))
		}
		fs.remove(s.top)
		w.st.removes++
		return nil
	}
	w.st.commits++
	if s.activeTop {
		w.st.activeCommits++
	}
	if len(s.between) > 0 {
		w.st.betweens++
	}
	// The chain is top -> between (top down) -> base.
	order := append(append([]string{s.base}, s.between...), s.top)
	for i, p := range order {
		f := fs.file(p)
		if f == nil {
			return fmt.Errorf("%s does not exist", p)
		}
		if i > 0 && !fs.same(f.backing, order[i-1]) {
			return fmt.Errorf("%s builds on %q, not on %s", p, f.backing, order[i-1])
		}
		if why := outside[f.id]; why != "" {
			return fmt.Errorf("writes into or removes %s, which is outside the guest: %s", p, why)
		}
		if i > 0 && f.internal {
			return fmt.Errorf("removes %s, which holds internal snapshots", p)
		}
	}
	if fs.same(s.top, w.active) != s.activeTop {
		return fmt.Errorf("activeTop=%v but the active image is %s", s.activeTop, w.active)
	}
	for _, p := range order {
		if f := fs.file(p); f.path != p {
			w.st.aliased++
			break
		}
	}
	base := fs.file(s.base)
	for _, p := range order[1:] {
		for b, v := range fs.file(p).data {
			base.data[b] = v
		}
	}
	for _, a := range s.above {
		f := fs.file(a)
		if f == nil || !fs.same(f.backing, s.top) {
			return fmt.Errorf("rebasing %s, which does not build on %s", a, s.top)
		}
		f.backing = s.base
	}
	for _, p := range order[1:] {
		if us := users(p, order[1:]...); len(us) > 0 {
			return fmt.Errorf("removes %s, which %v still build on", p, us)
		}
	}
	for _, p := range order[1:] {
		fs.remove(p)
		replaced[p] = s.base
	}
	if s.activeTop {
		w.active = s.base
	}
	return nil
}
