// Package drivertest is the conformance suite every autosnap driver, and every wrapper
// of drivers (the multi-host driver.Fleet), must pass (in the style of restic's backend
// test suite and rclone's fstests). A test file supplies a Fixture that creates real
// throwaway guests and reads and writes their disks below any guest OS; Run checks the
// behaviour the engine and the CLI rely on: listing, snapshot metadata, parent/current
// bookkeeping, not-found errors, deadlines, reverts, every optional capability the
// driver declares (see package driver) and — above all — that no snapshot operation
// loses or mixes up guest data and that chains stay short.
//
// Data is checked over whole regions, never by a first byte: before each snapshot the
// suite writes distinct patterns into several regions of every disk (a region per
// round, a partial overwrite of the previous round's region, a shared region crossing
// cluster boundaries, none cluster-aligned), keeps a model of what every disk must hold,
// and after each create, delete and revert compares every byte of the first Span bytes
// of every disk with the model. Reverts are also used to prove that the snapshots a
// delete keeps still hold exactly their data.
//
// The Proxmox VE driver runs the suite against internal/pveemu, an emulator of the PVE
// API, because a real Proxmox VE cannot run here. The emulator keeps every guest disk
// as a byte array that snapshots copy and rollbacks restore, so the data subtests run
// against it too; they prove the driver asks PVE for the right operations on the right
// snapshots, while how PVE's storages keep the data is the emulator's model of it.
package drivertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

// Fixture gives the suite real guests of one driver.
type Fixture interface {
	// Driver returns the connected driver under test.
	Driver(t *testing.T) driver.Driver
	// NewGuest creates a throwaway guest in state (running, paused or shutoff) with n
	// disks of at least 16 MiB and returns it as the driver lists it. The fixture
	// removes it after the test.
	NewGuest(t *testing.T, state driver.State, disks int) driver.Guest
	// Write writes n bytes of pattern at off into disk i of the guest, below any guest
	// OS, so that it lands in the disk's current active layer, whatever state the guest
	// is in now (the suite reverts guests, which changes their state).
	Write(t *testing.T, g driver.Guest, disk int, off int64, pattern byte, n int)
	// Read returns n guest-visible bytes at off of disk i.
	Read(t *testing.T, g driver.Guest, disk int, off int64, n int) []byte
	// ChainLen is the number of images in disk i's backing chain (1 = no overlays);
	// -1 when the driver has no chains (internal snapshots only).
	ChainLen(t *testing.T, g driver.Guest, disk int) int
}

// AgentFixture is a Fixture that can make a running guest whose guest agent answers
// and has at least one filesystem to freeze. The suite needs it for drivers that
// declare driver.AgentPinger or driver.Quiescer.
type AgentFixture interface {
	NewAgentGuest(t *testing.T) driver.Guest
}

// WrapperFixture is a Fixture whose driver wraps another one (driver.Fleet). Inner
// returns a driver the wrapper forwards to. A wrapper declares every capability; the
// suite tests those Inner has as usual, and expects the others to fail with an error
// wrapping driver.ErrUnsupported, or to give their neutral answer (see neutral).
type WrapperFixture interface {
	Inner(t *testing.T) driver.Driver
}

// suite is one run of the suite.
type suite struct {
	f     Fixture
	agent driver.Guest // see prepareAgent
}

