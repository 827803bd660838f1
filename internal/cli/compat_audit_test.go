package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/pveemu"
)

// TestCV4PVEBrokenHookStillSnapshots: in cv4pve mode too, a --script that is missing
// or not executable does not cost the guests their snapshots: snap and clean do their
// work without it, the problem is named on stderr, and the run exits 1 at the end.
// stdout keeps cv4pve's lines (no hook line, the guests' own lines unchanged).
func TestCV4PVEBrokenHookStillSnapshots(t *testing.T) {
	e := cvCluster(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	noExec := filepath.Join(dir, "noexec.sh")
	if err := os.WriteFile(noExec, []byte("#!/bin/sh\ntouch "+marker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.sh")
	clk := &cvClock{t: time.Date(2026, 9, 28, 7, 0, 2, 0, time.UTC), step: 856 * time.Millisecond}
	for i, tc := range []struct{ script, says string }{
		{noExec, "not executable: run chmod +x " + noExec},
		{missing, "hook script " + missing + ": not found"},
	} {
		before := len(e.snapNames(200))
		label := []string{"hka", "hkb"}[i]
		r := cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "200", "snap", "--label", label, "--keep", "5", "--script", tc.script)...)
		if r.code != 1 {
			t.Errorf("%s: exit %d, want 1", tc.script, r.code)
		}
		if got := len(e.snapNames(200)); got != before+1 {
			t.Errorf("%s: CT 200 has %d snapshots after the run, want %d: the snapshot must still be taken", tc.script, got, before+1)
		}
		if !strings.Contains(r.stderr, tc.says) {
			t.Errorf("%s: stderr does not name the problem (%q):\n%s", tc.script, tc.says, r.stderr)
		}
		if want := "----- VM 200 lxc running -----\nCreate snapshot: auto" + label + "260928070002\nVM execution 00:00:00.8560000\nTotal execution"; !strings.Contains(r.stdout, want) {
			t.Errorf("%s: stdout is not cv4pve's:\n%s\nwant it to contain:\n%s", tc.script, r.stdout, want)
		}
		clk.t = time.Date(2026, 9, 28, 7, 0, 2, 0, time.UTC)
	}
	r := cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "200", "clean", "--label", "hka", "--keep", "0", "--script", missing)...)
	if r.code != 1 || len(e.snapNames(200)) != 2 || !strings.Contains(r.stdout, "Remove snapshot: autohka260928070002\n") {
		t.Errorf("clean with a missing hook: exit %d, snapshots left %v", r.code, e.snapNames(200))
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("the non-executable hook ran")
	}
}

// TestCV4PVEFingerprintHint: a cv4pve cron line has no --fingerprint (cv4pve does not
// verify certificates). Verification stays on in cv4pve mode; the run fails with
// exit 1 and, where cv4pve prints its errors (ERROR: on stdout), the exact
// --fingerprint to add; with it, or with --ca-file, the same line works.
func TestCV4PVEFingerprintHint(t *testing.T) {
	c, hosts := caCluster(t)
	c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "stopped", Agent: "1"})
	cron := []string{"--host", strings.Join(hosts, ","), "--api-token", pveTokenID + "=" + pveSecret, "--vmid", "100"}
	with := func(a ...string) []string { return append(append([]string{}, cron...), a...) }

	r := cvRun(t, CV4PVEName, nil, with("snap", "--label", "hourly", "--keep", "1")...)
	flag := "--fingerprint " + c.NodeFingerprint("pve1") + "," + c.NodeFingerprint("pve2")
	if r.code != 1 || !strings.HasPrefix(r.stdout, "ERROR: ") || !strings.Contains(r.stdout, "add "+flag+" to the command line") {
		t.Errorf("untrusted certificate in cv4pve mode: exit %d, stdout %q; want exit 1 and ERROR: with %q", r.code, r.stdout, flag)
	}
	if n := len(c.Snapshots(100)); n != 0 {
		t.Errorf("%d snapshots taken over an unverified connection", n)
	}
	if r := cvRun(t, CV4PVEName, nil, with(append(strings.Fields(flag), "snap", "--label", "hourly", "--keep", "1")...)...); r.code != 0 {
		t.Errorf("with the advised %s: exit %d", flag, r.code)
	}
	ca := filepath.Join(t.TempDir(), "pve-root-ca.pem")
	if err := os.WriteFile(ca, c.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := cvRun(t, CV4PVEName, nil, with("--ca-file", ca, "status", "-o", "json")...); r.code != 0 || !strings.HasPrefix(r.stdout, `[{"NODE":"pve1","VM":100,`) {
		t.Errorf("with --ca-file: exit %d, %q", r.code, r.stdout)
	}
}

