package libvirt_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/libvirt"
	"github.com/autosnap/autosnap/internal/testbed"
)

// bkEnv is a throwaway domain with a backup directory holding one subdirectory per
// point, named like the point, each with <disk>.qcow2.
type bkEnv struct {
	*revertEnv
	dir string
}

func newBkEnv(t *testing.T, spec testbed.DomainSpec) *bkEnv {
	t.Helper()
	e := &bkEnv{revertEnv: newRevertEnv(t, spec), dir: t.TempDir()}
	return e
}

func (e *bkEnv) file(point, disk string) string { return filepath.Join(e.dir, point, disk+".qcow2") }

// backup takes one point; parent is the point whose files an inc or diff stacks on.
func (e *bkEnv) backup(t *testing.T, point string, level driver.BackupLevel, since, checkpoint, parent string, disks ...string) driver.BackupResult {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(e.dir, point), 0o700); err != nil {
		t.Fatal(err)
	}
	req := driver.BackupRequest{Level: level, Since: since, Checkpoint: checkpoint}
	for _, d := range disks {
		tg := driver.BackupTarget{Disk: d, File: e.file(point, d)}
		if parent != "" {
			tg.Backing = filepath.Join("..", parent, d+".qcow2")
		}
		req.Targets = append(req.Targets, tg)
	}
	var calls int
	req.Progress = func(done, total uint64) {
		calls++
		if done > total {
			t.Errorf("progress %d of %d", done, total)
		}
	}
	start := time.Now()
	res, err := e.d.Backup(rctx(t), e.guest(t), req)
	if err != nil {
		t.Fatalf("%s backup %s: %v", level, point, err)
	}
	t.Logf("%s backup %s: %s, %v bytes", level, point, time.Since(start).Round(time.Millisecond), res.Bytes)
	if calls == 0 {
		t.Errorf("%s backup %s: progress never reported", level, point)
	}
	for _, d := range disks {
		fi, err := os.Stat(e.file(point, d))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.file(point, d), fi.Mode().Perm())
		}
	}
	return res
}

// capture pauses the guest, returns the sums of its disks' current content, and
// resumes it.
func (e *bkEnv) capture(t *testing.T, disks ...string) map[string]string {
	t.Helper()
	if err := e.bed.Conn.DomainSuspend(e.dom.Dom); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.bed.Conn.DomainResume(e.dom.Dom); err != nil {
			t.Fatal(err)
		}
	}()
	out := map[string]string{}
	for _, d := range disks {
		out[d] = testbed.ImageSum(t, e.dom.Chain(t, d)[0])
	}
	return out
}

// checkPoint compares every disk of a point (its whole backing chain, read like a
// restore would) with the sums captured at its instant.
func (e *bkEnv) checkPoint(t *testing.T, point string, want map[string]string) {
	t.Helper()
	for d, sum := range want {
		if got := testbed.ImageSum(t, e.file(point, d)); got != sum {
			t.Errorf("point %s disk %s reads %s, the guest's disk read %s at that instant", point, d, got, sum)
		}
		// qemu-img convert of the chain, as a restore does, gives the same bytes.
		out := filepath.Join(t.TempDir(), "restored.raw")
		if b, err := exec.Command("qemu-img", "convert", "-O", "raw", e.file(point, d), out).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert %s: %v: %s", e.file(point, d), err, b)
		}
		if got := testbed.ImageSum(t, out); got != sum {
			t.Errorf("point %s disk %s converted reads %s, want %s", point, d, got, sum)
		}
	}
}

// zeroDisk turns a region of an active domain's disk to zero: with data zeros
// (write -P 0) or as a zero write the block layer may store as zero clusters (write -z).
func (e *bkEnv) zeroDisk(t *testing.T, target string, off, length int64, asZeroWrite bool) {
	t.Helper()
	if !asZeroWrite {
		e.dom.WriteDisk(t, target, off, 0, int(length))
		return
	}
	var alias string
	for _, dk := range e.dom.XML(t).Devices.Disks {
		if dk.Target != nil && dk.Target.Dev == target && dk.Alias != nil {
			alias = dk.Alias.Name
		}
	}
	dev := "/machine/peripheral/" + alias + "/virtio-backend"
	for _, io := range []string{fmt.Sprintf("write -z %d %d", off, length), "flush"} {
		if out := e.dom.HMP(t, fmt.Sprintf("qemu-io -d %s %q", dev, io)); strings.TrimSpace(out) != "" {
			t.Fatalf("qemu-io %q: %s", io, out)
		}
	}
	if got := testbed.ReadImage(t, e.dom.Chain(t, target)[0], off, int(length)); !bytes.Equal(got, make([]byte, length)) {
		t.Fatalf("zero write at %d+%d on %s did not reach the disk", off, length, target)
	}
}

func checkpointNames(t *testing.T, e *bkEnv) []driver.Checkpoint {
	t.Helper()
	src, err := e.d.BackupSource(rctx(t), e.guest(t))
	if err != nil {
		t.Fatal(err)
	}
	return src.Checkpoints
}

// topLayer reports the extents a qcow2 file's own layer describes at depth 0.
type extent struct {
	Start, Length int64
	Depth         int
	Data, Zero    bool
}

func qemuMap(t *testing.T, file string) []extent {
	t.Helper()
	out, err := exec.Command("qemu-img", "map", "-U", "--output=json", file).Output()
	if err != nil {
		t.Fatalf("qemu-img map %s: %v", file, err)
	}
	var ext []extent
	if err := json.Unmarshal(out, &ext); err != nil {
		t.Fatal(err)
	}
	return ext
}

// ownedBy says at which depth of file's chain each byte of [off, off+length) is
// described; -1 where no layer describes it.
func depthAt(t *testing.T, file string, off int64) int {
	t.Helper()
	for _, x := range qemuMap(t, file) {
		if off >= x.Start && off < x.Start+x.Length {
			if !x.Data && !x.Zero {
				return -1
			}
			return x.Depth
		}
	}
	return -1
}

