package drivertest

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
)

// capTest tests one optional capability of package driver on a driver that declares it.
type capTest struct {
	iface reflect.Type
	// neutral capabilities have a defined answer when a driver lacks them (no checker:
	// every guest can be snapshotted; no tag loader: Guests lists tags; not
	// stall-bounded; a revert without notes), which a wrapper gives for a member that
	// lacks them, so their test applies to it unchanged.
	neutral bool
	run     func(t *testing.T, s *suite, d driver.Driver)
}

// capabilityTests has one entry for every optional capability of package driver;
// TestConformanceCoversEveryCapability keeps it complete.
var capabilityTests = []capTest{
	{reflect.TypeFor[driver.Protector](), false, testProtector},
	{reflect.TypeFor[driver.AgentPinger](), false, testAgentPinger},
	{reflect.TypeFor[driver.Quiescer](), false, testQuiescer},
	{reflect.TypeFor[driver.StorageReporter](), false, testStorageReporter},
	{reflect.TypeFor[driver.SnapshotChecker](), true, testSnapshotChecker},
	{reflect.TypeFor[driver.Tagger](), false, testTagger},
	{reflect.TypeFor[driver.TagLoader](), true, testTagLoader},
	{reflect.TypeFor[driver.ChainReporter](), false, testChainReporter},
	{reflect.TypeFor[driver.ChainInspector](), false, testChainInspector},
	{reflect.TypeFor[driver.TreeDeleter](), false, testTreeDeleter},
	{reflect.TypeFor[driver.SnapshotXMLer](), false, testSnapshotXMLer},
	{reflect.TypeFor[driver.CurrentSetter](), false, testCurrentSetter},
	{reflect.TypeFor[driver.SnapshotEditor](), false, testSnapshotEditor},
	{reflect.TypeFor[driver.ChainCollapser](), false, testChainCollapser},
	{reflect.TypeFor[driver.StallBounded](), true, testStallBounded},
	{reflect.TypeFor[driver.SnapshotPreparer](), false, testSnapshotPreparer},
	{reflect.TypeFor[driver.RevertNoter](), true, testRevertNoter},
	{reflect.TypeFor[driver.Backupper](), false, testBackupper},
	{reflect.TypeFor[driver.BitmapInspector](), false, testBitmapInspector},
	{reflect.TypeFor[driver.GuestDefiner](), false, testGuestDefiner},
	{reflect.TypeFor[driver.GuestRemover](), false, testGuestRemover},
	{reflect.TypeFor[driver.DiskStater](), false, testDiskStater},
}

func implements(d driver.Driver, iface reflect.Type) bool {
	return reflect.TypeOf(d).Implements(iface)
}

// runCapabilities runs the test of every capability the driver declares. For a wrapper,
// a capability its inner driver lacks must fail with ErrUnsupported instead.
func (s *suite) runCapabilities(t *testing.T) {
	d := s.f.Driver(t)
	var inner driver.Driver
	if w, ok := s.f.(WrapperFixture); ok {
		inner = w.Inner(t)
	}
	s.prepareAgent(t, d)
	var declared, absent []string
	for _, c := range capabilityTests {
		if !implements(d, c.iface) {
			absent = append(absent, c.iface.Name())
			continue
		}
		declared = append(declared, c.iface.Name())
		if inner != nil && !implements(inner, c.iface) && !c.neutral {
			t.Run("Unsupported/"+c.iface.Name(), func(t *testing.T) { s.testUnsupported(t, d, inner, c.iface) })
			continue
		}
		t.Run("Capability/"+c.iface.Name(), func(t *testing.T) { c.run(t, s, d) })
	}
	t.Logf("%T (%s) declares %s; it does not declare %s", d, d.Name(), strings.Join(declared, ", "), strings.Join(absent, ", "))
}

