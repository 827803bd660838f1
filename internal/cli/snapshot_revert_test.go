package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/testbed"
)

type revertRow struct {
	Node     string   `json:"node"`
	VMName   string   `json:"vmname"`
	Snapshot string   `json:"snapshot"`
	Location string   `json:"location"`
	VMState  bool     `json:"vmstate"`
	State    string   `json:"state"`
	Notes    []string `json:"notes"`
	Seconds  float64  `json:"seconds"`
}

// snapName takes one autosnap snapshot and returns its name.
func snapName(t *testing.T, d *testbed.Domain, label string, extra ...string) string {
	t.Helper()
	if r := snap(t, d.Name, label, 9, append([]string{"--quiesce", "off"}, extra...)...); r.code != 0 {
		t.Fatalf("snap: exit %d", r.code)
	}
	rows := status(t, d.Name, label)
	return rows[len(rows)-1].Name
}

func vmState(t *testing.T, d *testbed.Domain) string {
	t.Helper()
	rows, r := vmList(t, d.Name)
	if r.code != 0 || len(rows) != 1 {
		t.Fatalf("vm list %s: exit %d, %d rows", d.Name, r.code, len(rows))
	}
	return rows[0].State
}

func expectBlock(t *testing.T, d *testbed.Domain, off int64, pattern byte) {
	t.Helper()
	got := testbed.ReadImage(t, d.Chain(t, "vda")[0], off, 4096)
	if !bytes.Equal(got, bytes.Repeat([]byte{pattern}, 4096)) {
		t.Errorf("vda at %d = %02x…, want %02x", off, got[0], pattern)
	}
}

func TestSnapshotRevertExternal(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	d.WriteDisk(t, "vda", 0, 0x5a, 4096)
	name := snapName(t, d, "rv")
	d.WriteDisk(t, "vda", 0, 0x6b, 4096)

	r := run(t, "snapshot", "revert", d.Name, name)
	if r.code != ExitUsage || !strings.Contains(r.stderr, "--force") || !strings.Contains(r.stderr, "is paused") {
		t.Errorf("revert of a paused guest without --force: exit %d, want %d with a hint at --force", r.code, ExitUsage)
	}
	if st := vmState(t, d); st != "paused" {
		t.Errorf("a refused revert left the guest %s", st)
	}
	if r := mustRun(t, "--dry-run", "snapshot", "revert", d.Name, name, "--force"); !strings.Contains(r.stdout, "would stop") {
		t.Errorf("dry run does not say it would stop the guest:\n%s", r.stdout)
	}
	if st := vmState(t, d); st != "paused" {
		t.Errorf("a dry run left the guest %s", st)
	}

	r = mustRun(t, "snapshot", "revert", d.Name, name, "--force")
	for _, want := range []string{"like virsh destroy", "new overlay", "deleted", "Reverted " + d.Name + " to " + name, "shutoff"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	if st := vmState(t, d); st != "shutoff" {
		t.Errorf("state after a disk-only revert = %s, want shutoff", st)
	}
	expectBlock(t, d, 0, 0x5a)

	// Again, by UUID, started, with a JSON report.
	r = mustRun(t, "-o", "json", "snapshot", "revert", d.UUID, name, "--running")
	var rows []revertRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("JSON: %v\n%s", err, r.stdout)
	}
	if len(rows) != 1 || rows[0].State != "running" || rows[0].Location != "external" || rows[0].VMState || len(rows[0].Notes) == 0 {
		t.Errorf("JSON report = %+v", rows)
	}
	expectBlock(t, d, 0, 0x5a)
}

func TestSnapshotRevertMemory(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 8})
	d.WriteDisk(t, "vda", 0, 0x11, 4096)
	name := snapName(t, d, "mem", "--state")
	d.WriteDisk(t, "vda", 0, 0x22, 4096)
	// The RAM is replaced anyway: no --force needed. This guest has no agent, which
	// must not hold the revert up.
	r := mustRun(t, "snapshot", "revert", d.Name, name)
	if st := vmState(t, d); st != "running" || r.took > 20*time.Second {
		t.Errorf("revert of a running guest to a snapshot with RAM: %s after %s", st, r.took)
	}
	expectBlock(t, d, 0, 0x11)
	d.WriteDisk(t, "vda", 0, 0x22, 4096)
	r = mustRun(t, "snapshot", "revert", d.Name, name, "--paused")
	if !strings.Contains(r.stdout, "like virsh destroy") || !strings.Contains(r.stdout, "paused") {
		t.Errorf("output:\n%s", r.stdout)
	}
	if st := vmState(t, d); st != "paused" {
		t.Errorf("state after revert --paused = %s", st)
	}
	expectBlock(t, d, 0, 0x11)
}

func TestSnapshotRevertInternal(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	write := func(p byte) {
		t.Helper()
		if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d 0 4096", p), d.Disks[0].Path).CombinedOutput(); err != nil {
			t.Fatalf("qemu-io: %v %s", err, out)
		}
	}
	write(1)
	if out, err := exec.Command("virsh", "snapshot-create-as", d.Name, "int1").CombinedOutput(); err != nil {
		t.Fatalf("virsh snapshot-create-as: %v %s", err, out)
	}
	write(2)
	mustRun(t, "snapshot", "revert", d.Name, "int1", "--running")
	if st := vmState(t, d); st != "running" {
		t.Errorf("state after revert --running = %s", st)
	}
	expectBlock(t, d, 0, 1)
}

func TestSnapshotRevertExitCodes(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	cases := []struct {
		args []string
		want int
		msg  string
	}{
		{[]string{"snapshot", "revert", d.Name}, ExitUsage, "accepts 2 arg"},
		{[]string{"snapshot", "revert", d.Name, "x", "--running", "--paused"}, ExitUsage, "exclude each other"},
		{[]string{"--vmid", d.Name, "snapshot", "revert", d.Name, "x"}, ExitUsage, "not --vmid"},
		{[]string{"snapshot", "revert", "no-such-vm-" + d.Name, "x"}, ExitFailure, "no guest named"},
		{[]string{"snapshot", "revert", d.Name, "nosuch"}, ExitFailure, `has no snapshot "nosuch"`},
		{[]string{"--host", "qemu+unix:///system?socket=/nonexistent.sock", "snapshot", "revert", d.Name, "x"}, ExitConnect, "cannot connect"},
	}
	for _, tc := range cases {
		r := run(t, tc.args...)
		if r.code != tc.want || !strings.Contains(r.stderr, "ERROR:") || !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("%v: exit %d, want %d with %q\n%s", tc.args, r.code, tc.want, tc.msg, r.stderr)
		}
	}
	if h := mustRun(t, "snapshot", "revert", "--help"); !strings.Contains(h.stdout, "--force") || !strings.Contains(h.stdout, "revert<N>") {
		t.Errorf("help:\n%s", h.stdout)
	}
}