// TestBackupLiveLevels: on a running two-disk guest, a full, then an inc after data
// was written, zeroed with data zeros and with zero writes, and an untouched region;
// a diff; a copy. Every point's chain reads exactly the guest's disks at its instant;
// the zeroed regions read zeros through the inc's chain although the full holds data
// there; the untouched region is not copied again but read through to the full.
func TestBackupLiveLevels(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 2, DiskMiB: 64, State: testbed.Running})
	vda, vdb := "vda", "vdb"
	for i, d := range []string{vda, vdb} {
		e.dom.WriteDisk(t, d, 0, byte(0xa1+i), 4*mib)
		e.dom.WriteDisk(t, d, 8*mib, byte(0xb1+i), 4*mib)
		e.dom.WriteDisk(t, d, 20*mib, byte(0xc1+i), 4*mib)
	}
	want := e.capture(t, vda, vdb)
	e.backup(t, "p1-full", driver.LevelFull, "", "autosnap-p1", "", vda, vdb)
	e.checkPoint(t, "p1-full", want)

	// After the full: vda 0..4 MiB data zeros, vda 8..12 MiB a zero write, vdb
	// 8..12 MiB new data; 20..24 MiB untouched on both.
	e.zeroDisk(t, vda, 0, 4*mib, false)
	e.zeroDisk(t, vda, 8*mib, 4*mib, true)
	e.dom.WriteDisk(t, vdb, 8*mib, 0xd2, 4*mib)
	want2 := e.capture(t, vda, vdb)
	res := e.backup(t, "p2-inc", driver.LevelInc, "autosnap-p1", "autosnap-p2", "p1-full", vda, vdb)
	e.checkPoint(t, "p2-inc", want2)
	for _, r := range []struct {
		off int64
		why string
	}{{0, "data zeros"}, {8 * mib, "a zero write"}} {
		if got := testbed.ReadImage(t, e.file("p2-inc", vda), r.off, 4*mib); !bytes.Equal(got, make([]byte, 4*mib)) {
			t.Errorf("inc of vda at %d (%s after the full): not zero through the inc's chain", r.off, r.why)
		}
		if d := depthAt(t, e.file("p2-inc", vda), r.off); d != 0 {
			t.Errorf("inc of vda at %d (%s): described at depth %d, want the inc itself (0) to hide the full's data", r.off, r.why, d)
		}
	}
	for _, d := range []string{vda, vdb} {
		if dp := depthAt(t, e.file("p2-inc", d), 20*mib); dp != 1 {
			t.Errorf("inc of %s at 20 MiB (untouched since the full): depth %d, want 1 (read through to the full)", d, dp)
		}
		if got := testbed.ReadImage(t, e.file("p2-inc", d), 20*mib, 4*mib); got[0] != byte(0xc1+map[string]int{vda: 0, vdb: 1}[d]) {
			t.Errorf("inc of %s at 20 MiB reads %#x", d, got[0])
		}
	}
	if res.Bytes[vdb] < 4*mib || res.Bytes[vdb] > 6*mib {
		t.Errorf("inc copied %d bytes of vdb, want the 4 MiB written (plus little)", res.Bytes[vdb])
	}

	e.dom.WriteDisk(t, vda, 30*mib, 0xe1, 2*mib)
	want3 := e.capture(t, vda, vdb)
	e.backup(t, "p3-diff", driver.LevelDiff, "autosnap-p1", "autosnap-p3", "p1-full", vda, vdb)
	e.checkPoint(t, "p3-diff", want3)

	cps := checkpointNames(t, e)
	if len(cps) != 3 || cps[0].Name != "autosnap-p1" || cps[2].Name != "autosnap-p3" {
		t.Fatalf("checkpoints after full, inc, diff: %+v", cps)
	}
	for _, c := range cps {
		if c.Unusable != "" || len(c.Disks) != 2 {
			t.Errorf("checkpoint %s: %+v, want usable on both disks", c.Name, c)
		}
	}
	e.backup(t, "p4-copy", driver.LevelCopy, "", "", "", vda)
	e.checkPoint(t, "p4-copy", map[string]string{vda: want3[vda]})
	if n := len(checkpointNames(t, e)); n != 3 {
		t.Errorf("a copy changed the checkpoints: %d, want 3", n)
	}

	// Removing the oldest and the middle checkpoint loses none of the changes the
	// newest tracks.
	g := e.guest(t)
	for _, name := range []string{"autosnap-p1", "autosnap-p2"} {
		if err := e.d.DeleteCheckpoint(rctx(t), g, name); err != nil {
			t.Fatalf("DeleteCheckpoint %s: %v", name, err)
		}
	}
	if err := e.d.DeleteCheckpoint(rctx(t), g, "autosnap-p2"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("deleting a removed checkpoint: %v, want ErrNotFound", err)
	}
	e.dom.WriteDisk(t, vdb, 40*mib, 0xf2, 1*mib)
	want5 := e.capture(t, vda, vdb)
	e.backup(t, "p5-inc", driver.LevelInc, "autosnap-p3", "autosnap-p5", "p3-diff", vda, vdb)
	e.checkPoint(t, "p5-inc", want5)
}

// TestDeleteCheckpointRefusesOthers: a checkpoint not named autosnap-* is never
// removed.
func TestDeleteCheckpointRefusesOthers(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{State: testbed.Running})
	x := `<domaincheckpoint><name>theirs</name></domaincheckpoint>`
	if _, err := e.bed.Conn.DomainCheckpointCreateXML(e.dom.Dom, x, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.d.DeleteCheckpoint(rctx(t), e.guest(t), "theirs"); err == nil {
		t.Fatal("DeleteCheckpoint removed a checkpoint that is not autosnap's")
	}
	if _, err := e.bed.Conn.DomainCheckpointLookupByName(e.dom.Dom, "theirs", 0); err != nil {
		t.Fatalf("their checkpoint is gone: %v", err)
	}
	if cps := checkpointNames(t, e); len(cps) != 0 {
		t.Errorf("BackupSource lists others' checkpoints: %+v", cps)
	}
	_ = libvirt.CheckpointPrefix
	_ = context.Background
}