// testUnsupported calls every method of a capability that the wrapped driver lacks and
// expects errors wrapping ErrUnsupported that name the guest.
func (s *suite) testUnsupported(t *testing.T, d, inner driver.Driver, iface reflect.Type) {
	g := s.f.NewGuest(t, driver.StateShutoff, 1)
	for i := 0; i < iface.NumMethod(); i++ {
		m := iface.Method(i)
		var args []reflect.Value
		takesGuest := false
		for k := 0; k < m.Type.NumIn(); k++ {
			pt := m.Type.In(k)
			switch {
			case pt == reflect.TypeFor[context.Context]():
				args = append(args, reflect.ValueOf(ctx(t)))
			case pt == reflect.TypeFor[driver.Guest]():
				args = append(args, reflect.ValueOf(g))
				takesGuest = true
			default:
				args = append(args, reflect.Zero(pt))
			}
		}
		if !takesGuest {
			t.Fatalf("%s.%s addresses no guest: give %s a test for wrappers whose %s driver lacks it", iface.Name(), m.Name, iface.Name(), inner.Name())
		}
		out := reflect.ValueOf(d).MethodByName(m.Name).Call(args)
		var err error
		if e := out[len(out)-1]; e.Type() == reflect.TypeFor[error]() && !e.IsNil() {
			err = e.Interface().(error)
		}
		if !errors.Is(err, driver.ErrUnsupported) || !strings.Contains(err.Error(), g.Name) {
			t.Errorf("%s through the wrapper, whose %s driver lacks %s: %v; want an error wrapping ErrUnsupported naming the guest", m.Name, inner.Name(), iface.Name(), err)
		}
	}
}

// agentGuest returns the suite's one guest with an answering agent (booting one is
// slow), made by prepareAgent.
func (s *suite) agentGuest(t *testing.T) driver.Guest {
	t.Helper()
	if _, ok := s.f.(AgentFixture); !ok {
		t.Fatalf("the driver talks to guest agents, but the fixture cannot make a guest with one: implement AgentFixture")
	}
	if s.agent.Name == "" {
		t.Fatal("the fixture's agent guest was not made")
	}
	return s.agent
}

// prepareAgent makes the agent guest on the suite's own test when a capability that
// needs one will run, so that it lives until the suite ends.
func (s *suite) prepareAgent(t *testing.T, d driver.Driver) {
	af, ok := s.f.(AgentFixture)
	if !ok {
		return
	}
	var inner driver.Driver = d
	if w, ok := s.f.(WrapperFixture); ok {
		inner = w.Inner(t)
	}
	for _, c := range []reflect.Type{reflect.TypeFor[driver.AgentPinger](), reflect.TypeFor[driver.Quiescer]()} {
		if implements(d, c) && implements(inner, c) {
			s.agent = af.NewAgentGuest(t)
			return
		}
	}
}

func testAgentPinger(t *testing.T, s *suite, d driver.Driver) {
	p := d.(driver.AgentPinger)
	g := s.agentGuest(t)
	if err := p.AgentPing(ctx(t), g); err != nil {
		t.Errorf("AgentPing of %s, whose agent runs: %v", g.Name, err)
	}
	off := s.f.NewGuest(t, driver.StateShutoff, 1)
	if err := p.AgentPing(ctx(t), off); !errors.Is(err, driver.ErrAgent) {
		t.Errorf("AgentPing of a shut-off guest: %v, want an error wrapping ErrAgent", err)
	}
}

func testQuiescer(t *testing.T, s *suite, d driver.Driver) {
	q := d.(driver.Quiescer)
	g := s.agentGuest(t)
	t.Cleanup(func() { _, _ = q.Thaw(context.Background(), g) })
	frozen := func(want bool, when string) {
		t.Helper()
		got, err := q.FrozenState(ctx(t), g)
		if err != nil {
			t.Fatalf("FrozenState %s: %v", when, err)
		}
		if got != want {
			t.Fatalf("FrozenState %s: %v, want %v", when, got, want)
		}
	}
	frozen(false, "before freezing")
	n, err := q.Freeze(ctx(t), g)
	if err != nil || n < 1 {
		t.Fatalf("Freeze: %d filesystems, %v; want at least 1", n, err)
	}
	frozen(true, "after Freeze")
	// The engine takes the snapshot itself while the guest is frozen.
	create(t, d, g, "autofrozen1")
	n, err = q.Thaw(ctx(t), g)
	if err != nil || n < 1 {
		t.Errorf("Thaw: %d filesystems, %v; want at least 1", n, err)
	}
	frozen(false, "after Thaw")
	if _, err := q.Thaw(ctx(t), g); err != nil {
		t.Errorf("Thaw of a guest that is not frozen: %v, want nothing to do", err)
	}
	del(t, d, g, "autofrozen1")
	off := s.f.NewGuest(t, driver.StateShutoff, 1)
	if _, err := q.Freeze(ctx(t), off); !errors.Is(err, driver.ErrAgent) {
		t.Errorf("Freeze of a shut-off guest: %v, want an error wrapping ErrAgent", err)
	}
}

