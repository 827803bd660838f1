package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/testbed"
)

type snapRow struct {
	Name        string `json:"name"`
	Parent      string `json:"parent"`
	Current     bool   `json:"current"`
	State       string `json:"state"`
	Location    string `json:"location"`
	Autosnap    bool   `json:"autosnap"`
	Description string `json:"description"`
	Disks       []struct {
		Name, Snapshot, File string
	} `json:"disks"`
}

func snapshotList(t *testing.T, vm string, flags ...string) []snapRow {
	t.Helper()
	r := mustRun(t, append([]string{"-o", "json", "snapshot", "list", vm}, flags...)...)
	var rows []snapRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("snapshot list JSON: %v\n%s", err, r.stdout)
	}
	return rows
}

func snapNames(rows []snapRow) string {
	var n []string
	for _, r := range rows {
		n = append(n, r.Name)
	}
	return strings.Join(n, ",")
}

// tree renders "name<parent" pairs, sorted, to compare hierarchies.
func tree(rows []snapRow) string {
	var n []string
	for _, r := range rows {
		n = append(n, r.Name+"<"+r.Parent)
	}
	sort.Strings(n)
	return strings.Join(n, " ")
}

// writeAny writes a pattern into disk target: through QEMU for an active domain,
// into the active image with qemu-io for a shut-off one.
func writeAny(t *testing.T, d *testbed.Domain, target string, off int64, pattern byte, n int) {
	t.Helper()
	if d.Spec.State != testbed.Shutoff {
		d.WriteDisk(t, target, off, pattern, n)
		return
	}
	top := d.Chain(t, target)[0]
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %d %d", pattern, off, n), top).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io on %s: %v: %s", top, err, out)
	}
}

// checkData verifies that the guest's disk target shows pattern i at offset i*n for
// every i in want, and pattern 0 where gone lists.
func checkData(t *testing.T, d *testbed.Domain, target string, n int, want, gone []int) {
	t.Helper()
	top := d.Chain(t, target)[0]
	for _, i := range want {
		if got := testbed.ReadImage(t, top, int64(i*n), n); !bytes.Equal(got, bytes.Repeat([]byte{byte(i)}, n)) {
			t.Errorf("%s: data written at level %d lost (reads %x…)", target, i, got[:4])
		}
	}
	for _, i := range gone {
		if got := testbed.ReadImage(t, top, int64(i*n), n); !bytes.Equal(got, make([]byte, n)) {
			t.Errorf("%s: data of the abandoned branch (level %d) is visible", target, i)
		}
	}
}

