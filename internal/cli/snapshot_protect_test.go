package cli

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/pveemu"
	"github.com/autosnap/autosnap/internal/testbed"
)

// protectRow is what status, snapshot list and snapshot info say about protection.
type protectRow struct {
	Name      string `json:"name"`
	Protected bool   `json:"protected"`
	Autosnap  bool   `json:"autosnap"`
}

func protectedNames(t *testing.T, out string) []string {
	t.Helper()
	var rows []protectRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("JSON: %v\n%s", err, out)
	}
	var n []string
	for _, r := range rows {
		if r.Protected {
			n = append(n, r.Name)
		}
	}
	return n
}

// TestPVEEditedAndProtectedSnapshotsKept: on Proxmox VE (the emulator), a snapshot
// whose note an admin edited is no longer counted nor removed by snap and clean, and
// neither is one protected with snapshot protect; status, snapshot list and info show
// the protection; unprotect hands it back to retention with cv4pve-autosnap's exact
// description. Before, the edited note "cv4pve-autosnap\nkeep me" was pruned.
func TestPVEEditedAndProtectedSnapshotsKept(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "stopped"})
	base := time.Now().Add(-72 * time.Hour)
	e.c.AddSnapshot(100, "autohourly230101000000000", "cv4pve-autosnap\nkeep me", base, false)
	e.c.AddSnapshot(100, "autohourly230101010000000", "cv4pve-autosnap", base.Add(time.Hour), false)
	e.c.AddSnapshot(100, "autohourly230101020000000", "cv4pve-autosnap", base.Add(2*time.Hour), false)

	e.mustRun(t, "snapshot", "protect", "web1", "autohourly230101010000000")
	if got := e.c.Snapshots(100)[1].Description; got != "cv4pve-autosnap\nprotected: yes" {
		t.Errorf("protected description on PVE: %q", got)
	}
	if got := protectedNames(t, e.mustRun(t, "-o", "json", "snapshot", "list", "web1").stdout); !slices.Equal(got, []string{"autohourly230101010000000"}) {
		t.Errorf("snapshot list: protected %v", got)
	}
	if r := e.mustRun(t, "snapshot", "info", "web1", "autohourly230101010000000"); !strings.Contains(r.stdout, "Protected") || !strings.Contains(r.stdout, "yes") {
		t.Errorf("snapshot info does not show the protection:\n%s", r.stdout)
	}
	rows := e.mustRun(t, "--vmid", "100", "-o", "json", "status")
	if got := protectedNames(t, rows.stdout); !slices.Equal(got, []string{"autohourly230101010000000"}) {
		t.Errorf("status JSON: protected %v", got)
	}
	if strings.Contains(rows.stdout, `"name":"autohourly230101000000000"`) {
		t.Errorf("status lists the snapshot whose note was edited:\n%s", rows.stdout)
	}
	if r := e.mustRun(t, "--vmid", "100", "status"); !strings.Contains(r.stdout, "PROTECTED") {
		t.Errorf("status has no PROTECTED column:\n%s", r.stdout)
	}

	r := e.mustRun(t, "--vmid", "100", "--dry-run", "clean", "--label", "hourly", "--keep", "0")
	if !strings.Contains(r.stdout, "Keep snapshot: autohourly230101010000000 (protected") {
		t.Errorf("dry run does not say the protected snapshot is kept:\n%s", r.stdout)
	}
	e.snap(t, "100", "hourly", 1)
	e.mustRun(t, "--vmid", "100", "clean", "--label", "hourly", "--keep", "0")
	if got := e.snapNames(100); !slices.Equal(got, []string{"autohourly230101000000000", "autohourly230101010000000"}) {
		t.Errorf("after snap --keep 1 and clean --keep 0: %v, want the edited and the protected one", got)
	}

	e.mustRun(t, "snapshot", "unprotect", "web1", "autohourly230101010000000")
	if got := e.c.Snapshots(100)[1].Description; got != "cv4pve-autosnap" {
		t.Errorf("unprotected description on PVE: %q, want exactly cv4pve-autosnap", got)
	}
	e.mustRun(t, "--vmid", "100", "clean", "--label", "hourly", "--keep", "0")
	if got := e.snapNames(100); !slices.Equal(got, []string{"autohourly230101000000000"}) {
		t.Errorf("after unprotect and clean --keep 0: %v", got)
	}
	if r := e.run(t, "snapshot", "protect", "web1", "autohourly230101000000000"); r.code == 0 || !strings.Contains(r.stderr, "nothing to protect") {
		t.Errorf("protecting a snapshot that is not ours: exit %d", r.code)
	}
	if got := e.c.Snapshots(100)[0].Description; got != "cv4pve-autosnap\nkeep me" {
		t.Errorf("refused protect changed the description: %q", got)
	}
}

// TestLibvirtEditedAndProtectedSnapshotsKept: the same on libvirt, where the flag is
// a line of the snapshot's description in libvirt's own metadata.
func TestLibvirtEditedAndProtectedSnapshotsKept(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	for i := 0; i < 3; i++ {
		if r := snap(t, d.Name, "hourly", 3); r.code != 0 {
			t.Fatalf("snap: exit %d", r.code)
		}
	}
	rows := status(t, d.Name, "hourly")
	if len(rows) != 3 {
		t.Fatalf("status: %d rows, want 3", len(rows))
	}
	edited, protected := rows[0].Name, rows[1].Name
	out, err := exec.Command("virsh", "snapshot-dumpxml", d.Name, edited).Output()
	if err != nil {
		t.Fatal(err)
	}
	xml := strings.Replace(string(out), "<description>autosnap", "<description>autosnap\nkeep me, before the upgrade", 1)
	file := filepath.Join(t.TempDir(), "edited.xml")
	writeFile(t, file, xml)
	if out, err := exec.Command("virsh", "snapshot-create", d.Name, file, "--redefine").CombinedOutput(); err != nil {
		t.Fatalf("virsh snapshot-create --redefine: %v %s", err, out)
	}
	mustRun(t, "snapshot", "protect", d.Name, protected)
	if got := protectedNames(t, mustRun(t, "-o", "json", "snapshot", "list", d.Name).stdout); !slices.Equal(got, []string{protected}) {
		t.Errorf("snapshot list: protected %v, want %s", got, protected)
	}
	r := mustRun(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "-o", "json", "status")
	if got := protectedNames(t, r.stdout); !slices.Equal(got, []string{protected}) {
		t.Errorf("status: protected %v, want %s", got, protected)
	}
	mustRun(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "clean", "--label", "hourly", "--keep", "0")
	names, err := exec.Command("virsh", "snapshot-list", d.Name, "--name").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(names)); !slices.Equal(got, []string{edited, protected}) {
		t.Errorf("after clean --keep 0: %v, want the edited %s and the protected %s", got, edited, protected)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