func testStorageReporter(t *testing.T, s *suite, d driver.Driver) {
	sr := d.(driver.StorageReporter)
	g := s.f.NewGuest(t, driver.StateRunning, 2)
	us, err := sr.Storage(ctx(t), g)
	if err != nil {
		t.Fatalf("Storage: %v", err)
	}
	if len(us) == 0 {
		t.Fatalf("Storage of a guest with disks reports no storage")
	}
	for _, u := range us {
		if u.Name == "" {
			t.Errorf("storage without a name: %+v", u)
		}
		if u.Capacity == 0 {
			continue // unknown, which the engine accepts
		}
		if u.Used > u.Capacity || u.Percent < 0 || u.Percent > 100 {
			t.Errorf("storage %s: %d of %d bytes used, %.2f%%", u.Name, u.Used, u.Capacity, u.Percent)
		}
		if want := 100 * float64(u.Used) / float64(u.Capacity); u.Percent < want-0.01 || u.Percent > want+0.01 {
			t.Errorf("storage %s: Percent %.3f, but Used/Capacity is %.3f%%", u.Name, u.Percent, want)
		}
	}
	if _, err := sr.Storage(ctx(t), missing(g)); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Storage of a missing guest: %v, want ErrNotFound", err)
	}
}

func testSnapshotChecker(t *testing.T, s *suite, d driver.Driver) {
	sc := d.(driver.SnapshotChecker)
	for _, st := range []driver.State{driver.StateRunning, driver.StateShutoff} {
		g := s.f.NewGuest(t, st, 1)
		if err := sc.CheckSnapshot(ctx(t), g); err != nil {
			t.Errorf("CheckSnapshot of an ordinary %s guest: %v", st, err)
		}
	}
}

// listedTags lists the guest's tags as a caller sees them: Guests, then LoadTags.
func listedTags(t *testing.T, d driver.Driver, g driver.Guest) []string {
	t.Helper()
	got, ok := find(t, d, g)
	if !ok {
		t.Fatalf("guest %s not listed", g.Name)
	}
	gs := []driver.Guest{got}
	if err := driver.LoadTags(ctx(t), d, gs); err != nil {
		t.Fatalf("LoadTags: %v", err)
	}
	tags := slices.Clone(gs[0].Tags)
	slices.Sort(tags)
	return tags
}

func testTagger(t *testing.T, s *suite, d driver.Driver) {
	tg := d.(driver.Tagger)
	g := s.f.NewGuest(t, driver.StatePaused, 1)
	if err := tg.SetTags(ctx(t), g, []string{"suite-b", "suite-a"}); err != nil {
		t.Fatalf("SetTags: %v", err)
	}
	if got := listedTags(t, d, g); !slices.Equal(got, []string{"suite-a", "suite-b"}) {
		t.Errorf("tags after SetTags: %v, want [suite-a suite-b]", got)
	}
	if err := tg.SetTags(ctx(t), g, nil); err != nil {
		t.Fatalf("SetTags(nil): %v", err)
	}
	if got := listedTags(t, d, g); len(got) != 0 {
		t.Errorf("tags after clearing: %v", got)
	}
}

func testTagLoader(t *testing.T, s *suite, d driver.Driver) {
	tl := d.(driver.TagLoader)
	g := s.f.NewGuest(t, driver.StateShutoff, 1)
	want := []string{}
	if tg, ok := d.(driver.Tagger); ok {
		if err := tg.SetTags(ctx(t), g, []string{"suite-lazy"}); err != nil {
			t.Fatalf("SetTags: %v", err)
		}
		want = []string{"suite-lazy"}
	}
	got, ok := find(t, d, g)
	if !ok {
		t.Fatalf("guest %s not listed", g.Name)
	}
	gs := []driver.Guest{got, got}
	if err := tl.LoadTags(ctx(t), gs); err != nil {
		t.Fatalf("LoadTags: %v", err)
	}
	for _, x := range gs {
		if x.Tags == nil || !slices.Equal(x.Tags, want) {
			t.Errorf("LoadTags gave %v (nil: %v), want %v", x.Tags, x.Tags == nil, want)
		}
	}
}

