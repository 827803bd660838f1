package libvirt

import (
	"fmt"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/testbed"
)

// interruptedRevert sets up a shut-off guest with snapshot s1 as a revert to s1 cut
// off after creating its new overlay leaves it: the record written, the overlay made,
// and, when pointed, the definition naming it. It returns the image that held the
// discarded state and the new overlay.
func interruptedRevert(t *testing.T, e *jenv, pointed bool) (discarded, overlay string) {
	t.Helper()
	if _, err := e.d.CreateSnapshot(jctx(t), e.guest(), driver.CreateOptions{Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	base := e.dom.Disks[0].Path
	discarded = e.dom.Chain(t, "vda")[0]
	disk := revertDisk{target: "vda", state: base, format: "qcow2", current: discarded}
	var err error
	if disk.overlay, err = freeRevertOverlay(e.dom.Name, "s1", &disk, nil); err != nil {
		t.Fatal(err)
	}
	if err := createRevertOverlay(jctx(t), &disk); err != nil {
		t.Fatal(err)
	}
	rec := newRevertRecord(e.guest(), e.dom.Dom, "s1", []revertDisk{disk}, []string{discarded}, "")
	rec.Rewrite = map[string]string{"vda": disk.overlay}
	if err := e.d.createStore().Put(revertKey(e.d.node, e.dom.Dom), rec); err != nil {
		t.Fatal(err)
	}
	if pointed {
		x := e.dom.XML(t)
		useOverlay(&x.Devices.Disks[0], disk.overlay)
		out, err := x.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.bed.Conn.DomainDefineXML(out); err != nil {
			t.Fatal(err)
		}
	}
	return discarded, disk.overlay
}

func (e *jenv) hasRevertRecord(t *testing.T) bool {
	t.Helper()
	var r revertRecord
	ok, err := e.d.createStore().Get(revertKey(e.d.node, e.dom.Dom), &r)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestSettleRevert: the next run undoes a revert cut off before the definition named
// the new overlays, and finishes one cut off after.
func TestSettleRevert(t *testing.T) {
	t.Run("Undone", func(t *testing.T) {
		t.Parallel()
		e := newJEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
		discarded, overlay := interruptedRevert(t, e, false)
		if _, err := e.d.CreateSnapshot(jctx(t), e.guest(), driver.CreateOptions{Name: "s2"}); err != nil {
			t.Fatalf("create after an interrupted revert: %v", err)
		}
		if jexists(overlay) || !jexists(discarded) || e.hasRevertRecord(t) {
			t.Errorf("new overlay left %v, previous image kept %v, record left %v; want false, true, false", jexists(overlay), jexists(discarded), e.hasRevertRecord(t))
		}
		if c := e.dom.Chain(t, "vda"); len(c) != 3 || c[1] != discarded {
			t.Errorf("chain = %v, want s2's overlay on %s", c, discarded)
		}
	})
	t.Run("Finished", func(t *testing.T) {
		t.Parallel()
		e := newJEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
		discarded, overlay := interruptedRevert(t, e, true)
		if _, err := e.d.CreateSnapshot(jctx(t), e.guest(), driver.CreateOptions{Name: "s2"}); err != nil {
			t.Fatalf("create after an interrupted revert: %v", err)
		}
		if !jexists(overlay) || jexists(discarded) || e.hasRevertRecord(t) {
			t.Errorf("new overlay kept %v, previous image left %v, record left %v; want true, false, false", jexists(overlay), jexists(discarded), e.hasRevertRecord(t))
		}
		if c := e.dom.Chain(t, "vda"); len(c) != 3 || c[1] != overlay {
			t.Errorf("chain = %v, want s2's overlay on %s", c, overlay)
		}
		ss, err := e.d.Snapshots(jctx(t), e.guest())
		if err != nil || len(ss) != 2 {
			t.Fatalf("snapshots %+v, %v", ss, err)
		}
		if s1 := ss[0]; s1.Name != "s1" || len(s1.Disks) != 1 || s1.Disks[0].File != overlay {
			t.Errorf("s1 = %+v, want its disk to name %s", s1, overlay)
		}
		if ss[1].Parent != "s1" {
			t.Errorf("s2's parent = %q, want s1 (current after the finished revert)", ss[1].Parent)
		}
	})
	t.Run("ChangedByHand", func(t *testing.T) {
		t.Parallel()
		e := newJEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
		discarded, overlay := interruptedRevert(t, e, false)
		rec := revertRecord{}
		if _, err := e.d.createStore().Get(revertKey(e.d.node, e.dom.Dom), &rec); err != nil {
			t.Fatal(err)
		}
		rec.Phase = revertPointed
		if err := e.d.createStore().Put(revertKey(e.d.node, e.dom.Dom), rec); err != nil {
			t.Fatal(err)
		}
		_, err := e.d.CreateSnapshot(jctx(t), e.guest(), driver.CreateOptions{Name: "s2"})
		t.Logf("create: %v", err)
		if err == nil || !jexists(overlay) || !jexists(discarded) || !e.hasRevertRecord(t) {
			t.Errorf("a definition changed by hand after the revert pointed it: err %v; overlay kept %v, previous image kept %v, record kept %v", err, jexists(overlay), jexists(discarded), e.hasRevertRecord(t))
		}
		if got := fmt.Sprint(e.names(t)); got != "[s1]" {
			t.Errorf("snapshots = %s", got)
		}
	})
}
