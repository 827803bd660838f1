package cli

// End-to-end tests of the commands against the Proxmox VE emulator (internal/pveemu),
// reached over HTTPS like a real cluster. They mirror cli_test.go's libvirt scenarios
// for QEMU VMs and LXC containers, plus what only Proxmox VE has: credentials, TLS
// pinning, several --host entries, locks and tasks.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/autosnap/autosnap/internal/driver/proxmox"
	"github.com/autosnap/autosnap/internal/pveemu"
)

const (
	pveTokenID  = "root@pam!autosnap"
	pveSecret   = "3c9f6a2e-57d1-4b8e-a0f4-6d2b9e8c1a77"
	pvePassword = "pve-Pa55w0rd-e2e"
)

type pveEnv struct {
	c     *pveemu.Cluster
	addrs map[string]string
}

func newPVE(t *testing.T, nodes ...string) *pveEnv {
	t.Helper()
	if len(nodes) == 0 {
		nodes = []string{"pve1", "pve2"}
	}
	c := pveemu.New(pveemu.Options{
		Nodes:        nodes,
		TaskDuration: 30 * time.Millisecond,
		Users:        map[string]string{"root@pam": pvePassword},
		Tokens:       map[string]string{pveTokenID: pveSecret},
	})
	t.Cleanup(c.Close)
	e := &pveEnv{c: c, addrs: map[string]string{}}
	for _, n := range nodes {
		a, err := c.ListenNode(n)
		if err != nil {
			t.Fatal(err)
		}
		e.addrs[n] = a
	}
	return e
}

// hosts is the --host value: every node in order.
func (e *pveEnv) hosts() string {
	var hs []string
	for _, n := range e.c.Nodes() {
		hs = append(hs, e.addrs[n])
	}
	return strings.Join(hs, ",")
}

// args prepends the connection flags (token, pinned certificate, all hosts).
func (e *pveEnv) args(a ...string) []string {
	return append([]string{"--host", e.hosts(), "--api-token", pveTokenID + "=" + pveSecret, "--fingerprint", e.c.Fingerprint(),
		"--timestamp-format", fmtMS}, a...)
}

func (e *pveEnv) run(t *testing.T, a ...string) result     { return run(t, e.args(a...)...) }
func (e *pveEnv) mustRun(t *testing.T, a ...string) result { return mustRun(t, e.args(a...)...) }

func (e *pveEnv) snap(t *testing.T, sel, label string, keep int, extra ...string) result {
	t.Helper()
	return e.run(t, append([]string{"--vmid", sel, "snap", "--label", label, "--keep", fmt.Sprint(keep)}, extra...)...)
}

func (e *pveEnv) status(t *testing.T, sel, label string) []statusRow {
	t.Helper()
	a := []string{"--vmid", sel, "-o", "json", "status"}
	if label != "" {
		a = append(a, "--label", label)
	}
	r := e.mustRun(t, a...)
	var rows []statusRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, r.stdout)
	}
	return rows
}

func (e *pveEnv) vmList(t *testing.T, sel string) []vmRow {
	t.Helper()
	r := e.run(t, "--vmid", sel, "-o", "json", "vm", "list")
	if r.code != 0 {
		t.Errorf("vm list --vmid %s: exit %d", sel, r.code)
		return nil
	}
	var rows []vmRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("vm list JSON: %v\n%s", err, r.stdout)
	}
	return rows
}

func (e *pveEnv) snapNames(vmid int) []string {
	var n []string
	for _, s := range e.c.Snapshots(vmid) {
		n = append(n, s.Name)
	}
	return n
}

func (e *pveEnv) writes() int {
	n := 0
	for _, r := range e.c.Requests() {
		if r.Method != "GET" && r.Path != "/access/ticket" && !strings.HasSuffix(r.Path, "/agent/ping") {
			n++
		}
	}
	return n
}