func testChainReporter(t *testing.T, s *suite, d driver.Driver) {
	cr := d.(driver.ChainReporter)
	for _, st := range []driver.State{driver.StateRunning, driver.StateShutoff} {
		t.Run(string(st), func(t *testing.T) {
			g := s.f.NewGuest(t, st, 2)
			read := func(wantLen int, when string) []driver.ChainInfo {
				t.Helper()
				cs, err := cr.Chains(ctx(t), g)
				if err != nil {
					t.Fatalf("Chains %s: %v", when, err)
				}
				if len(cs) != 2 {
					t.Fatalf("Chains %s: %d disks, want 2: %+v", when, len(cs), cs)
				}
				for i, c := range cs {
					if c.Disk == "" || len(c.Images) != wantLen {
						t.Fatalf("Chains %s: disk %q has %d images %v, want %d", when, c.Disk, len(c.Images), c.Images, wantLen)
					}
					if fl := s.f.ChainLen(t, g, i); fl >= 0 && fl != wantLen {
						t.Fatalf("Chains %s: the fixture sees %d images on disk %d, the driver %d", when, fl, i, wantLen)
					}
				}
				return cs
			}
			before := read(1, "of a new guest")
			create(t, d, g, "autochain1")
			after := read(2, "after a snapshot")
			for i := range after {
				if after[i].Images[1] != before[i].Images[0] {
					t.Errorf("disk %s: the snapshot's overlay builds on %s, want the former active image %s", after[i].Disk, after[i].Images[1], before[i].Images[0])
				}
			}
			del(t, d, g, "autochain1")
			read(1, "after deleting the snapshot")
			if _, err := cr.Chains(ctx(t), missing(g)); !errors.Is(err, driver.ErrNotFound) {
				t.Errorf("Chains of a missing guest: %v, want ErrNotFound", err)
			}
		})
	}
}

func testChainInspector(t *testing.T, s *suite, d driver.Driver) {
	ci := d.(driver.ChainInspector)
	g := s.f.NewGuest(t, driver.StateRunning, 1)
	create(t, d, g, "autoinspect1")
	det, err := ci.ChainDetails(ctx(t), g)
	if err != nil {
		t.Fatalf("ChainDetails: %v", err)
	}
	if len(det) != 1 || len(det[0].Images) != 2 {
		t.Fatalf("ChainDetails after one snapshot: %+v, want one disk with 2 images", det)
	}
	holders := 0
	for _, im := range det[0].Images {
		if im.File == "" || im.Snapshots == nil {
			t.Errorf("image %+v: no file name or nil Snapshots", im)
		}
		if slices.Contains(im.Snapshots, "autoinspect1") {
			holders++
		}
		if im.VirtualSize != 0 && im.VirtualSize < Span {
			t.Errorf("image %s: virtual size %d, smaller than the disk", im.File, im.VirtualSize)
		}
	}
	if holders != 1 {
		t.Errorf("%d images say they hold autoinspect1's state, want 1: %+v", holders, det[0].Images)
	}
	if cr, ok := d.(driver.ChainReporter); ok {
		cs, err := cr.Chains(ctx(t), g)
		if err != nil {
			t.Fatal(err)
		}
		for i, im := range det[0].Images {
			if len(cs) != 1 || i >= len(cs[0].Images) || cs[0].Images[i] != im.File {
				t.Errorf("ChainDetails and Chains disagree: %+v vs %+v", det, cs)
				break
			}
		}
	}
	del(t, d, g, "autoinspect1")
}

