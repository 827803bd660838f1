package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCV4PVEHookOutputVerbatim: cv4pve prints a hook's stdout as it is. Lines that
// look like autosnap's own (ERROR:, Skip VM, Remove snapshot, Dry run, VM execution,
// a hook warning) must reach stdout unchanged and must not change how the guest is
// reported: it succeeded, so its VM execution line follows. The agent hint still comes
// first, as cv4pve prints it before the snap-create-pre hook.
func TestCV4PVEHookOutputVerbatim(t *testing.T) {
	e := cvCluster(t)
	script := filepath.Join(t.TempDir(), "hook.sh")
	body := `#!/bin/sh
if [ "$CV4PVE_AUTOSNAP_PHASE" = snap-create-pre ]; then
  echo "ERROR: notify failed"
  echo "Skip VM because I say so"
  echo "Remove snapshot: x (reason)"
  echo "Dry run: nothing"
  echo "VM execution 1s"
  echo "WARNING: hook script x exited with status 9"
fi
`
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	clk := &cvClock{t: time.Date(2026, 9, 28, 7, 0, 2, 0, time.UTC), step: 856 * time.Millisecond}
	r := cvRun(t, CV4PVEName, clk, e.cvArgs("--vmid", "101", "snap", "--label", "hook", "--keep", "2", "--script", script)...)
	if r.code != 0 {
		t.Errorf("exit %d, want 0", r.code)
	}
	want := "----- VM 101 qemu stopped -----\n" +
		"VM 101 consider enabling QEMU agent see https://pve.proxmox.com/wiki/Qemu-guest-agent\n" +
		"ERROR: notify failed\nSkip VM because I say so\nRemove snapshot: x (reason)\nDry run: nothing\nVM execution 1s\n" +
		"WARNING: hook script x exited with status 9\n" +
		"Create snapshot: autohook"
	if !strings.Contains(r.stdout, want) {
		t.Errorf("stdout:\n%s\nwant it to contain:\n%s", r.stdout, want)
	}
	if _, after, _ := strings.Cut(r.stdout, "Create snapshot: autohook"); !strings.Contains(after, "\nVM execution 00:00:0") {
		t.Errorf("the guest's own VM execution line is missing after the hook's lines:\n%s", r.stdout)
	}
	if strings.ContainsRune(r.stdout, 0) {
		t.Errorf("stdout holds the hook output markers: %q", r.stdout)
	}
}