func TestPVESnapRetentionVMsAndContainers(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	e.c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 200, Name: "ct1", Kind: "lxc", Status: "running"})
	e.c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 201, Name: "ct2", Kind: "lxc", Status: "stopped"})
	// A snapshot made by hand and one by cv4pve-autosnap with another label.
	e.c.AddSnapshot(100, "before-upgrade", "mine", time.Now().Add(-48*time.Hour), false)
	e.c.AddSnapshot(200, "autodaily230101000000000", "cv4pve-autosnap", time.Now().Add(-24*time.Hour), false)
	var created []string
	for round := 1; round <= 4; round++ {
		e.c.WriteDisk(100, "scsi0", int64(round)*512, []byte{byte(round)})
		r := e.snap(t, "100,200,201", "hourly", 2)
		if r.code != 0 {
			t.Fatalf("round %d: exit %d", round, r.code)
		}
		rows := e.status(t, "100,200,201", "hourly")
		if len(rows) != 3*min(round, 2) {
			t.Fatalf("round %d: %d hourly snapshots, want %d", round, len(rows), 3*min(round, 2))
		}
		last := rows[len(rows)-1]
		created = append(created, last.Name)
		if last.Description != "cv4pve-autosnap" || last.Location != "internal" || last.Label != "hourly" {
			t.Errorf("status row %+v", last)
		}
		if round >= 3 && strings.Count(r.stdout, "Remove snapshot: "+created[round-3]) != 3 {
			t.Errorf("round %d did not remove %s from all three guests", round, created[round-3])
		}
	}
	// Data written between snapshots is intact: removing snapshots never touches it.
	for round := 1; round <= 4; round++ {
		if got := e.c.ReadDisk(100, "scsi0", int64(round)*512, 1)[0]; got != byte(round) {
			t.Errorf("round %d data lost", round)
		}
	}
	// The snapshots carry exactly cv4pve-autosnap's description, so cv4pve sees them too.
	for _, s := range e.c.Snapshots(200) {
		if strings.HasPrefix(s.Name, "autohourly") && s.Description != "cv4pve-autosnap" {
			t.Errorf("%s description %q", s.Name, s.Description)
		}
	}
	// Status without --label lists cv4pve's daily too, but never the manual snapshot.
	all := e.status(t, "100,200,201", "")
	if len(all) != 7 {
		t.Errorf("status without --label: %d rows, want 6 hourly + 1 daily", len(all))
	}
	for _, row := range all {
		if row.Name == "before-upgrade" {
			t.Errorf("status lists a manual snapshot")
		}
	}
	// clean --keep 0 removes one label only.
	e.mustRun(t, "--vmid", "100,200,201", "clean", "--label", "hourly", "--keep", "0")
	if got := strings.Join(e.snapNames(100), ","); got != "before-upgrade" {
		t.Errorf("VM 100 after clean: %s", got)
	}
	if got := strings.Join(e.snapNames(200), ","); got != "autodaily230101000000000" {
		t.Errorf("CT 200 after clean: %s", got)
	}
	// cv4pve's daily rotates out like ours.
	e.mustRun(t, "--vmid", "200", "clean", "--label", "daily", "--keep", "0")
	if n := len(e.snapNames(200)); n != 0 {
		t.Errorf("cv4pve-autosnap's snapshot was not rotated out")
	}
}

func TestPVESelection(t *testing.T) {
	e := newPVE(t, "pve1", "pve2")
	add := func(node string, id int, name, kind string, tags []string, pool string) {
		e.c.AddGuest(pveemu.Guest{Node: node, VMID: id, Name: name, Kind: kind, Status: "running", Tags: tags, Pool: pool})
	}
	add("pve1", 100, "web1", "qemu", []string{"web", "prod"}, "prod/web")
	add("pve1", 101, "web2", "qemu", []string{"web"}, "prod/web")
	add("pve2", 102, "db1", "qemu", []string{"db", "prod"}, "prod")
	add("pve2", 200, "cache", "lxc", []string{"prod"}, "test")
	add("pve1", 201, "build", "lxc", nil, "")
	cases := []struct{ sel, want string }{
		{"@all", "build,cache,db1,web1,web2"},
		{"all", "build,cache,db1,web1,web2"},
		{"@pool-prod", "db1,web1,web2"}, // nested pools count
		{"@pool-PROD/web", "web1,web2"},
		{"@tag-prod", "cache,db1,web1"},
		{"@tag-prod,-@tag-web", "cache,db1"},
		{"@node-pve2", "cache,db1"},
		{"@all-PVE1", "build,web1,web2"},
		{"100", "web1"},
		{"100:102", "db1,web1,web2"},
		{"100:201,-101:200", "build,web1"},
		{"WEB1,cache", "cache,web1"},
		{"web%", "web1,web2"},
		{"%b1", "db1,web1"},
		{"%ui%", "build"},
		{"@all,-@pool-prod,-build", "cache"},
	}
	for _, tc := range cases {
		rows := e.vmList(t, tc.sel)
		if got := names(rows); got != tc.want {
			t.Errorf("--vmid %s selects %s, want %s", tc.sel, got, tc.want)
		}
	}
	rows := e.vmList(t, "cache")
	if len(rows) != 1 || rows[0].Kind != "lxc" || rows[0].Node != "pve2" || rows[0].VMID == nil || *rows[0].VMID != 200 || rows[0].UUID != "" {
		t.Errorf("vm list row for the container: %+v", rows)
	}
	if r := e.run(t, "--vmid", "no-such-guest", "snap", "--label", "x", "--keep", "1"); r.code != ExitFailure {
		t.Errorf("selection matching nothing: exit %d", r.code)
	}
}