func testTreeDeleter(t *testing.T, s *suite, d driver.Driver) {
	td := d.(driver.TreeDeleter)
	// three makes a chain of three snapshots with distinct data before each.
	three := func(t *testing.T, st driver.State, disks int) (*data, *driver.Guest) {
		g := s.f.NewGuest(t, st, disks)
		dd := newData(s.f, &g, disks)
		for r := 1; r <= 3; r++ {
			dd.write(t, r)
			snap(t, d, dd, "autotree"+string(rune('0'+r)))
		}
		dd.write(t, 4)
		return dd, &g
	}
	t.Run("Children", func(t *testing.T) {
		dd, g := three(t, driver.StateRunning, 2)
		var progressed bool
		err := td.DeleteSnapshotTree(ctx(t), *g, "autotree1", driver.DeleteOptions{Children: true,
			Progress: func(string, uint64, uint64) { progressed = true }})
		if err != nil {
			t.Fatalf("DeleteSnapshotTree with children: %v", err)
		}
		t.Logf("progress reported: %v", progressed)
		dd.check(t, "after deleting the whole tree")
		wantSnaps(t, d, *g, "")
		chains(t, s.f, *g, 2, 1, "after deleting the whole tree")
	})
	t.Run("ChildrenOnly", func(t *testing.T) {
		dd, g := three(t, driver.StateShutoff, 1)
		if err := td.DeleteSnapshotTree(ctx(t), *g, "autotree1", driver.DeleteOptions{ChildrenOnly: true}); err != nil {
			t.Fatalf("DeleteSnapshotTree children only: %v", err)
		}
		dd.check(t, "after deleting the children")
		wantSnaps(t, d, *g, "autotree1", "autotree1")
		chains(t, s.f, *g, 1, 2, "after deleting the children")
		revert(t, d, dd, "autotree1", driver.RevertOptions{}, driver.StateShutoff)
	})
	t.Run("MetadataOnly", func(t *testing.T) {
		dd, g := three(t, driver.StatePaused, 1)
		before := s.f.ChainLen(t, *g, 0)
		if err := td.DeleteSnapshotTree(ctx(t), *g, "autotree2", driver.DeleteOptions{Children: true, MetadataOnly: true}); err != nil {
			t.Fatalf("DeleteSnapshotTree metadata only: %v", err)
		}
		dd.check(t, "after forgetting snapshots")
		wantSnaps(t, d, *g, "autotree1", "autotree1")
		if after := s.f.ChainLen(t, *g, 0); after != before {
			t.Errorf("forgetting snapshots changed the chain from %d to %d images", before, after)
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		g := s.f.NewGuest(t, driver.StateShutoff, 1)
		if err := td.DeleteSnapshotTree(ctx(t), g, "autonosuch", driver.DeleteOptions{Children: true}); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("DeleteSnapshotTree of a missing snapshot: %v, want ErrNotFound", err)
		}
	})
}

func testSnapshotXMLer(t *testing.T, s *suite, d driver.Driver) {
	xr := d.(driver.SnapshotXMLer)
	g := s.f.NewGuest(t, driver.StateShutoff, 1)
	dd := newData(s.f, &g, 1)
	dd.write(t, 1)
	snap(t, d, dd, "autoxml1")
	dd.write(t, 2)
	x, err := xr.SnapshotXML(ctx(t), g, "autoxml1")
	if err != nil || !strings.Contains(x, "autoxml1") {
		t.Fatalf("SnapshotXML: %v, %q; want a description naming the snapshot", err, x)
	}
	if _, err := xr.SnapshotXML(ctx(t), g, "autonosuch"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("SnapshotXML of a missing snapshot: %v, want ErrNotFound", err)
	}
	if err := xr.RedefineSnapshot(ctx(t), g, "not a snapshot description", false); err == nil {
		t.Errorf("RedefineSnapshot of garbage succeeded")
	}
	if td, ok := d.(driver.TreeDeleter); ok {
		// Move the snapshot out and back in, as between hosts.
		if err := td.DeleteSnapshotTree(ctx(t), g, "autoxml1", driver.DeleteOptions{MetadataOnly: true}); err != nil {
			t.Fatalf("forgetting autoxml1: %v", err)
		}
		wantSnaps(t, d, g, "")
	}
	if err := xr.RedefineSnapshot(ctx(t), g, x, true); err != nil {
		t.Fatalf("RedefineSnapshot: %v", err)
	}
	wantSnaps(t, d, g, "autoxml1", "autoxml1")
	dd.check(t, "after redefining")
	revert(t, d, dd, "autoxml1", driver.RevertOptions{}, driver.StateShutoff)
	dd.write(t, 3)
	del(t, d, g, "autoxml1")
	dd.check(t, "after deleting the redefined snapshot")
}