func TestSnapshotCreateDiskspecInfoXML(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{Disks: 2, DiskMiB: 8})
	mustRun(t, "snapshot", "create", d.Name, "s1", "--description", "before upgrade", "--diskspec", "vdb,snapshot=no", "--quiesce", "off")
	if got := len(d.Chain(t, "vda")); got != 2 {
		t.Errorf("vda chain has %d images, want 2", got)
	}
	if got := d.Chain(t, "vdb"); len(got) != 1 {
		t.Errorf("vdb was excluded but has the chain %v", got)
	}
	r := mustRun(t, "snapshot", "create", d.Name, "--quiesce", "off")
	rows := snapshotList(t, d.Name)
	// Both were made within a second or two: order them by parent.
	if len(rows) == 2 && rows[1].Name == "s1" {
		rows[0], rows[1] = rows[1], rows[0]
	}
	if len(rows) != 2 || rows[0].Name != "s1" || rows[0].Autosnap || rows[0].Description != "before upgrade" {
		t.Fatalf("list: %+v", rows)
	}
	if def := rows[1].Name; !strings.Contains(r.stdout, def) || len(def) < 10 || strings.Trim(def, "0123456789") != "" {
		t.Errorf("default name %q is not a Unix timestamp", def)
	}
	var vdb string
	for _, dk := range rows[0].Disks {
		if dk.Name == "vdb" {
			vdb = dk.Snapshot
		}
	}
	if vdb != "no" {
		t.Errorf("s1 records vdb as %q, want no: %+v", vdb, rows[0].Disks)
	}
	if !rows[1].Current || rows[1].Parent != "s1" || rows[1].State != "disk-snapshot" || rows[1].Location != "external" {
		t.Errorf("second snapshot: %+v", rows[1])
	}

	info := mustRun(t, "snapshot", "info", d.Name, "s1")
	for _, want := range []string{"before upgrade", "Children", "external"} {
		if !strings.Contains(info.stdout, want) {
			t.Errorf("info lacks %q:\n%s", want, info.stdout)
		}
	}
	mustRun(t, "-o", "json", "snapshot", "info", d.Name, "--current")
	if r := run(t, "snapshot", "parent", d.Name, "s1"); r.code != 1 {
		t.Errorf("parent of a root: exit %d, want 1", r.code)
	}
	if r := mustRun(t, "snapshot", "parent", d.Name, "--current"); strings.TrimSpace(r.stdout) != "s1" {
		t.Errorf("parent --current = %q", r.stdout)
	}
	mustRun(t, "snapshot", "current", d.Name, "s1")
	if r := mustRun(t, "snapshot", "current", d.Name); strings.TrimSpace(r.stdout) != "s1" {
		t.Errorf("current after setting s1 = %q", r.stdout)
	}
	if got := len(d.Chain(t, "vda")); got != 3 {
		t.Errorf("setting current changed the chain: %d images", got)
	}
	x := mustRun(t, "snapshot", "dumpxml", d.Name, "s1")
	if !strings.Contains(x.stdout, "<name>s1</name>") || !strings.Contains(x.stdout, "<domainsnapshot>") {
		t.Errorf("dumpxml:\n%s", x.stdout)
	}

	mustRun(t, "snapshot", "edit", d.Name, "s1", "--description", "autosnap", "--rename", "s1b")
	rows = snapshotList(t, d.Name)
	if len(rows) == 2 && rows[1].Name == "s1b" {
		rows[0], rows[1] = rows[1], rows[0]
	}
	if rows[0].Name != "s1b" || !rows[0].Autosnap || rows[1].Parent != "s1b" || !rows[0].Current {
		t.Errorf("after edit: %+v", rows)
	}
	for _, f := range []string{"text", "unicode", "unicodeAlt", "markdown", "html", "csv", "jsonpretty"} {
		r := mustRun(t, "-o", f, "snapshot", "list", d.Name, "--tree", "--parent")
		if !strings.Contains(r.stdout, "s1b") {
			t.Errorf("-o %s list --tree lacks s1b:\n%s", f, r.stdout)
		}
	}
	if r := run(t, "snapshot", "create", d.Name, "x", "--diskspec", "vda,snapshot=bogus"); r.code != 2 {
		t.Errorf("bad --diskspec: exit %d, want 2", r.code)
	}
	if r := run(t, "snapshot", "create", d.Name, "x", "--diskspec", "vda,snapshot=internal", "--diskspec", "vdb,snapshot=internal"); r.code != 1 || !strings.Contains(r.stderr, "running") {
		t.Errorf("internal snapshot of a running guest: exit %d: %s", r.code, r.stderr)
	}
}

func TestSnapshotInternalOffline(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	mustRun(t, "snapshot", "create", d.Name, "i1", "--diskspec", "vda,snapshot=internal")
	mustRun(t, "snapshot", "create", d.Name, "e1")
	if rows := snapshotList(t, d.Name, "--internal"); snapNames(rows) != "i1" {
		t.Errorf("--internal: %s", snapNames(rows))
	}
	if rows := snapshotList(t, d.Name, "--external"); snapNames(rows) != "e1" {
		t.Errorf("--external: %s", snapNames(rows))
	}
	// On top of an overlay an internal snapshot would be lost when it is merged.
	if r := run(t, "snapshot", "create", d.Name, "i2", "--diskspec", "vda,snapshot=internal"); r.code != 1 || !strings.Contains(r.stderr, "overlays") {
		t.Errorf("internal snapshot on an overlay: exit %d: %s", r.code, r.stderr)
	}
	mustRun(t, "snapshot", "delete", d.Name, "e1")
	mustRun(t, "snapshot", "delete", d.Name, "i1")
	if rows := snapshotList(t, d.Name); len(rows) != 0 {
		t.Errorf("left: %s", snapNames(rows))
	}
}

