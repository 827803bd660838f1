package cli

// cv4pve mode end to end against the Proxmox VE emulator: every text cv4pve-autosnap
// prints for snap, clean and status (in each of its output formats) is pinned by a
// golden file under testdata/cv4pve/, checked line by line against cv4pve-autosnap
// 2.x's sources (AutoSnapEngine.cs, Commands.cs, TableGenerator.cs; see
// /work/shared/reference/cv4pve-autosnap.md and docs/cv4pve-mode.md). Run with
// -update-cv4pve to rewrite them, then review the diff against those sources.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver/proxmox"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/pveemu"
)

// The Proxmox VE driver gives cv4pve mode its version, storage table and agent hint.
var (
	_ cvClusterReporter = (*proxmox.Driver)(nil)
	_ cvAgentReporter   = (*proxmox.Driver)(nil)
)

var updateCV4PVE = flag.Bool("update-cv4pve", false, "rewrite testdata/cv4pve/*.golden")

// cvClock is a clock that moves by step at each reading, so durations in the output
// are fixed: 00:00:00.8560000 per reading.
type cvClock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

func (c *cvClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.t
	c.t = c.t.Add(c.step)
	return t
}

// cvRun runs autosnap with args, as the program named name, with the clock injected
// and snapshot names in UTC.
func cvRun(t *testing.T, name string, clk *cvClock, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := execute(context.Background(), args, &out, &errb, func(g *GlobalOptions) {
		if invokedAsCV4PVE(name) {
			g.compat.mode = compatCV4PVE
		}
		if clk != nil {
			g.compat.now = clk.now
		}
		g.adjustJob = func(j *engine.Job) { j.Location = time.UTC }
	})
	r := result{stdout: out.String(), stderr: errb.String(), code: code}
	t.Logf("%s %s → %d\n%s%s", name, strings.Join(args, " "), code, r.stdout, r.stderr)
	return r
}

// cvArgs are the connection options as a cv4pve user gives them (token, and the
// certificate pinned, which cv4pve does not verify by default).
func (e *pveEnv) cvArgs(a ...string) []string {
	return append([]string{"--host", e.hosts(), "--api-token", pveTokenID + "=" + pveSecret, "--fingerprint", e.c.Fingerprint()}, a...)
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "cv4pve", name+".golden")
	if *updateCV4PVE {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update-cv4pve to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s:\n--- got ---\n%s\n--- want ---\n%s", name, path, got, want)
	}
}

