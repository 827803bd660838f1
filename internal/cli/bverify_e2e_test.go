package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/backup"
	"github.com/autosnap/autosnap/internal/repo"
	"github.com/autosnap/autosnap/internal/testbed"
)

// deadPid is a pid no process has, for leftovers of a "killed" verify.
func deadPid(t *testing.T) int {
	for pid := 4000000; pid > 1000; pid-- {
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			return pid
		}
	}
	t.Fatal("no free pid")
	return 0
}

func throwaways(t *testing.T, bed *testbed.Bed) []string {
	t.Helper()
	doms, _, err := bed.Conn.ConnectListAllDomains(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range doms {
		if strings.HasPrefix(d.Name, fmt.Sprintf("%s%d-", backup.BootGuestPrefix, os.Getpid())) {
			names = append(names, d.Name)
		}
	}
	return names
}

// TestBackupVerifyBoot backs up the real guest and proves with verify --boot that its
// newest point boots (agent answers) in a throwaway guest that is removed afterwards,
// together with the leftovers of a killed verify; then the point's disk image is
// damaged so it cannot be restored and booted, and verify --boot fails naming it.
func TestBackupVerifyBoot(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{Disks: 1, Guest: true})
	dir := filepath.Join(t.TempDir(), "repo")
	bootDir := filepath.Join(t.TempDir(), "boot")
	row := backupRun(t, dom, dir, "--quiesce", "off")

	// Leftovers of a verify that was killed: a guest and a directory under a dead pid.
	stale := fmt.Sprintf("%s%d-%s", backup.BootGuestPrefix, deadPid(t), "leftover")
	if _, err := bed.Conn.DomainDefineXML(`<domain type="qemu"><name>` + stale + `</name><memory unit="MiB">32</memory><os><type>hvm</type></os></domain>`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if d, err := bed.Conn.DomainLookupByName(stale); err == nil {
			_ = bed.Conn.DomainUndefine(d)
		}
	})
	if err := os.MkdirAll(filepath.Join(bootDir, stale+"-123"), 0o700); err != nil {
		t.Fatal(err)
	}

	r := mustRun(t, "--vmid", dom.Name, "backup", "verify", "--target", dir, "--boot", "--boot-dir", bootDir)
	if !strings.Contains(r.stdout, "BOOT OK "+dom.Name+" point "+row.Point) {
		t.Fatalf("no BOOT OK line:\n%s", r.stdout)
	}
	if _, err := bed.Conn.DomainLookupByName(stale); err == nil {
		t.Error("the leftover throwaway guest of a killed verify is still defined")
	}
	if left := throwaways(t, bed); len(left) > 0 {
		t.Errorf("throwaway guests left: %v", left)
	}
	if ents, _ := os.ReadDir(bootDir); len(ents) > 0 {
		t.Errorf("files left in %s: %v", bootDir, ents)
	}

	// Ctrl-C while the throwaway guest boots: it and its files are removed all the same.
	ctx, cancel := context.WithCancel(t.Context())
	var out, errb bytes.Buffer
	code := make(chan int, 1)
	go func() {
		code <- Main(ctx, []string{"--vmid", dom.Name, "backup", "verify", "--target", dir, "--boot", "--boot-dir", bootDir}, &out, &errb)
	}()
	for len(throwaways(t, bed)) == 0 {
		select {
		case c := <-code:
			t.Fatalf("verify ended (%d) before its throwaway guest appeared:\n%s%s", c, out.String(), errb.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	cancel()
	c := <-code
	t.Logf("exit %d", c)
	if c == ExitOK {
		t.Errorf("an interrupted verify --boot exited 0:\n%s%s", out.String(), errb.String())
	}
	t.Logf("interrupted verify:\n%s%s", out.String(), errb.String())
	if left := throwaways(t, bed); len(left) > 0 {
		t.Errorf("throwaway guests left after Ctrl-C: %v", left)
	}
	if ents, _ := os.ReadDir(bootDir); len(ents) > 0 {
		t.Errorf("files left in %s after Ctrl-C: %v", bootDir, ents)
	}

	// Damage the point's image header: it can no longer be opened, so it cannot boot.
	rg, err := backup.FindGuest(mustOpenRepo(t, dir), dom.Name)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := rg.Points()
	if err != nil {
		t.Fatal(err)
	}
	p := ps[len(ps)-1]
	f, err := os.OpenFile(p.Path(p.Disks[0]), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	r = run(t, "--vmid", dom.Name, "backup", "verify", "--target", dir, "--boot", "--boot-dir", bootDir, "--boot-timeout", "60s")
	if r.code != ExitFailure || !strings.Contains(r.stdout, "BOOT FAILED "+dom.Name+" point "+row.Point) {
		t.Fatalf("verify --boot of a damaged point: exit %d, want %d and a BOOT FAILED line:\n%s%s", r.code, ExitFailure, r.stdout, r.stderr)
	}
	if left := throwaways(t, bed); len(left) > 0 {
		t.Errorf("throwaway guests left after a failed boot: %v", left)
	}
	if ents, _ := os.ReadDir(bootDir); len(ents) > 0 {
		t.Errorf("files left in %s after a failed boot: %v", bootDir, ents)
	}
}

func mustOpenRepo(t *testing.T, dir string) *repo.Repo {
	t.Helper()
	r, err := repo.OpenExisting(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func openGuestForTest(t *testing.T, dom *testbed.Domain, dir string) (*repo.Guest, error) {
	t.Helper()
	return backup.FindGuest(mustOpenRepo(t, dir), dom.Name)
}
