package cli

// Quiesce you can trust: consistency proved on the image, and a guest is never left
// frozen — not on SIGTERM, not on SIGKILL, not after a crashed earlier run.

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/testbed"
)

// buildAutosnap builds the real binary once per test, with crash points compiled in
// (-tags crashtest): a test holds a run at one of them (see startSnap).
func buildAutosnap(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "autosnap")
	out, err := exec.Command("go", "build", "-tags", "crashtest", "-o", bin, "../../cmd/autosnap").CombinedOutput()
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

// heldRun is a snap run paused at the crash point freeze.frozen: the guest's
// filesystems are frozen and the snapshot is not yet asked for. release lets it go on.
type heldRun struct {
	cmd   *exec.Cmd
	out   *bytes.Buffer
	point string // the crash file: exists while the run is held
}

func (h *heldRun) release() { os.Remove(h.point) }

// waitHeld waits until the run reached the point.
func (h *heldRun) waitHeld(t *testing.T, within time.Duration) {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(h.point); err == nil {
			return
		}
	}
	t.Fatalf("the run never reached freeze.frozen:\n%s", h.out)
}

// startSnap starts a snap run that pauses with the guest frozen (crash point
// freeze.frozen, mode pause) until released.
func startSnap(t *testing.T, bin string, d *testbed.Domain) *heldRun {
	args := []string{"--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "kill", "--keep", "3"}
	cmd := exec.Command(bin, args...)
	h := &heldRun{cmd: cmd, out: &bytes.Buffer{}, point: filepath.Join(t.TempDir(), "crash-point")}
	cmd.Env = append(os.Environ(), "AUTOSNAP_CRASH_AT=freeze.frozen", "AUTOSNAP_CRASH_MODE=pause", "AUTOSNAP_CRASH_FILE="+h.point)
	cmd.Stdout, cmd.Stderr = h.out, h.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.release()
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return h
}

func TestGuestNeverStaysFrozen(t *testing.T) {
	bin := buildAutosnap(t)
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{Guest: true, Writer: true, DiskMiB: 32})

	t.Run("SIGKILL", func(t *testing.T) {
		run := startSnap(t, bin, d)
		run.waitHeld(t, 60*time.Second)
		waitFrozen(t, d, 5*time.Second)
		if err := run.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = run.cmd.Wait()
		took := thawedWithin(t, d, 12*time.Second)
		t.Logf("thawed %s after SIGKILL\n%s", took, run.out)
		if took > 10*time.Second {
			t.Errorf("guest thawed only after %s; the watchdog bound is 10s", took)
		}
	})

	t.Run("SIGTERM", func(t *testing.T) {
		run := startSnap(t, bin, d)
		run.waitHeld(t, 60*time.Second)
		waitFrozen(t, d, 5*time.Second)
		if err := run.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		run.release() // the run goes on with its context cancelled
		err := run.cmd.Wait()
		took := thawedWithin(t, d, 12*time.Second)
		t.Logf("thawed %s after SIGTERM; exit %v\n%s", took, err, run.out)
		if err == nil {
			t.Errorf("an interrupted run exited 0")
		}
		if took > 2*time.Second {
			t.Errorf("SIGTERM left the guest frozen for %s", took)
		}
	})

	t.Run("HungRunBound", func(t *testing.T) {
		// A run stuck while the guest is frozen: the watchdog thaws within its bound.
		run := startSnap(t, bin, d)
		run.waitHeld(t, 60*time.Second)
		waitFrozen(t, d, 5*time.Second)
		start := time.Now()
		took := thawedWithin(t, d, 13*time.Second)
		run.release()
		if err := run.cmd.Wait(); err != nil {
			t.Logf("run: %v", err)
		}
		t.Logf("thawed %s into the hold\n%s", time.Since(start), run.out)
		if took > 11*time.Second {
			t.Errorf("guest frozen for %s, bound is 10s", took)
		}
		if !strings.Contains(run.out.String(), "watchdog thawed it") {
			t.Errorf("the run does not report the watchdog's thaw")
		}
	})

	t.Run("NoTestKnobOnTheCommandLine", func(t *testing.T) {
		r := run(t, "--vmid", d.Name, "snap", "--label", "x", "--keep", "1", "--debug-hold-frozen", "1s")
		if r.code != ExitUsage || !strings.Contains(r.stderr, "unknown flag: --debug-hold-frozen") {
			t.Errorf("--debug-hold-frozen: exit %d, want a usage error", r.code)
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