// TestBackupAcrossSnapshots: autosnap's external snapshots and their merges between
// backups keep incrementals working on a running guest. libvirt 9.0 copies every
// checkpoint's bitmap into a new overlay and merges bitmaps when a commit removes an
// overlay, so after each snapshot and each merge (of an intermediate overlay and of the
// active one) the checkpoints stay usable and the next inc reads the guest's whole
// current view.
func TestBackupAcrossSnapshots(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 2, DiskMiB: 64, State: testbed.Running})
	disks := []string{"vda", "vdb"}
	write := func(off int64, p byte) {
		for i, d := range disks {
			e.dom.WriteDisk(t, d, off, p+byte(i), 2*mib)
		}
	}
	usable := func(when string) {
		for _, c := range checkpointNames(t, e) {
			if c.Unusable != "" {
				t.Fatalf("%s: checkpoint %s unusable: %s", when, c.Name, c.Unusable)
			}
		}
	}
	write(0, 0x10)
	e.backup(t, "p1", driver.LevelFull, "", "autosnap-p1", "", disks...)
	e.checkPoint(t, "p1", e.capture(t, disks...))
	prev := "p1"
	steps := e.snapshotSteps(t)
	for i, s := range steps {
		write(int64(4+4*i)*mib, byte(0x20+0x10*i))
		s.do()
		usable("after " + s.name)
		write(int64(6+4*i)*mib, byte(0x28+0x10*i))
		want := e.capture(t, disks...)
		point := fmt.Sprintf("p%d", i+2)
		res := e.backup(t, point, driver.LevelInc, "autosnap-"+prev, "autosnap-"+point, prev, disks...)
		e.checkPoint(t, point, want)
		// Only what changed since the previous point is copied: 4 MiB per disk.
		for _, d := range disks {
			if res.Bytes[d] != 4*mib {
				t.Errorf("inc after %s copied %d bytes of %s, want the 4 MiB written", s.name, res.Bytes[d], d)
			}
		}
		t.Logf("after %s: vda chain %v", s.name, e.dom.Chain(t, "vda"))
		prev = point
	}
	if n := len(e.dom.Chain(t, "vda")); n != 1 {
		t.Errorf("vda chain has %d images after both merges, want 1", n)
	}
}

// qemuIO runs qemu-io commands on the image of a shut-off guest; the image's
// persistent bitmaps record the writes as QEMU running the guest would.
func qemuIO(t *testing.T, file string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	if out, err := exec.Command("qemu-io", append(args, file)...).CombinedOutput(); err != nil || strings.Contains(string(out), "error") {
		t.Fatalf("qemu-io %v on %s: %v: %s", cmds, file, err, out)
	}
}

// offSums returns the sums of a shut-off guest's disks.
func (e *bkEnv) offSums(t *testing.T, disks ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range disks {
		out[d] = testbed.ImageSum(t, e.dom.Chain(t, d)[0])
	}
	return out
}

func (e *bkEnv) stop(t *testing.T) {
	t.Helper()
	// SIGTERM: QEMU closes its images cleanly and stores the bitmaps.
	if err := e.bed.Conn.DomainDestroyFlags(e.dom.Dom, golibvirt.DomainDestroyGraceful); err != nil {
		t.Fatal(err)
	}
}

func (e *bkEnv) start(t *testing.T) {
	t.Helper()
	if _, err := e.bed.Conn.DomainCreateWithFlags(e.dom.Dom, 0); err != nil {
		t.Fatal(err)
	}
}

// TestBackupShutoff: a chain that moves between a running and a shut-off guest. A live
// full; the guest stops; data written, zeroed; two offline incs (qemu-storage-daemon on
// the images) read exactly the disks; the guest starts and a live inc continues from the
// checkpoint the offline backup created (libvirt found it and QEMU loaded its bitmap);
// a checkpoint removed while the guest is off leaves no bitmap in its images.
func TestBackupShutoff(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 2, DiskMiB: 64, State: testbed.Running})
	disks := []string{"vda", "vdb"}
	for i, d := range disks {
		e.dom.WriteDisk(t, d, 0, byte(0x31+i), 4*mib)
		e.dom.WriteDisk(t, d, 16*mib, byte(0x41+i), 4*mib)
	}
	e.backup(t, "p1", driver.LevelFull, "", "autosnap-p1", "", disks...)
	e.checkPoint(t, "p1", e.capture(t, disks...))
	e.stop(t)

	for _, c := range checkpointNames(t, e) {
		if c.Unusable != "" {
			t.Fatalf("after a clean stop, checkpoint %s is unusable: %s", c.Name, c.Unusable)
		}
	}
	qemuIO(t, e.dom.Chain(t, "vda")[0], fmt.Sprintf("write -P 0x51 %d %d", 8*mib, 2*mib))
	qemuIO(t, e.dom.Chain(t, "vdb")[0], fmt.Sprintf("write -P 0x52 %d %d", 10*mib, 2*mib))
	want := e.offSums(t, disks...)
	res := e.backup(t, "p2", driver.LevelInc, "autosnap-p1", "autosnap-p2", "p1", disks...)
	e.checkPoint(t, "p2", want)
	if res.Bytes["vda"] != 2*mib || res.Bytes["vdb"] != 2*mib {
		t.Errorf("offline inc copied %v, want the 2 MiB written per disk", res.Bytes)
	}

	qemuIO(t, e.dom.Chain(t, "vda")[0], fmt.Sprintf("write -z %d %d", 0, 4*mib))
	qemuIO(t, e.dom.Chain(t, "vdb")[0], fmt.Sprintf("write -P 0 %d %d", 0, 4*mib))
	want = e.offSums(t, disks...)
	e.backup(t, "p3", driver.LevelInc, "autosnap-p2", "autosnap-p3", "p2", disks...)
	e.checkPoint(t, "p3", want)
	for _, d := range disks {
		if got := testbed.ReadImage(t, e.file("p3", d), 0, 4*mib); !bytes.Equal(got, make([]byte, 4*mib)) {
			t.Errorf("offline inc of %s: the region zeroed after the full does not read zero", d)
		}
		if got := testbed.ReadImage(t, e.file("p3", d), 16*mib, 4*mib); got[0] == 0 {
			t.Errorf("offline inc of %s: the untouched region does not read through to the full", d)
		}
	}

	e.start(t)
	for _, c := range checkpointNames(t, e) {
		if c.Unusable != "" {
			t.Fatalf("after the start, checkpoint %s is unusable: %s", c.Name, c.Unusable)
		}
	}
	e.dom.WriteDisk(t, "vdb", 30*mib, 0x61, 2*mib)
	want = e.capture(t, disks...)
	res = e.backup(t, "p4", driver.LevelInc, "autosnap-p3", "autosnap-p4", "p3", disks...)
	e.checkPoint(t, "p4", want)
	if res.Bytes["vdb"] != 2*mib || res.Bytes["vda"] != 0 {
		t.Errorf("live inc after offline points copied %v, want vdb's 2 MiB only", res.Bytes)
	}

	e.stop(t)
	e.backup(t, "p5", driver.LevelCopy, "", "", "", disks...)
	e.checkPoint(t, "p5", e.offSums(t, disks...))
	if err := e.d.DeleteCheckpoint(rctx(t), e.guest(t), "autosnap-p1"); err != nil {
		t.Fatal(err)
	}
	bms, err := e.d.Bitmaps(rctx(t), e.guest(t))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range bms {
		if b.Disk == "vda" {
			names = append(names, b.Name)
		}
		if !b.Checkpoint {
			t.Errorf("bitmap %s on %s has no checkpoint", b.Name, b.Image)
		}
	}
	if strings.Join(names, ",") != "autosnap-p2,autosnap-p3,autosnap-p4" {
		t.Errorf("vda's bitmaps after removing autosnap-p1 while shut off: %v", names)
	}
}

