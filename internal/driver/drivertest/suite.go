// Package drivertest is the conformance suite every autosnap driver must pass (in the
// style of restic's backend test suite and rclone's fstests). A driver's test file
// supplies a Fixture that creates real throwaway guests and reads their disks; Run
// checks the behaviour the engine relies on: listing, snapshot metadata, parent/current
// bookkeeping, not-found errors, deadlines and — above all — that removing snapshots
// never loses guest data and keeps chains short.
package drivertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
	// disks and returns it as the driver lists it. The fixture removes it after the test.
	NewGuest(t *testing.T, state driver.State, disks int) driver.Guest
	// Write writes n bytes of pattern at off into disk i of the guest, below any guest
	// OS, so that it lands in the disk's current active layer.
	Write(t *testing.T, g driver.Guest, disk int, off int64, pattern byte, n int)
	// Read returns n guest-visible bytes at off of disk i.
	Read(t *testing.T, g driver.Guest, disk int, off int64, n int) []byte
	// ChainLen is the number of images in disk i's backing chain (1 = no overlays);
	// -1 when the driver has no chains (internal snapshots only).
	ChainLen(t *testing.T, g driver.Guest, disk int) int
}

// Run runs the whole suite.
func Run(t *testing.T, f Fixture) {
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

func snapNames(t *testing.T, d driver.Driver, g driver.Guest) []driver.Snapshot {
	t.Helper()
	s, err := d.Snapshots(ctx(t), g)
	if err != nil {
		t.Fatalf("Snapshots(%s): %v", g.Name, err)
	}
	return s
}

func create(t *testing.T, d driver.Driver, g driver.Guest, name string) driver.Snapshot {
	t.Helper()
	s, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: name, Description: "autosnap\nsuite: " + name})
	if err != nil {
		t.Fatalf("CreateSnapshot(%s, %s): %v", g.Name, name, err)
	}
	return s
}

func del(t *testing.T, d driver.Driver, g driver.Guest, name string) {
	t.Helper()
	if err := d.DeleteSnapshot(ctx(t), g, name); err != nil {
		t.Fatalf("DeleteSnapshot(%s, %s): %v", g.Name, name, err)
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
		// A TagLoader leaves Tags nil until LoadTags; every driver has them after it.
		gl := []driver.Guest{got}
		if err := driver.LoadTags(ctx(t), d, gl); err != nil {
			t.Errorf("%s: LoadTags: %v", g.Name, err)
		}
		if gl[0].Tags == nil {
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
	if s := snapNames(t, d, g); len(s) != 0 {
		t.Fatalf("new guest has snapshots %v", s)
	}
	before := time.Now().Add(-2 * time.Second)
	s1 := create(t, d, g, "autosuite1")
	// A driver may rewrite autosnap's marker into its hypervisor's (Proxmox VE keeps
	// cv4pve-autosnap's), but the snapshot must stay recognisably ours.
	want := "autosnap\nsuite: autosuite1"
	if s1.Name != "autosuite1" || (s1.Description != want && !(naming.IsOurs(want) && naming.IsOurs(s1.Description))) {
		t.Errorf("created snapshot %+v: name or description not kept", s1)
	}
	if s1.Created.Before(before) || s1.Created.After(time.Now().Add(2*time.Second)) {
		t.Errorf("created time %s is not now", s1.Created)
	}
	create(t, d, g, "autosuite2")
	list := snapNames(t, d, g)
	if len(list) > 0 && !naming.IsOurs(list[0].Description) {
		t.Errorf("listed description %q is not recognised as ours", list[0].Description)
	}
	if len(list) != 2 || list[0].Name != "autosuite1" || list[1].Name != "autosuite2" {
		t.Fatalf("Snapshots = %+v, want autosuite1, autosuite2 oldest first", list)
	}
	if list[1].Parent != "autosuite1" || list[0].Parent != "" {
		t.Errorf("parents: %q, %q; want \"\", autosuite1", list[0].Parent, list[1].Parent)
	}
	if list[0].Current || !list[1].Current {
		t.Errorf("current flags: %v, %v; want false, true", list[0].Current, list[1].Current)
	}
	if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autosuite2", Description: "autosnap"}); err == nil {
		t.Errorf("creating a snapshot with an existing name succeeded")
	}
	if n := len(snapNames(t, d, g)); n != 2 {
		t.Errorf("after the refused duplicate there are %d snapshots, want 2", n)
	}
}

func testNotFound(t *testing.T, f Fixture) {
	d := f.Driver(t)
	g := f.NewGuest(t, driver.StatePaused, 1)
	err := d.DeleteSnapshot(ctx(t), g, "autonosuch")
	if !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("DeleteSnapshot of a missing snapshot: %v, want ErrNotFound", err)
	}
	gone := g
	gone.UUID = "00000000-0000-4000-8000-000000000000"
	gone.Name = "autosnap-no-such-guest"
	gone.ID = 987654
	if _, err := d.Snapshots(ctx(t), gone); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Snapshots of a missing guest: %v, want ErrNotFound", err)
	}
}

