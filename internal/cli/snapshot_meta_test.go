package cli

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/testbed"
)

type infoRow struct {
	Name        string `json:"name"`
	Consistency string `json:"consistency"`
	Autosnap    bool   `json:"autosnap"`
	Description string `json:"description"`
	Incomplete  string `json:"incomplete"`
}

func snapshotInfo(t *testing.T, vm, name string) infoRow {
	t.Helper()
	r := mustRun(t, "-o", "json", "snapshot", "info", vm, name)
	var rows []infoRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("snapshot info JSON: %v\n%s", err, r.stdout)
	}
	return rows[0]
}

// TestSnapshotCreateRecordsConsistency: snapshot create records how the disks were
// captured, as snap does, without turning a user snapshot into autosnap's, and
// snapshot edit --description keeps that record.
func TestSnapshotCreateRecordsConsistency(t *testing.T) {
	bed := testbed.Libvirt(t)
	var wg sync.WaitGroup
	var guest, off *testbed.Domain
	wg.Add(1)
	go func() {
		defer wg.Done()
		off = bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	}()
	guest = bed.NewDomain(t, testbed.DomainSpec{Guest: true, DiskMiB: 32})
	wg.Wait()

	r := mustRun(t, "snapshot", "create", guest.Name, "q1", "--quiesce", "on", "--description", "before the upgrade")
	if !strings.Contains(r.stdout, "quiesced") {
		t.Errorf("create does not say the snapshot is quiesced:\n%s", r.stdout)
	}
	mustRun(t, "snapshot", "create", guest.Name, "c1", "--quiesce", "off")
	mustRun(t, "snapshot", "create", off.Name, "o1", "--description", "autosnap")
	for _, tc := range []struct {
		vm, name, cons, desc string
		ours                 bool
	}{
		{guest.Name, "q1", "quiesced", "before the upgrade", false},
		{guest.Name, "c1", "crash", "", false},
		{off.Name, "o1", "offline", "autosnap", true},
	} {
		got := snapshotInfo(t, tc.vm, tc.name)
		if got.Consistency != tc.cons || got.Description != tc.desc || got.Autosnap != tc.ours {
			t.Errorf("%s: consistency %q, description %q, autosnap %v; want %q, %q, %v", tc.name, got.Consistency, got.Description, got.Autosnap, tc.cons, tc.desc, tc.ours)
		}
	}
	if r := mustRun(t, "snapshot", "info", guest.Name, "q1"); !strings.Contains(r.stdout, "quiesced") {
		t.Errorf("snapshot info does not show quiesced:\n%s", r.stdout)
	}
	if r := mustRun(t, "-o", "json", "snapshot", "list", guest.Name); !strings.Contains(r.stdout, `"consistency":"quiesced"`) {
		t.Errorf("snapshot list does not show quiesced:\n%s", r.stdout)
	}

	mustRun(t, "snapshot", "edit", guest.Name, "q1", "--description", "after the upgrade\nsecond line")
	if got := snapshotInfo(t, guest.Name, "q1"); got.Consistency != "quiesced" || got.Description != "after the upgrade\nsecond line" || got.Autosnap {
		t.Errorf("after edit --description: %+v, want the consistency kept", got)
	}
	mustRun(t, "snapshot", "edit", guest.Name, "q1", "--rename", "q2")
	if got := snapshotInfo(t, guest.Name, "q2"); got.Consistency != "quiesced" {
		t.Errorf("after a rename: %+v", got)
	}
	mustRun(t, "snapshot", "edit", guest.Name, "q2", "--description", "autosnap")
	if got := snapshotInfo(t, guest.Name, "q2"); got.Consistency != "quiesced" || !got.Autosnap {
		t.Errorf("handed to retention: %+v", got)
	}
}