// cvCluster is the fleet every golden runs against: a VM with the agent and two old
// hourly snapshots, a stopped VM without agent option (hint), a template, a container,
// a VM on a storage fuller than 95 %, a VM whose snapshot task fails and a container
// with a bind mount.
func cvCluster(t *testing.T) *pveEnv {
	e := newPVE(t, "pve1", "pve2")
	e.c.AddStorage("pve2", "tank", "zfspool", 1000e9, 970e9, true, "images,rootdir")
	e.c.AddStorage("pve2", "backup", "nfs", 2000e9, 1000e9, false, "backup")
	add := func(g pveemu.Guest) { e.c.AddGuest(g) }
	add(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running", Agent: "1", AgentRunning: true})
	add(pveemu.Guest{Node: "pve1", VMID: 101, Name: "web2", Kind: "qemu", Status: "stopped"})
	add(pveemu.Guest{Node: "pve1", VMID: 102, Name: "tpl", Kind: "qemu", Status: "stopped", Template: true, Agent: "1"})
	add(pveemu.Guest{Node: "pve2", VMID: 200, Name: "ct1", Kind: "lxc", Status: "running"})
	add(pveemu.Guest{Node: "pve2", VMID: 201, Name: "db1", Kind: "qemu", Status: "running", Agent: "1", AgentRunning: true,
		Disks: map[string]string{"scsi0": "tank:vm-201-disk-0,size=8G"}})
	add(pveemu.Guest{Node: "pve2", VMID: 203, Name: "ct2", Kind: "lxc", Status: "running",
		Disks: map[string]string{"rootfs": "local-lvm:subvol-203-disk-0,size=8G", "mp0": "/mnt/host,mp=/data"}})
	add(pveemu.Guest{Node: "pve2", VMID: 202, Name: "db2", Kind: "qemu", Status: "running", Agent: "enabled=1", AgentRunning: true})
	base := time.Date(2026, 9, 28, 5, 0, 2, 0, time.UTC)
	e.c.AddSnapshot(100, "autohourly260928050002", "cv4pve-autosnap", base, false)
	e.c.AddSnapshot(100, "autohourly260928060002", "cv4pve-autosnap", base.Add(time.Hour), true)
	e.c.AddSnapshot(100, "before-upgrade", "kept by hand", base.Add(90*time.Minute), false)
	e.c.AddSnapshot(200, "autodaily260927000000", "cv4pve-autosnap\n", base.Add(-29*time.Hour), false)
	return e
}

func TestCV4PVESnapCleanGolden(t *testing.T) {
	e := cvCluster(t)
	e.c.FailNextTask(202, "VM 202 qmp command 'blockdev-snapshot-internal-sync' failed - Input/output error")
	clk := &cvClock{t: time.Date(2026, 9, 28, 7, 0, 2, 0, time.UTC), step: 856 * time.Millisecond}
	r := cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "100,101,102,200,201,202,203", "snap", "--label", "hourly", "--keep", "2")...)
	if r.code != 1 {
		t.Errorf("snap with a failed and a storage-skipped guest: exit %d, want 1", r.code)
	}
	checkGolden(t, "snap", r.stdout)
	// Independently of the golden: AutoSnapEngine.SnapAsync's header template, its
	// values at column 19, .NET's True/False, and the PadLeft(25,10,10,10,12,12) table.
	header := "ACTION Snap\nPVE Version:      8.2.4\nVMs:              100,101,102,200,201,202,203\nLabel:            hourly\n" +
		"Keep:             2\nState:            False\nOnly running:     False\nTimeout:          30 sec.\n" +
		"Timestamp format: yyMMddHHmmss\nMax % Storage :   95%\n" +
		"                  Storage      Type     Valid   Used %    Disk Size  Disk Usage\n"
	if !strings.HasPrefix(r.stdout, header) {
		t.Errorf("snap header is not cv4pve's:\n%s\nwant it to start with:\n%s", r.stdout, header)
	}
	for _, l := range []string{"----- VM 101 qemu stopped -----\nVM 101 consider enabling QEMU agent see https://pve.proxmox.com/wiki/Qemu-guest-agent\n",
		"----- VM 102 qemu stopped -----\nSkip VM is template\n----- VM 200",
		"Remove snapshot: autohourly260928050002\nVM execution 00:00:00.8560000\n"} {
		if !strings.Contains(r.stdout, l) {
			t.Errorf("snap output lacks cv4pve's %q", l)
		}
	}
	if got := strings.Join(e.snapNames(100), ","); got != "autohourly260928060002,before-upgrade,autohourly260928070002" {
		t.Errorf("VM 100 after snap --keep 2: %s", got)
	}

	r = cvRun(t, "autosnap", clk, e.cvArgs("--compat", "cv4pve", "--vmid", "100,101,102,200", "clean", "--label", "hourly", "--keep", "1")...)
	if r.code != 0 {
		t.Errorf("clean: exit %d, want 0", r.code)
	}
	checkGolden(t, "clean", r.stdout)

	// A removal whose task fails ends that guest's removals and fails the run.
	e.c.AddSnapshot(200, "autoweekly260901000000", "cv4pve-autosnap", time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC), false)
	e.c.AddSnapshot(200, "autoweekly260908000000", "cv4pve-autosnap", time.Date(2026, 9, 8, 0, 0, 0, 0, time.UTC), false)
	e.c.FailNextTask(200, "zfs error: cannot destroy snapshot: dataset is busy")
	r = cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "100,200", "clean", "--label", "weekly", "--keep", "0")...)
	if r.code != 1 {
		t.Errorf("clean with a failed removal: exit %d, want 1", r.code)
	}
	checkGolden(t, "clean_fail", r.stdout)

	r = cvRun(t, CV4PVEName, clk, e.cvArgs("--dry-run", "--vmid", "100", "snap", "--label", "hourly", "--keep", "1", "--state")...)
	if r.code != 0 {
		t.Errorf("dry-run snap: exit %d, want 0", r.code)
	}
	checkGolden(t, "snap_dryrun", r.stdout)

	r = cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "999,nosuch", "snap", "--label", "hourly", "--keep", "1")...)
	if r.code != 1 {
		t.Errorf("snap selecting nothing: exit %d, want 1", r.code)
	}
	checkGolden(t, "snap_notfound", r.stdout)

	// A task that outlasts --timeout.
	e.c.SetTaskDuration(3 * time.Second)
	r = cvRun(t, CV4PVEName, clk, e.cvArgs("--timeout", "1", "--vmid", "101", "snap", "--label", "slow", "--keep", "1")...)
	e.c.SetTaskDuration(30 * time.Millisecond)
	if r.code != 1 {
		t.Errorf("snap past --timeout: exit %d, want 1", r.code)
	}
	checkGolden(t, "snap_timeout", r.stdout)
}