// testDataSurvives writes distinct data between snapshots and checks, after every
// removal (oldest first, as retention does), that the guest sees the latest data and
// the chains shrank by one.
func testDataSurvives(t *testing.T, f Fixture, st driver.State, disks int) {
	d := f.Driver(t)
	g := f.NewGuest(t, st, disks)
	const n = 64 << 10
	write := func(round int) {
		for i := 0; i < disks; i++ {
			// Each round writes its own region and overwrites a shared one.
			f.Write(t, g, i, int64(round)*n, byte(0x10*round+i), n)
			f.Write(t, g, i, 8<<20, byte(0x10*round+i), n)
		}
	}
	check := func(lastRound int, when string) {
		t.Helper()
		for i := 0; i < disks; i++ {
			for r := 1; r <= lastRound; r++ {
				if got := f.Read(t, g, i, int64(r)*n, n); !bytes.Equal(got, bytes.Repeat([]byte{byte(0x10*r + i)}, n)) {
					t.Fatalf("%s: disk %d: data of round %d lost (first byte %#x)", when, i, r, got[0])
				}
			}
			if got := f.Read(t, g, i, 8<<20, n); !bytes.Equal(got, bytes.Repeat([]byte{byte(0x10*lastRound + i)}, n)) {
				t.Fatalf("%s: disk %d: shared region is %#x, want round %d's", when, i, got[0], lastRound)
			}
		}
	}
	chains := func(want int, when string) {
		t.Helper()
		for i := 0; i < disks; i++ {
			if got := f.ChainLen(t, g, i); got >= 0 && got != want {
				t.Fatalf("%s: disk %d chain has %d images, want %d", when, i, got, want)
			}
		}
	}
	write(1)
	create(t, d, g, "autodata1")
	write(2)
	create(t, d, g, "autodata2")
	write(3)
	create(t, d, g, "autodata3")
	write(4)
	check(4, "before removals")
	chains(4, "after 3 snapshots")
	for k, name := range []string{"autodata1", "autodata2", "autodata3"} {
		del(t, d, g, name)
		check(4, "after removing "+name)
		chains(3-k, "after removing "+name)
	}
	if s := snapNames(t, d, g); len(s) != 0 {
		t.Errorf("snapshots left: %+v", s)
	}
	if got, _ := find(t, d, g); got.State != st {
		t.Errorf("guest state changed to %s, want %s", got.State, st)
	}
}

func testDeleteMiddle(t *testing.T, f Fixture) {
	d := f.Driver(t)
	g := f.NewGuest(t, driver.StateRunning, 2)
	const n = 4096
	for r := 1; r <= 3; r++ {
		f.Write(t, g, 0, 0, byte(r), n)
		f.Write(t, g, 1, int64(r)*n, byte(r), n)
		create(t, d, g, fmt.Sprintf("automid%d", r))
	}
	f.Write(t, g, 0, 0, 4, n)
	del(t, d, g, "automid2")
	list := snapNames(t, d, g)
	if len(list) != 2 || list[0].Name != "automid1" || list[1].Name != "automid3" {
		t.Fatalf("after deleting the middle snapshot: %+v", list)
	}
	if list[1].Parent != "automid1" {
		t.Errorf("automid3's parent is %q, want automid1", list[1].Parent)
	}
	if !list[1].Current {
		t.Errorf("automid3 is no longer current")
	}
	if got := f.Read(t, g, 0, 0, n); got[0] != 4 {
		t.Errorf("disk 0 reads %#x, want 4", got[0])
	}
	for r := 1; r <= 3; r++ {
		if got := f.Read(t, g, 1, int64(r)*n, n); got[0] != byte(r) {
			t.Errorf("disk 1 round %d reads %#x", r, got[0])
		}
	}
	del(t, d, g, "automid1")
	del(t, d, g, "automid3")
	for i := 0; i < 2; i++ {
		if got := f.ChainLen(t, g, i); got >= 0 && got != 1 {
			t.Errorf("disk %d chain has %d images after removing all, want 1", i, got)
		}
	}
}

func testMemory(t *testing.T, f Fixture) {
	d := f.Driver(t)
	g := f.NewGuest(t, driver.StateRunning, 1)
	s, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "automem1", Description: "autosnap", Memory: true})
	if err != nil {
		t.Fatalf("memory snapshot: %v", err)
	}
	if !s.Memory || s.DiskOnly {
		t.Errorf("memory snapshot reports Memory=%v DiskOnly=%v", s.Memory, s.DiskOnly)
	}
	if got, _ := find(t, d, g); got.State != driver.StateRunning {
		t.Errorf("guest is %s after a memory snapshot, want running", got.State)
	}
	f.Write(t, g, 0, 0, 0x5a, 4096)
	del(t, d, g, "automem1")
	if got := f.Read(t, g, 0, 0, 4096); got[0] != 0x5a {
		t.Errorf("data written after the memory snapshot lost")
	}
	if n := len(snapNames(t, d, g)); n != 0 {
		t.Errorf("%d snapshots left", n)
	}
}