// Run runs the whole suite.
func Run(t *testing.T, f Fixture) {
	s := &suite{f: f}
	t.Run("Listing", func(t *testing.T) { testListing(t, f) })
	t.Run("Deadline", func(t *testing.T) { testDeadline(t, f) })
	t.Run("Metadata", func(t *testing.T) { testMetadata(t, f) })
	t.Run("NotFound", func(t *testing.T) { testNotFound(t, f) })
	for _, st := range []driver.State{driver.StateRunning, driver.StatePaused, driver.StateShutoff} {
		for _, disks := range []int{1, 3} {
			t.Run(fmt.Sprintf("DataSurvivesRetention/%s/%ddisks", st, disks), func(t *testing.T) {
				testDataSurvives(t, f, st, disks)
			})
		}
	}
	t.Run("DeleteMiddle", func(t *testing.T) { testDeleteMiddle(t, f) })
	t.Run("Memory", func(t *testing.T) { testMemory(t, f) })
	for _, st := range []driver.State{driver.StateRunning, driver.StateShutoff} {
		t.Run("Revert/"+string(st), func(t *testing.T) { testRevert(t, f, st) })
	}
	t.Run("RevertMemory", func(t *testing.T) { testRevertMemory(t, f) })
	t.Run("RevertNotFound", func(t *testing.T) { testRevertNotFound(t, f) })
	s.runCapabilities(t)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func find(t *testing.T, d driver.Driver, g driver.Guest) (driver.Guest, bool) {
	t.Helper()
	gs, err := d.Guests(ctx(t))
	if err != nil {
		t.Fatalf("Guests: %v", err)
	}
	for _, x := range gs {
		if x.Key() == g.Key() {
			return x, true
		}
	}
	return driver.Guest{}, false
}

// refresh updates *g to the guest as the driver lists it now (a revert changes its
// state) and checks its state.
func refresh(t *testing.T, d driver.Driver, g *driver.Guest, want driver.State, when string) {
	t.Helper()
	got, ok := find(t, d, *g)
	if !ok {
		t.Fatalf("%s: guest %s is no longer listed", when, g.Name)
	}
	*g = got
	if got.State != want {
		t.Fatalf("%s: guest %s is %s, want %s", when, g.Name, got.State, want)
	}
}

func snapList(t *testing.T, d driver.Driver, g driver.Guest) []driver.Snapshot {
	t.Helper()
	s, err := d.Snapshots(ctx(t), g)
	if err != nil {
		t.Fatalf("Snapshots(%s): %v", g.Name, err)
	}
	for _, x := range s {
		if x.Incomplete != "" {
			t.Errorf("snapshot %s of %s reports incomplete data (%s) although no operation was interrupted", x.Name, g.Name, x.Incomplete)
		}
	}
	return s
}

// wantSnaps checks the guest's snapshots are names, oldest first, with current the
// current one ("" for none).
func wantSnaps(t *testing.T, d driver.Driver, g driver.Guest, current string, names ...string) []driver.Snapshot {
	t.Helper()
	list := snapList(t, d, g)
	var got []string
	cur := ""
	for _, s := range list {
		got = append(got, s.Name)
		if s.Current {
			if cur != "" {
				t.Errorf("both %s and %s are current", cur, s.Name)
			}
			cur = s.Name
		}
	}
	if !slices.Equal(got, names) {
		t.Fatalf("snapshots of %s: %v, want %v", g.Name, got, names)
	}
	if cur != current {
		t.Errorf("current snapshot of %s: %q, want %q", g.Name, cur, current)
	}
	return list
}

// suiteDescription is the description of the suite's snapshots: one autosnap writes
// (naming.IsOurs), as snap would.
var suiteDescription = naming.Description(map[string]string{naming.FieldLabel: "suite"})

func create(t *testing.T, d driver.Driver, g driver.Guest, name string) driver.Snapshot {
	t.Helper()
	s, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: name, Description: suiteDescription})
	if err != nil {
		t.Fatalf("CreateSnapshot(%s, %s): %v", g.Name, name, err)
	}
	return s
}

// snap creates a snapshot and records the model's content as its content.
func snap(t *testing.T, d driver.Driver, dd *data, name string) {
	t.Helper()
	create(t, d, *dd.g, name)
	dd.save(name)
}

func del(t *testing.T, d driver.Driver, g driver.Guest, name string) {
	t.Helper()
	if err := d.DeleteSnapshot(ctx(t), g, name); err != nil {
		t.Fatalf("DeleteSnapshot(%s, %s): %v", g.Name, name, err)
	}
}

func revert(t *testing.T, d driver.Driver, dd *data, name string, opts driver.RevertOptions, state driver.State) {
	t.Helper()
	if err := d.RevertSnapshot(ctx(t), *dd.g, name, opts); err != nil {
		t.Fatalf("RevertSnapshot(%s, %s, %+v): %v", dd.g.Name, name, opts, err)
	}
	refresh(t, d, dd.g, state, "after reverting to "+name)
	dd.reverted(t, name)
	dd.check(t, "after reverting to "+name)
}