func TestCV4PVEStatusGolden(t *testing.T) {
	e := cvCluster(t)
	for _, f := range []string{"Text", "Html", "Markdown", "Json", "JsonPretty"} {
		r := cvRun(t, CV4PVEName, nil, e.cvArgs("--vmid", "100,101,200", "status", "-o", f)...)
		if r.code != 0 {
			t.Errorf("status -o %s: exit %d", f, r.code)
		}
		checkGolden(t, "status_"+strings.ToLower(f), r.stdout)
	}
	r := cvRun(t, CV4PVEName, nil, e.cvArgs("--vmid", "100,200", "status", "--label", "daily")...)
	checkGolden(t, "status_label", r.stdout)
	r = cvRun(t, CV4PVEName, nil, e.cvArgs("--vmid", "101", "status", "-o", "json")...)
	if r.stdout != "[]" {
		t.Errorf("status of a guest without snapshots: %q, want []", r.stdout)
	}
	r = cvRun(t, CV4PVEName, nil, e.cvArgs("--vmid", "999", "status")...)
	if r.stdout != "" || r.code != 0 {
		t.Errorf("status selecting nothing: %q exit %d, want nothing and 0", r.stdout, r.code)
	}
}

// TestCV4PVEStatusJSONTypes checks the JSON contract cv4pve users parse: exactly the
// seven keys in cv4pve's order, VM a number and every other value a string.
func TestCV4PVEStatusJSONTypes(t *testing.T) {
	e := cvCluster(t)
	r := cvRun(t, CV4PVEName, nil, e.cvArgs("--vmid", "100,200", "status", "-o", "json")...)
	var rows []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, r.stdout)
	}
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3", len(rows))
	}
	for _, row := range rows {
		if len(row) != len(cvStatusHeaders) {
			t.Errorf("row has keys %v, want exactly %v", row, cvStatusHeaders)
		}
		for _, k := range cvStatusHeaders {
			v, ok := row[k]
			switch {
			case !ok:
				t.Errorf("row %v lacks %q", row, k)
			case k == "VM":
				if _, num := v.(float64); !num {
					t.Errorf("VM is %T (%v), want a number", v, v)
				}
			default:
				if _, str := v.(string); !str {
					t.Errorf("%s is %T (%v), want a string", k, v, v)
				}
			}
		}
	}
	// Key order as cv4pve writes it.
	want := `{"NODE":"pve1","VM":100,"TIME":"26/09/28 05:00:02","PARENT":"no-parent","NAME":"autohourly260928050002","DESCRIPTION":"cv4pve-autosnap","VM STATUS":""}`
	if !strings.HasPrefix(r.stdout, "["+want+",") {
		t.Errorf("first object:\n%s\nwant\n%s", r.stdout, want)
	}
	if rows[1]["VM STATUS"] != "X" || rows[1]["PARENT"] != "autohourly260928050002" {
		t.Errorf("second row (RAM, parent): %v", rows[1])
	}
}

// TestCV4PVEExitCodes: cv4pve mode exits 0 or 1 only; native keeps 2 (usage) and 3
// (connection).
func TestCV4PVEExitCodes(t *testing.T) {
	e := cvCluster(t)
	cases := []struct {
		name         string
		args         []string
		native, cv4p int
	}{
		{"success", e.cvArgs("--vmid", "100", "status"), 0, 0},
		{"usage: snap without --keep", e.cvArgs("--vmid", "100", "snap", "--label", "x"), 2, 1},
		{"usage: bad timestamp format", e.cvArgs("--vmid", "100", "--timestamp-format", "hh", "snap", "--label", "x", "--keep", "1"), 2, 1},
		{"connection refused", []string{"--host", "127.0.0.1:1", "--api-token", pveTokenID + "=" + pveSecret, "--vmid", "100", "status"}, 3, 1},
		{"bad credentials", []string{"--host", e.hosts(), "--api-token", pveTokenID + "=00000000-0000-0000-0000-000000000000", "--fingerprint", e.c.Fingerprint(), "--vmid", "100", "status"}, 3, 1},
		{"guest failed", e.cvArgs("--vmid", "201", "snap", "--label", "x", "--keep", "1"), 1, 1},
	}
	for _, tc := range cases {
		if r := cvRun(t, "autosnap", nil, tc.args...); r.code != tc.native {
			t.Errorf("%s, native: exit %d, want %d", tc.name, r.code, tc.native)
		}
		if r := cvRun(t, CV4PVEName, nil, tc.args...); r.code != tc.cv4p {
			t.Errorf("%s, as %s: exit %d, want %d", tc.name, CV4PVEName, r.code, tc.cv4p)
		}
		if r := cvRun(t, "autosnap", nil, append([]string{"--compat", "cv4pve"}, tc.args...)...); r.code != tc.cv4p {
			t.Errorf("%s, --compat cv4pve: exit %d, want %d", tc.name, r.code, tc.cv4p)
		}
	}
}

