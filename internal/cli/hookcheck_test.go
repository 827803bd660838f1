package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/pveemu"
)

// A --script that cannot run (missing, not executable) does not leave the guests
// unprotected: snap and clean do their work without it, say so loudly on stderr at
// the start and again at the end, and exit 1.
func TestPVEBrokenHookStillSnapshots(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	e.c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 200, Name: "ct1", Kind: "lxc", Status: "running"})
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	noExec := filepath.Join(dir, "noexec.sh")
	if err := os.WriteFile(noExec, []byte("#!/bin/sh\ntouch "+marker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.sh")
	for _, tc := range []struct{ script, says string }{
		{noExec, "not executable: run chmod +x " + noExec},
		{missing, "hook script " + missing + ": not found"},
	} {
		before := len(e.snapNames(100))
		r := e.snap(t, "100,200", "hk", 5, "--script", tc.script)
		if r.code != ExitFailure {
			t.Errorf("%s: exit %d, want %d", tc.script, r.code, ExitFailure)
		}
		if got := len(e.snapNames(100)); got != before+1 {
			t.Errorf("%s: VM 100 has %d snapshots after the run, want %d: the snapshot must still be taken", tc.script, got, before+1)
		}
		if n := len(e.snapNames(200)); n != before+1 {
			t.Errorf("%s: CT 200 has %d snapshots, want %d", tc.script, n, before+1)
		}
		if c := strings.Count(r.stderr, tc.says); c < 2 {
			t.Errorf("%s: stderr names the problem %d times, want at the start and at the end:\n%s", tc.script, c, r.stderr)
		}
		if !strings.HasPrefix(r.stderr, "ERROR: ") || !strings.Contains(r.stderr, "without the hook") {
			t.Errorf("%s: stderr must start with an ERROR line saying the run goes on without the hook:\n%s", tc.script, r.stderr)
		}
	}
	// clean too: the removals happen, the run exits 1.
	r := e.run(t, "--vmid", "100,200", "clean", "--label", "hk", "--keep", "0", "--script", missing)
	if r.code != ExitFailure || len(e.snapNames(100)) != 0 || len(e.snapNames(200)) != 0 {
		t.Errorf("clean with a missing hook: exit %d, snapshots left %v %v", r.code, e.snapNames(100), e.snapNames(200))
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("the non-executable hook ran")
	}
}
