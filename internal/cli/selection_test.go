package cli

import (
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestVMIDUnmatchedTokenFails: a --vmid token that matches no guest (a typo, a renamed
// guest) no longer passes silently: the run does its work for the other guests,
// prints its report, then exits 1 naming the token; --ignore-missing makes it a
// warning. A selection that matches nothing at all fails as before.
func TestVMIDUnmatchedTokenFails(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	typo := "nosuch-" + d.Name
	sel := d.Name + "," + typo

	r := run(t, "--vmid", sel, "--timestamp-format", fmtMS, "-o", "json", "snap", "--label", "miss", "--keep", "2", "--quiesce", "off")
	if r.code != ExitFailure || !strings.Contains(r.stderr, `"`+typo+`"`) || !strings.Contains(r.stderr, "--ignore-missing") {
		t.Errorf("snap with an unmatched token: exit %d, want %d naming %q and --ignore-missing", r.code, ExitFailure, typo)
	}
	var rep []struct {
		VMName  string `json:"vmname"`
		Outcome string `json:"outcome"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || len(rep) != 1 || rep[0].VMName != d.Name || rep[0].Outcome != "ok" {
		t.Errorf("the matched guest was not snapshotted and reported first: %v %+v", err, rep)
	}
	if i, j := strings.Index(r.stderr, "WARNING"), strings.LastIndex(r.stderr, "ERROR"); i < 0 || j < i {
		t.Errorf("stderr should warn first and fail last:\n%s", r.stderr)
	}
	if rows := status(t, d.Name, "miss"); len(rows) != 1 {
		t.Errorf("%d snapshots of the matched guest, want 1", len(rows))
	}

	r = run(t, "--ignore-missing", "--vmid", sel, "--timestamp-format", fmtMS, "snap", "--label", "miss", "--keep", "2", "--quiesce", "off")
	if r.code != ExitOK || !strings.Contains(r.stderr, "WARNING") || !strings.Contains(r.stderr, typo) {
		t.Errorf("--ignore-missing: exit %d, want 0 with a warning", r.code)
	}
	if rows := status(t, d.Name, "miss"); len(rows) != 2 {
		t.Errorf("%d snapshots after the second run, want 2", len(rows))
	}

	// Reading commands report the same way, after their output.
	r = run(t, "--vmid", sel, "--timestamp-format", fmtMS, "-o", "json", "status", "--label", "miss")
	var rows []statusRow
	if r.code != ExitFailure || json.Unmarshal([]byte(r.stdout), &rows) != nil || len(rows) != 2 {
		t.Errorf("status with an unmatched token: exit %d, %d rows; want %d after both rows", r.code, len(rows), ExitFailure)
	}
	if r := run(t, "--ignore-missing", "--vmid", typo, "snap", "--label", "miss", "--keep", "2"); r.code != ExitFailure || !strings.Contains(r.stderr, "matches none") {
		t.Errorf("a selection matching nothing with --ignore-missing: exit %d, want %d", r.code, ExitFailure)
	}
	if !strings.Contains(mustRun(t, "--help").stdout, "--ignore-missing") {
		t.Errorf("--help does not explain --ignore-missing")
	}
}

// TestLazyTags runs the commands over a driver that reads tags only when asked
// (driver.TagLoader): selecting by tag, listing and tagging still see every tag, and
// a selection without @tag- reads none.
func TestLazyTags(t *testing.T) {
	bed := testbed.Libvirt(t)
	a := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	b := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	var loads, loaded atomic.Int32
	lazy := func(d driver.Driver) driver.Driver { return lazyTags{Driver: d, loads: &loads, loaded: &loaded} }

	runWrapped(t, lazy, "vm", "tag", a.Name, "blue")
	if r := runWrapped(t, lazy, "vm", "tag", a.Name, "web"); r.code != 0 {
		t.Fatalf("vm tag: exit %d", r.code)
	}
	if rows, _ := vmList(t, a.Name); len(rows) != 1 || strings.Join(rows[0].Tags, ",") != "blue,web" {
		t.Errorf("after tagging blue, then web: %+v (a second tag must not drop the first)", rows)
	}
	runWrapped(t, lazy, "vm", "untag", a.Name, "blue")
	runWrapped(t, lazy, "vm", "tag", a.Name, "blue")

	r := runWrapped(t, lazy, "--vmid", a.Name+","+b.Name, "-o", "json", "vm", "list")
	var rows []vmRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 2 {
		t.Fatalf("vm list: %v, %d rows", err, len(rows))
	}
	for _, row := range rows {
		want := map[string]string{a.Name: "web,blue", b.Name: ""}[row.Name]
		if row.Tags == nil || strings.Join(row.Tags, ",") != want {
			t.Errorf("vm list shows %s with tags %#v, want %q", row.Name, row.Tags, want)
		}
	}

	r = runWrapped(t, lazy, "--vmid", "@tag-web,-@tag-none,"+b.Name, "-o", "json", "vm", "list")
	rows = nil
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("vm list: %v", err)
	}
	var got []string
	for _, row := range rows {
		if row.Name == a.Name || row.Name == b.Name {
			got = append(got, row.Name)
		}
	}
	if strings.Join(got, ",") != a.Name+","+b.Name {
		t.Errorf("--vmid @tag-web,%s selects %v", b.Name, got)
	}

	loads.Store(0)
	if r := runWrapped(t, lazy, "--vmid", a.Name, "--timestamp-format", fmtMS, "status"); r.code != 0 {
		t.Fatalf("status: exit %d", r.code)
	}
	if r := runWrapped(t, lazy, "snapshot", "list", a.Name); r.code != 0 {
		t.Fatalf("snapshot list: exit %d", r.code)
	}
	if n := loads.Load(); n != 0 {
		t.Errorf("a selection without @tag- read tags %d times", n)
	}
	// A tag no other test's guest has: the VM argument selects by it too.
	only := "only-" + a.Name[strings.LastIndex(a.Name, "-")+1:]
	runWrapped(t, lazy, "vm", "tag", a.Name, only)
	if r := runWrapped(t, lazy, "-o", "json", "snapshot", "info", "@tag-"+only, "--current"); !strings.Contains(r.stderr, a.Name+" has no current snapshot") {
		t.Errorf("snapshot info @tag-%s: exit %d, does not find %s", only, r.code, a.Name)
	}
	if loads.Load() == 0 {
		t.Errorf("a snapshot command with @tag- did not read tags")
	}
}
