package cli

import (
	"strings"
	"testing"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/testbed"
)

// renameDomain gives the shut-off domain d a new name (libvirt renames only inactive
// domains). The testbed finds it again by UUID to clean up.
func renameDomain(t *testing.T, bed *testbed.Bed, d *testbed.Domain, name string) {
	t.Helper()
	if _, err := bed.Conn.DomainRename(d.Dom, golibvirt.OptString{name}, 0); err != nil {
		t.Fatalf("rename %s to %s: %v", d.Name, name, err)
	}
	d.Name, d.Dom.Name = name, name
}

// TestSnapshotCommandsNameGuestWithComma: the VM argument is first taken as an exact
// guest name, so a guest whose name contains a comma can be named, and the --vmid
// grammar does not split it into other guests' names.
func TestSnapshotCommandsNameGuestWithComma(t *testing.T) {
	bed := testbed.Libvirt(t)
	other := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	// "X,db" where X is the other guest's name: split at the comma, it names that guest.
	renameDomain(t, bed, d, other.Name+",db")
	started, err := bed.Conn.DomainCreateWithFlags(d.Dom, uint32(golibvirt.DomainStartPaused))
	if err != nil {
		t.Fatal(err)
	}
	d.Dom = started

	r := mustRun(t, "snapshot", "create", d.Name, "c1", "--quiesce", "off")
	if !strings.Contains(r.stdout, d.Name+": snapshot c1 created") {
		t.Errorf("create does not name the guest %s:\n%s", d.Name, r.stdout)
	}
	if got := snapNames(snapshotList(t, d.Name)); got != "c1" {
		t.Errorf("%s has snapshots %q, want c1", d.Name, got)
	}
	if got := snapNames(snapshotList(t, other.Name)); got != "" {
		t.Errorf("the snapshot went to %s (%s)", other.Name, got)
	}
	if r := mustRun(t, "-o", "json", "snapshot", "info", d.Name, "c1"); !strings.Contains(r.stdout, `"vmname":"`+d.Name+`"`) {
		t.Errorf("info is not about %s:\n%s", d.Name, r.stdout)
	}
	mustRun(t, "snapshot", "revert", d.Name, "c1", "--force")
	mustRun(t, "snapshot", "delete", d.Name, "c1")
	if got := snapNames(snapshotList(t, d.Name)); got != "" {
		t.Errorf("after delete: %q", got)
	}
	// Without an exact name the grammar still applies, and a pattern that matches both
	// guests is refused.
	prefix := other.Name[:len(other.Name)-2]
	if r := run(t, "snapshot", "list", prefix+"%"); r.code != ExitUsage || !strings.Contains(r.stderr, "matches 2 guests") {
		t.Errorf("a pattern matching both guests: exit %d, want %d", r.code, ExitUsage)
	}
}
