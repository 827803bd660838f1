package libvirt

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/rpctrace"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestListingMatchesFullDecode: on real snapshots of every kind autosnap makes
// (disk-only, with memory, offline external, internal), Snapshots gives what the full
// libvirtxml decode gave, marks the current snapshot, and costs exactly one call for
// the list, one for the current snapshot and one per snapshot.
func TestListingMatchesFullDecode(t *testing.T) {
	p, err := rpctrace.Start(filepath.Join(t.TempDir(), "libvirt.sock"), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	d, err := Open(context.Background(), driver.Config{Host: p.URI(), Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	bed := testbed.Libvirt(t)
	ctx := context.Background()

	run := bed.NewDomain(t, testbed.DomainSpec{Disks: 2, DiskMiB: 8})
	off := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	intl := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	gRun := driver.Guest{Node: d.Node(), Name: run.Name, UUID: run.UUID, State: driver.StateRunning}
	gOff := driver.Guest{Node: d.Node(), Name: off.Name, UUID: off.UUID, State: driver.StateShutoff}
	gInt := driver.Guest{Node: d.Node(), Name: intl.Name, UUID: intl.UUID, State: driver.StateShutoff}
	create := func(g driver.Guest, o driver.CreateOptions) {
		t.Helper()
		if _, err := d.CreateSnapshot(ctx, g, o); err != nil {
			t.Fatalf("%s: create %s: %v", g.Name, o.Name, err)
		}
	}
	create(gRun, driver.CreateOptions{Name: "autot260101010000", Description: "autosnap\nconsistency: crash"})
	create(gRun, driver.CreateOptions{Name: "autot260101020000", Description: "autosnap\nconsistency: memory", Memory: true})
	create(gRun, driver.CreateOptions{Name: "odd <&> \"name\"", Description: " & <x> 'q' \"\n\tünï"})
	create(gOff, driver.CreateOptions{Name: "autot260101030000", Description: "autosnap\nconsistency: offline"})
	create(gOff, driver.CreateOptions{Name: "autot260101040000", Description: "cv4pve-autosnap"})
	create(gInt, driver.CreateOptions{Name: "internal1", Disks: []driver.DiskSpec{{Name: "vda", Snapshot: "internal"}}})

	for _, c := range []struct {
		g       driver.Guest
		current string
	}{{gRun, "odd <&> \"name\""}, {gOff, "autot260101040000"}, {gInt, "internal1"}} {
		dom, err := d.lookup(ctx, c.g)
		if err != nil {
			t.Fatal(err)
		}
		// The reference: every snapshot decoded in full by libvirtxml, as before.
		xs, err := d.snapshotXMLs(ctx, c.g, dom)
		if err != nil {
			t.Fatal(err)
		}
		cur, err := d.l.DomainSnapshotCurrent(dom, 0)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]driver.Snapshot{}
		for _, x := range xs {
			s := fromXML(x)
			s.Current = s.Name == cur.Name
			want[s.Name] = s
		}
		p.Reset()
		got, err := d.Snapshots(ctx, c.g)
		if err != nil {
			t.Fatal(err)
		}
		if n := p.Total(); n != len(xs)+2 {
			t.Errorf("%s: listing %d snapshots made %d calls, want %d:\n%s", c.g.Name, len(xs), n, len(xs)+2, rpctrace.Format(p.Stats(), 0))
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d snapshots listed, want %d", c.g.Name, len(got), len(want))
		}
		currents := 0
		for _, s := range got {
			if !reflect.DeepEqual(s, want[s.Name]) {
				t.Errorf("%s:\n got %+v\nwant %+v", c.g.Name, s, want[s.Name])
			}
			if s.Current {
				currents++
				if s.Name != c.current {
					t.Errorf("%s: current is %q, want %q", c.g.Name, s.Name, c.current)
				}
			}
		}
		if currents != 1 {
			t.Errorf("%s: %d snapshots marked current, want 1", c.g.Name, currents)
		}
	}

	// A guest without snapshots: the list and current-snapshot calls (written
	// together), and an empty (not nil) list.
	bare := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	p.Reset()
	got, err := d.Snapshots(ctx, driver.Guest{Node: d.Node(), Name: bare.Name, UUID: bare.UUID, State: driver.StateShutoff})
	if err != nil || got == nil || len(got) != 0 || p.Total() != 2 {
		t.Errorf("guest without snapshots: %v, %#v, %d calls", err, got, p.Total())
	}
}