func testCurrentSetter(t *testing.T, s *suite, d driver.Driver) {
	cs := d.(driver.CurrentSetter)
	g := s.f.NewGuest(t, driver.StateRunning, 1)
	dd := newData(s.f, &g, 1)
	dd.write(t, 1)
	snap(t, d, dd, "autocur1")
	dd.write(t, 2)
	snap(t, d, dd, "autocur2")
	dd.write(t, 3)
	if err := cs.SetCurrent(ctx(t), g, "autocur1"); err != nil {
		t.Fatalf("SetCurrent: %v", err)
	}
	wantSnaps(t, d, g, "autocur1", "autocur1", "autocur2")
	refresh(t, d, &g, driver.StateRunning, "after SetCurrent")
	dd.check(t, "after SetCurrent (nothing may be reverted)")
	if err := cs.SetCurrent(ctx(t), g, "autonosuch"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("SetCurrent to a missing snapshot: %v, want ErrNotFound", err)
	}
	if err := cs.SetCurrent(ctx(t), g, "autocur2"); err != nil {
		t.Fatalf("SetCurrent back: %v", err)
	}
	del(t, d, g, "autocur1")
	del(t, d, g, "autocur2")
	dd.check(t, "after deleting both")
}

func testSnapshotEditor(t *testing.T, s *suite, d driver.Driver) {
	ed := d.(driver.SnapshotEditor)
	g := s.f.NewGuest(t, driver.StateShutoff, 1)
	dd := newData(s.f, &g, 1)
	dd.write(t, 1)
	snap(t, d, dd, "autoedit1")
	dd.write(t, 2)
	snap(t, d, dd, "autoedit2")
	dd.write(t, 3)
	desc := "autosnap\nedited by the suite"
	if err := ed.EditSnapshot(ctx(t), g, "autoedit1", driver.EditOptions{Description: &desc}); err != nil {
		t.Fatalf("EditSnapshot description: %v", err)
	}
	if l := wantSnaps(t, d, g, "autoedit2", "autoedit1", "autoedit2"); l[0].Description != desc {
		t.Errorf("description after editing: %q, want %q", l[0].Description, desc)
	}
	if err := ed.EditSnapshot(ctx(t), g, "autoedit1", driver.EditOptions{Rename: "autorenamed1"}); err != nil {
		t.Fatalf("EditSnapshot rename: %v", err)
	}
	l := wantSnaps(t, d, g, "autoedit2", "autorenamed1", "autoedit2")
	if l[1].Parent != "autorenamed1" {
		t.Errorf("the renamed snapshot's child has parent %q, want autorenamed1", l[1].Parent)
	}
	if l[0].Description != desc {
		t.Errorf("renaming lost the description: %q", l[0].Description)
	}
	if err := ed.EditSnapshot(ctx(t), g, "autonosuch", driver.EditOptions{Description: &desc}); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("EditSnapshot of a missing snapshot: %v, want ErrNotFound", err)
	}
	dd.check(t, "after editing")
	dd.saved["autorenamed1"] = dd.saved["autoedit1"]
	revert(t, d, dd, "autorenamed1", driver.RevertOptions{}, driver.StateShutoff)
	del(t, d, g, "autorenamed1")
	dd.check(t, "after deleting the renamed snapshot")
	revert(t, d, dd, "autoedit2", driver.RevertOptions{}, driver.StateShutoff)
}

func testChainCollapser(t *testing.T, s *suite, d driver.Driver) {
	cc := d.(driver.ChainCollapser)
	td, ok := d.(driver.TreeDeleter)
	if !ok {
		t.Fatalf("the %s driver collapses chains but cannot forget snapshots (TreeDeleter), so a collapse cannot be set up", d.Name())
	}
	for _, st := range []driver.State{driver.StateRunning, driver.StateShutoff} {
		t.Run(string(st), func(t *testing.T) {
			g := s.f.NewGuest(t, st, 2)
			dd := newData(s.f, &g, 2)
			for r := 1; r <= 2; r++ {
				dd.write(t, r)
				snap(t, d, dd, "autocollapse"+string(rune('0'+r)))
			}
			dd.write(t, 3)
			var bases []string
			if cr, ok := d.(driver.ChainReporter); ok {
				cs, err := cr.Chains(ctx(t), g)
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range cs {
					bases = append(bases, c.Images[len(c.Images)-1])
				}
			}
			opts := driver.CollapseOptions{ForceBase: bases}
			if err := cc.CollapseChain(ctx(t), g, opts); err == nil {
				t.Fatalf("CollapseChain while snapshots need the chain's images succeeded")
			}
			chains(t, s.f, g, 2, 3, "after the refused collapse")
			dd.check(t, "after the refused collapse")
			if err := td.DeleteSnapshotTree(ctx(t), g, "autocollapse1", driver.DeleteOptions{Children: true, MetadataOnly: true}); err != nil {
				t.Fatalf("forgetting the snapshots: %v", err)
			}
			var progressed bool
			opts.Progress = func(string, uint64, uint64) { progressed = true }
			if err := cc.CollapseChain(ctx(t), g, opts); err != nil {
				t.Fatalf("CollapseChain: %v", err)
			}
			t.Logf("progress reported: %v", progressed)
			chains(t, s.f, g, 2, 1, "after collapsing")
			dd.check(t, "after collapsing")
			refresh(t, d, &g, st, "after collapsing")
		})
	}
}

