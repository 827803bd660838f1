package cli

// End-to-end tests of the commands against the real libvirtd and QEMU, on throwaway
// domains from the test bed. Selections always name this test's own domains, because
// other test packages (and a user's demo guest) share the daemon.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/autosnap/autosnap/internal/driver/libvirt"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestMain lets the test binary serve as the freeze watchdog, which a run starts by
// re-executing its own executable.
func TestMain(m *testing.M) {
	for _, a := range os.Args[1:] {
		if a == watchdogCommandName {
			os.Exit(Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
		}
	}
	// Journals the tests write stay out of the host's state directory.
	os.Exit(testbed.RunWithStateDir(m))
}

// fmtMS gives names millisecond resolution so tests need not wait between runs.
const fmtMS = "yyMMddHHmmssfff"

type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func run(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	start := time.Now()
	code := Main(context.Background(), args, &out, &errb)
	r := result{out.String(), errb.String(), code, time.Since(start)}
	t.Logf("autosnap %s → %d (%s)\n%s%s", strings.Join(args, " "), code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
	return r
}

func mustRun(t *testing.T, args ...string) result {
	t.Helper()
	r := run(t, args...)
	if r.code != 0 {
		t.Fatalf("autosnap %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

type vmRow struct {
	Node     string   `json:"node"`
	VMID     *int     `json:"vmid"`
	Name     string   `json:"name"`
	UUID     string   `json:"uuid"`
	State    string   `json:"state"`
	Kind     string   `json:"kind"`
	Template bool     `json:"template"`
	Tags     []string `json:"tags"`
}

func vmList(t *testing.T, sel string) ([]vmRow, result) {
	t.Helper()
	args := []string{"-o", "json", "vm", "list"}
	if sel != "" {
		args = append([]string{"--vmid", sel}, args...)
	}
	r := run(t, args...)
	var rows []vmRow
	if r.code == 0 {
		if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
			t.Fatalf("vm list JSON: %v\n%s", err, r.stdout)
		}
	}
	return rows, r
}

func names(rows []vmRow) string {
	var n []string
	for _, r := range rows {
		n = append(n, r.Name)
	}
	sort.Strings(n)
	return strings.Join(n, ",")
}

func sorted(ns ...string) string {
	sort.Strings(ns)
	return strings.Join(ns, ",")
}

type statusRow struct {
	Node        string `json:"node"`
	VMID        string `json:"vmid"`
	VMName      string `json:"vmname"`
	Name        string `json:"name"`
	Label       string `json:"label"`
	Time        string `json:"time"`
	Parent      string `json:"parent"`
	Description string `json:"description"`
	VMState     bool   `json:"vmstate"`
	Location    string `json:"location"`
	Consistency string `json:"consistency"`
}

func status(t *testing.T, vm, label string) []statusRow {
	t.Helper()
	args := []string{"--vmid", vm, "--timestamp-format", fmtMS, "-o", "json", "status"}
	if label != "" {
		args = append(args, "--label", label)
	}
	r := mustRun(t, args...)
	var rows []statusRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, r.stdout)
	}
	for _, row := range rows {
		if _, err := time.Parse(time.RFC3339, row.Time); err != nil {
			t.Errorf("status time %q is not RFC 3339", row.Time)
		}
	}
	return rows
}

func TestVMListStates(t *testing.T) {
	bed := testbed.Libvirt(t)
	run1 := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 8})
	paused := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	off := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	rows, r := vmList(t, "")
	if r.code != 0 {
		t.Fatalf("vm list: exit %d", r.code)
	}
	want := map[string]string{run1.Name: "running", paused.Name: "paused", off.Name: "shutoff"}
	host, _ := os.Hostname()
	for _, row := range rows {
		st, ok := want[row.Name]
		if !ok {
			continue
		}
		delete(want, row.Name)
		if row.State != st || row.Kind != "qemu" || row.Template || row.Tags == nil {
			t.Errorf("%s: %+v, want state %s", row.Name, row, st)
		}
		if (row.VMID != nil) != (st != "shutoff") {
			t.Errorf("%s: vmid %v for a %s domain", row.Name, row.VMID, st)
		}
		if row.Node != host {
			t.Errorf("%s: node %q, want the host name %q", row.Name, row.Node, host)
		}
	}
	if len(want) > 0 {
		t.Errorf("vm list misses %v", want)
	}
	for _, f := range []string{"text", "unicode", "unicodeAlt", "markdown", "html", "csv", "jsonpretty"} {
		r := mustRun(t, "--vmid", run1.Name, "-o", f, "vm", "list")
		if !strings.Contains(r.stdout, run1.Name) {
			t.Errorf("-o %s does not show the guest:\n%s", f, r.stdout)
		}
	}
}

