package libvirt

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestPrepareFrozenPrecreatesOverlays: preparing a snapshot to be taken inside a
// freeze creates the overlay (0600, backed by the disk's image) before the create,
// the create uses it (the chain is the usual one, data written before is below it,
// the snapshot is listed), and closing a prepared snapshot that was not taken removes
// the overlay and the journal record.
func TestPrepareFrozenPrecreatesOverlays(t *testing.T) {
	bed := testbed.Libvirt(t)
	d, err := Open(context.Background(), driver.Config{Host: testbed.URI, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx := context.Background()
	dom := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 16})
	g := driver.Guest{Node: d.Node(), Name: dom.Name, UUID: dom.UUID, State: driver.StateRunning}
	base := dom.Chain(t, "vda")
	dom.WriteDisk(t, "vda", 1<<20, 0x3c, 1<<20)

	// Prepared, then closed without the create: nothing is left behind.
	ps, err := d.PrepareFrozenSnapshot(ctx, g, driver.CreateOptions{Name: "fz0", Description: "autosnap\nconsistency: quiesced"})
	if err != nil {
		t.Fatal(err)
	}
	p := ps.(*preparedSnapshot)
	if len(p.overlays) != 1 {
		t.Fatalf("overlays %v, want one", p.overlays)
	}
	ov0 := p.overlays[0]
	if fi, err := os.Stat(ov0); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("overlay %s after prepare: %v, %v (want it there, mode 0600)", ov0, fi, err)
	}
	ps.Close()
	if _, err := os.Stat(ov0); !os.IsNotExist(err) {
		t.Errorf("overlay %s of a snapshot not taken is still there (%v)", ov0, err)
	}
	if ok, _ := d.createStore().Get(p.key, &createRecord{}); ok {
		t.Errorf("the create record of a snapshot not taken is still there")
	}

	// Prepared and taken.
	ps, err = d.PrepareFrozenSnapshot(ctx, g, driver.CreateOptions{Name: "fz1", Description: "autosnap\nconsistency: quiesced"})
	if err != nil {
		t.Fatal(err)
	}
	ov := ps.(*preparedSnapshot).overlays[0]
	out, err := runCmd(ctx, "qemu-img", "info", "-U", "--output=json", ov)
	if err != nil || !strings.Contains(string(out), `"backing-filename": "`+base[0]+`"`) {
		t.Fatalf("overlay %s before the create: %v\n%s\nwant backed by %s", ov, err, out, base[0])
	}
	s, err := ps.Create(ctx)
	ps.Close()
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "fz1" || !s.DiskOnly {
		t.Errorf("created %+v", s)
	}
	if got, want := dom.Chain(t, "vda"), append([]string{ov}, base...); !slices.Equal(got, want) {
		t.Errorf("chain after the create %v, want %v", got, want)
	}
	snaps, err := d.Snapshots(ctx, g)
	if err != nil || len(snaps) != 1 || snaps[0].Name != "fz1" || len(snaps[0].Disks) == 0 || snaps[0].Disks[0].File != ov {
		t.Errorf("listing after the create: %+v, %v", snaps, err)
	}
	if fi, err := os.Stat(ov); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("overlay after the create: %v, %v", fi, err)
	}
	// The guest's data is below the overlay, unchanged.
	want := make([]byte, 1<<20)
	for i := range want {
		want[i] = 0x3c
	}
	if got := testbed.ReadImage(t, ov, 1<<20, 1<<20); !slices.Equal(got, want) {
		t.Errorf("the data written before the snapshot does not read back through the overlay")
	}
}