// TestCV4PVESkipLines pins the skip lines the snap golden does not reach, as
// AutoSnapEngine.SnapAsync prints them: --only-running for a stopped VM (not a
// failure, no agent hint, no VM execution) and, as cv4pve 2.1+, a guest on an offline
// node (a failure: exit 1).
func TestCV4PVESkipLines(t *testing.T) {
	e := cvCluster(t)
	clk := &cvClock{t: time.Date(2026, 9, 28, 7, 0, 2, 0, time.UTC), step: 856 * time.Millisecond}
	r := cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "100,101", "snap", "--label", "hourly", "--keep", "9", "--only-running")...)
	if r.code != 0 {
		t.Errorf("--only-running skipping a stopped VM: exit %d, want 0", r.code)
	}
	want := "Only running:     True\n" +
		"Timeout:          30 sec.\n" +
		"Timestamp format: yyMMddHHmmss\n" +
		"Max % Storage :   95%\n" +
		"                  Storage      Type     Valid   Used %    Disk Size  Disk Usage\n" +
		"           pve1/local-lvm   lvmthin        Ok        24   536.87 GB   128.85 GB\n" +
		"----- VM 100 qemu running -----\n" +
		"Create snapshot: autohourly260928070002\n" +
		"VM execution 00:00:00.8560000\n" +
		"----- VM 101 qemu stopped -----\n" +
		"Skip VM '--only-running' parameter used!\n" +
		"Total execution "
	if !strings.Contains(r.stdout, want) {
		t.Errorf("snap --only-running:\n%s\nwant it to contain:\n%s", r.stdout, want)
	}

	e.c.SetNodeOnline("pve2", false)
	r = cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "100,200", "snap", "--label", "daily", "--keep", "9")...)
	if r.code != 1 {
		t.Errorf("a guest on an offline node: exit %d, want 1", r.code)
	}
	want = "----- VM 200 lxc unknown -----\nSkip VM status unknown: node offline or not reachable\nTotal execution "
	if !strings.Contains(r.stdout, want) || strings.Count(r.stdout, "VM execution") != 1 {
		t.Errorf("snap with pve2 offline:\n%s\nwant it to contain:\n%s", r.stdout, want)
	}
}

// TestCV4PVECleanSkipLines: clean prints each guest's line before its skip line, as
// cv4pve-autosnap 2.1+ does (2.0.1 printed a template's "Skip VM is template" without
// its guest line, so it read as the previous guest's); a guest on an offline node is
// skipped the same way and fails the run.
func TestCV4PVECleanSkipLines(t *testing.T) {
	e := cvCluster(t)
	e.c.SetNodeOnline("pve2", false)
	r := cvRun(t, CV4PVEName, nil, e.cvArgs("--vmid", "101,102,200", "clean", "--label", "hourly", "--keep", "9")...)
	want := "Timestamp format: yyMMddHHmmss\n" +
		"----- VM 101 qemu -----\n" +
		"----- VM 102 qemu -----\n" +
		"Skip VM is template\n" +
		"----- VM 200 lxc -----\n" +
		"Skip VM status unknown: node offline or not reachable\n"
	if r.code != 1 || !strings.HasSuffix(r.stdout, want) {
		t.Errorf("clean: exit %d\n%s\nwant exit 1 and it to end with:\n%s", r.code, r.stdout, want)
	}
}

// TestCV4PVENotFoundPool: a selection with @pool- that finds nothing adds cv4pve's
// pool permission hint (Pool.Audit since PVE 9) to the NOT FOUND lines, in snap and
// clean.
func TestCV4PVENotFoundPool(t *testing.T) {
	e := cvCluster(t)
	const lines = "----- VMs with '@pool-nosuch' NOT FOUND -----\n" +
		"----- POSSIBLE PROBLEM PERMISSION 'VM.Audit' -----\n" +
		"----- POSSIBLE PROBLEM PERMISSION 'Pool.Audit' (PVE 9+) / 'Pool.Allocate' (PVE 8 and earlier) -----\n"
	for _, cmd := range []string{"snap", "clean"} {
		r := cvRun(t, CV4PVEName, nil, e.cvArgs("--vmid", "@pool-nosuch", cmd, "--label", "hourly", "--keep", "2")...)
		if r.code != 1 || !strings.Contains(r.stdout, "Timestamp format: yyMMddHHmmss\n"+lines) && !strings.Contains(r.stdout, "Max % Storage :   95%\n"+lines) {
			t.Errorf("%s --vmid @pool-nosuch: exit %d\n%s\nwant exit 1 and the lines\n%s", cmd, r.code, r.stdout, lines)
		}
	}
	r := cvRun(t, CV4PVEName, nil, e.cvArgs("--vmid", "999", "clean", "--label", "hourly", "--keep", "2")...)
	if strings.Contains(r.stdout, "Pool.Audit") {
		t.Errorf("the pool hint without @pool-:\n%s", r.stdout)
	}
}