func testStallBounded(t *testing.T, s *suite, d driver.Driver) {
	sb := d.(driver.StallBounded).StallBounded()
	t.Logf("StallBounded: %v", sb)
	if !sb {
		return
	}
	// Callers give a stall-bounded driver deletes without a deadline.
	g := s.f.NewGuest(t, driver.StateRunning, 1)
	dd := newData(s.f, &g, 1)
	dd.write(t, 1)
	snap(t, d, dd, "autostall1")
	dd.write(t, 2)
	if err := d.DeleteSnapshot(context.Background(), g, "autostall1"); err != nil {
		t.Fatalf("DeleteSnapshot without a deadline: %v", err)
	}
	dd.check(t, "after the delete")
}

func testSnapshotPreparer(t *testing.T, s *suite, d driver.Driver) {
	sp := d.(driver.SnapshotPreparer)
	g := s.f.NewGuest(t, driver.StateRunning, 1)
	dd := newData(s.f, &g, 1)
	dd.write(t, 1)
	opts := driver.CreateOptions{Name: "autoprep1", Description: "autosnap\nsuite: autoprep1"}
	p, err := sp.PrepareSnapshot(ctx(t), g, opts)
	if err != nil {
		t.Fatalf("PrepareSnapshot: %v", err)
	}
	p.Close()
	wantSnaps(t, d, g, "")
	chains(t, s.f, g, 1, 1, "after closing an unused prepared snapshot")
	dd.check(t, "after closing an unused prepared snapshot")
	p, err = sp.PrepareSnapshot(ctx(t), g, opts)
	if err != nil {
		t.Fatalf("PrepareSnapshot: %v", err)
	}
	sn, err := p.Create(ctx(t))
	if err != nil {
		t.Fatalf("PreparedSnapshot.Create: %v", err)
	}
	if sn.Name != "autoprep1" {
		t.Errorf("prepared snapshot created as %q", sn.Name)
	}
	dd.save("autoprep1")
	wantSnaps(t, d, g, "autoprep1", "autoprep1")
	if p, err := sp.PrepareSnapshot(ctx(t), g, opts); err == nil {
		p.Close()
		t.Errorf("preparing a snapshot whose name exists succeeded")
	}
	dd.write(t, 2)
	revert(t, d, dd, "autoprep1", driver.RevertOptions{Force: true}, driver.StateShutoff)
	del(t, d, g, "autoprep1")
	dd.check(t, "after deleting the prepared snapshot")
}

func testRevertNoter(t *testing.T, s *suite, d driver.Driver) {
	rn := d.(driver.RevertNoter)
	g := s.f.NewGuest(t, driver.StateRunning, 1)
	dd := newData(s.f, &g, 1)
	dd.write(t, 1)
	snap(t, d, dd, "autonote1")
	dd.write(t, 2)
	var notes []string
	if err := rn.RevertSnapshotNotes(ctx(t), g, "autonote1", driver.RevertOptions{Force: true}, func(n string) { notes = append(notes, n) }); err != nil {
		t.Fatalf("RevertSnapshotNotes: %v", err)
	}
	t.Logf("notes: %q", notes)
	noNewlines(t, "revert note", notes)
	refresh(t, d, &g, driver.StateShutoff, "after the revert")
	dd.reverted(t, "autonote1")
	dd.check(t, "after the revert")
	if err := rn.RevertSnapshotNotes(ctx(t), g, "autonosuch", driver.RevertOptions{}, nil); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("RevertSnapshotNotes to a missing snapshot: %v, want ErrNotFound", err)
	}
	del(t, d, g, "autonote1")
	dd.check(t, "after deleting the snapshot")
}