// TestSnapshotTreeDelete builds s1 → s2 → s3 → s4 with data written at every level,
// checks the list filters on it, deletes with --children-only and --children, and
// verifies every byte, for a running and a shut-off guest.
func TestSnapshotTreeDelete(t *testing.T) {
	for _, st := range []testbed.State{testbed.Running, testbed.Shutoff} {
		t.Run(st.String(), func(t *testing.T) {
			bed := testbed.Libvirt(t)
			d := bed.NewDomain(t, testbed.DomainSpec{State: st, DiskMiB: 8})
			const n = 64 << 10
			writeAny(t, d, "vda", 0, 0x10, n) // level 0 uses pattern 0x10 at 0
			levels := []int{}
			for i := 1; i <= 4; i++ {
				mustRun(t, "snapshot", "create", d.Name, fmt.Sprintf("s%d", i))
				writeAny(t, d, "vda", int64(i*n), byte(i), n)
				levels = append(levels, i)
			}
			rows := snapshotList(t, d.Name)
			if tree(rows) != "s1< s2<s1 s3<s2 s4<s3" {
				t.Fatalf("tree: %s", tree(rows))
			}
			for _, c := range []struct {
				flags []string
				want  string
			}{
				{[]string{"--roots"}, "s1"},
				{[]string{"--leaves"}, "s4"},
				{[]string{"--no-leaves"}, "s1,s2,s3"},
				{[]string{"--from", "s2"}, "s3"},
				{[]string{"--from", "s2", "--descendants"}, "s3,s4"},
				{[]string{"--current"}, "s4"},
				{[]string{"--external"}, "s1,s2,s3,s4"},
				{[]string{"--internal"}, ""},
			} {
				if got := snapNames(snapshotList(t, d.Name, c.flags...)); got != c.want {
					t.Errorf("list %v = %q, want %q", c.flags, got, c.want)
				}
			}
			state := "--inactive"
			if st == testbed.Running {
				state = "--disk-only"
			}
			if got := snapNames(snapshotList(t, d.Name, state)); got != "s1,s2,s3,s4" {
				t.Errorf("list %s = %q", state, got)
			}
			if got := snapNames(snapshotList(t, d.Name, "--active")); got != "" {
				t.Errorf("list --active = %q", got)
			}
			r := mustRun(t, "snapshot", "list", d.Name, "--name")
			if strings.Fields(r.stdout)[0] != "s1" {
				t.Errorf("--name:\n%s", r.stdout)
			}

			mustRun(t, "snapshot", "delete", d.Name, "s2", "--children-only")
			if got := tree(snapshotList(t, d.Name)); got != "s1< s2<s1" {
				t.Errorf("after --children-only: %s", got)
			}
			if got := len(d.Chain(t, "vda")); got != 3 {
				t.Errorf("chain after --children-only: %d images, want 3", got)
			}
			checkData(t, d, "vda", n, levels, nil)

			mustRun(t, "snapshot", "delete", d.Name, "s1", "--children")
			if rows := snapshotList(t, d.Name); len(rows) != 0 {
				t.Errorf("after --children: %s", snapNames(rows))
			}
			chain := d.Chain(t, "vda")
			if len(chain) != 1 || chain[0] != d.Disks[0].Path {
				t.Errorf("chain after deleting everything: %v, want [%s]", chain, d.Disks[0].Path)
			}
			checkData(t, d, "vda", n, levels, nil)
			if got := testbed.ReadImage(t, chain[0], 0, n); !bytes.Equal(got, bytes.Repeat([]byte{0x10}, n)) {
				t.Errorf("level 0 data lost")
			}
			leftovers, _ := filepath.Glob(filepath.Join(d.Dir, "*.s[0-9]*.qcow2"))
			if len(leftovers) > 0 {
				t.Errorf("overlays left behind: %v", leftovers)
			}
		})
	}
}