func TestSelectionTokens(t *testing.T) {
	bed := testbed.Libvirt(t)
	a := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 8})
	b := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 8})
	c := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	mustRun(t, "vm", "tag", a.Name, "blue", "web")
	mustRun(t, "vm", "tag", c.Name, "blue")
	all, _ := vmList(t, strings.Join([]string{a.Name, b.Name, c.Name}, ","))
	ids := map[string]int{}
	host := ""
	for _, r := range all {
		if r.VMID != nil {
			ids[r.Name] = *r.VMID
		}
		host = r.Node
	}
	lo, hi := ids[a.Name], ids[b.Name]
	if lo > hi {
		lo, hi = hi, lo
	}
	// The common suffix of a's random part, the prefix "ast-<pid>-" of all three.
	prefix := a.Name[:strings.LastIndex(a.Name, "-")+1]
	ours := sorted(a.Name, b.Name, c.Name)
	cases := []struct {
		sel, want string
	}{
		{strings.ToUpper(a.Name), a.Name},
		{fmt.Sprint(ids[a.Name]), a.Name},
		{"-" + a.Name + "," + fmt.Sprintf("%d:%d", lo, hi) + "," + a.Name, b.Name}, // exclusion wins wherever it stands
		{fmt.Sprintf("%d:%d", lo, hi), sorted(a.Name, b.Name)},
		{strings.ToUpper(a.UUID), a.Name},
		{"%" + b.Name[len(prefix)+1:], b.Name},        // ends with
		{prefix + "%", ours},                          // starts with
		{"%" + b.Name[3:len(b.Name)-2] + "%", b.Name}, // contains
		{"@tag-BLUE", sorted(a.Name, c.Name)},
		{"@tag-blue,-@tag-web", c.Name},
		{prefix + "%,-" + c.Name, sorted(a.Name, b.Name)},
		{prefix + "%,-" + fmt.Sprintf("%d:%d", lo, hi), c.Name}, // -a:b only excludes
		{"@all-" + host + ",-@tag-blue", ""},                    // checked below: b in, a/c out
	}
	for _, tc := range cases {
		rows, r := vmList(t, tc.sel)
		if r.code != 0 {
			t.Errorf("--vmid %q: exit %d: %s", tc.sel, r.code, r.stderr)
			continue
		}
		got := names(rows)
		if strings.Contains(tc.sel, ":") {
			// Other test packages share the daemon: domains they start between a and
			// b get ids inside the range. Only ours are judged.
			var mine []vmRow
			for _, r := range rows {
				if strings.HasPrefix(r.Name, prefix) {
					mine = append(mine, r)
				}
			}
			got = names(mine)
		}
		if tc.want == "" {
			if !strings.Contains(got, b.Name) || strings.Contains(got, a.Name) || strings.Contains(got, c.Name) {
				t.Errorf("--vmid %q: got %s", tc.sel, got)
			}
			continue
		}
		if got != tc.want {
			t.Errorf("--vmid %q selects %s, want %s", tc.sel, got, tc.want)
		}
	}
	for _, sel := range []string{"@all", "all", "@node-" + host, "all-" + strings.ToUpper(host)} {
		rows, _ := vmList(t, sel)
		if got := names(rows); !strings.Contains(got, a.Name) || !strings.Contains(got, c.Name) {
			t.Errorf("--vmid %s misses our guests: %s", sel, got)
		}
	}
	if _, r := vmList(t, "@bogus-x"); r.code != ExitUsage {
		t.Errorf("unknown token: exit %d, want %d", r.code, ExitUsage)
	}
	if _, r := vmList(t, "no-such-guest-"+a.Name); r.code != ExitFailure || !strings.Contains(r.stderr, "matches none") {
		t.Errorf("selection matching nothing: exit %d, stderr %q", r.code, r.stderr)
	}
	mustRun(t, "vm", "untag", a.Name, "web")
	rows, _ := vmList(t, a.Name)
	if len(rows) != 1 || strings.Join(rows[0].Tags, ",") != "blue" {
		t.Errorf("after untag: %+v", rows)
	}
}

// snap runs one snap job on vm with the label and keep, in millisecond names.
func snap(t *testing.T, vm, label string, keep int, extra ...string) result {
	t.Helper()
	args := append([]string{"--vmid", vm, "--timestamp-format", fmtMS, "snap", "--label", label, "--keep", fmt.Sprint(keep)}, extra...)
	return run(t, args...)
}