func chains(t *testing.T, f Fixture, g driver.Guest, disks, want int, when string) {
	t.Helper()
	for i := 0; i < disks; i++ {
		if got := f.ChainLen(t, g, i); got >= 0 && got != want {
			t.Fatalf("%s: disk %d chain has %d images, want %d", when, i, got, want)
		}
	}
}

func testListing(t *testing.T, f Fixture) {
	d := f.Driver(t)
	for _, st := range []driver.State{driver.StateRunning, driver.StatePaused, driver.StateShutoff} {
		g := f.NewGuest(t, st, 1)
		got, ok := find(t, d, g)
		if !ok {
			t.Fatalf("Guests does not list %s", g.Name)
		}
		if got.State != st {
			t.Errorf("%s: state %q, want %q", g.Name, got.State, st)
		}
		if got.Name != g.Name || got.Node == "" || got.Kind == "" {
			t.Errorf("%s: incomplete guest %+v", g.Name, got)
		}
		if st == driver.StateShutoff && got.ID != 0 && d.Name() == "libvirt" {
			t.Errorf("%s: shut-off libvirt domain has id %d", g.Name, got.ID)
		}
		gs := []driver.Guest{got}
		if err := driver.LoadTags(ctx(t), d, gs); err != nil {
			t.Fatalf("LoadTags: %v", err)
		}
		if gs[0].Tags == nil {
			t.Errorf("%s: Tags is nil after LoadTags, want empty slice", g.Name)
		}
	}
}

func testDeadline(t *testing.T, f Fixture) {
	d := f.Driver(t)
	c, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	_, err := d.Guests(c)
	if err == nil {
		t.Fatal("Guests with a cancelled context succeeded")
	}
	if time.Since(start) > time.Second {
		t.Errorf("Guests took %s to notice a cancelled context", time.Since(start))
	}
}

func testMetadata(t *testing.T, f Fixture) {
	d := f.Driver(t)
	g := f.NewGuest(t, driver.StatePaused, 1)
	if s := snapList(t, d, g); len(s) != 0 {
		t.Fatalf("new guest has snapshots %v", s)
	}
	before := time.Now().Add(-2 * time.Second)
	s1 := create(t, d, g, "autosuite1")
	// A driver may rewrite autosnap's marker into its hypervisor's (Proxmox VE keeps
	// cv4pve-autosnap's), but the snapshot must stay recognisably ours.
	want := suiteDescription
	if s1.Name != "autosuite1" || (s1.Description != want && !(naming.IsOurs(want) && naming.IsOurs(s1.Description))) {
		t.Errorf("created snapshot %+v: name or description not kept", s1)
	}
	if s1.Created.Before(before) || s1.Created.After(time.Now().Add(2*time.Second)) {
		t.Errorf("created time %s is not now", s1.Created)
	}
	create(t, d, g, "autosuite2")
	list := wantSnaps(t, d, g, "autosuite2", "autosuite1", "autosuite2")
	if !naming.IsOurs(list[0].Description) {
		t.Errorf("listed description %q is not recognised as ours", list[0].Description)
	}
	if list[1].Parent != "autosuite1" || list[0].Parent != "" {
		t.Errorf("parents: %q, %q; want \"\", autosuite1", list[0].Parent, list[1].Parent)
	}
	if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autosuite2", Description: "autosnap"}); err == nil {
		t.Errorf("creating a snapshot with an existing name succeeded")
	}
	wantSnaps(t, d, g, "autosuite2", "autosuite1", "autosuite2")
	// Taken within the same second as its parent (hypervisors may record whole
	// seconds), a snapshot whose name sorts first is still listed after it.
	create(t, d, g, "autosuite0")
	list = wantSnaps(t, d, g, "autosuite0", "autosuite1", "autosuite2", "autosuite0")
	if list[2].Parent != "autosuite2" {
		t.Errorf("autosuite0's parent is %q, want autosuite2", list[2].Parent)
	}
}