// TestSnapshotDeleteBranches simulates what a revert leaves: s2's state image gets a
// second overlay R that the guest now uses, beside s2's own overlay under s3, so the
// data written after s2 (levels 2, 3) is no longer the guest's. Deleting s2 must not
// write into the shared image; deleting the rest merges the live branch and drops the
// abandoned one.
func TestSnapshotDeleteBranches(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	const n = 64 << 10
	for i := 1; i <= 3; i++ {
		mustRun(t, "snapshot", "create", d.Name, fmt.Sprintf("s%d", i))
		writeAny(t, d, "vda", int64(i*n), byte(i), n)
	}
	// "Revert" to s2: a fresh overlay on s2's state image (s1's overlay).
	chain := d.Chain(t, "vda") // [O_s3, O_s2, O_s1, base]
	shared := chain[2]
	r := filepath.Join(d.Dir, "revert.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", shared, r).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	x := d.XML(t)
	x.Devices.Disks[0].Source.File.File = r
	x.Devices.Disks[0].BackingStore = nil
	s, _ := x.Marshal()
	if _, err := bed.Conn.DomainDefineXML(s); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "snapshot", "current", d.Name, "s2")
	writeAny(t, d, "vda", 4*n, 4, n)
	mustRun(t, "snapshot", "create", d.Name, "s4")
	writeAny(t, d, "vda", 5*n, 5, n)
	if got := tree(snapshotList(t, d.Name)); got != "s1< s2<s1 s3<s2 s4<s2" {
		t.Fatalf("tree: %s", got)
	}
	before := testbed.ImageSum(t, shared)
	mustRun(t, "snapshot", "delete", d.Name, "s2")
	if got := tree(snapshotList(t, d.Name)); got != "s1< s3<s1 s4<s1" {
		t.Errorf("after deleting s2: %s", got)
	}
	if testbed.ImageSum(t, shared) != before {
		t.Errorf("the branch point %s was written", shared)
	}
	checkData(t, d, "vda", n, []int{1, 4, 5}, []int{2, 3})
	mustRun(t, "snapshot", "delete", d.Name, "s1", "--children")
	chain = d.Chain(t, "vda")
	if len(chain) != 1 {
		t.Errorf("chain after deleting everything: %v", chain)
	}
	checkData(t, d, "vda", n, []int{1, 4, 5}, []int{2, 3})
}

func TestSnapshotDeleteMetadataAndRedefine(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 8})
	for i := 1; i <= 3; i++ {
		mustRun(t, "snapshot", "create", d.Name, fmt.Sprintf("m%d", i))
	}
	mustRun(t, "snapshot", "create", d.Name, "m4")
	mustRun(t, "snapshot", "current", d.Name, "m3")
	want := tree(snapshotList(t, d.Name))
	dir := t.TempDir()
	var order []string
	for _, row := range snapshotList(t, d.Name, "--tree") {
		x := mustRun(t, "snapshot", "dumpxml", d.Name, row.Name)
		f := filepath.Join(dir, row.Name+".xml")
		if err := os.WriteFile(f, []byte(x.stdout), 0o600); err != nil {
			t.Fatal(err)
		}
		order = append(order, row.Name)
	}
	chain := d.Chain(t, "vda")
	mustRun(t, "snapshot", "delete", d.Name, "m1", "--children", "--metadata")
	if rows := snapshotList(t, d.Name); len(rows) != 0 {
		t.Fatalf("metadata left: %s", snapNames(rows))
	}
	for _, f := range chain {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("--metadata removed %s", f)
		}
	}
	if got := d.Chain(t, "vda"); strings.Join(got, " ") != strings.Join(chain, " ") {
		t.Errorf("--metadata changed the chain: %v", got)
	}
	for _, n := range order {
		args := []string{"snapshot", "redefine", d.Name, filepath.Join(dir, n+".xml")}
		if n == "m3" {
			args = append(args, "--current")
		}
		mustRun(t, args...)
	}
	rows := snapshotList(t, d.Name)
	if got := tree(rows); got != want {
		t.Errorf("redefined tree %s, want %s", got, want)
	}
	for _, r := range rows {
		if r.Current != (r.Name == "m3") {
			t.Errorf("%s current=%v", r.Name, r.Current)
		}
	}
	// The redefined snapshots are whole again: deleting merges their files.
	mustRun(t, "snapshot", "delete", d.Name, "m1", "--children")
	if got := len(d.Chain(t, "vda")); got != 1 {
		t.Errorf("chain after deleting the redefined tree: %d images", got)
	}
}