func TestSnapRetentionKeepsDataAndChains(t *testing.T) {
	bed := testbed.Libvirt(t)
	for _, tc := range []struct {
		state testbed.State
		disks int
	}{{testbed.Running, 3}, {testbed.Paused, 1}, {testbed.Shutoff, 3}, {testbed.Running, 1}} {
		t.Run(fmt.Sprintf("%s/%ddisks", tc.state, tc.disks), func(t *testing.T) {
			d := bed.NewDomain(t, testbed.DomainSpec{State: tc.state, Disks: tc.disks, DiskMiB: 16})
			const n = 4096
			write := func(round int) {
				for i := 0; i < tc.disks; i++ {
					target := "vd" + string(rune('a'+i))
					if tc.state == testbed.Shutoff {
						top := d.Chain(t, target)[0]
						if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %d %d", round, round*n, n), top).CombinedOutput(); err != nil {
							t.Fatalf("qemu-io: %v %s", err, out)
						}
						continue
					}
					d.WriteDisk(t, target, int64(round*n), byte(round), n)
				}
			}
			verify := func(upTo int) {
				for i := 0; i < tc.disks; i++ {
					target := "vd" + string(rune('a'+i))
					top := d.Chain(t, target)[0]
					for r := 1; r <= upTo; r++ {
						if got := testbed.ReadImage(t, top, int64(r*n), n); !bytes.Equal(got, bytes.Repeat([]byte{byte(r)}, n)) {
							t.Fatalf("disk %s: round %d data lost", target, r)
						}
					}
				}
			}
			var created []string
			for round := 1; round <= 4; round++ {
				write(round)
				r := snap(t, d.Name, "ret", 2)
				if r.code != 0 {
					t.Fatalf("snap round %d: exit %d", round, r.code)
				}
				verify(round)
				for i := 0; i < tc.disks; i++ {
					want := min(round, 2) + 1
					if got := len(d.Chain(t, "vd"+string(rune('a'+i)))); got != want {
						t.Fatalf("round %d: disk %d chain has %d images, want %d (keep 2)", round, i, got, want)
					}
				}
				rows := status(t, d.Name, "ret")
				if len(rows) != min(round, 2) {
					t.Fatalf("round %d: %d snapshots, want %d", round, len(rows), min(round, 2))
				}
				last := rows[len(rows)-1]
				created = append(created, last.Name)
				wantCons := "crash"
				if tc.state == testbed.Shutoff {
					wantCons = "offline"
				}
				if last.Label != "ret" || last.Description != "autosnap" || last.Location != "external" || last.Consistency != wantCons || last.VMName != d.Name {
					t.Errorf("status row %+v", last)
				}
				if round >= 3 && !strings.Contains(r.stdout, "Remove snapshot: "+created[round-3]) {
					t.Errorf("round %d did not remove the oldest, %s", round, created[round-3])
				}
			}
			// clean --keep 0 merges everything back into the original images.
			mustRun(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "clean", "--label", "ret", "--keep", "0")
			verify(4)
			for i := 0; i < tc.disks; i++ {
				chain := d.Chain(t, "vd"+string(rune('a'+i)))
				if len(chain) != 1 || chain[0] != d.Disks[i].Path {
					t.Errorf("after clean --keep 0 disk %d is %v, want the original image", i, chain)
				}
			}
			if rows := status(t, d.Name, ""); len(rows) != 0 {
				t.Errorf("snapshots left: %+v", rows)
			}
		})
	}
}

// TestForeignSnapshotsUntouched: user snapshots and names that only look like ours are
// never counted or removed; cv4pve-autosnap's snapshots are ours and rotate out.
func TestForeignSnapshotsUntouched(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	virshSnap := func(name, desc string) {
		file := filepath.Join(d.Dir, name+".qcow2")
		out, err := exec.Command("virsh", "snapshot-create-as", d.Name, name, desc, "--disk-only", "--atomic",
			"--diskspec", "vda,file="+file).CombinedOutput()
		if err != nil {
			t.Fatalf("virsh snapshot-create-as %s: %v %s", name, err, out)
		}
	}
	virshSnap("before-upgrade", "mine, hands off")
	virshSnap("autohourly230101000000000", "cv4pve-autosnap")
	virshSnap("autohourlyfoo", "autosnap")            // ours by description, but no timestamp
	virshSnap("autodaily230101000000000", "autosnap") // another label
	for i := 0; i < 2; i++ {
		if r := snap(t, d.Name, "hourly", 2); r.code != 0 {
			t.Fatalf("snap: exit %d", r.code)
		}
	}
	out, _ := exec.Command("virsh", "snapshot-list", d.Name, "--name").Output()
	list := string(out)
	for _, keep := range []string{"before-upgrade", "autohourlyfoo", "autodaily230101000000000"} {
		if !strings.Contains(list, keep) {
			t.Errorf("%s was removed; it is not ours", keep)
		}
	}
	if strings.Contains(list, "autohourly230101000000000") {
		t.Errorf("cv4pve-autosnap's old hourly snapshot was not rotated out:\n%s", list)
	}
	rows := status(t, d.Name, "")
	if len(rows) != 3 { // 2 hourly + the daily
		t.Errorf("status without --label: %d rows, want 3: %+v", len(rows), rows)
	}
}