func testNotFound(t *testing.T, f Fixture) {
	d := f.Driver(t)
	g := f.NewGuest(t, driver.StatePaused, 1)
	err := d.DeleteSnapshot(ctx(t), g, "autonosuch")
	if !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("DeleteSnapshot of a missing snapshot: %v, want ErrNotFound", err)
	}
	if _, err := d.Snapshots(ctx(t), missing(g)); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Snapshots of a missing guest: %v, want ErrNotFound", err)
	}
}

// missing returns a guest on g's host that does not exist.
func missing(g driver.Guest) driver.Guest {
	gone := g
	gone.UUID = "00000000-0000-4000-8000-000000000000"
	gone.Name = "autosnap-no-such-guest"
	gone.ID = 987654
	return gone
}

// testDataSurvives writes distinct data between snapshots and checks, after every
// removal (oldest first, as retention does), that the guest sees exactly the latest
// data on every disk and the chains shrank by one.
func testDataSurvives(t *testing.T, f Fixture, st driver.State, disks int) {
	d := f.Driver(t)
	g := f.NewGuest(t, st, disks)
	dd := newData(f, &g, disks)
	for r := 1; r <= 3; r++ {
		dd.write(t, r)
		snap(t, d, dd, fmt.Sprintf("autodata%d", r))
		dd.check(t, fmt.Sprintf("after snapshot %d", r))
	}
	dd.write(t, 4)
	dd.check(t, "before removals")
	chains(t, f, g, disks, 4, "after 3 snapshots")
	for k, name := range []string{"autodata1", "autodata2", "autodata3"} {
		del(t, d, g, name)
		dd.check(t, "after removing "+name)
		chains(t, f, g, disks, 3-k, "after removing "+name)
	}
	wantSnaps(t, d, g, "")
	refresh(t, d, &g, st, "after all removals")
}

// testDeleteMiddle removes the middle of three snapshots and proves, by reverting to
// them, that the two kept ones still hold exactly their data.
func testDeleteMiddle(t *testing.T, f Fixture) {
	d := f.Driver(t)
	g := f.NewGuest(t, driver.StateRunning, 2)
	dd := newData(f, &g, 2)
	for r := 1; r <= 3; r++ {
		dd.write(t, r)
		snap(t, d, dd, fmt.Sprintf("automid%d", r))
	}
	dd.write(t, 4)
	del(t, d, g, "automid2")
	dd.check(t, "after deleting the middle snapshot")
	list := wantSnaps(t, d, g, "automid3", "automid1", "automid3")
	if list[1].Parent != "automid1" {
		t.Errorf("automid3's parent is %q, want automid1", list[1].Parent)
	}
	revert(t, d, dd, "automid1", driver.RevertOptions{Force: true}, driver.StateShutoff)
	revert(t, d, dd, "automid3", driver.RevertOptions{Running: true}, driver.StateRunning)
	del(t, d, g, "automid1")
	dd.check(t, "after deleting automid1")
	del(t, d, g, "automid3")
	dd.check(t, "after deleting automid3")
	wantSnaps(t, d, g, "")
	chains(t, f, g, 2, 1, "after removing all snapshots")
}

func testMemory(t *testing.T, f Fixture) {
	d := f.Driver(t)
	g := f.NewGuest(t, driver.StateRunning, 1)
	dd := newData(f, &g, 1)
	dd.write(t, 1)
	s, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "automem1", Description: "autosnap", Memory: true})
	if err != nil {
		t.Fatalf("memory snapshot: %v", err)
	}
	if !s.Memory || s.DiskOnly {
		t.Errorf("memory snapshot reports Memory=%v DiskOnly=%v", s.Memory, s.DiskOnly)
	}
	refresh(t, d, &g, driver.StateRunning, "after a memory snapshot")
	dd.write(t, 2)
	del(t, d, g, "automem1")
	dd.check(t, "after deleting the memory snapshot")
	wantSnaps(t, d, g, "")
}