// TestBackupPausedAndQuiesced: the real guest with its writer appending to
// /data/counter on vda. Backups taken while the guest is paused read exactly the disks
// captured in that pause (full, then an inc after the writer ran on); a backup with
// Freeze freezes right before the job starts and thaws right after, and its vda holds
// an ext4 that needs no journal recovery, with the counter file intact.
func TestBackupPausedAndQuiesced(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 2, Guest: true, Writer: true, State: testbed.Running})
	disks := []string{"vda", "vdb"}
	e.dom.WriteDisk(t, "vdb", 0, 0x71, 8*mib)
	pausedBackup := func(point string, level driver.BackupLevel, since, parent string) {
		t.Helper()
		if err := e.bed.Conn.DomainSuspend(e.dom.Dom); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{}
		for _, d := range disks {
			want[d] = testbed.ImageSum(t, e.dom.Chain(t, d)[0])
		}
		e.backup(t, point, level, since, "autosnap-"+point, parent, disks...)
		if err := e.bed.Conn.DomainResume(e.dom.Dom); err != nil {
			t.Fatal(err)
		}
		e.checkPoint(t, point, want)
	}
	pausedBackup("p1", driver.LevelFull, "", "")
	time.Sleep(2 * time.Second) // the writer appends and syncs meanwhile
	e.dom.WriteDisk(t, "vdb", 4*mib, 0x72, 1*mib)
	pausedBackup("p2", driver.LevelInc, "autosnap-p1", "p1")
	if testbed.ImageSum(t, e.file("p2", "vda")) == testbed.ImageSum(t, e.file("p1", "vda")) {
		t.Error("the writer changed nothing on vda between the two points; the test proves nothing")
	}

	g := e.guest(t)
	var events []string
	req := driver.BackupRequest{Level: driver.LevelInc, Since: "autosnap-p2", Checkpoint: "autosnap-p3",
		Targets: []driver.BackupTarget{{Disk: "vda", File: e.file("p3", "vda"), Backing: "../p2/vda.qcow2"}}}
	req.Freeze = func(ctx context.Context) (func(), error) {
		if _, err := e.d.Freeze(ctx, g); err != nil {
			return nil, err
		}
		events = append(events, "freeze")
		return func() {
			frozen, err := e.d.FrozenState(context.Background(), g)
			if err != nil || !frozen {
				t.Errorf("at thaw the guest is not frozen (%v, %v)", frozen, err)
			}
			// The job has started by now: its checkpoint exists.
			if _, err := e.bed.Conn.DomainCheckpointLookupByName(e.dom.Dom, "autosnap-p3", 0); err != nil {
				events = append(events, "no job at thaw")
			}
			if _, err := e.d.Thaw(context.Background(), g); err != nil {
				t.Errorf("thaw: %v", err)
			}
			events = append(events, "thaw")
		}, nil
	}
	if err := os.MkdirAll(filepath.Join(e.dir, "p3"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.Backup(rctx(t), g, req); err != nil {
		t.Fatal(err)
	}
	if strings.Join(events, ",") != "freeze,thaw" {
		t.Errorf("freeze/thaw sequence %v, want freeze,thaw with the job started in between", events)
	}
	if frozen, _ := e.d.FrozenState(rctx(t), g); frozen {
		t.Error("the guest is still frozen after the backup")
	}
	if err := testbed.FsckImage(t, e.file("p3", "vda")); err != nil {
		t.Errorf("the quiesced point's ext4 is not clean: %v", err)
	}
	if c := testbed.GuestFile(t, e.file("p3", "vda"), "/counter"); len(c) == 0 {
		t.Error("the quiesced point has no counter file")
	}
}

// qemuPid is the pid of the QEMU libvirt runs for a domain.
func qemuPid(t *testing.T, name string) int {
	t.Helper()
	b, err := os.ReadFile("/run/libvirt/qemu/" + name + ".pid")
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestBackupUncleanStop: QEMU killed with SIGKILL cannot store its bitmaps, which stay
// marked in use in the images (a bitmap created in that QEMU run would be missing
// instead); the checkpoint is then reported unusable (shut off, and again once the guest runs), an
// inc from it fails saying a full is needed and leaves no checkpoint behind, the broken
// checkpoint is removed without error, and a new full starts a chain that works.
func TestBackupUncleanStop(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 2, State: testbed.Running})
	disks := []string{"vda", "vdb"}
	e.dom.WriteDisk(t, "vda", 0, 0x81, 2*mib)
	e.backup(t, "p1", driver.LevelFull, "", "autosnap-p1", "", disks...)
	// A clean stop stores the bitmaps; the next QEMU loads them and marks them in use
	// in the images until it stores them again.
	e.stop(t)
	e.start(t)
	e.dom.WriteDisk(t, "vda", 2*mib, 0x82, 2*mib)
	pid := qemuPid(t, e.dom.Name)
	if err := exec.Command("kill", "-9", fmt.Sprint(pid)).Run(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for e.state(t).Active() {
		if time.Now().After(deadline) {
			t.Fatal("the domain did not stop after its QEMU was killed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	cps := checkpointNames(t, e)
	if len(cps) != 1 || !strings.Contains(cps[0].Unusable, "inconsistent") {
		t.Fatalf("after SIGKILL, shut off: %+v, want autosnap-p1 unusable as inconsistent", cps)
	}
	_ = os.MkdirAll(filepath.Join(e.dir, "p2"), 0o700)
	_, err := e.d.Backup(rctx(t), e.guest(t), driver.BackupRequest{Level: driver.LevelInc, Since: "autosnap-p1", Checkpoint: "autosnap-p2",
		Targets: []driver.BackupTarget{{Disk: "vda", File: e.file("p2", "vda"), Backing: "../p1/vda.qcow2"}}})
	if err == nil || !strings.Contains(err.Error(), "full") {
		t.Fatalf("offline inc from an inconsistent bitmap: %v, want an error asking for a full", err)
	}
	os.RemoveAll(filepath.Join(e.dir, "p2"))

	e.start(t)
	cps = checkpointNames(t, e)
	if len(cps) != 1 || cps[0].Unusable == "" {
		t.Fatalf("after SIGKILL, running again: %+v, want autosnap-p1 unusable", cps)
	}
	t.Logf("running: %s", cps[0].Unusable)
	_ = os.MkdirAll(filepath.Join(e.dir, "p2"), 0o700)
	_, err = e.d.Backup(rctx(t), e.guest(t), driver.BackupRequest{Level: driver.LevelInc, Since: "autosnap-p1", Checkpoint: "autosnap-p2",
		Targets: []driver.BackupTarget{{Disk: "vda", File: e.file("p2", "vda"), Backing: "../p1/vda.qcow2"}}})
	if err == nil || !strings.Contains(err.Error(), "full") {
		t.Fatalf("live inc from an inconsistent bitmap: %v, want an error asking for a full", err)
	}
	if cps := checkpointNames(t, e); len(cps) != 1 {
		t.Errorf("the failed inc left checkpoints %+v", cps)
	}
	if err := e.d.DeleteCheckpoint(rctx(t), e.guest(t), "autosnap-p1"); err != nil {
		t.Fatalf("removing the broken checkpoint: %v", err)
	}
	e.backup(t, "p3", driver.LevelFull, "", "autosnap-p3", "", disks...)
	e.dom.WriteDisk(t, "vdb", 8*mib, 0x83, 1*mib)
	want := e.capture(t, disks...)
	e.backup(t, "p4", driver.LevelInc, "autosnap-p3", "autosnap-p4", "p3", disks...)
	e.checkPoint(t, "p4", want)
}

// TestBackupLeftoverJob: a backup job left running by a killed run (its target files
// already removed by the repository's repair) is aborted by the next backup, which then
// succeeds; a job whose target still exists belongs to someone and makes Backup fail
// with a clear message.
func TestBackupLeftoverJob(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 1, DiskMiB: 512, State: testbed.Running})
	e.dom.WriteDisk(t, "vda", 0, 0x91, 300*mib)
	stale := filepath.Join(t.TempDir(), "stale.qcow2")
	begin := func() {
		t.Helper()
		x := fmt.Sprintf(`<domainbackup mode='push'><disks><disk name='vda' backup='yes' type='file'><target file=%q/><driver type='qcow2'/></disk></disks></domainbackup>`, stale)
		if err := e.bed.Conn.DomainBackupBegin(e.dom.Dom, x, golibvirt.OptString{}, 0); err != nil {
			t.Fatal(err)
		}
		// Throttle the job so it is certainly still running when Backup looks, however
		// fast or loaded the machine is.
		out, err := e.bed.Conn.QEMUDomainMonitorCommand(e.dom.Dom, `{"execute":"query-block-jobs"}`, 0)
		if err != nil {
			t.Fatal(err)
		}
		var jobs struct {
			Return []struct {
				Device string `json:"device"`
			} `json:"return"`
		}
		if err := json.Unmarshal([]byte(out), &jobs); err != nil || len(jobs.Return) == 0 {
			t.Fatalf("query-block-jobs: %v %v", out, err)
		}
		for _, j := range jobs.Return {
			cmd := fmt.Sprintf(`{"execute":"block-job-set-speed","arguments":{"device":%q,"speed":1048576}}`, j.Device)
			if _, err := e.bed.Conn.QEMUDomainMonitorCommand(e.dom.Dom, cmd, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	begin()
	_ = os.MkdirAll(filepath.Join(e.dir, "p1"), 0o700)
	req := driver.BackupRequest{Level: driver.LevelCopy, Targets: []driver.BackupTarget{{Disk: "vda", File: e.file("p1", "vda")}}}
	_, err := e.d.Backup(rctx(t), e.guest(t), req)
	if _, serr := os.Stat(stale); serr == nil {
		if err == nil || !strings.Contains(err.Error(), "another backup job") {
			t.Fatalf("Backup while another job writes %s: %v, want a refusal naming the job", stale, err)
		}
		// The live job's files are untouched.
		if _, serr := os.Stat(stale); serr != nil {
			t.Fatalf("the other job's target is gone: %v", serr)
		}
		os.Remove(e.file("p1", "vda"))
		if err := e.bed.Conn.DomainAbortJob(e.dom.Dom); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		os.Remove(stale)
		begin()
	} else {
		t.Fatal("the first job finished before Backup was called; make the disk bigger")
	}
	if err := os.Remove(stale); err != nil {
		t.Fatal(err)
	}
	os.Remove(e.file("p1", "vda"))
	want := e.capture(t, "vda")
	e.backup(t, "p1", driver.LevelCopy, "", "", "", "vda")
	e.checkPoint(t, "p1", want)
}

// TestBackupCancelled: a backup whose context ends while the job runs stops the job
// and removes the checkpoint it created.
func TestBackupCancelled(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 1, DiskMiB: 512, State: testbed.Running})
	e.dom.WriteDisk(t, "vda", 0, 0xa1, 300*mib)
	_ = os.MkdirAll(filepath.Join(e.dir, "p1"), 0o700)
	ctx, cancel := context.WithCancel(rctx(t))
	var running bool
	req := driver.BackupRequest{Level: driver.LevelFull, Checkpoint: "autosnap-p1",
		Targets: []driver.BackupTarget{{Disk: "vda", File: e.file("p1", "vda")}},
		Progress: func(done, total uint64) {
			if total == 0 || done < total {
				running = true
				cancel()
			}
		}}
	_, err := e.d.Backup(ctx, e.guest(t), req)
	if !running {
		t.Fatal("the job finished before its first progress report; make the disk bigger")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled backup: %v, want context.Canceled", err)
	}
	if _, err := e.bed.Conn.DomainBackupGetXMLDesc(e.dom.Dom, 0); err == nil {
		t.Error("a backup job is still running after the cancelled backup returned")
	}
	if cps := checkpointNames(t, e); len(cps) != 0 {
		t.Errorf("the cancelled backup left checkpoints %+v", cps)
	}
}

// TestBackupRawDisk: a raw disk beside a qcow2 one is reported as not incremental with
// the reason, and in an inc it is copied whole (no backing) while the qcow2 disk is
// copied incrementally, running and shut off; the checkpoint tracks only the qcow2 disk.
func TestBackupRawDisk(t *testing.T) {
	spec := testbed.DomainSpec{Disks: 2}
	var e *bkEnv
	e = &bkEnv{dir: t.TempDir()}
	e.revertEnv = newCustomEnv(t, spec, testbed.Running, func(x *libvirtxml.Domain) {
		for i := range x.Devices.Disks {
			dk := &x.Devices.Disks[i]
			if dk.Target.Dev != "vdb" {
				continue
			}
			raw := strings.TrimSuffix(dk.Source.File.File, ".qcow2") + ".raw"
			if out, err := exec.Command("qemu-img", "convert", "-O", "raw", dk.Source.File.File, raw).CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			dk.Source.File.File = raw
			dk.Driver.Type = "raw"
		}
	})
	src, err := e.d.BackupSource(rctx(t), e.guest(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range src.Disks {
		switch d.Name {
		case "vda":
			if !d.Incremental || d.Format != "qcow2" {
				t.Errorf("vda: %+v, want incremental qcow2", d)
			}
		case "vdb":
			if d.Incremental || d.Format != "raw" || !strings.Contains(d.NoIncremental, "raw") {
				t.Errorf("vdb: %+v, want not incremental with a reason naming raw", d)
			}
		}
		if d.VirtualSize != 64*mib {
			t.Errorf("%s: virtual size %d, want 64 MiB", d.Name, d.VirtualSize)
		}
	}
	disks := []string{"vda", "vdb"}
	e.dom.WriteDisk(t, "vda", 0, 0xb1, 2*mib)
	e.dom.WriteDisk(t, "vdb", 0, 0xb2, 2*mib)
	e.backup(t, "p1", driver.LevelFull, "", "autosnap-p1", "", disks...)
	if cps := checkpointNames(t, e); len(cps) != 1 || strings.Join(cps[0].Disks, ",") != "vda" {
		t.Fatalf("checkpoints %+v, want autosnap-p1 tracking vda only", cps)
	}
	inc := func(point, since, parent string, want map[string]string) {
		t.Helper()
		_ = os.MkdirAll(filepath.Join(e.dir, point), 0o700)
		req := driver.BackupRequest{Level: driver.LevelInc, Since: since, Checkpoint: "autosnap-" + point, Targets: []driver.BackupTarget{
			{Disk: "vda", File: e.file(point, "vda"), Backing: filepath.Join("..", parent, "vda.qcow2")},
			{Disk: "vdb", File: e.file(point, "vdb")},
		}}
		res, err := e.d.Backup(rctx(t), e.guest(t), req)
		if err != nil {
			t.Fatal(err)
		}
		e.checkPoint(t, point, want)
		if res.Bytes["vda"] != 1*mib || res.Bytes["vdb"] != 3*mib {
			t.Errorf("inc %s copied %v, want vda's 1 MiB change and all of vdb's 3 MiB", point, res.Bytes)
		}
	}
	e.dom.WriteDisk(t, "vda", 4*mib, 0xb3, 1*mib)
	e.dom.WriteDisk(t, "vdb", 4*mib, 0xb4, 1*mib)
	inc("p2", "autosnap-p1", "p1", e.capture(t, disks...))

	e.stop(t)
	qemuIO(t, e.dom.Chain(t, "vda")[0], fmt.Sprintf("write -P 0xb5 %d %d", 8*mib, 1*mib))
	inc("p3", "autosnap-p2", "p2", e.offSums(t, disks...))
}

// TestBackupShutoffSnapshots: autosnap's snapshots and merges of a shut-off guest
// between backups. A snapshot taken while the guest is off gets a new overlay without
// bitmaps; the next backup still continues the chain. Merging the overlay back
// (qemu-img commit) keeps the changes made in it tracked by the base's bitmaps.
func TestBackupShutoffSnapshots(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 2, State: testbed.Running})
	disks := []string{"vda", "vdb"}
	e.dom.WriteDisk(t, "vda", 0, 0xc1, 2*mib)
	e.dom.WriteDisk(t, "vdb", 0, 0xc2, 2*mib)
	e.backup(t, "p1", driver.LevelFull, "", "autosnap-p1", "", disks...)
	e.stop(t)
	prev := "p1"
	steps := e.snapshotSteps(t)
	for i, s := range steps {
		for j, d := range disks {
			qemuIO(t, e.dom.Chain(t, d)[0], fmt.Sprintf("write -P 0x%x %d %d", 0x50+0x10*i+j, (4+4*i)*mib, mib))
		}
		s.do()
		for j, d := range disks {
			qemuIO(t, e.dom.Chain(t, d)[0], fmt.Sprintf("write -P 0x%x %d %d", 0x58+0x10*i+j, (6+4*i)*mib, mib))
		}
		for _, c := range checkpointNames(t, e) {
			t.Logf("after %s: %s unusable=%q", s.name, c.Name, c.Unusable)
		}
		want := e.offSums(t, disks...)
		point := fmt.Sprintf("p%d", i+2)
		res := e.backup(t, point, driver.LevelInc, "autosnap-"+prev, "autosnap-"+point, prev, disks...)
		e.checkPoint(t, point, want)
		for _, d := range disks {
			// qemu-img commit's writes into the base are recorded by the base's bitmaps,
			// so after a merge of the active overlay more than the changes is copied
			// (what the overlay held): never less.
			if res.Bytes[d] != 2*mib && (!strings.HasPrefix(s.name, "merge") || res.Bytes[d] < 2*mib) {
				t.Errorf("inc after %s copied %d bytes of %s, want the 2 MiB written", s.name, res.Bytes[d], d)
			}
		}
		t.Logf("after %s: vda chain %v", s.name, e.dom.Chain(t, "vda"))
		prev = point
	}
	e.start(t)
	e.dom.WriteDisk(t, "vdb", 30*mib, 0xc9, mib)
	want := e.capture(t, disks...)
	e.backup(t, "p6", driver.LevelInc, "autosnap-"+prev, "autosnap-p6", prev, disks...)
	e.checkPoint(t, "p6", want)
	// The full's checkpoint saw every snapshot and merge: a diff from it is whole.
	e.backup(t, "p7", driver.LevelDiff, "autosnap-p1", "autosnap-p7", "p1", disks...)
	e.checkPoint(t, "p7", want)
}

// TestBackupShutoffCancelled: an offline backup stopped mid-copy leaves the guest's
// existing checkpoints usable (qemu-storage-daemon closed the images cleanly), no
// bitmap or checkpoint of the backup that was not made, and no daemon holding the
// images: the guest starts.
func TestBackupShutoffCancelled(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 1, DiskMiB: 512, State: testbed.Running})
	e.dom.WriteDisk(t, "vda", 0, 0xe1, 300*mib)
	e.backup(t, "p1", driver.LevelFull, "", "autosnap-p1", "", "vda")
	e.stop(t)
	_ = os.MkdirAll(filepath.Join(e.dir, "p2"), 0o700)
	ctx, cancel := context.WithCancel(rctx(t))
	var running bool
	req := driver.BackupRequest{Level: driver.LevelFull, Checkpoint: "autosnap-p2",
		Targets: []driver.BackupTarget{{Disk: "vda", File: e.file("p2", "vda")}},
		Progress: func(done, total uint64) {
			if total == 0 || done < total {
				running = true
				cancel()
			}
		}}
	_, err := e.d.Backup(ctx, e.guest(t), req)
	if !running {
		t.Fatal("the copy finished before its first progress report; make the disk bigger")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled offline backup: %v, want context.Canceled", err)
	}
	cps := checkpointNames(t, e)
	if len(cps) != 1 || cps[0].Name != "autosnap-p1" || cps[0].Unusable != "" {
		t.Fatalf("after the cancelled offline backup: %+v, want autosnap-p1 alone and usable", cps)
	}
	bms, err := e.d.Bitmaps(rctx(t), e.guest(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bms {
		if b.Name != "autosnap-p1" {
			t.Errorf("leftover bitmap %s on %s", b.Name, b.Image)
		}
	}
	e.start(t)
	e.dom.WriteDisk(t, "vda", 400*mib, 0xe2, mib)
	want := e.capture(t, "vda")
	e.backup(t, "p3", driver.LevelInc, "autosnap-p1", "autosnap-p3", "p1", "vda")
	e.checkPoint(t, "p3", want)
}

// TestBackupCheckpointNameTaken: a backup asked to create a checkpoint that already
// exists fails, running and shut off, and the existing checkpoint (and its bitmaps)
// stay intact: the clean-up of the failed backup must not remove them.
func TestBackupCheckpointNameTaken(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 1, State: testbed.Running})
	e.dom.WriteDisk(t, "vda", 0, 0xf1, mib)
	e.backup(t, "p1", driver.LevelFull, "", "autosnap-p1", "", "vda")
	for _, state := range []string{"running", "shut off"} {
		if state == "shut off" {
			e.stop(t)
		}
		dir := filepath.Join(e.dir, "again-"+strings.ReplaceAll(state, " ", ""))
		_ = os.MkdirAll(dir, 0o700)
		_, err := e.d.Backup(rctx(t), e.guest(t), driver.BackupRequest{Level: driver.LevelFull, Checkpoint: "autosnap-p1",
			Targets: []driver.BackupTarget{{Disk: "vda", File: filepath.Join(dir, "vda.qcow2")}}})
		t.Logf("%s: %v", state, err)
		if err == nil || !strings.Contains(err.Error(), "already") {
			t.Fatalf("%s: a backup creating the existing checkpoint autosnap-p1: %v, want a refusal", state, err)
		}
		cps := checkpointNames(t, e)
		if len(cps) != 1 || cps[0].Unusable != "" {
			t.Fatalf("%s: after the refused backup: %+v, want autosnap-p1 intact", state, cps)
		}
	}
	e.start(t)
	e.dom.WriteDisk(t, "vda", 8*mib, 0xf2, mib)
	want := e.capture(t, "vda")
	e.backup(t, "p2", driver.LevelInc, "autosnap-p1", "autosnap-p2", "p1", "vda")
	e.checkPoint(t, "p2", want)
}

// TestBackupAcrossInternalSnapshots: internal snapshots of a shut-off guest (autosnap
// takes them only while it is off) between backups: libvirt 9.0 refuses them while
// checkpoints exist unless those are set aside; they create no overlay, so the
// checkpoints stay usable and the incs whole, and the guest's next live inc too.
func TestBackupAcrossInternalSnapshots(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 1, State: testbed.Running})
	e.dom.WriteDisk(t, "vda", 0, 0x21, mib)
	e.backup(t, "p1", driver.LevelFull, "", "autosnap-p1", "", "vda")
	e.stop(t)
	internal := driver.CreateOptions{Name: "i1", Disks: []driver.DiskSpec{{Name: "vda", Snapshot: "internal"}}}
	if _, err := e.d.CreateSnapshot(rctx(t), e.guest(t), internal); err != nil {
		t.Fatalf("internal snapshot of a shut-off guest with a checkpoint: %v", err)
	}
	qemuIO(t, e.dom.Chain(t, "vda")[0], fmt.Sprintf("write -P 0x23 %d %d", 8*mib, mib))
	e.backup(t, "p2", driver.LevelInc, "autosnap-p1", "autosnap-p2", "p1", "vda")
	e.checkPoint(t, "p2", e.offSums(t, "vda"))
	for _, c := range checkpointNames(t, e) {
		if c.Unusable != "" {
			t.Errorf("checkpoint %s unusable after an internal snapshot: %s", c.Name, c.Unusable)
		}
	}
	e.start(t)
	e.dom.WriteDisk(t, "vda", 4*mib, 0x22, mib)
	want := e.capture(t, "vda")
	e.backup(t, "p3", driver.LevelInc, "autosnap-p2", "autosnap-p3", "p2", "vda")
	e.checkPoint(t, "p3", want)
}