func TestPVECredentials(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	base := []string{"--host", e.hosts(), "--fingerprint", e.c.Fingerprint(), "--timestamp-format", fmtMS, "--vmid", "100"}
	with := func(a ...string) []string { return append(append([]string{}, base...), a...) }
	// Ticket login; the realm defaults to pam; the password may come from a file.
	mustRun(t, with("--username", "root", "--password", pvePassword, "snap", "--label", "tk", "--keep", "1")...)
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte(pvePassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, with("--username", "root@pam", "--password", "file:"+pwFile, "snap", "--label", "tk", "--keep", "1")...)
	// Token.
	mustRun(t, with("--api-token", pveTokenID+"="+pveSecret, "snap", "--label", "tk", "--keep", "1")...)
	if n := len(e.snapNames(100)); n != 1 {
		t.Errorf("%d snapshots after three keep-1 runs", n)
	}
	const badPassword = "Wr0ng-Secret-Pa55"
	const badSecret = "deadbeef-0000-4000-8000-badbadbadbad"
	for _, a := range [][]string{
		with("--username", "root@pam", "--password", badPassword, "snap", "--label", "tk", "--keep", "1"),
		with("--api-token", pveTokenID+"="+badSecret, "snap", "--label", "tk", "--keep", "1"),
		with("--api-token", "root@pam!other="+badSecret, "status"),
	} {
		r := run(t, a...)
		if r.code != ExitConnect {
			t.Errorf("wrong credentials: exit %d, want %d", r.code, ExitConnect)
		}
		for _, s := range []string{badPassword, badSecret} {
			if strings.Contains(r.stdout+r.stderr, s) {
				t.Errorf("output reveals the secret %q", s)
			}
		}
	}
	// A malformed token is a usage error that does not echo it either.
	r := run(t, with("--api-token", "garbage"+badSecret, "status")...)
	if r.code != ExitUsage || strings.Contains(r.stdout+r.stderr, badSecret) {
		t.Errorf("malformed token: exit %d\n%s", r.code, r.stderr)
	}
}

func TestPVETLS(t *testing.T) {
	e := newPVE(t, "pve1")
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "stopped"})
	base := []string{"--host", "pve://" + e.addrs["pve1"], "--api-token", pveTokenID + "=" + pveSecret, "--vmid", "100"}
	with := func(a ...string) []string { return append(append([]string{}, base...), a...) }
	r := run(t, with("vm", "list")...)
	if r.code != ExitConnect || !strings.Contains(r.stderr, "--fingerprint") {
		t.Errorf("self-signed certificate without --fingerprint: exit %d", r.code)
	}
	mustRun(t, with("--fingerprint", e.c.Fingerprint(), "vm", "list")...)
	mustRun(t, with("--fingerprint", strings.ToLower(strings.ReplaceAll(e.c.Fingerprint(), ":", "")), "vm", "list")...)
	r = run(t, with("--fingerprint", strings.Repeat("00:", 31)+"00", "vm", "list")...)
	if r.code != ExitConnect || !strings.Contains(r.stderr, "does not match") {
		t.Errorf("wrong fingerprint: exit %d", r.code)
	}
	r = mustRun(t, with("--validate-certificate=false", "vm", "list")...)
	if !strings.Contains(r.stderr, "verification is OFF") {
		t.Errorf("--validate-certificate=false does not warn")
	}
}