func TestSnapshotChainCollapse(t *testing.T) {
	for _, st := range []testbed.State{testbed.Running, testbed.Shutoff} {
		t.Run(st.String(), func(t *testing.T) {
			bed := testbed.Libvirt(t)
			d := bed.NewDomain(t, testbed.DomainSpec{State: st, Disks: 2, DiskMiB: 8})
			const n = 64 << 10
			for i := 1; i <= 3; i++ {
				mustRun(t, "snapshot", "create", d.Name, fmt.Sprintf("c%d", i))
				writeAny(t, d, "vda", int64(i*n), byte(i), n)
				writeAny(t, d, "vdb", int64(i*n), byte(i), n)
			}
			var rows []struct {
				Disk      string   `json:"disk"`
				Depth     int      `json:"depth"`
				File      string   `json:"file"`
				Virtual   uint64   `json:"virtual_size"`
				Actual    uint64   `json:"actual_size"`
				Snapshots []string `json:"snapshots"`
			}
			r := mustRun(t, "-o", "json", "snapshot", "chain", d.Name)
			if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
				t.Fatal(err)
			}
			if len(rows) != 8 || rows[0].Virtual != 8<<20 || rows[0].Actual == 0 || rows[3].Snapshots[0] != "c1" {
				t.Errorf("chain rows: %+v", rows)
			}
			mustRun(t, "snapshot", "chain", d.Name)
			r = run(t, "snapshot", "chain", "collapse", d.Name, "--disk", "vdb")
			if r.code != 1 || !strings.Contains(r.stderr, "c1, c2, c3") {
				t.Errorf("collapse with snapshots: exit %d: %s", r.code, r.stderr)
			}
			if got := len(d.Chain(t, "vdb")); got != 4 {
				t.Errorf("a refused collapse changed the chain: %d", got)
			}
			// The disks' own images are not autosnap's: the collapse writes into them only
			// when they are named.
			mustRun(t, "snapshot", "chain", "collapse", d.Name, "--disk", "vdb", "--forget-snapshots", "--force-base", d.Disks[1].Path)
			if got := d.Chain(t, "vdb"); len(got) != 1 || got[0] != d.Disks[1].Path {
				t.Errorf("vdb chain after collapse: %v", got)
			}
			if got := len(d.Chain(t, "vda")); got != 4 {
				t.Errorf("collapsing vdb changed vda: %d images", got)
			}
			checkData(t, d, "vdb", n, []int{1, 2, 3}, nil)
			checkData(t, d, "vda", n, []int{1, 2, 3}, nil)
			if rows := snapshotList(t, d.Name); len(rows) != 0 {
				t.Errorf("snapshots left: %s", snapNames(rows))
			}
			mustRun(t, "snapshot", "chain", "collapse", d.Name, "--force-base", d.Disks[0].Path, "--force-base", d.Disks[1].Path)
			if got := len(d.Chain(t, "vda")); got != 1 {
				t.Errorf("vda chain after collapse: %d", got)
			}
			checkData(t, d, "vda", n, []int{1, 2, 3}, nil)
		})
	}
}

// TestSnapshotDeleteAfterRevert runs the real revert on a running guest: s1 → s2 → s3,
// revert to s2 (its overlay stays as s3's state), s4 on the new branch; then deletes
// with children across both branches while the guest runs.
func TestSnapshotDeleteAfterRevert(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 8})
	const n = 64 << 10
	for i := 1; i <= 3; i++ {
		mustRun(t, "snapshot", "create", d.Name, fmt.Sprintf("s%d", i))
		d.WriteDisk(t, "vda", int64(i*n), byte(i), n)
	}
	mustRun(t, "snapshot", "revert", d.Name, "s2", "--force", "--running")
	d.Dom = lookupDomain(t, bed, d)
	d.WriteDisk(t, "vda", 4*n, 4, n)
	mustRun(t, "snapshot", "create", d.Name, "s4")
	d.WriteDisk(t, "vda", 5*n, 5, n)
	if got := tree(snapshotList(t, d.Name)); got != "s1< s2<s1 s3<s2 s4<s2" {
		t.Fatalf("tree after revert: %s", got)
	}
	mustRun(t, "snapshot", "delete", d.Name, "s3")
	checkData(t, d, "vda", n, []int{1, 4, 5}, []int{2, 3})
	mustRun(t, "snapshot", "delete", d.Name, "s2", "--children")
	if got := tree(snapshotList(t, d.Name)); got != "s1<" {
		t.Errorf("after deleting s2 with children: %s", got)
	}
	checkData(t, d, "vda", n, []int{1, 4, 5}, []int{2, 3})
	mustRun(t, "snapshot", "delete", d.Name, "s1")
	if chain := d.Chain(t, "vda"); len(chain) != 1 || chain[0] != d.Disks[0].Path {
		t.Errorf("chain at the end: %v", chain)
	}
	checkData(t, d, "vda", n, []int{1, 4, 5}, []int{2, 3})
	if files, _ := filepath.Glob(filepath.Join(d.Dir, "*qcow2")); len(files) != 1 {
		t.Errorf("files left: %v", files)
	}
}

// lookupDomain returns the handle of a domain restarted by the code under test (its
// ID changed).
func lookupDomain(t *testing.T, bed *testbed.Bed, d *testbed.Domain) golibvirt.Domain {
	t.Helper()
	dom, err := bed.Conn.DomainLookupByUUID(d.Dom.UUID)
	if err != nil {
		t.Fatal(err)
	}
	return dom
}