// TestBackupAfterRevert: reverting a shut-off guest to a snapshot changes its disk
// behind the bitmaps' back. To an internal snapshot, QEMU refuses while bitmaps exist:
// autosnap's checkpoints are removed (the next backup is a full) and the revert done.
// To an external snapshot, the guest's new overlay starts on the snapshot's image: a
// checkpoint older than the snapshot continues exactly (an inc from it reads the
// reverted disk), one made after it is reported unusable.
func TestBackupAfterRevert(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 1, State: testbed.Running})
	e.dom.WriteDisk(t, "vda", 0, 0x31, mib)
	e.backup(t, "p1", driver.LevelFull, "", "autosnap-p1", "", "vda")
	e.stop(t)
	if _, err := e.d.CreateSnapshot(rctx(t), e.guest(t), driver.CreateOptions{Name: "i1", Disks: []driver.DiskSpec{{Name: "vda", Snapshot: "internal"}}}); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, e.dom.Chain(t, "vda")[0], fmt.Sprintf("write -P 0x32 %d %d", 8*mib, mib))
	e.backup(t, "p2", driver.LevelInc, "autosnap-p1", "autosnap-p2", "p1", "vda")
	if err := e.d.RevertSnapshot(rctx(t), e.guest(t), "i1", driver.RevertOptions{}); err != nil {
		t.Fatalf("revert to an internal snapshot with checkpoints: %v", err)
	}
	if got := testbed.ReadImage(t, e.dom.Chain(t, "vda")[0], 8*mib, mib); got[0] != 0 {
		t.Fatal("the revert did not undo the write made after the snapshot")
	}
	if cps := checkpointNames(t, e); len(cps) != 0 {
		t.Fatalf("after an internal revert: checkpoints %+v, want none (their bitmaps cannot be trusted)", cps)
	}
	if err := e.d.DeleteSnapshot(rctx(t), e.guest(t), "i1"); err != nil {
		t.Fatal(err)
	}

	e.backup(t, "q1", driver.LevelFull, "", "autosnap-q1", "", "vda")
	e.snap(t, "s1", false, false)
	qemuIO(t, e.dom.Chain(t, "vda")[0], fmt.Sprintf("write -P 0x33 %d %d", 12*mib, mib))
	e.backup(t, "q2", driver.LevelInc, "autosnap-q1", "autosnap-q2", "q1", "vda")
	if err := e.d.RevertSnapshot(rctx(t), e.guest(t), "s1", driver.RevertOptions{}); err != nil {
		t.Fatalf("revert to an external snapshot with checkpoints: %v", err)
	}
	want := e.offSums(t, "vda")
	for _, c := range checkpointNames(t, e) {
		t.Logf("after the external revert: %s unusable=%q", c.Name, c.Unusable)
		if c.Name == "autosnap-q2" && c.Unusable == "" {
			t.Error("checkpoint q2, made after the snapshot the guest reverted to, is reported usable")
		}
	}
	qemuIO(t, e.dom.Chain(t, "vda")[0], fmt.Sprintf("write -P 0x34 %d %d", 16*mib, mib))
	want = e.offSums(t, "vda")
	e.backup(t, "q3", driver.LevelInc, "autosnap-q1", "autosnap-q3", "q1", "vda")
	e.checkPoint(t, "q3", want)
}

