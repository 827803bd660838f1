package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/backup"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestRestoreInstantResume kills restore --instant (SIGKILL) while its block copies
// run, and after the switch-over before the overlays are removed; each time the same
// command run again finishes the move: the guest ends standalone (no backing files,
// its definition names its final images, no overlays left), its agent answers, and
// vdb (which the guest does not write) reads as the point's.
func TestRestoreInstantResume(t *testing.T) {
	bin := buildAutosnap(t)
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{Disks: 2, Guest: true, DiskMiB: 512})
	dir := filepath.Join(t.TempDir(), "repo")
	// Enough data that the copies still run at their first progress report.
	dom.WriteDisk(t, "vdb", 4<<20, 0x5e, 300<<20)
	backupRun(t, dom, dir, "--quiesce", "off")
	ref := t.TempDir()
	mustRun(t, "--vmid", dom.Name, "restore", "--target", dir, "--to", ref, "--disk", "vdb")
	wantVdb := testbed.ImageSum(t, filepath.Join(ref, "vdb.qcow2"))

	// "copying-job-gone": QEMU's copy of vdb was also stopped (as when QEMU's job
	// failed): the rerun starts that copy again over the partial image.
	for i, at := range []string{backup.CrashInstantCopying, "copying-job-gone", backup.CrashInstantMoved} {
		jobGone := at == "copying-job-gone"
		if jobGone {
			at = backup.CrashInstantCopying
		}
		name := dom.Name + "-i" + string(rune('0'+i))
		to := filepath.Join(dom.Dir, "instant"+string(rune('0'+i)))
		t.Cleanup(func() {
			if d, err := bed.Conn.DomainLookupByName(name); err == nil {
				_ = bed.Conn.DomainDestroy(d)
				_ = bed.Conn.DomainUndefineFlags(d, golibvirt.DomainUndefineCheckpointsMetadata|golibvirt.DomainUndefineSnapshotsMetadata)
			}
		})
		args := []string{"--vmid", dom.Name, "restore", "--target", dir, "--define", name, "--to", to, "--instant"}
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "AUTOSNAP_CRASH_AT="+at)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ProcessState.String() != "signal: killed" {
			t.Fatalf("crash at %s: %v\n%s", at, err, out)
		}
		nd, err := bed.Conn.DomainLookupByName(name)
		if err != nil {
			t.Fatal(err)
		}
		live, err := bed.Conn.DomainGetXMLDesc(nd, 0)
		if err != nil {
			t.Fatal(err)
		}
		if onOverlay := strings.Contains(live, ".instant"); onOverlay != (at == backup.CrashInstantCopying) {
			t.Fatalf("killed at %s, the guest runs on its overlays: %v\n%s", at, onOverlay, live)
		}
		if at == backup.CrashInstantCopying {
			f, typ, _, cur, end, err := bed.Conn.DomainGetBlockJobInfo(nd, "vdb", 0)
			t.Logf("after the kill: vdb block job found=%d type=%d %d/%d (%v)", f, typ, cur, end, err)
		}
		if jobGone {
			if err := bed.Conn.DomainBlockJobAbort(nd, "vdb", 0); err != nil {
				t.Fatal(err)
			}
		}
		r := mustRun(t, args...)
		if !strings.Contains(r.stdout, "finishing the move") || !strings.Contains(r.stdout, "no longer depends on the repository") {
			t.Fatalf("the rerun after a crash at %s did not finish the move:\n%s", at, r.stdout)
		}
		inactive, err := bed.Conn.DomainGetXMLDesc(nd, golibvirt.DomainXMLInactive)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{"vda", "vdb"} {
			f := filepath.Join(to, name+"-"+d+".qcow2")
			if b, err := backingFile(t.Context(), f); err != nil || b != "" {
				t.Errorf("%s: %s has backing file %q (%v)", at, f, b, err)
			}
			if !strings.Contains(inactive, "'"+f+"'") && !strings.Contains(inactive, `"`+f+`"`) {
				t.Errorf("%s: the guest's definition does not name %s:\n%s", at, f, inactive)
			}
		}
		if left, _ := filepath.Glob(filepath.Join(to, ".*.instant")); len(left) > 0 {
			t.Errorf("%s: overlays left: %v", at, left)
		}
		deadline := time.Now().Add(testbed.BootTimeout)
		for {
			if _, err := bed.Conn.QEMUDomainAgentCommand(nd, `{"execute":"guest-ping"}`, 2, 0); err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("%s: the resumed guest's agent did not answer: %v", at, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		if got := testbed.ImageSum(t, filepath.Join(to, name+"-vdb.qcow2")); got != wantVdb {
			t.Errorf("%s: vdb of the resumed guest reads %s, the point %s", at, got, wantVdb)
		}
	}
	mustRun(t, "backup", "verify", "--target", dir)
}