// TestCV4PVEInvocation: the program name selects the mode, and --compat native
// restores the native output under that name.
func TestCV4PVEInvocation(t *testing.T) {
	for name, want := range map[string]bool{"cv4pve-autosnap": true, "/usr/bin/cv4pve-autosnap": true, `cv4pve-autosnap.exe`: true,
		"autosnap": false, "/usr/local/bin/autosnap": false, "cv4pve-autosnap-old": false} {
		if got := invokedAsCV4PVE(name); got != want {
			t.Errorf("invokedAsCV4PVE(%q) = %v, want %v", name, got, want)
		}
	}
	e := cvCluster(t)
	var out, errb bytes.Buffer
	code := MainNamed(context.Background(), "/usr/bin/cv4pve-autosnap", e.cvArgs("--vmid", "200", "status", "-o", "json"), &out, &errb)
	if code != 0 || !strings.HasPrefix(out.String(), `[{"NODE":"pve2","VM":200,`) {
		t.Errorf("as cv4pve-autosnap: exit %d, %q", code, out.String())
	}
	out.Reset()
	code = MainNamed(context.Background(), "/usr/bin/cv4pve-autosnap", e.cvArgs("--compat", "native", "--vmid", "200", "status", "-o", "json"), &out, &errb)
	if code != 0 || !strings.HasPrefix(out.String(), `[{"node":"pve2","vmid":"200",`) {
		t.Errorf("--compat native as cv4pve-autosnap: exit %d, %q", code, out.String())
	}
}

// TestCV4PVEMakeInstall installs with `make install` into a scratch root and runs the
// real binary through the cv4pve-autosnap symlink (argv[0]) and as autosnap.
func TestCV4PVEMakeInstall(t *testing.T) {
	root := t.TempDir()
	cmd := exec.Command("make", "-C", filepath.Join("..", ".."), "install", "DESTDIR="+root, "PREFIX=/usr")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	bin := filepath.Join(root, "usr", "bin")
	if l, err := os.Readlink(filepath.Join(bin, CV4PVEName)); err != nil || l != "autosnap" {
		t.Fatalf("%s: symlink %q, %v; want -> autosnap", CV4PVEName, l, err)
	}
	e := cvCluster(t)
	for prog, want := range map[string]string{CV4PVEName: `[{"NODE":"pve2","VM":200,"TIME":"26/09/27 00:00:02","PARENT":"no-parent",`, "autosnap": `[{"node":"pve2","vmid":"200",`} {
		c := exec.Command(filepath.Join(bin, prog), e.cvArgs("--vmid", "200", "status", "-o", "json")...)
		out, err := c.Output()
		if err != nil || !strings.HasPrefix(string(out), want) {
			t.Errorf("%s status -o json: %v\n%s\nwant prefix %s", prog, err, out, want)
		}
	}
}

// TestCV4PVEOneAtATime: cv4pve mode processes one guest at a time unless
// --max-parallel is given; native keeps its default.
func TestCV4PVEOneAtATime(t *testing.T) {
	e := cvCluster(t)
	cases := []struct {
		args []string
		want int
	}{
		{[]string{"--compat", "cv4pve"}, 1},
		{[]string{"--compat", "cv4pve", "--max-parallel", "3"}, 3},
		{nil, 4},
		{[]string{"--max-parallel", "2"}, 2},
	}
	for _, cmd := range []string{"snap", "clean"} {
		for i, c := range cases {
			got := 0
			args := e.cvArgs(append(c.args, "--vmid", "100", cmd, "--label", fmt.Sprintf("par%d", i), "--keep", "1")...)
			var out, errb bytes.Buffer
			code := execute(context.Background(), args, &out, &errb, func(g *GlobalOptions) {
				g.adjustJob = func(j *engine.Job) { got = j.MaxParallel }
			})
			if code != 0 || got != c.want {
				t.Errorf("%s %v: exit %d, max parallel %d, want %d\n%s%s", cmd, c.args, code, got, c.want, out.String(), errb.String())
			}
		}
	}
}

