package cli

// Quiesce you can trust: consistency proved on the image, and a guest is never left
// frozen — not on SIGTERM, not on SIGKILL, not after a crashed earlier run.

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/testbed"
)

// buildAutosnap builds the real binary once per test process.
func buildAutosnap(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "autosnap")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/autosnap").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func frozen(t *testing.T, d *testbed.Domain) bool {
	return strings.Contains(d.Agent(t, `{"execute":"guest-fsfreeze-status"}`), "frozen")
}

// waitFrozen polls the agent until the guest's filesystems are frozen.
func waitFrozen(t *testing.T, d *testbed.Domain, within time.Duration) {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if frozen(t, d) {
			return
		}
	}
	t.Fatalf("%s never got frozen", d.Name)
}

// thawedWithin returns how long the guest took to be thawed, failing after limit.
func thawedWithin(t *testing.T, d *testbed.Domain, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if !frozen(t, d) {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.Agent(t, `{"execute":"guest-fsfreeze-thaw"}`)
	t.Fatalf("%s still frozen after %s", d.Name, limit)
	return 0
}

func startSnap(t *testing.T, bin string, d *testbed.Domain, extra ...string) (*exec.Cmd, *bytes.Buffer) {
	args := append([]string{"--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "kill", "--keep", "3"}, extra...)
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, &out
}

func TestGuestNeverStaysFrozen(t *testing.T) {
	bin := buildAutosnap(t)
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{Guest: true, Writer: true, DiskMiB: 32})

	t.Run("SIGKILL", func(t *testing.T) {
		cmd, out := startSnap(t, bin, d, "--debug-hold-frozen", "60s")
		waitFrozen(t, d, 30*time.Second)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		took := thawedWithin(t, d, 12*time.Second)
		t.Logf("thawed %s after SIGKILL\n%s", took, out)
		if took > 10*time.Second {
			t.Errorf("guest thawed only after %s; the watchdog bound is 10s", took)
		}
	})

	t.Run("SIGTERM", func(t *testing.T) {
		cmd, out := startSnap(t, bin, d, "--debug-hold-frozen", "60s")
		waitFrozen(t, d, 30*time.Second)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		took := thawedWithin(t, d, 12*time.Second)
		t.Logf("thawed %s after SIGTERM; exit %v\n%s", took, err, out)
		if err == nil {
			t.Errorf("an interrupted run exited 0")
		}
		if took > 2*time.Second {
			t.Errorf("SIGTERM left the guest frozen for %s", took)
		}
	})

	t.Run("HungRunBound", func(t *testing.T) {
		// A run stuck while the guest is frozen: the watchdog thaws within its bound.
		cmd, out := startSnap(t, bin, d, "--debug-hold-frozen", "15s")
		waitFrozen(t, d, 30*time.Second)
		start := time.Now()
		took := thawedWithin(t, d, 13*time.Second)
		if err := cmd.Wait(); err != nil {
			t.Logf("run: %v", err)
		}
		t.Logf("thawed %s into the hold\n%s", time.Since(start), out)
		if took > 11*time.Second {
			t.Errorf("guest frozen for %s, bound is 10s", took)
		}
		if !strings.Contains(out.String(), "watchdog thawed it") {
			t.Errorf("the run does not report the watchdog's thaw")
		}
	})

	t.Run("LeftFrozenIsThawedAtStart", func(t *testing.T) {
		d.Agent(t, `{"execute":"guest-fsfreeze-freeze"}`)
		if !frozen(t, d) {
			t.Fatal("could not freeze the guest")
		}
		r := snap(t, d.Name, "kill", 3)
		if r.code != 0 || !strings.Contains(r.stdout, "found with frozen filesystems") {
			t.Errorf("a guest left frozen was not reported: exit %d", r.code)
		}
		if frozen(t, d) {
			d.Agent(t, `{"execute":"guest-fsfreeze-thaw"}`)
			t.Errorf("guest still frozen after the run")
		}
	})
}

// TestQuiescedSnapshotIsConsistent: while the guest writes and syncs continuously, the
// image a quiesced snapshot froze needs no journal recovery; e2fsck finds it clean.
func TestQuiescedSnapshotIsConsistent(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{Guest: true, Writer: true, DiskMiB: 32})
	time.Sleep(time.Second) // let the writer run
	check := func(quiesce string) (needsRecovery bool) {
		before := d.Chain(t, "vda")[0]
		r := snap(t, d.Name, "cons"+quiesce, 5, "--quiesce", quiesce)
		if r.code != 0 {
			t.Fatalf("snap --quiesce %s: exit %d", quiesce, r.code)
		}
		// The image active before the snapshot now holds exactly the snapshot's state.
		raw := filepath.Join(t.TempDir(), "state.raw")
		if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", before, raw).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert: %v %s", err, out)
		}
		out, err := exec.Command("dumpe2fs", "-h", raw).CombinedOutput()
		if err != nil {
			t.Fatalf("dumpe2fs: %v %s", err, out)
		}
		needsRecovery = strings.Contains(string(out), "needs_recovery")
		if out, err := exec.Command("e2fsck", "-fn", raw).CombinedOutput(); err != nil {
			t.Errorf("--quiesce %s: e2fsck -fn: %v\n%s", quiesce, err, out)
		}
		counter := testbed.GuestFile(t, before, "counter")
		t.Logf("--quiesce %s: needs_recovery=%v, counter has %d lines", quiesce, needsRecovery, bytes.Count(counter, []byte("\n")))
		return needsRecovery
	}
	for i := 0; i < 3; i++ {
		if check("on") {
			t.Errorf("quiesced snapshot %d needs journal recovery: the freeze did not flush the filesystem", i)
		}
	}
	// For contrast (not asserted: the journal may happen to be clean).
	check("off")
}