func TestStateSnapshot(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 8})
	mustRun(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "mem", "--keep", "1", "--state")
	rows := status(t, d.Name, "mem")
	if len(rows) != 1 || !rows[0].VMState {
		t.Fatalf("status after --state: %+v", rows)
	}
	mems, _ := filepath.Glob(filepath.Join(d.Dir, "*.mem"))
	if len(mems) != 1 {
		t.Fatalf("memory files: %v", mems)
	}
	mustRun(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "mem", "--keep", "1", "--state")
	if _, err := os.Stat(mems[0]); !os.IsNotExist(err) {
		t.Errorf("memory file of the removed snapshot is still there: %v", err)
	}
	vms, _ := vmList(t, d.Name)
	if len(vms) != 1 || vms[0].State != "running" {
		t.Errorf("guest after memory snapshots: %+v", vms)
	}
}

// hookScript writes a hook that appends one JSON-ish line per call with every variable.
func hookScript(t *testing.T, dir, extra string) (script, log string) {
	log = filepath.Join(dir, "hook.log")
	script = filepath.Join(dir, "hook.sh")
	body := "#!/bin/sh\n" + extra + "\nenv | grep -E '^(CV4PVE_)?AUTOSNAP_' | sort | tr '\\n' ' ' >> " + log + "\necho >> " + log + "\necho hook-output-$CV4PVE_AUTOSNAP_PHASE\n"
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	return script, log
}

func parseHookLog(t *testing.T, log string) []map[string]string {
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var calls []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		m := map[string]string{}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			m[k] = v
		}
		calls = append(calls, m)
	}
	return calls
}

func TestHooks(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	script, log := hookScript(t, t.TempDir(), "")
	snap(t, d.Name, "hk", 1)
	os.Remove(log)
	r := snap(t, d.Name, "hk", 1, "--script", script)
	if r.code != 0 {
		t.Fatal("snap with hook failed")
	}
	if !strings.Contains(r.stdout, "hook-output-snap-create-pre") {
		t.Errorf("hook output not shown with the guest's output")
	}
	calls := parseHookLog(t, log)
	var phases []string
	for _, c := range calls {
		phases = append(phases, c["CV4PVE_AUTOSNAP_PHASE"])
		for k, v := range c {
			if strings.HasPrefix(k, "CV4PVE_AUTOSNAP_") && c["AUTOSNAP_"+strings.TrimPrefix(k, "CV4PVE_AUTOSNAP_")] != v {
				t.Errorf("%s=%s but AUTOSNAP_ twin differs", k, v)
			}
		}
	}
	want := "snap-job-start,snap-create-pre,snap-remove-pre,snap-remove-post,snap-create-post,snap-job-end"
	if got := strings.Join(phases, ","); got != want {
		t.Fatalf("phases %s, want %s", got, want)
	}
	rows := status(t, d.Name, "hk")
	newName := rows[0].Name
	byPhase := map[string]map[string]string{}
	for _, c := range calls {
		byPhase[c["CV4PVE_AUTOSNAP_PHASE"]] = c
	}
	check := func(phase, key, want string) {
		t.Helper()
		if got := byPhase[phase]["CV4PVE_AUTOSNAP_"+key]; got != want {
			t.Errorf("%s: %s=%q, want %q", phase, key, got, want)
		}
	}
	for _, p := range []string{"snap-job-start", "snap-job-end"} {
		check(p, "VMID", "")
		check(p, "VMNAME", "")
		check(p, "SNAP_NAME", "")
		check(p, "STATE", "1")
		check(p, "LABEL", "hk")
		check(p, "KEEP", "1")
	}
	check("snap-create-pre", "VMNAME", d.Name)
	check("snap-create-pre", "VMTYPE", "qemu")
	check("snap-create-pre", "SNAP_NAME", newName)
	check("snap-create-pre", "STATE", "1")
	check("snap-create-pre", "VMSTATE", "0")
	check("snap-remove-pre", "STATE", "0")
	check("snap-remove-post", "STATE", "1")
	check("snap-create-post", "SNAP_NAME", newName)
	check("snap-job-start", "DURATION", "0")
	if byPhase["snap-create-post"]["AUTOSNAP_NODE"] == "" {
		t.Errorf("AUTOSNAP_NODE empty")
	}
	for _, p := range []string{"snap-create-post", "snap-remove-post", "snap-job-end"} {
		if byPhase[p]["CV4PVE_AUTOSNAP_DURATION"] == "0" || byPhase[p]["CV4PVE_AUTOSNAP_DURATION"] == "" {
			t.Errorf("%s: DURATION not set", p)
		}
	}
	if removed := byPhase["snap-remove-pre"]["CV4PVE_AUTOSNAP_SNAP_NAME"]; removed == "" || removed == newName {
		t.Errorf("snap-remove-pre SNAP_NAME = %q", removed)
	}

	// clean phases, and a failing hook does not fail the run.
	bad, badLog := hookScript(t, t.TempDir(), "")
	os.WriteFile(bad, append([]byte(strings.Replace(readFile(t, bad), "#!/bin/sh\n", "#!/bin/sh\ntrap 'exit 7' EXIT\n", 1)), '\n'), 0o700)
	r = run(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "clean", "--label", "hk", "--keep", "0", "--script", bad)
	if r.code != 0 || !strings.Contains(r.stdout, "exited with status 7") {
		t.Errorf("failing hook: exit %d, output must report status 7", r.code)
	}
	phases = nil
	for _, c := range parseHookLog(t, badLog) {
		phases = append(phases, c["CV4PVE_AUTOSNAP_PHASE"])
	}
	if got := strings.Join(phases, ","); got != "clean-job-start,snap-remove-pre,snap-remove-post,clean-job-end" {
		t.Errorf("clean phases %s", got)
	}

	// A failed creation: snap-create-abort replaces the rest, nothing is removed.
	snap(t, d.Name, "hk", 1)
	kept := status(t, d.Name, "hk")
	abortScript, abortLog := hookScript(t, t.TempDir(), "")
	r = run(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "hk", "--keep", "1", "--quiesce", "on", "--script", abortScript)
	if r.code != ExitFailure {
		t.Errorf("--quiesce on for a guest without agent: exit %d", r.code)
	}
	phases = nil
	calls = parseHookLog(t, abortLog)
	for _, c := range calls {
		phases = append(phases, c["CV4PVE_AUTOSNAP_PHASE"])
	}
	if got := strings.Join(phases, ","); got != "snap-job-start,snap-create-pre,snap-create-abort,snap-job-end" {
		t.Errorf("failed creation phases: %s", got)
	}
	if c := calls[len(calls)-1]; c["CV4PVE_AUTOSNAP_STATE"] != "0" {
		t.Errorf("snap-job-end STATE=%s after a failure, want 0", c["CV4PVE_AUTOSNAP_STATE"])
	}
	if c := calls[2]; c["CV4PVE_AUTOSNAP_STATE"] != "0" || c["CV4PVE_AUTOSNAP_DURATION"] == "0" {
		t.Errorf("snap-create-abort: %v", c)
	}
	if after := status(t, d.Name, "hk"); len(after) != 1 || after[0].Name != kept[0].Name {
		t.Errorf("a failed creation removed old snapshots: %+v", after)
	}
}