// TestCV4PVEHookGolden pins how cv4pve mode runs hooks: as cv4pve-autosnap does,
// through `/bin/bash -c PATH` (a script without #! gets bash), the job-start phase
// right after the header (before the guests are selected and the storage table),
// job phases around the guests, each guest's phases within its lines, the return code
// before the captured stdout, stderr on stderr only, a failing hook changing neither
// the run nor the exit status, and the job phases running when --vmid selects nothing.
func TestCV4PVEHookGolden(t *testing.T) {
	e := cvCluster(t)
	script := filepath.Join(t.TempDir(), "hook.sh")
	body := `if [[ -n "$BASH_VERSION" ]]; then sh=bash; else sh=other; fi
echo "hook $CV4PVE_AUTOSNAP_PHASE vm=$CV4PVE_AUTOSNAP_VMID type=$CV4PVE_AUTOSNAP_VMTYPE snap=$CV4PVE_AUTOSNAP_SNAP_NAME label=$CV4PVE_AUTOSNAP_LABEL keep=$CV4PVE_AUTOSNAP_KEEP state=$CV4PVE_AUTOSNAP_STATE shell=$sh"
echo "stderr $CV4PVE_AUTOSNAP_PHASE $CV4PVE_AUTOSNAP_VMID" >&2
if [ "$CV4PVE_AUTOSNAP_PHASE" = snap-create-post ] && [ "$CV4PVE_AUTOSNAP_VMID" = 100 ]; then exit 3; fi
exit 0
`
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	clk := &cvClock{t: time.Date(2026, 9, 28, 7, 0, 2, 0, time.UTC), step: 856 * time.Millisecond}
	checkStderr := func(what, stdout, stderr string, phases ...string) {
		t.Helper()
		if strings.Contains(stdout, "stderr ") {
			t.Errorf("%s: the hook's stderr is in stdout:\n%s", what, stdout)
		}
		var want strings.Builder
		for _, p := range phases {
			want.WriteString("stderr " + p + "\n")
		}
		if stderr != want.String() { // the hook's stderr and nothing else
			t.Errorf("%s: stderr\n%s\nwant\n%s", what, stderr, want.String())
		}
	}
	r := cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "100,200", "snap", "--label", "hourly", "--keep", "2", "--script", script)...)
	if r.code != 0 {
		t.Errorf("snap with a hook exiting 3: exit %d, want 0", r.code)
	}
	checkGolden(t, "snap_hook", r.stdout)
	checkStderr("snap", r.stdout, r.stderr, "snap-job-start ", "snap-create-pre 100", "snap-remove-pre 100", "snap-remove-post 100",
		"snap-create-post 100", "snap-create-pre 200", "snap-create-post 200", "snap-job-end ")
	if !strings.Contains(r.stdout, "Max % Storage :   95%\nhook snap-job-start vm= type= snap= label=hourly keep=2 state=1 shell=bash\n                  Storage") {
		t.Errorf("snap-job-start does not run right after the header, before the storage table")
	}
	if !strings.Contains(r.stdout, "Script return code: 3\nhook snap-create-post vm=100") {
		t.Errorf("the return code does not come before the hook's output")
	}
	r = cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "100,200", "clean", "--label", "hourly", "--keep", "0", "--script", script)...)
	if r.code != 0 {
		t.Errorf("clean with a hook: exit %d, want 0", r.code)
	}
	checkGolden(t, "clean_hook", r.stdout)
	checkStderr("clean", r.stdout, r.stderr, "clean-job-start ", "snap-remove-pre 100", "snap-remove-post 100", "snap-remove-pre 100", "snap-remove-post 100",
		"snap-remove-pre 200", "snap-remove-post 200", "clean-job-end ")

	// Nothing selected: cv4pve still runs the job phases, the end one failed.
	r = cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "999", "snap", "--label", "hourly", "--keep", "2", "--script", script)...)
	if r.code != 1 {
		t.Errorf("snap selecting nothing: exit %d, want 1", r.code)
	}
	checkGolden(t, "snap_hook_notfound", r.stdout)
	checkStderr("snap selecting nothing", r.stdout, r.stderr, "snap-job-start ", "snap-job-end ")
	r = cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "999", "clean", "--label", "hourly", "--keep", "2", "--script", script)...)
	if r.code != 1 {
		t.Errorf("clean selecting nothing: exit %d, want 1", r.code)
	}
	checkGolden(t, "clean_hook_notfound", r.stdout)
	checkStderr("clean selecting nothing", r.stdout, r.stderr, "clean-job-start ", "clean-job-end ")
}