func TestPVEFailoverFirstHostDown(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	e.c.CloseNode("pve1")
	if r := e.snap(t, "100", "fo", 1); r.code != 0 {
		t.Fatalf("first host down: exit %d", r.code)
	}
	if n := len(e.snapNames(100)); n != 1 {
		t.Errorf("%d snapshots", n)
	}
}

func TestPVEFailoverHostDiesMidRun(t *testing.T) {
	e := newPVE(t, "pve1", "pve2", "pve3")
	sel := []string{}
	for i := 0; i < 6; i++ {
		id := 100 + i
		node := []string{"pve2", "pve3"}[i%2]
		kind := []string{"qemu", "lxc"}[i%2]
		e.c.AddGuest(pveemu.Guest{Node: node, VMID: id, Name: fmt.Sprintf("g%d", id), Kind: kind, Status: "running"})
		sel = append(sel, fmt.Sprint(id))
	}
	e.c.SetTaskDuration(200 * time.Millisecond)
	dir := t.TempDir()
	script, _ := hookScript(t, dir, `[ "$AUTOSNAP_PHASE" = snap-create-pre ] && touch `+dir+`/pre-$AUTOSNAP_VMID`)
	killed := make(chan bool)
	go func() {
		for i := 0; i < 1500; i++ {
			// With two guests at a time, a third one starting means one has already
			// used pve1; the last two start only after pve1 is gone.
			if pre, _ := filepath.Glob(filepath.Join(dir, "pre-*")); len(pre) >= 3 {
				time.Sleep(100 * time.Millisecond) // while the third guest's task runs
				e.c.CloseNode("pve1")
				killed <- true
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		killed <- false
	}()
	r := e.run(t, "--max-parallel", "2", "--vmid", strings.Join(sel, ","), "snap", "--label", "mid", "--keep", "1", "--script", script)
	if !<-killed {
		t.Fatal("the hooks never fired; the test proves nothing")
	}
	if r.code != 0 {
		t.Fatalf("host died mid-run: exit %d", r.code)
	}
	for i := 0; i < 6; i++ {
		if n := len(e.snapNames(100 + i)); n != 1 {
			t.Errorf("guest %d has %d snapshots, want exactly 1", 100+i, n)
		}
	}
	used := map[string]int{}
	for _, req := range e.c.Requests() {
		if req.Method == "POST" && strings.HasSuffix(req.Path, "/snapshot") {
			used[req.Node]++
		}
	}
	if used["pve1"] == 0 || used["pve2"] == 0 {
		t.Errorf("snapshot POSTs per entry node %v: want some on pve1 before it died and the rest on pve2", used)
	}
}

func TestPVELockedGuest(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	e.c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 200, Name: "ct1", Kind: "lxc", Status: "running"})
	// Unlocked while we wait: retried, then done.
	e.c.Lock(100, "backup")
	e.c.Lock(200, "backup")
	time.AfterFunc(time.Second, func() { e.c.Unlock(100); e.c.Unlock(200) })
	if r := e.run(t, "--timeout", "15", "--vmid", "100,200", "snap", "--label", "lk", "--keep", "1"); r.code != 0 {
		t.Fatalf("locked for 1s with --timeout 15: exit %d", r.code)
	}
	// Still locked at --timeout: failed, and the lock is named.
	e.c.Lock(100, "backup")
	start := time.Now()
	r := e.run(t, "--timeout", "2", "--vmid", "100", "snap", "--label", "lk", "--keep", "1")
	if r.code != ExitFailure || !strings.Contains(r.stdout, "locked (backup)") || !strings.Contains(r.stdout, "raise --timeout") {
		t.Errorf("locked until --timeout: exit %d", r.code)
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("took %s with --timeout 2", took)
	}
}

