package cli

// End-to-end backup and restore on the real two-disk test guest: every point restores
// bit-identical to the guest's disks captured at its instant, a quiesced point's ext4
// needs no journal recovery, a guest defined from a point boots and its agent answers,
// and a backup killed at each step is repaired by the next run.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/backup"
	"github.com/autosnap/autosnap/internal/repo"
	"github.com/autosnap/autosnap/internal/testbed"
)

type bkRow struct {
	Point, Level, FullReason, Consistency, Outcome string
}

func backupRun(t *testing.T, dom *testbed.Domain, dir string, extra ...string) bkRow {
	t.Helper()
	args := append([]string{"-o", "json", "--vmid", dom.Name, "backup", "--target", dir}, extra...)
	r := mustRun(t, args...)
	var rows []struct {
		Point       string `json:"point"`
		Level       string `json:"level"`
		FullReason  string `json:"full_reason"`
		Consistency string `json:"consistency"`
		Outcome     string `json:"outcome"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("backup report: %v\n%s", err, r.stdout)
	}
	return bkRow{rows[0].Point, rows[0].Level, rows[0].FullReason, rows[0].Consistency, rows[0].Outcome}
}

// paused runs f with the guest's CPUs stopped, so a backup and a capture see the same
// disk content.
func paused(t *testing.T, bed *testbed.Bed, dom *testbed.Domain, f func()) {
	t.Helper()
	if err := bed.Conn.DomainSuspend(dom.Dom); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := bed.Conn.DomainResume(dom.Dom); err != nil {
			t.Fatal(err)
		}
	}()
	f()
}

func capture(t *testing.T, dom *testbed.Domain) map[string]string {
	t.Helper()
	sums := map[string]string{}
	for _, d := range []string{"vda", "vdb"} {
		sums[d] = testbed.ImageSum(t, dom.Chain(t, d)[0])
	}
	return sums
}

// checkRestore restores point id of the guest into a new directory, in format, and
// compares every disk with the sums captured at the point's instant.
func checkRestore(t *testing.T, dom *testbed.Domain, dir, id, format string, want map[string]string) {
	t.Helper()
	to := filepath.Join(t.TempDir(), id)
	mustRun(t, "--vmid", dom.Name, "restore", "--target", dir, "--until", id, "--to", to, "--format", format)
	for d, sum := range want {
		f := filepath.Join(to, d+"."+format)
		if got := testbed.ImageSum(t, f); got != sum {
			t.Errorf("point %s disk %s restored as %s reads %s, the guest's disk read %s at that instant", id, d, format, got, sum)
		}
		if format == "qcow2" {
			if b, err := backingFile(t.Context(), f); err != nil || b != "" {
				t.Errorf("restored %s has backing file %q (%v), want a standalone image", f, b, err)
			}
		}
	}
}

func TestBackupRestoreE2E(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{Disks: 2, Guest: true})
	dir := filepath.Join(t.TempDir(), "repo")
	type step struct {
		name  string
		write func()
		args  []string
		level string
	}
	mib := int64(1 << 20)
	steps := []step{
		{"full", func() {}, nil, "full"},
		{"inc1", func() {
			dom.WriteDisk(t, "vdb", 1*mib, 0xa1, 2<<20)
			dom.WriteDisk(t, "vda", 60*mib, 0xa2, 1<<20)
		}, nil, "inc"},
		{"inc2", func() {
			dom.WriteDisk(t, "vdb", 1*mib, 0x00, 1<<20) // data that became zero
			dom.WriteDisk(t, "vdb", 10*mib, 0xb1, 1<<20)
			dom.WriteDisk(t, "vda", 61*mib, 0xb2, 512<<10)
		}, []string{"--level", "inc"}, "inc"},
		{"diff", func() {
			dom.WriteDisk(t, "vdb", 20*mib, 0xc1, 1<<20)
		}, []string{"--level", "diff"}, "diff"},
		{"inc3", func() {
			dom.WriteDisk(t, "vdb", 30*mib, 0xd1, 64<<10)
		}, []string{"--compress"}, "inc"},
	}
	ids := make([]string, len(steps))
	sums := make([]map[string]string, len(steps))
	for i, s := range steps {
		s.write()
		paused(t, bed, dom, func() {
			row := backupRun(t, dom, dir, append([]string{"--quiesce", "off"}, s.args...)...)
			if row.Level != s.level || row.Outcome != "ok" {
				t.Fatalf("%s: level %s outcome %s (%s), want %s", s.name, row.Level, row.Outcome, row.FullReason, s.level)
			}
			if i == 0 && !strings.Contains(row.FullReason, "no backup of this guest") {
				t.Fatalf("the first full does not say why: %q", row.FullReason)
			}
			ids[i], sums[i] = row.Point, capture(t, dom)
		})
	}
	// The manifest records each point's place in the chain.
	r, err := repo.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	rg, err := backup.FindGuest(r, dom.Name)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := rg.Points()
	if err != nil || len(pts) != len(steps) {
		t.Fatalf("%d points (%v), want %d", len(pts), err, len(steps))
	}
	wantParent := []string{"", ids[0], ids[1], ids[0], ids[3]}
	for i, p := range pts {
		if p.ID != ids[i] || p.Parent != wantParent[i] || p.Chain != ids[0] || p.Checkpoint == "" {
			t.Errorf("point %d: id %s parent %s chain %s checkpoint %q; want id %s parent %s chain %s", i, p.ID, p.Parent, p.Chain, p.Checkpoint, ids[i], wantParent[i], ids[0])
		}
	}
	for i := range steps {
		format := "qcow2"
		if i%2 == 1 {
			format = "raw"
		}
		checkRestore(t, dom, dir, ids[i], format, sums[i])
	}
	// Only the checkpoints the chain needs stay on the guest: the full's (for a diff)
	// and the newest point's (for the next inc).
	cps := checkpointNames(t, bed, dom)
	if want := []string{pts[0].Checkpoint, pts[4].Checkpoint}; strings.Join(cps, ",") != strings.Join(want, ",") {
		t.Errorf("guest checkpoints %v, want %v", cps, want)
	}

	t.Run("quiesced", func(t *testing.T) {
		row := backupRun(t, dom, dir, "--quiesce", "on")
		if row.Level != "inc" || row.Consistency != "quiesced" {
			t.Fatalf("quiesced backup: %+v", row)
		}
		to := t.TempDir()
		mustRun(t, "--vmid", dom.Name, "restore", "--target", dir, "--to", to, "--disk", "vda")
		out, err := exec.Command("dumpe2fs", "-h", filepath.Join(to, "vda.qcow2")).CombinedOutput()
		raw := filepath.Join(t.TempDir(), "vda.raw")
		if err != nil {
			if b, err := exec.Command("qemu-img", "convert", "-O", "raw", filepath.Join(to, "vda.qcow2"), raw).CombinedOutput(); err != nil {
				t.Fatalf("%v %s", err, b)
			}
			out, err = exec.Command("dumpe2fs", "-h", raw).CombinedOutput()
		}
		if err != nil {
			t.Fatalf("dumpe2fs: %v\n%s", err, out)
		}
		if strings.Contains(string(out), "needs_recovery") {
			t.Errorf("the quiesced point's ext4 needs journal recovery:\n%s", out)
		}
		if err := testbed.FsckImage(t, filepath.Join(to, "vda.qcow2")); err != nil {
			t.Error(err)
		}
	})

	t.Run("instant", func(t *testing.T) { checkInstant(t, bed, dom, dir) })

	t.Run("define", func(t *testing.T) {
		name := dom.Name + "-r"
		to := filepath.Join(dom.Dir, "restored")
		t.Cleanup(func() {
			if d, err := bed.Conn.DomainLookupByName(name); err == nil {
				_ = bed.Conn.DomainDestroy(d)
				_ = bed.Conn.DomainUndefineFlags(d, golibvirt.DomainUndefineCheckpointsMetadata|golibvirt.DomainUndefineSnapshotsMetadata)
			}
		})
		r := mustRun(t, "--vmid", dom.Name, "restore", "--target", dir, "--define", name, "--to", to, "--start")
		if !strings.Contains(r.stdout, "Defined guest "+name) {
			t.Fatalf("output:\n%s", r.stdout)
		}
		nd, err := bed.Conn.DomainLookupByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if formatUUIDBytes(nd.UUID) == dom.UUID {
			t.Fatal("the defined guest has the original's UUID")
		}
		deadline := time.Now().Add(testbed.BootTimeout)
		for {
			_, err := bed.Conn.QEMUDomainAgentCommand(nd, `{"execute":"guest-ping"}`, 2, 0)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the restored guest's agent did not answer within %s: %v", testbed.BootTimeout, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
}

// checkInstant restores the newest point with --define --instant: the guest's agent
// answers, its disks end without backing files, vdb (which the guest does not write)
// reads as the point's, and the repository still verifies.
func checkInstant(t *testing.T, bed *testbed.Bed, dom *testbed.Domain, dir string) {
	name := dom.Name + "-i"
	to := filepath.Join(dom.Dir, "instant")
	t.Cleanup(func() {
		if d, err := bed.Conn.DomainLookupByName(name); err == nil {
			_ = bed.Conn.DomainDestroy(d)
			_ = bed.Conn.DomainUndefineFlags(d, golibvirt.DomainUndefineCheckpointsMetadata|golibvirt.DomainUndefineSnapshotsMetadata)
		}
	})
	ref := t.TempDir()
	mustRun(t, "--vmid", dom.Name, "restore", "--target", dir, "--to", ref, "--disk", "vdb")
	r := mustRun(t, "--vmid", dom.Name, "restore", "--target", dir, "--define", name, "--to", to, "--instant")
	if !strings.Contains(r.stdout, "no longer depends on the repository") {
		t.Fatalf("output:\n%s", r.stdout)
	}
	nd, err := bed.Conn.DomainLookupByName(name)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testbed.BootTimeout)
	for {
		if _, err := bed.Conn.QEMUDomainAgentCommand(nd, `{"execute":"guest-ping"}`, 2, 0); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the instantly restored guest's agent did not answer: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, d := range []string{"vda", "vdb"} {
		f := filepath.Join(to, name+"-"+d+".qcow2")
		if b, err := backingFile(t.Context(), f); err != nil || b != "" {
			t.Errorf("%s still has backing file %q (%v)", f, b, err)
		}
	}
	if got, want := testbed.ImageSum(t, filepath.Join(to, name+"-vdb.qcow2")), testbed.ImageSum(t, filepath.Join(ref, "vdb.qcow2")); got != want {
		t.Errorf("vdb of the instantly restored guest reads %s, the point %s", got, want)
	}
	inactive, err := bed.Conn.DomainGetXMLDesc(nd, golibvirt.DomainXMLInactive)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"vda", "vdb"} {
		if want := filepath.Join(to, name+"-"+d+".qcow2"); !strings.Contains(inactive, "'"+want+"'") && !strings.Contains(inactive, `"`+want+`"`) {
			t.Errorf("the guest's definition does not name %s:\n%s", want, inactive)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(to, ".*.instant")); len(left) > 0 {
		t.Errorf("overlays left: %v", left)
	}
	mustRun(t, "backup", "verify", "--target", dir)
}

func checkpointNames(t *testing.T, bed *testbed.Bed, dom *testbed.Domain) []string {
	t.Helper()
	cps, _, err := bed.Conn.DomainListAllCheckpoints(dom.Dom, -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cps {
		names = append(names, c.Name)
	}
	return sortedList(names)
}

func sortedList(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func formatUUIDBytes(u golibvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// TestBackupCrashRepair kills a backup (SIGKILL) before its job starts, while the job
// copies (QEMU's job outlives the process), after it and before the point is committed,
// and after the commit before the cleanup; each time the next run
// repairs the repository and the guest's checkpoints and continues the chain, and every
// point restores to the guest's (unchanging, paused) disks.
func TestBackupCrashRepair(t *testing.T) {
	bin := buildAutosnap(t)
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{Disks: 2, Guest: true, DiskMiB: 512})
	dir := filepath.Join(t.TempDir(), "repo")
	// Enough data that a backup job is still copying when it first reports progress.
	dom.WriteDisk(t, "vdb", 4<<20, 0x5a, 400<<20)
	if err := bed.Conn.DomainSuspend(dom.Dom); err != nil {
		t.Fatal(err)
	}
	want := capture(t, dom)
	backupRun(t, dom, dir, "--quiesce", "off")
	for _, at := range []string{backup.CrashBegun, backup.CrashCopying, backup.CrashCopied, backup.CrashCommitted} {
		args := []string{"--vmid", dom.Name, "backup", "--target", dir, "--quiesce", "off"}
		if at == backup.CrashCopying {
			// A full's job copies 400 MiB: it is still running in QEMU when the process dies.
			args = append(args, "--level", "full")
		}
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "AUTOSNAP_CRASH_AT="+at)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ProcessState.String() != "signal: killed" {
			t.Fatalf("crash at %s: %v\n%s", at, err, out)
		}
		row := backupRun(t, dom, dir, "--quiesce", "off")
		if row.Outcome != "ok" || (row.Level != "inc" && row.FullReason == "") {
			t.Fatalf("after a crash at %s: %+v", at, row)
		}
		t.Logf("after a crash at %s: %s %s", at, row.Level, row.FullReason)
	}
	r, _ := repo.Open(dir)
	rg, err := backup.FindGuest(r, dom.Name)
	if err != nil {
		t.Fatal(err)
	}
	pts, _ := rg.Points()
	if m, _ := filepath.Glob(filepath.Join(rg.Dir, repo.PartialPfx+"*")); len(m) > 0 {
		t.Errorf("partial points left: %v", m)
	}
	for _, p := range pts {
		checkRestore(t, dom, dir, p.ID, "qcow2", want)
	}
	if cps := checkpointNames(t, bed, dom); len(cps) != 2 {
		t.Errorf("guest checkpoints after the repairs: %v, want the full's and the newest point's", cps)
	}
}

// TestBackupDiskJoinsChain: a disk left out of the full joins the chain in the next
// inc, copied whole there with the reason in its manifest, while the other disk stays
// incremental; both restore to the guest's content.
func TestBackupDiskJoinsChain(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{Disks: 2, State: testbed.Paused})
	dir := filepath.Join(t.TempDir(), "repo")
	dom.WriteDisk(t, "vda", 1<<20, 0x11, 1<<20)
	dom.WriteDisk(t, "vdb", 2<<20, 0x22, 1<<20)
	full := backupRun(t, dom, dir, "--quiesce", "off", "--exclude-disk", "vdb")
	dom.WriteDisk(t, "vda", 5<<20, 0x33, 1<<20)
	inc := backupRun(t, dom, dir, "--quiesce", "off")
	if full.Level != "full" || inc.Level != "inc" {
		t.Fatalf("levels %s, %s; want full, inc", full.Level, inc.Level)
	}
	r, _ := repo.Open(dir)
	rg, err := backup.FindGuest(r, dom.Name)
	if err != nil {
		t.Fatal(err)
	}
	p, err := rg.Point(inc.Point)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := p.Disk("vda")
	b, _ := p.Disk("vdb")
	if a.Backing == "" || a.FullReason != "" || b.Backing != "" || !strings.Contains(b.FullReason, "was added since point "+full.Point) {
		t.Fatalf("vda %+v\nvdb %+v", a, b)
	}
	checkRestore(t, dom, dir, inc.Point, "raw", capture(t, dom))
}

// TestRestoreInPlace: the shut-off guest's images are replaced by a point's disks, its
// checkpoints go (their bitmaps described the old content), and the next backup is a
// full that says why. A running guest and a missing --force are refused.
func TestRestoreInPlace(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{Disks: 2, State: testbed.Paused})
	dir := filepath.Join(t.TempDir(), "repo")
	dom.WriteDisk(t, "vdb", 2<<20, 0x22, 1<<20)
	first := backupRun(t, dom, dir, "--quiesce", "off")
	want := capture(t, dom)
	dom.WriteDisk(t, "vda", 3<<20, 0x44, 1<<20)
	dom.WriteDisk(t, "vdb", 2<<20, 0x55, 1<<20)
	backupRun(t, dom, dir, "--quiesce", "off")
	if r := run(t, "--vmid", dom.Name, "restore", "--target", dir, "--in-place"); r.code != ExitUsage || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("--in-place without --force: exit %d", r.code)
	}
	if r := run(t, "--vmid", dom.Name, "restore", "--target", dir, "--in-place", "--force"); r.code != ExitUsage || !strings.Contains(r.stderr, "shut it down first") {
		t.Fatalf("--in-place on an active guest: exit %d", r.code)
	}
	if err := bed.Conn.DomainDestroy(dom.Dom); err != nil {
		t.Fatal(err)
	}
	before := capture(t, dom)
	mustRun(t, "--dry-run", "--vmid", dom.Name, "restore", "--target", dir, "--until", first.Point, "--in-place", "--force")
	if got := capture(t, dom); got["vda"] != before["vda"] || got["vdb"] != before["vdb"] {
		t.Fatal("the dry run changed the guest's disks")
	}
	mustRun(t, "--vmid", dom.Name, "restore", "--target", dir, "--until", first.Point, "--in-place", "--force")
	got := capture(t, dom)
	for _, d := range []string{"vda", "vdb"} {
		if got[d] != want[d] {
			t.Errorf("disk %s after the in-place restore reads %s, the point's instant read %s", d, got[d], want[d])
		}
	}
	if cps := checkpointNames(t, bed, dom); len(cps) != 0 {
		t.Errorf("checkpoints left after the in-place restore: %v", cps)
	}
	next := backupRun(t, dom, dir, "--quiesce", "off")
	if next.Level != "full" || !strings.Contains(next.FullReason, "is gone from the guest") {
		t.Fatalf("the backup after the restore: %+v", next)
	}
	// The shut-off guest's chain goes on (persistent bitmaps in its images).
	if inc := backupRun(t, dom, dir, "--quiesce", "off"); inc.Level != "inc" {
		t.Fatalf("second backup of the shut-off guest: %+v", inc)
	} else {
		checkRestore(t, dom, dir, inc.Point, "qcow2", want)
	}
}

// TestBackupWithSnapshots: autosnap's own snapshots (new overlays) and their merges
// between backups keep the chain going: every backup after the first is an inc, and
// every point restores to the guest's content at its instant.
func TestBackupWithSnapshots(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{Disks: 2, State: testbed.Paused})
	dir := filepath.Join(t.TempDir(), "repo")
	bk := func(want string) {
		t.Helper()
		row := backupRun(t, dom, dir, "--quiesce", "off")
		if row.Level != want {
			t.Fatalf("level %s (%s), want %s", row.Level, row.FullReason, want)
		}
		checkRestore(t, dom, dir, row.Point, "raw", capture(t, dom))
	}
	snap := func(args ...string) {
		t.Helper()
		mustRun(t, append([]string{"--vmid", dom.Name, "--timestamp-format", fmtMS}, args...)...)
	}
	dom.WriteDisk(t, "vda", 1<<20, 0x11, 1<<20)
	bk("full")
	snap("snap", "--label", "bk", "--keep", "2", "--quiesce", "off")
	dom.WriteDisk(t, "vdb", 2<<20, 0x22, 1<<20)
	bk("inc")
	snap("snap", "--label", "bk", "--keep", "2", "--quiesce", "off")
	dom.WriteDisk(t, "vda", 3<<20, 0x33, 1<<20)
	snap("snap", "--label", "bk", "--keep", "2", "--quiesce", "off") // merges the oldest overlay
	dom.WriteDisk(t, "vdb", 4<<20, 0x44, 1<<20)
	bk("inc")
	snap("clean", "--label", "bk", "--keep", "0") // merges everything back into the base
	dom.WriteDisk(t, "vda", 5<<20, 0x55, 1<<20)
	bk("inc")
}

// TestBackupDryRunWritesNothing: a dry run creates neither the repository nor the
// guest's directory, and says which level each guest would get and why.
func TestBackupDryRunWritesNothing(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff})
	dir := filepath.Join(t.TempDir(), "repo")
	r := mustRun(t, "--dry-run", "--vmid", dom.Name, "backup", "--target", dir)
	if !strings.Contains(r.stdout, "Dry run: would take a full backup") || !strings.Contains(r.stdout, "full because no backup of this guest in the repository yet") {
		t.Fatalf("output:\n%s", r.stdout)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the dry run created %s (%v)", dir, err)
	}
	backupRun(t, dom, dir, "--quiesce", "off")
	ents, _ := os.ReadDir(dir)
	other := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff})
	mustRun(t, "--dry-run", "--vmid", dom.Name+","+other.Name, "backup", "--target", dir)
	if after, _ := os.ReadDir(dir); len(after) != len(ents) {
		t.Fatalf("the dry run created a guest directory: %d entries, were %d", len(after), len(ents))
	}
}
