package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/testbed"
)

// procsOf lists the pids of live processes running the executable bin.
func procsOf(t *testing.T, bin string) []string {
	t.Helper()
	ds, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range ds {
		exe, err := os.Readlink(filepath.Join("/proc", d.Name(), "exe"))
		if err != nil || exe != bin {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat")); err == nil && bytes.Contains(st, []byte(") Z ")) {
			continue
		}
		out = append(out, d.Name())
	}
	return out
}

// TestQMPBackupKilledWhileCPUsStopped: autosnap SIGKILLed while a two-disk backup has
// the guest's CPUs stopped (they switch to the fleecing filters together) leaves no
// paused guest behind: the watchdog it armed resumes the CPUs and removes the
// backup's leftovers within seconds, and exits; the next backup works.
func TestQMPBackupKilledWhileCPUsStopped(t *testing.T) {
	bin := buildAutosnap(t)
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{Disks: 2, DiskMiB: 16})
	q.QMP(t, `{"execute":"cont"}`) // the firmware runs: a running guest
	if st := q.Status(t); st != "running" {
		t.Fatalf("guest is %s before the backup, want running", st)
	}
	dir := filepath.Join(t.TempDir(), "repo")
	marker := filepath.Join(t.TempDir(), "crashed")
	logf, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--host", h.URI(), "--vmid", q.Name, "backup", "--target", dir, "--quiesce", "off")
	cmd.Env = append(os.Environ(), "AUTOSNAP_CRASH_AT=qmp.backup-cpus-stopped", "AUTOSNAP_CRASH_FILE="+marker)
	// Files, not pipes: Wait returns when autosnap dies, not when its watchdog does.
	cmd.Stdout, cmd.Stderr = logf, logf
	err = cmd.Run()
	killed := time.Now()
	out, _ := os.ReadFile(logf.Name())
	if ee, ok := err.(*exec.ExitError); !ok || ee.ProcessState.String() != "signal: killed" {
		t.Fatalf("the backup was not killed: %v\n%s", err, out)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("autosnap did not die with the CPUs stopped (crash point not reached): %v\n%s", err, out)
	}
	for len(procsOf(t, bin)) > 0 && time.Since(killed) < 20*time.Second {
		time.Sleep(50 * time.Millisecond)
	}
	if ps := procsOf(t, bin); len(ps) > 0 {
		t.Fatalf("autosnap processes %v still alive %s after the kill", ps, time.Since(killed).Round(time.Millisecond))
	}
	st := q.Status(t)
	took := time.Since(killed)
	out, _ = os.ReadFile(logf.Name())
	t.Logf("guest %s %s after the kill; autosnap's output:\n%s", st, took.Round(time.Millisecond), out)
	if st != "running" {
		t.Fatalf("guest left %s after autosnap was killed with its CPUs stopped, want running", st)
	}
	if took > 10*time.Second {
		t.Errorf("the guest ran again only %s after the kill, want within a few seconds", took)
	}
	checkNoLeftovers(t, q)
	mustQMPBackup(t, h, q, dir, "full")
	checkNoLeftovers(t, q)
	if st := q.Status(t); st != "running" {
		t.Errorf("guest %s after the next backup, want running", st)
	}
}