// TestRemoveAbort: a merge that fails (the base image is immutable) aborts that guest's
// retention with snap-remove-abort, keeps its snapshots and fails the run.
func TestRemoveAbort(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	snap(t, d.Name, "ab", 3)
	snap(t, d.Name, "ab", 3)
	before := status(t, d.Name, "ab")
	base := d.Disks[0].Path
	if out, err := exec.Command("chattr", "+i", base).CombinedOutput(); err != nil {
		t.Fatalf("chattr: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", base).Run() })
	script, log := hookScript(t, t.TempDir(), "")
	r := run(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "ab", "--keep", "1", "--script", script)
	if r.code != ExitFailure {
		t.Errorf("failed removal: exit %d, want 1", r.code)
	}
	var phases []string
	for _, c := range parseHookLog(t, log) {
		phases = append(phases, c["CV4PVE_AUTOSNAP_PHASE"])
	}
	if got := strings.Join(phases, ","); got != "snap-job-start,snap-create-pre,snap-remove-pre,snap-remove-abort,snap-job-end" {
		t.Errorf("phases: %s", got)
	}
	exec.Command("chattr", "-i", base).Run()
	after := status(t, d.Name, "ab")
	if len(after) != 3 || after[0].Name != before[0].Name {
		t.Errorf("after a failed merge: %+v", after)
	}
	// Nothing half-merged: the chain is intact and a later run succeeds.
	mustRun(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "clean", "--label", "ab", "--keep", "0")
	if c := d.Chain(t, "vda"); len(c) != 1 || c[0] != base {
		t.Errorf("chain after clean: %v", c)
	}
}

func TestOnlyRunning(t *testing.T) {
	bed := testbed.Libvirt(t)
	on := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 8})
	paused := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	off := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	r := run(t, "--vmid", strings.Join([]string{on.Name, paused.Name, off.Name}, ","), "--timestamp-format", fmtMS, "snap", "--label", "or", "--keep", "1", "--only-running")
	if r.code != 0 {
		t.Fatalf("--only-running: exit %d (skips are not failures)", r.code)
	}
	if strings.Count(r.stdout, "Skip VM '--only-running' parameter used!") != 2 {
		t.Errorf("expected 2 skips:\n%s", r.stdout)
	}
	if len(status(t, on.Name, "or")) != 1 || len(status(t, paused.Name, "or")) != 0 || len(status(t, off.Name, "or")) != 0 {
		t.Errorf("--only-running snapshotted the wrong guests")
	}
}

