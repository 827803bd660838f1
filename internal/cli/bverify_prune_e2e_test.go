package cli

import (
	"path/filepath"
	"testing"

	"github.com/autosnap/autosnap/internal/testbed"
)

// TestBackupPruneThenBackup runs full, inc, inc on the real two-disk guest, prunes the
// full and the first inc (their data merged into the second inc), then lets `backup`
// (auto) go on: it continues the chain with an inc, and every remaining point restores
// bit-identical to the guest's disks captured at its instant.
func TestBackupPruneThenBackup(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{Disks: 2, Guest: true})
	dir := filepath.Join(t.TempDir(), "repo")
	mib := int64(1 << 20)
	writes := []func(){
		func() { dom.WriteDisk(t, "vdb", 2*mib, 0x11, 3<<20) },
		func() {
			dom.WriteDisk(t, "vdb", 3*mib, 0x22, 1<<20)
			dom.WriteDisk(t, "vda", 60*mib, 0x23, 512<<10)
		},
		func() {
			dom.WriteDisk(t, "vdb", 2*mib, 0x00, 512<<10) // data that became zero
			dom.WriteDisk(t, "vdb", 12*mib, 0x33, 1<<20)
		},
		func() { dom.WriteDisk(t, "vdb", 20*mib, 0x44, 2<<20) },
	}
	levels := []string{"full", "inc", "inc"}
	var ids []string
	var sums []map[string]string
	for i, lv := range levels {
		writes[i]()
		paused(t, bed, dom, func() {
			row := backupRun(t, dom, dir, "--quiesce", "off", "--level", lv)
			if row.Level != lv || row.Outcome != "ok" {
				t.Fatalf("backup %d: level %s outcome %s, want %s", i, row.Level, row.Outcome, lv)
			}
			ids, sums = append(ids, row.Point), append(sums, capture(t, dom))
		})
	}
	mustRun(t, "--vmid", dom.Name, "backup", "prune", "--target", dir, "--keep-last", "1")
	left := listPoints(t, dom, dir)
	if len(left) != 1 || left[0] != ids[2] {
		t.Fatalf("after prune --keep-last 1: points %v, want only %s", left, ids[2])
	}
	checkRestore(t, dom, dir, ids[2], "qcow2", sums[2])

	writes[3]()
	paused(t, bed, dom, func() {
		row := backupRun(t, dom, dir, "--quiesce", "off")
		switch {
		case row.Outcome != "ok":
			t.Fatalf("backup after the prune: outcome %s", row.Outcome)
		case row.Level == "full" && row.FullReason == "":
			t.Fatal("backup after the prune took a full without saying why")
		case row.Level != "inc":
			t.Errorf("backup after the prune: level %s (%s), want the chain continued with an inc", row.Level, row.FullReason)
		}
		ids, sums = append(ids, row.Point), append(sums, capture(t, dom))
	})
	for _, i := range []int{2, 3} {
		checkRestore(t, dom, dir, ids[i], "qcow2", sums[i])
	}
	mustRun(t, "backup", "verify", "--target", dir, "--read-data")
}

// listPoints returns the IDs of the guest's points, oldest first.
func listPoints(t *testing.T, dom *testbed.Domain, dir string) []string {
	t.Helper()
	rg, err := openGuestForTest(t, dom, dir)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := rg.Points()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range ps {
		ids = append(ids, p.ID)
	}
	return ids
}
