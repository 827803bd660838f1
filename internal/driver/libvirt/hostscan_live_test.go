package libvirt_test

import (
	"strings"
	"testing"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestDeleteRefusesSharedBaseOfRunningClone: the linked clone that makes a merge
// refuse belongs to a running guest, whose chain the host scan reads from its live
// definition (not from block statistics): the merge still refuses, naming it.
func TestDeleteRefusesSharedBaseOfRunningClone(t *testing.T) {
	bed, d, ctx, a, g := sbTwoSnapshots(t)
	base := a.Disks[0].Path
	b := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 16})
	clone := b.Dir + "/clone-of-a.qcow2"
	sbClone(t, base, clone)
	sbSetDisk(t, bed, b, clone)
	if _, err := bed.Conn.DomainCreateWithFlags(b.Dom, uint32(golibvirt.DomainStartPaused)); err != nil {
		t.Fatal(err)
	}
	baseSum := testbed.ImageSum(t, base)
	err := d.DeleteSnapshotTree(ctx, g, "s1", driver.DeleteOptions{})
	if err == nil || !strings.Contains(err.Error(), b.Name) {
		t.Fatalf("deleting s1, whose state image %s the running guest %s builds on: %v, want a refusal naming %s", base, b.Name, err, b.Name)
	}
	if got := testbed.ImageSum(t, base); got != baseSum {
		t.Errorf("the shared base image was written")
	}
}