func readFile(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDryRun(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, Disks: 2, DiskMiB: 8})
	snap(t, d.Name, "dry", 2)
	snap(t, d.Name, "dry", 2)
	before := status(t, d.Name, "dry")
	chainBefore := d.Chain(t, "vda")
	script, log := hookScript(t, t.TempDir(), "")
	r := run(t, "--dry-run", "--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "dry", "--keep", "2", "--script", script)
	if r.code != 0 {
		t.Fatalf("dry-run snap: exit %d", r.code)
	}
	// Exactly what a real run would do: create one, remove the oldest (cv4pve is off by one here).
	if strings.Count(r.stdout, "Remove snapshot:") != 1 || !strings.Contains(r.stdout, "Remove snapshot: "+before[0].Name) {
		t.Errorf("dry run should show removing exactly %s:\n%s", before[0].Name, r.stdout)
	}
	if _, err := os.Stat(log); !os.IsNotExist(err) {
		t.Errorf("dry run ran the hook")
	}
	r = run(t, "--dry-run", "--vmid", d.Name, "--timestamp-format", fmtMS, "clean", "--label", "dry", "--keep", "0")
	if strings.Count(r.stdout, "Remove snapshot:") != 2 {
		t.Errorf("dry-run clean --keep 0 should list both snapshots")
	}
	after := status(t, d.Name, "dry")
	if len(after) != 2 || after[0].Name != before[0].Name || after[1].Name != before[1].Name {
		t.Errorf("dry run changed snapshots: %+v", after)
	}
	if got := d.Chain(t, "vda"); strings.Join(got, " ") != strings.Join(chainBefore, " ") {
		t.Errorf("dry run changed the chain: %v → %v", chainBefore, got)
	}
	// The real run then does what the dry run said.
	r = snap(t, d.Name, "dry", 2)
	if !strings.Contains(r.stdout, "Remove snapshot: "+before[0].Name) || strings.Count(r.stdout, "Remove snapshot:") != 1 {
		t.Errorf("real run differs from the dry run:\n%s", r.stdout)
	}
}

func TestQuiesceModes(t *testing.T) {
	bed := testbed.Libvirt(t)
	guest := bed.NewDomain(t, testbed.DomainSpec{Guest: true, Writer: true, DiskMiB: 32})
	plain := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 8})
	r := snap(t, guest.Name, "q", 3)
	if r.code != 0 || !strings.Contains(r.stdout, "quiesced through the guest agent") {
		t.Fatalf("auto on a guest with an agent did not quiesce:\n%s", r.stdout)
	}
	if r := snap(t, guest.Name, "q", 3, "--quiesce", "on"); r.code != 0 {
		t.Errorf("--quiesce on with an agent: exit %d", r.code)
	}
	if r := snap(t, guest.Name, "q", 3, "--quiesce", "off"); r.code != 0 || !strings.Contains(r.stdout, "crash-consistent") {
		t.Errorf("--quiesce off must say crash-consistent")
	}
	rows := status(t, guest.Name, "q")
	var cons []string
	for _, row := range rows {
		cons = append(cons, row.Consistency)
	}
	if strings.Join(cons, ",") != "quiesced,quiesced,crash" {
		t.Errorf("consistency recorded: %v", cons)
	}
	if st := guest.Agent(t, `{"execute":"guest-fsfreeze-status"}`); !strings.Contains(st, "thawed") {
		t.Errorf("guest left %s", st)
	}
	r = snap(t, plain.Name, "q", 1)
	if r.code != 0 || !strings.Contains(r.stdout, "crash-consistent only") {
		t.Errorf("auto without agent must fall back and say so")
	}
	before := len(status(t, plain.Name, "q"))
	if r := snap(t, plain.Name, "q", 1, "--quiesce", "on"); r.code != ExitFailure {
		t.Errorf("--quiesce on without agent: exit %d, want 1", r.code)
	}
	if after := len(status(t, plain.Name, "q")); after != before {
		t.Errorf("a failed quiesce changed the snapshots: %d → %d", before, after)
	}
}

func TestStorageGuard(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	r := snap(t, d.Name, "st", 1, "--max-perc-storage", "0.01")
	if r.code != ExitFailure || !strings.Contains(r.stdout, "max-perc-storage") {
		t.Errorf("full storage: exit %d", r.code)
	}
	if rows := status(t, d.Name, "st"); len(rows) != 0 {
		t.Errorf("snapshot taken despite full storage")
	}
}