func TestPVETaskFailureAndTimeout(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 101, Name: "web2", Kind: "qemu", Status: "running"})
	script, log := hookScript(t, t.TempDir(), "")
	e.c.FailNextTask(100, "snapshot feature is not available")
	r := e.run(t, "--max-parallel", "1", "--vmid", "100,101", "snap", "--label", "tf", "--keep", "1", "--script", script)
	if r.code != ExitFailure || !strings.Contains(r.stdout, "snapshot feature is not available") {
		t.Errorf("failed task: exit %d", r.code)
	}
	if len(e.snapNames(100)) != 0 || len(e.snapNames(101)) != 1 {
		t.Errorf("snapshots after one failed task: %v / %v", e.snapNames(100), e.snapNames(101))
	}
	var aborted bool
	for _, c := range parseHookLog(t, log) {
		if c["AUTOSNAP_PHASE"] == "snap-create-abort" && c["AUTOSNAP_VMID"] == "100" {
			aborted = true
		}
	}
	if !aborted {
		t.Errorf("no snap-create-abort hook for the failed guest")
	}
	// A task still running at --timeout.
	e.c.SetTaskDuration(6 * time.Second)
	start := time.Now()
	r = e.run(t, "--timeout", "1", "--vmid", "101", "snap", "--label", "tf", "--keep", "1")
	if r.code != ExitFailure || !strings.Contains(r.stdout, "still running") || !strings.Contains(r.stdout, "raise --timeout") {
		t.Errorf("task timeout: exit %d", r.code)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %s with --timeout 1", took)
	}
}

func TestPVEStorageGuard(t *testing.T) {
	e := newPVE(t)
	e.c.AddStorage("pve1", "full", "zfspool", 100<<30, 97<<30, true, "images,rootdir")
	e.c.AddStorage("pve1", "unknown", "lvmthin", 0, 0, true, "images,rootdir")
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "vm-full", Kind: "qemu", Status: "running",
		Disks: map[string]string{"scsi0": "full:vm-100-disk-0,size=8G"}})
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 200, Name: "ct-full", Kind: "lxc", Status: "running",
		Disks: map[string]string{"rootfs": "full:subvol-200-disk-0,size=8G"}})
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 101, Name: "vm-unknown", Kind: "qemu", Status: "running",
		Disks: map[string]string{"scsi0": "unknown:vm-101-disk-0,size=8G"}})
	r := e.snap(t, "100,200,101", "st", 1)
	if r.code != ExitFailure || !strings.Contains(r.stdout, "pve1/full is 97.0% full") {
		t.Errorf("storage 97%% full: exit %d", r.code)
	}
	if len(e.snapNames(100)) != 0 || len(e.snapNames(200)) != 0 {
		t.Errorf("snapshot taken on a full storage")
	}
	if len(e.snapNames(101)) != 1 {
		t.Errorf("a storage of unknown size must not block")
	}
	// The limit is a percentage, not a fraction (cv4pve-autosnap's bug).
	if r := e.snap(t, "100,200", "st", 1, "--max-perc-storage", "98"); r.code != 0 {
		t.Errorf("97%% full with --max-perc-storage 98: exit %d", r.code)
	}
}

func TestPVEDryRun(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	e.c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 200, Name: "ct1", Kind: "lxc", Status: "stopped"})
	e.snap(t, "100,200", "dry", 2)
	e.snap(t, "100,200", "dry", 2)
	before := e.status(t, "100,200", "dry")
	script, log := hookScript(t, t.TempDir(), "")
	e.c.ResetRequests()
	r := e.run(t, "--dry-run", "--vmid", "100,200", "snap", "--label", "dry", "--keep", "2", "--script", script)
	if r.code != 0 || strings.Count(r.stdout, "Remove snapshot: ") != 2 {
		t.Errorf("dry-run snap: exit %d", r.code)
	}
	r = e.run(t, "--dry-run", "--vmid", "100,200", "clean", "--label", "dry", "--keep", "0")
	if r.code != 0 || strings.Count(r.stdout, "Remove snapshot: ") != 4 {
		t.Errorf("dry-run clean: exit %d", r.code)
	}
	if n := e.writes(); n != 0 {
		t.Errorf("dry run sent %d writes to Proxmox VE", n)
	}
	if _, err := os.Stat(log); !os.IsNotExist(err) {
		t.Errorf("dry run ran the hook")
	}
	if after := e.status(t, "100,200", "dry"); len(after) != len(before) {
		t.Errorf("dry run changed snapshots")
	}
}