// TestBackupSuspendedCheckpointsRepaired: a run killed while a shut-off guest's
// checkpoints were set aside for a snapshot leaves their definitions in the journal.
// The next backup defines them again and continues the chain. If the guest ran and got
// a new overlay meanwhile (its writes tracked by no checkpoint bitmap), the checkpoint
// comes back unusable rather than trusted, and an inc from it is refused.
func TestBackupSuspendedCheckpointsRepaired(t *testing.T) {
	e := newBkEnv(t, testbed.DomainSpec{Disks: 1, State: testbed.Running})
	e.dom.WriteDisk(t, "vda", 0, 0x41, mib)
	e.backup(t, "p1", driver.LevelFull, "", "autosnap-p1", "", "vda")
	e.stop(t)
	if err := libvirt.SuspendCheckpoints(rctx(t), e.d, e.guest(t)); err != nil {
		t.Fatal(err)
	}
	if cps := checkpointNames(t, e); len(cps) != 0 {
		t.Fatalf("suspended checkpoints still listed: %+v", cps)
	}
	qemuIO(t, e.dom.Chain(t, "vda")[0], fmt.Sprintf("write -P 0x42 %d %d", 4*mib, mib))
	e.backup(t, "p2", driver.LevelInc, "autosnap-p1", "autosnap-p2", "p1", "vda")
	e.checkPoint(t, "p2", e.offSums(t, "vda"))

	if err := libvirt.SuspendCheckpoints(rctx(t), e.d, e.guest(t)); err != nil {
		t.Fatal(err)
	}
	e.start(t)
	e.snap(t, "s1", false, false) // libvirt knows no checkpoint: the overlay gets no bitmap
	e.dom.WriteDisk(t, "vda", 8*mib, 0x43, mib)
	e.stop(t)
	want := e.offSums(t, "vda")
	t.Logf("overlay s1's bitmaps: %s", qemuImgBitmaps(t, e.dom.Chain(t, "vda")[0]))
	_ = os.MkdirAll(filepath.Join(e.dir, "p3"), 0o700)
	_, err := e.d.Backup(rctx(t), e.guest(t), driver.BackupRequest{Level: driver.LevelInc, Since: "autosnap-p2", Checkpoint: "autosnap-p3",
		Targets: []driver.BackupTarget{{Disk: "vda", File: e.file("p3", "vda"), Backing: "../p2/vda.qcow2"}}})
	cps := checkpointNames(t, e)
	if len(cps) < 2 || cps[0].Name != "autosnap-p1" || cps[1].Name != "autosnap-p2" {
		t.Fatalf("after the repair: %+v, want both checkpoints back", cps)
	}
	if err != nil {
		if !strings.Contains(err.Error(), "full") || cps[1].Unusable == "" {
			t.Fatalf("inc after the repair: %v, checkpoints %+v: a refusal must ask for a full and the checkpoint be unusable", err, cps)
		}
		return
	}
	// libvirt propagated the image's bitmaps into the overlay although it knew no
	// checkpoint: the inc must then be whole.
	e.checkPoint(t, "p3", want)
}

func qemuImgBitmaps(t *testing.T, file string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", file).CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "name:") {
			names = append(names, strings.TrimSpace(l))
		}
	}
	return strings.Join(names, " ")
}

// bkStep is one change to a guest's snapshots between two backups.
type bkStep struct {
	name string
	do   func()
}

// snapshotSteps takes snapshots s1 and s2, then merges s1 (an intermediate merge) and
// s2 (the active layer): the changes backups must keep working across.
func (e *bkEnv) snapshotSteps(t *testing.T) []bkStep {
	del := func(name string) func() {
		return func() {
			if err := e.d.DeleteSnapshot(rctx(t), e.guest(t), name); err != nil {
				t.Fatal(err)
			}
		}
	}
	return []bkStep{
		{"snapshot s1", func() { e.snap(t, "s1", false, false) }},
		{"snapshot s2", func() { e.snap(t, "s2", false, false) }},
		{"merge of s1 (intermediate)", del("s1")},
		{"merge of s2 (active)", del("s2")},
	}
}