// TestSnapshotIncompleteShownAndNotRevertible: a snapshot whose data is not whole (a
// merge was interrupted) says so in list and info, and revert refuses it, changing
// nothing, even when the driver would go ahead.
func TestSnapshotIncompleteShownAndNotRevertible(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	const n = 64 << 10
	d.WriteDisk(t, "vda", 0, 1, n)
	mustRun(t, "snapshot", "create", d.Name, "whole", "--quiesce", "off")
	d.WriteDisk(t, "vda", 0, 2, n)
	mustRun(t, "snapshot", "create", d.Name, "half", "--quiesce", "off")
	d.WriteDisk(t, "vda", 0, 3, n)
	const why = "a merge into its image stopped half-way (interrupted at 40%)"
	dmg := func(inner driver.Driver) driver.Driver {
		return damaged{Driver: inner, reasons: map[string]string{"half": why}}
	}

	r := runWrapped(t, dmg, "-o", "json", "snapshot", "list", d.Name)
	var rows []infoRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 2 {
		t.Fatalf("list: %v, %d rows", err, len(rows))
	}
	for _, row := range rows {
		if want := map[string]string{"half": why}[row.Name]; row.Incomplete != want {
			t.Errorf("list: %s incomplete %q, want %q", row.Name, row.Incomplete, want)
		}
	}
	if r := runWrapped(t, dmg, "snapshot", "list", d.Name); !strings.Contains(r.stdout, "INCOMPLETE") || !strings.Contains(r.stdout, why) {
		t.Errorf("the table does not show why half is incomplete:\n%s", r.stdout)
	}
	if r := runWrapped(t, dmg, "snapshot", "info", d.Name, "half"); !strings.Contains(r.stdout, "not to be reverted to: "+why) {
		t.Errorf("info does not show why half is incomplete:\n%s", r.stdout)
	}
	if r := runWrapped(t, dmg, "-o", "json", "snapshot", "info", d.Name, "half"); !strings.Contains(r.stdout, `"incomplete":"`+why+`"`) {
		t.Errorf("info JSON lacks incomplete:\n%s", r.stdout)
	}

	chain := strings.Join(d.Chain(t, "vda"), " ")
	for _, args := range [][]string{
		{"snapshot", "revert", d.Name, "half", "--force"},
		{"--dry-run", "snapshot", "revert", d.Name, "half", "--force"},
		{"-o", "json", "snapshot", "revert", d.Name, "half", "--force", "--running"},
	} {
		r := runWrapped(t, dmg, args...)
		if r.code != ExitFailure || !strings.Contains(r.stderr, why) || !strings.Contains(r.stderr, "nothing was changed") {
			t.Errorf("%s: exit %d, want %d with the reason", strings.Join(args, " "), r.code, ExitFailure)
		}
	}
	if st := vmState(t, d); st != "paused" {
		t.Errorf("a refused revert left the guest %s", st)
	}
	if got := strings.Join(d.Chain(t, "vda"), " "); got != chain {
		t.Errorf("a refused revert changed the chain: %s, was %s", got, chain)
	}
	expectBlock(t, d, 0, 3)
	// A driver that refuses at revert time: its error, exit 1, nothing reported done.
	refuse := func(inner driver.Driver) driver.Driver {
		return refusing{Driver: inner, err: fmt.Errorf("guest %s: snapshot half is not whole (%s): %w", d.Name, why, driver.ErrUnsupported)}
	}
	for _, f := range []string{"text", "json"} {
		r := runWrapped(t, refuse, "-o", f, "snapshot", "revert", d.Name, "half", "--force")
		if r.code != ExitFailure || !strings.Contains(r.stderr, why) || strings.Contains(r.stdout, "Reverted") {
			t.Errorf("-o %s, the driver refuses the revert: exit %d, want %d with its error", f, r.code, ExitFailure)
		}
	}
	// The whole snapshot can still be reverted to.
	runWrapped(t, dmg, "snapshot", "revert", d.Name, "whole", "--force")
	expectBlock(t, d, 0, 1)
}

// TestSnapshotCreatePrintsNotes: what the driver wants the user to know about a new
// snapshot is printed after it (stderr when stdout carries JSON).
func TestSnapshotCreatePrintsNotes(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	note := "the guest is transient: its original definition still names the old images"
	wrap := func(inner driver.Driver) driver.Driver { return noting{Driver: inner, notes: []string{note}} }
	r := runWrapped(t, wrap, "snapshot", "create", d.Name, "n1", "--quiesce", "off")
	if r.code != 0 || !strings.Contains(r.stdout, "created") || !strings.Contains(r.stdout, "NOTE: "+note) {
		t.Errorf("create does not print the note:\n%s", r.stdout)
	}
	r = runWrapped(t, wrap, "-o", "json", "snapshot", "create", d.Name, "n2", "--quiesce", "off")
	var rows []infoRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 1 || rows[0].Name != "n2" {
		t.Errorf("create -o json: %v\n%s", err, r.stdout)
	}
	if !strings.Contains(r.stderr, "NOTE: "+d.Name+": "+note) {
		t.Errorf("create -o json does not print the note on stderr:\n%s", r.stderr)
	}
}

// TestSnapshotCollapseForceBase: --force-base reaches the driver, once per flag, and
// the help says why it exists.
func TestSnapshotCollapseForceBase(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, Disks: 2, DiskMiB: 8})
	mustRun(t, "snapshot", "create", d.Name, "f1")
	mustRun(t, "snapshot", "delete", d.Name, "f1", "--metadata")
	var mu sync.Mutex
	var got []driver.CollapseOptions
	rec := func(inner driver.Driver) driver.Driver { return collapseRecorder{Driver: inner, mu: &mu, opts: &got} }
	runWrapped(t, rec, "snapshot", "chain", "collapse", d.Name, "--disk", "vdb", "--force-base", d.Disks[1].Path)
	runWrapped(t, rec, "snapshot", "chain", "collapse", d.Name, "--force-base", d.Disks[0].Path, "--force-base", d.Disks[1].Path)
	if len(got) != 2 || got[0].Disk != "vdb" || !slices.Equal(got[0].ForceBase, []string{d.Disks[1].Path}) ||
		!slices.Equal(got[1].ForceBase, []string{d.Disks[0].Path, d.Disks[1].Path}) {
		t.Errorf("collapse options: %+v", got)
	}
	for _, disk := range []string{"vda", "vdb"} {
		if c := d.Chain(t, disk); len(c) != 1 {
			t.Errorf("%s chain after collapse: %v", disk, c)
		}
	}
	if h := mustRun(t, "snapshot", "chain", "collapse", "--help").stdout; !strings.Contains(h, "--force-base") || !strings.Contains(h, "linked") {
		t.Errorf("collapse --help does not explain --force-base:\n%s", h)
	}
}