func TestPVEHooksQemuAndLXC(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	e.c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 200, Name: "ct1", Kind: "lxc", Status: "running"})
	e.snap(t, "100,200", "hk", 1)
	script, log := hookScript(t, t.TempDir(), "")
	// One guest at a time: concurrent hooks would interleave their lines in the log.
	if r := e.run(t, "--max-parallel", "1", "--vmid", "100,200", "snap", "--label", "hk", "--keep", "1", "--script", script, "--state"); r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	types := map[string]map[string]bool{}
	for _, c := range parseHookLog(t, log) {
		id := c["CV4PVE_AUTOSNAP_VMID"]
		if id == "" {
			continue
		}
		if types[id] == nil {
			types[id] = map[string]bool{}
		}
		types[id][c["CV4PVE_AUTOSNAP_VMTYPE"]+"/"+c["CV4PVE_AUTOSNAP_PHASE"]] = true
		if c["AUTOSNAP_NODE"] == "" {
			t.Errorf("AUTOSNAP_NODE empty")
		}
	}
	for id, typ := range map[string]string{"100": "qemu", "200": "lxc"} {
		for _, p := range []string{"snap-create-pre", "snap-remove-pre", "snap-remove-post", "snap-create-post"} {
			if !types[id][typ+"/"+p] {
				t.Errorf("guest %s: no %s hook with VMTYPE %s (got %v)", id, p, typ, types[id])
			}
		}
	}
	// --state saves RAM for the running VM only; containers have none.
	if s := e.c.Snapshots(100); len(s) != 1 || !s[0].VMState {
		t.Errorf("VM snapshot with --state: %+v", s)
	}
	if s := e.c.Snapshots(200); len(s) != 1 || s[0].VMState {
		t.Errorf("CT snapshot with --state: %+v", s)
	}
}

func TestPVESkipsAndFailures(t *testing.T) {
	e := newPVE(t, "pve1", "pve2", "pve3")
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 101, Name: "tmpl", Kind: "qemu", Status: "stopped", Template: true})
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 200, Name: "ct-bind", Kind: "lxc", Status: "running",
		Disks: map[string]string{"rootfs": "local-lvm:subvol-200-disk-0,size=8G", "mp0": "/srv/share,mp=/share"}})
	// Templates are skipped, not failed.
	if r := e.snap(t, "100,101", "sk", 1); r.code != 0 || !strings.Contains(r.stdout, "Skip VM is template") {
		t.Errorf("template: exit %d", r.code)
	}
	if len(e.snapNames(101)) != 0 {
		t.Errorf("template snapshotted")
	}
	// A bind-mount container: the reason is given and nothing is attempted on PVE.
	e.c.ResetRequests()
	r := e.snap(t, "200", "sk", 1)
	if !strings.Contains(r.stdout, "mp0 is a bind mount (/srv/share)") {
		t.Errorf("bind mount: no reason given")
	}
	if r.code != ExitOK || !strings.Contains(r.stdout, "Skip VM") {
		t.Errorf("bind mount: exit %d, want a skip (exit 0)", r.code)
	}
	if n := e.writes(); n != 0 {
		t.Errorf("%d writes for a guest PVE cannot snapshot", n)
	}
	// A guest on an offline node fails the run (exit 1) but the others are done.
	e.c.AddGuest(pveemu.Guest{Node: "pve3", VMID: 300, Name: "far", Kind: "qemu", Status: "running"})
	e.c.SetNodeOnline("pve3", false)
	r = e.snap(t, "100,300", "off", 1)
	if r.code != ExitFailure || !strings.Contains(r.stdout, "status unknown") {
		t.Errorf("offline node: exit %d", r.code)
	}
	if len(e.snapNames(100)) != 2 {
		t.Errorf("the online guest was not snapshotted: %v", e.snapNames(100))
	}
}

func TestPVEQuiesce(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "agent", Kind: "qemu", Status: "running", Agent: "enabled=1,fstrim_cloned_disks=1", AgentRunning: true})
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 101, Name: "noagent", Kind: "qemu", Status: "running", Agent: "0"})
	r := e.snap(t, "100,101", "q", 1)
	if r.code != 0 || !strings.Contains(r.stdout, "quiesced through the guest agent") || !strings.Contains(r.stdout, "consider enabling") {
		t.Errorf("auto: exit %d; want VM 100 quiesced and advice for VM 101", r.code)
	}
	if r := e.snap(t, "101", "q", 1, "--quiesce", "on"); r.code != ExitFailure {
		t.Errorf("--quiesce on without agent: exit %d", r.code)
	}
	if r := e.snap(t, "100", "q", 1, "--quiesce", "on"); r.code != 0 {
		t.Errorf("--quiesce on with agent: exit %d", r.code)
	}
}