// testRevert reverts back and forth between two snapshots, writing in between, and
// deletes both afterwards; after each step every disk holds exactly what it must.
func testRevert(t *testing.T, f Fixture, st driver.State) {
	d := f.Driver(t)
	g := f.NewGuest(t, st, 2)
	dd := newData(f, &g, 2)
	dd.write(t, 1)
	snap(t, d, dd, "autorev1")
	dd.write(t, 2)
	snap(t, d, dd, "autorev2")
	dd.write(t, 3)
	if st.Active() {
		// A revert discards the running state: not without Force.
		if err := d.RevertSnapshot(ctx(t), g, "autorev1", driver.RevertOptions{}); err == nil {
			t.Fatalf("reverting a %s guest without Force succeeded", st)
		}
		refresh(t, d, &g, st, "after the refused revert")
		dd.check(t, "after the refused revert")
		wantSnaps(t, d, g, "autorev2", "autorev1", "autorev2")
	}
	revert(t, d, dd, "autorev1", driver.RevertOptions{Force: true}, driver.StateShutoff)
	wantSnaps(t, d, g, "autorev1", "autorev1", "autorev2")
	dd.write(t, 4)
	dd.check(t, "after writing on the reverted state")
	revert(t, d, dd, "autorev2", driver.RevertOptions{Running: true}, driver.StateRunning)
	wantSnaps(t, d, g, "autorev2", "autorev1", "autorev2")
	revert(t, d, dd, "autorev1", driver.RevertOptions{Force: true}, driver.StateShutoff)
	dd.write(t, 5)
	snap(t, d, dd, "autorev3")
	list := wantSnaps(t, d, g, "autorev3", "autorev1", "autorev2", "autorev3")
	if list[2].Parent != "autorev1" {
		t.Errorf("a snapshot taken after reverting to autorev1 has parent %q, want autorev1", list[2].Parent)
	}
	dd.write(t, 6)
	// Removing autorev1 keeps both branches' snapshots whole.
	del(t, d, g, "autorev1")
	dd.check(t, "after deleting autorev1")
	revert(t, d, dd, "autorev2", driver.RevertOptions{}, driver.StateShutoff)
	revert(t, d, dd, "autorev3", driver.RevertOptions{}, driver.StateShutoff)
	del(t, d, g, "autorev2")
	dd.check(t, "after deleting autorev2")
	del(t, d, g, "autorev3")
	dd.check(t, "after deleting autorev3")
	wantSnaps(t, d, g, "")
	// Reverts branch the image tree; once no snapshot is left, no image but the base
	// may remain.
	t.Run("NoOverlayLeft", func(t *testing.T) { chains(t, f, g, 2, 1, "after removing all snapshots") })
}

func testRevertMemory(t *testing.T, f Fixture) {
	d := f.Driver(t)
	g := f.NewGuest(t, driver.StateRunning, 1)
	dd := newData(f, &g, 1)
	dd.write(t, 1)
	if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autormem1", Description: "autosnap", Memory: true}); err != nil {
		t.Fatalf("memory snapshot: %v", err)
	}
	dd.save("autormem1")
	dd.write(t, 2)
	revert(t, d, dd, "autormem1", driver.RevertOptions{Force: true}, driver.StateRunning)
	dd.write(t, 3)
	del(t, d, g, "autormem1")
	dd.check(t, "after deleting the memory snapshot")
	wantSnaps(t, d, g, "")
}

func testRevertNotFound(t *testing.T, f Fixture) {
	d := f.Driver(t)
	g := f.NewGuest(t, driver.StateShutoff, 1)
	if err := d.RevertSnapshot(ctx(t), g, "autonosuch", driver.RevertOptions{}); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("RevertSnapshot to a missing snapshot: %v, want ErrNotFound", err)
	}
	if err := d.RevertSnapshot(ctx(t), missing(g), "autonosuch", driver.RevertOptions{}); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("RevertSnapshot of a missing guest: %v, want ErrNotFound", err)
	}
}

// noNewlines fails when a one-line message spans lines.
func noNewlines(t *testing.T, what string, lines []string) {
	t.Helper()
	for _, l := range lines {
		if l == "" || strings.ContainsAny(l, "\r\n") {
			t.Errorf("%s: %q is not one non-empty line", what, l)
		}
	}
}
