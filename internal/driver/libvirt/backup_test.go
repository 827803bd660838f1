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
	steps := []struct {
		name string
		do   func()
	}{
		{"snapshot s1", func() { e.snap(t, "s1", false, false) }},
		{"snapshot s2", func() { e.snap(t, "s2", false, false) }},
		{"merge of s1 (intermediate)", func() {
			if err := e.d.DeleteSnapshot(rctx(t), e.guest(t), "s1"); err != nil {
				t.Fatal(err)
			}
		}},
		{"merge of s2 (active)", func() {
			if err := e.d.DeleteSnapshot(rctx(t), e.guest(t), "s2"); err != nil {
				t.Fatal(err)
			}
		}},
	}
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
