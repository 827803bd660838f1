package cli

import (
	"slices"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/testbed"
)

// TestQMPProtectedSnapshotKept: on standalone QEMU too, snapshot protect keeps one of
// autosnap's snapshots through snap and clean, status and snapshot list show it, and
// unprotect hands it back to retention; the flag lives in the guest's sidecar.
func TestQMPProtectedSnapshotKept(t *testing.T) {
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{Disks: 1, DiskMiB: 8})
	for range 2 {
		if r := qmpSnap(t, h, q.Name, "hourly", 3); r.code != 0 {
			t.Fatalf("snap: exit %d", r.code)
		}
	}
	rows := qmpStatus(t, h, q.Name, "hourly")
	if len(rows) != 2 {
		t.Fatalf("status: %d rows, want 2", len(rows))
	}
	protected := rows[0].Name
	if r := qmpRun(t, h, "snapshot", "protect", q.Name, protected); r.code != 0 {
		t.Fatalf("snapshot protect: exit %d\n%s", r.code, r.stderr)
	}
	if got := protectedNames(t, qmpRun(t, h, "-o", "json", "snapshot", "list", q.Name).stdout); !slices.Equal(got, []string{protected}) {
		t.Errorf("snapshot list: protected %v, want %s", got, protected)
	}
	r := qmpRun(t, h, "--vmid", q.Name, "--timestamp-format", fmtMS, "-o", "json", "status")
	if got := protectedNames(t, r.stdout); !slices.Equal(got, []string{protected}) {
		t.Errorf("status: protected %v, want %s", got, protected)
	}
	if r := qmpRun(t, h, "--vmid", q.Name, "--timestamp-format", fmtMS, "clean", "--label", "hourly", "--keep", "0"); r.code != 0 {
		t.Fatalf("clean: exit %d", r.code)
	}
	if got := qmpStatus(t, h, q.Name, "hourly"); len(got) != 1 || got[0].Name != protected {
		t.Errorf("after clean --keep 0: %v, want only the protected %s", got, protected)
	}
	if r := qmpRun(t, h, "snapshot", "unprotect", q.Name, protected); r.code != 0 {
		t.Fatalf("snapshot unprotect: exit %d\n%s", r.code, r.stderr)
	}
	qmpRun(t, h, "--vmid", q.Name, "--timestamp-format", fmtMS, "clean", "--label", "hourly", "--keep", "0")
	if got := qmpStatus(t, h, q.Name, "hourly"); len(got) != 0 {
		t.Errorf("after unprotect and clean --keep 0: %v, want none", got)
	}
	if r := qmpRun(t, h, "snapshot", "protect", q.Name, "autonosuch"); r.code == 0 || !strings.Contains(r.stderr, "autonosuch") {
		t.Errorf("protecting a missing snapshot: exit %d, %s", r.code, r.stderr)
	}
}