func TestExitCodes(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	cases := []struct {
		args []string
		want int
	}{
		{[]string{"--vmid", d.Name, "snap", "--label", "ok", "--keep", "1"}, ExitOK},
		{[]string{"--vmid", d.Name, "snap", "--label", "bad label", "--keep", "1"}, ExitUsage},
		{[]string{"--vmid", d.Name, "snap", "--label", "x", "--keep", "0"}, ExitUsage},
		{[]string{"--vmid", d.Name, "snap", "--label", "x"}, ExitUsage},
		{[]string{"--vmid", d.Name, "--timestamp-format", "ddMMyy", "snap", "--label", "x", "--keep", "1"}, ExitUsage},
		{[]string{"--vmid", d.Name, "--timestamp-format", "hh", "snap", "--label", "x", "--keep", "1"}, ExitUsage},
		{[]string{"--vmid", d.Name, "snap", "--label", "waytoolonglabelthatbreaksthefortylimit", "--keep", "1"}, ExitUsage},
		{[]string{"snap", "--label", "x", "--keep", "1"}, ExitUsage}, // no --vmid
		{[]string{"--vmid", d.Name, "snap", "--label", "x", "--keep", "1", "--script", "/nonexistent"}, ExitFailure},
		{[]string{"--vmid", d.Name, "nosuchcommand"}, ExitUsage},
		{[]string{"--bogus-flag", "vm", "list"}, ExitUsage},
		{[]string{"--host", "pve.example:8006", "vm", "list"}, ExitUsage}, // no credentials
		{[]string{"--host", "127.0.0.1:1", "--api-token", "root@pam!x=y", "vm", "list"}, ExitConnect},
		{[]string{"--host", "xen:///system", "vm", "list"}, ExitUsage},
		{[]string{"--host", "qemu+unix:///system?socket=/nonexistent.sock", "vm", "list"}, ExitConnect},
		{[]string{"--vmid", "no-such-vm-" + d.Name, "snap", "--label", "x", "--keep", "1"}, ExitFailure},
	}
	for _, tc := range cases {
		if r := run(t, tc.args...); r.code != tc.want {
			t.Errorf("%v: exit %d, want %d\n%s", tc.args, r.code, tc.want, r.stderr)
		} else if r.code != 0 && !strings.Contains(r.stderr, "ERROR:") {
			t.Errorf("%v: no ERROR line on stderr", tc.args)
		}
	}
	help := mustRun(t, "snap", "--help")
	if !strings.Contains(help.stdout, "EXIT STATUS") {
		t.Errorf("snap --help has no EXIT STATUS section")
	}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		if r := mustRun(t, "completion", sh); len(r.stdout) < 100 {
			t.Errorf("completion %s is empty", sh)
		}
	}
}

// freezeProxy forwards a unix socket to libvirtd until frozen, then holds every byte:
// a daemon that stopped answering mid-run.
type freezeProxy struct {
	path   string
	frozen atomic.Bool
	ln     net.Listener
}

func newFreezeProxy(t *testing.T) *freezeProxy {
	p := &freezeProxy{path: filepath.Join(t.TempDir(), "proxy.sock")}
	ln, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.ln = ln
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", "/var/run/libvirt/libvirt-sock")
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); up.Close() })
			go p.pipe(up, c)
			go p.pipe(c, up)
		}
	}()
	return p
}