// TestPVEMaxParallelOneSelectionOrder: with --max-parallel 1 (and in cv4pve mode,
// where it is the default) the guests are snapshotted one after the other in the order
// --vmid selects them — not by id, not the last one first — and each guest's snapshot
// and removals are done before the next guest's snapshot is requested.
func TestPVEMaxParallelOneSelectionOrder(t *testing.T) {
	e := cvCluster(t)
	for _, id := range []int{300, 301} {
		e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: id, Name: fmt.Sprintf("app%d", id), Kind: "qemu", Status: "running", Agent: "1", AgentRunning: true})
	}
	for i, args := range [][]string{
		{"--max-parallel", "1", "--vmid", "301,100,300,200", "snap", "--label", "ord", "--keep", "1"},
		{"--compat", "cv4pve", "--vmid", "301,100,300,200", "snap", "--label", "ord", "--keep", "1"},
	} {
		e.c.ResetRequests()
		clk := &cvClock{t: time.Date(2026, 9, 28, 7, i, 2, 0, time.UTC), step: time.Second}
		if r := cvRun(t, "autosnap", clk, e.cvArgs(args...)...); r.code != 0 {
			t.Fatalf("%v: exit %d", args, r.code)
		}
		var order []string
		for _, q := range e.c.Requests() {
			p := strings.Split(q.Path, "/")
			// POST /nodes/N/KIND/ID/snapshot and DELETE /nodes/N/KIND/ID/snapshot/NAME
			if len(p) >= 6 && p[5] == "snapshot" && (q.Method == "POST" || q.Method == "DELETE") {
				order = append(order, q.Method+" "+p[4])
			}
		}
		want := []string{"POST 301", "POST 100", "POST 300", "POST 200"}
		if i == 1 {
			want = []string{"POST 301", "DELETE 301", "POST 100", "DELETE 100", "POST 300", "DELETE 300", "POST 200", "DELETE 200"}
		}
		if !slices.Equal(order, want) {
			t.Errorf("%v: snapshot requests %v, want %v", args, order, want)
		}
	}
}

// TestCV4PVEEveryUnsnapshottableDisk: cv4pve 2.1+ names every bind mount or device
// that keeps Proxmox VE from snapshotting a guest, comma-separated.
func TestCV4PVEEveryUnsnapshottableDisk(t *testing.T) {
	e := cvCluster(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 204, Name: "ct3", Kind: "lxc", Status: "running",
		Disks: map[string]string{"rootfs": "local-lvm:subvol-204-disk-0,size=8G", "mp0": "/mnt/a,mp=/a", "mp1": "local-lvm:subvol-204-disk-1,mp=/b", "mp2": "/dev/sdb1,mp=/c"}})
	r := cvRun(t, CV4PVEName, nil, e.cvArgs("--vmid", "204", "snap", "--label", "hourly", "--keep", "2")...)
	if want := "----- VM 204 lxc running -----\nSkip VM Proxmox VE cannot snapshot it, bind mount or device: mp0, mp2\n"; r.code != 0 || !strings.Contains(r.stdout, want) {
		t.Errorf("exit %d\n%s\nwant exit 0 and\n%s", r.code, r.stdout, want)
	}
	if r := cvRun(t, "autosnap", nil, e.cvArgs("--vmid", "204", "snap", "--label", "hourly", "--keep", "2")...); !strings.Contains(r.stdout, "mp0 is a bind mount (/mnt/a), mp2 is a device mount (/dev/sdb1)") {
		t.Errorf("native output does not name both mounts:\n%s", r.stdout)
	}
}

// TestCV4PVECompatFlagCommandLineErrors: with --compat cv4pve a command line that
// cannot be parsed (an unknown option before --compat, an @file that does not exist,
// an unknown command) still exits 1, as cv4pve-autosnap does, not autosnap's 2.
func TestCV4PVECompatFlagCommandLineErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--compat", "cv4pve", "@/nonexistent/creds.rsp", "--vmid", "100", "status"},
		{"--nosuch", "--compat", "cv4pve", "--vmid", "100", "status"},
		{"--compat=cv4pve", "--vmid", "100", "nosuch"},
		{"--vmid", "100", "snap", "--label", "x", "--compat:cv4pve"},
	} {
		if r := run(t, args...); r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "ERROR: ") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 1 and the error on stderr", args, r.code, r.stdout, r.stderr)
		}
	}
	// Without --compat the same lines are usage errors (2); --compat native after
	// --compat cv4pve wins, as the last value of a flag does.
	if r := run(t, "--compat", "cv4pve", "--compat", "native", "@/nonexistent/creds.rsp", "status"); r.code != ExitUsage {
		t.Errorf("--compat native last: exit %d, want %d", r.code, ExitUsage)
	}
	if r := run(t, "@/nonexistent/creds.rsp", "status"); r.code != ExitUsage {
		t.Errorf("native: exit %d, want %d", r.code, ExitUsage)
	}
}
