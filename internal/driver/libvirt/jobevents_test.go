package libvirt

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/rpctrace"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestMergeWaitsForJobEvent: a live merge (of 48 MiB) learns that its block job
// ended from libvirt's event, not by polling: one look when the job starts and one
// after the event (plus one per eventFallback the merge takes), and one subscription
// for the connection however many merges run.
func TestMergeWaitsForJobEvent(t *testing.T) {
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
	dom := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 64})
	g := driver.Guest{Node: d.Node(), Name: dom.Name, UUID: dom.UUID, State: driver.StateRunning}
	for _, n := range []string{"ev1", "ev2", "ev3", "ev4"} {
		if _, err := d.CreateSnapshot(ctx, g, driver.CreateOptions{Name: n, Description: "autosnap\nconsistency: crash"}); err != nil {
			t.Fatalf("create %s: %v", n, err)
		}
		// Data in the overlays the merges commit, so that their jobs take a while.
		dom.WriteDisk(t, "vda", 0, 0x5a, 48<<20)
	}
	for _, n := range []string{"ev1", "ev2"} {
		p.Reset()
		start := time.Now()
		if err := d.DeleteSnapshot(ctx, g, n); err != nil {
			t.Fatalf("delete %s: %v", n, err)
		}
		took := time.Since(start)
		looks := p.Calls("DomainGetBlockJobInfo")
		// One look before the merge (is a job running?), one when it starts, one
		// after the event.
		if max := 3 + int(took/eventFallback); looks == 0 || looks > max {
			t.Errorf("merging %s (%s) looked at the block job %d times, want 1..%d:\n%s", n, took, looks, max, rpctrace.Format(p.Stats(), 0))
		}
		subs := p.Calls("ConnectDomainEventCallbackRegisterAny")
		if want := map[string]int{"ev1": 1, "ev2": 0}[n]; subs != want {
			t.Errorf("merging %s subscribed to events %d times, want %d", n, subs, want)
		}
	}
	snaps, err := d.Snapshots(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 || snaps[0].Name != "ev3" || snaps[1].Name != "ev4" {
		t.Errorf("left %+v, want ev3 and ev4", snaps)
	}
}