func (p *freezeProxy) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		for p.frozen.Load() {
			time.Sleep(10 * time.Millisecond)
			if err != nil {
				return
			}
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func TestHungLibvirtTimesOut(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	p := newFreezeProxy(t)
	dir := t.TempDir()
	signal := filepath.Join(dir, "go")
	script, _ := hookScript(t, dir, "[ \"$AUTOSNAP_PHASE\" = snap-create-pre ] && touch "+signal+" && sleep 1")
	go func() {
		for i := 0; i < 600; i++ {
			if _, err := os.Stat(signal); err == nil {
				p.frozen.Store(true)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	const timeout = 3
	r := run(t, "--host", "qemu+unix:///system?socket="+p.path, "--timeout", fmt.Sprint(timeout),
		"--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "hung", "--keep", "1", "--script", script)
	if r.code != ExitFailure {
		t.Errorf("hung daemon: exit %d, want 1", r.code)
	}
	if !strings.Contains(r.stdout, "did not answer in time") {
		t.Errorf("the error does not say libvirt hung:\n%s", r.stdout)
	}
	// create (3 s) + the bounded wait for an abandoned create (3 s) + close (3 s) + hook (1 s).
	if r.took > 4*timeout*time.Second+5*time.Second {
		t.Errorf("run took %s with --timeout %d", r.took, timeout)
	}
}

func TestConcurrentRunsLockGuests(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	slow, _ := hookScript(t, dir, "[ \"$AUTOSNAP_PHASE\" = snap-create-pre ] && touch "+started+" && sleep 4")
	var wg sync.WaitGroup
	var first result
	wg.Add(1)
	go func() {
		defer wg.Done()
		first = snap(t, d.Name, "lk", 5, "--script", slow)
	}()
	for i := 0; i < 500; i++ {
		if _, err := os.Stat(started); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// While the first run holds the guest, a second one with a short timeout gives up…
	r := run(t, "--timeout", "1", "--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "lk", "--keep", "5")
	if r.code != ExitFailure || !strings.Contains(r.stdout, "locked by another autosnap run") {
		t.Errorf("second run: exit %d, want a lock failure", r.code)
	}
	// …and one with a long timeout waits its turn and succeeds.
	r = run(t, "--timeout", "20", "--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "lk", "--keep", "5")
	wg.Wait()
	if first.code != 0 || r.code != 0 {
		t.Fatalf("runs: %d and %d", first.code, r.code)
	}
	if rows := status(t, d.Name, "lk"); len(rows) != 2 {
		t.Errorf("%d snapshots after two serialized runs, want 2", len(rows))
	}
	if got := len(d.Chain(t, "vda")); got != 3 {
		t.Errorf("chain has %d images, want 3", got)
	}
}

func TestManyGuestsParallelOutputInOrder(t *testing.T) {
	bed := testbed.Libvirt(t)
	var doms []*testbed.Domain
	var sel []string
	for i := 0; i < 5; i++ {
		d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
		doms = append(doms, d)
		sel = append(sel, d.Name)
	}
	// One guest fails (its disk vanished); the others must still be done.
	if err := os.Remove(doms[2].Disks[0].Path); err != nil {
		t.Fatal(err)
	}
	r := run(t, "--max-parallel", "3", "--vmid", strings.Join(sel, ","), "--timestamp-format", fmtMS, "-o", "json", "snap", "--label", "par", "--keep", "1")
	if r.code != ExitFailure {
		t.Errorf("exit %d, want 1 (one guest failed)", r.code)
	}
	var rep []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("JSON report: %v\n%s", err, r.stdout)
	}
	if len(rep) != 5 {
		t.Fatalf("report has %d guests", len(rep))
	}
	for i, g := range rep {
		want := "ok"
		if i == 2 {
			want = "failed"
		}
		if g["vmname"] != doms[i].Name || g["outcome"] != want {
			t.Errorf("report[%d] = %v, want %s %s", i, g, doms[i].Name, want)
		}
	}
	// Retention over many guests at once: chains stay keep+1 deep on every healthy guest.
	ok := append(append([]string{}, sel[:2]...), sel[3:]...)
	for round := 0; round < 3; round++ {
		mustRun(t, "--max-parallel", "4", "--vmid", strings.Join(ok, ","), "--timestamp-format", fmtMS, "snap", "--label", "par", "--keep", "2")
	}
	for i, d := range doms {
		if i == 2 {
			continue
		}
		if got := len(d.Chain(t, "vda")); got != 3 {
			t.Errorf("%s: chain has %d images after 3 parallel runs with keep 2, want 3", d.Name, got)
		}
	}
	mustRun(t, "--max-parallel", "4", "--vmid", strings.Join(ok, ","), "--timestamp-format", fmtMS, "clean", "--label", "par", "--keep", "0")
	for i, d := range doms {
		if i != 2 && len(d.Chain(t, "vda")) != 1 {
			t.Errorf("%s: clean --keep 0 left a chain of %d", d.Name, len(d.Chain(t, "vda")))
		}
	}
	// Guest blocks are never interleaved and come in selection order.
	pos := -1
	for _, d := range doms {
		j := strings.Index(r.stderr, "/"+d.Name+") -----")
		if j < pos {
			t.Errorf("output of %s is out of order", d.Name)
		}
		pos = j
	}
}

func TestMaxChainDepth(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	for i := 0; i < 2; i++ {
		if r := snap(t, d.Name, "cd", 5, "--max-chain-depth", "2"); r.code != 0 {
			t.Fatalf("snapshot %d within the depth: exit %d", i+1, r.code)
		}
	}
	r := snap(t, d.Name, "cd", 5, "--max-chain-depth", "2")
	if r.code != ExitFailure || !strings.Contains(r.stdout, "--max-chain-depth 2") {
		t.Errorf("third snapshot beyond --max-chain-depth 2: exit %d", r.code)
	}
	if got := len(d.Chain(t, "vda")); got != 3 {
		t.Errorf("chain has %d images, want 3 (base + 2 overlays)", got)
	}
}

// TestMergeRefusesWhenAKeptStateIsGone: if a cut-off earlier merge left a kept
// snapshot naming a deleted file, nothing on that disk is merged (the base may be the
// only copy of that snapshot's point in time).
func TestMergeRefusesWhenAKeptStateIsGone(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	snap(t, d.Name, "gone", 5)
	snap(t, d.Name, "gone", 5)
	rows := status(t, d.Name, "gone")
	chain := d.Chain(t, "vda") // [O2, O1, base]; O1 is the second snapshot's state
	baseSum := testbed.ImageSum(t, chain[2])
	if err := os.Remove(chain[1]); err != nil {
		t.Fatal(err)
	}
	r := run(t, "snapshot", "delete", d.Name, rows[0].Name)
	// Either the chain cannot be read (qemu-img) or the planner refuses: both fail closed.
	if r.code != ExitFailure || !strings.Contains(r.stderr, chain[1]) {
		t.Errorf("delete with a kept snapshot's state missing: exit %d, want 1 naming %s", r.code, chain[1])
	}
	if n := len(status(t, d.Name, "gone")); n != 2 {
		t.Errorf("%d snapshots left, want both", n)
	}
	if got := testbed.ImageSum(t, chain[2]); got != baseSum {
		t.Errorf("the base image was modified")
	}
}
