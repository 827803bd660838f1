package drivertest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
)

// backupImage reads the first Span bytes of every disk of a backup point through its
// whole backing chain, as a restore would (qemu-img), and compares them with model.
func checkBackup(t *testing.T, files []string, model *data, when string) {
	t.Helper()
	for i, f := range files {
		raw := filepath.Join(t.TempDir(), "disk.raw")
		if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", f, raw).CombinedOutput(); err != nil {
			t.Fatalf("%s: qemu-img convert %s: %v: %s", when, f, err, out)
		}
		got, err := os.ReadFile(raw)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) < Span {
			t.Fatalf("%s: %s holds %d bytes, want at least %d", when, f, len(got), Span)
		}
		if want := model.disks[i]; !bytes.Equal(got[:Span], want) {
			first := 0
			for first < Span && got[first] == want[first] {
				first++
			}
			t.Errorf("%s: disk %d of the backup (%s) differs from the guest's data at that instant from byte %d (got %#x, want %#x)", when, i, f, first, got[first], want[first])
		}
	}
}

// backupPoint backs up every disk into dir as TAG-DISK.qcow2, stacked on the files of
// backing (by relative name) when it is not empty.
func backupPoint(t *testing.T, b driver.Backupper, g driver.Guest, src driver.BackupSource, dir, tag string, level driver.BackupLevel, since, checkpoint string, backing []string) []string {
	t.Helper()
	req := driver.BackupRequest{Level: level, Since: since, Checkpoint: checkpoint}
	var files []string
	for i, dk := range src.Disks {
		f := filepath.Join(dir, fmt.Sprintf("%s-%s.qcow2", tag, dk.Name))
		tg := driver.BackupTarget{Disk: dk.Name, File: f}
		if backing != nil {
			tg.Backing = filepath.Base(backing[i])
		}
		req.Targets = append(req.Targets, tg)
		files = append(files, f)
	}
	if _, err := b.Backup(ctx(t), g, req); err != nil {
		t.Fatalf("Backup %s of %s: %v", level, g.Name, err)
	}
	return files
}

func checkpointNames(t *testing.T, b driver.Backupper, g driver.Guest) (names, unusable []string) {
	t.Helper()
	src, err := b.BackupSource(ctx(t), g)
	if err != nil {
		t.Fatalf("BackupSource: %v", err)
	}
	for _, c := range src.Checkpoints {
		names = append(names, c.Name)
		if c.Unusable != "" {
			unusable = append(unusable, c.Name+": "+c.Unusable)
		}
	}
	return names, unusable
}

// testBackupper: a full, an inc and a copy of a running two-disk guest each hold the
// guest's data of their instant over the whole modelled span, read through their
// backing chain; checkpoints are listed, usable, and removed.
func testBackupper(t *testing.T, s *suite, d driver.Driver) {
	b := d.(driver.Backupper)
	g := s.f.NewGuest(t, driver.StateRunning, 2)
	dd := newData(s.f, &g, 2)
	dd.write(t, 1)
	src, err := b.BackupSource(ctx(t), g)
	if err != nil {
		t.Fatalf("BackupSource: %v", err)
	}
	if len(src.Disks) != 2 || len(src.Config) == 0 || len(src.Checkpoints) != 0 {
		t.Fatalf("BackupSource of a new two-disk guest: %d disks, %d bytes of config, checkpoints %+v", len(src.Disks), len(src.Config), src.Checkpoints)
	}
	dir := t.TempDir()
	full := backupPoint(t, b, g, src, dir, "full", driver.LevelFull, "", "autosnap-suite-full", nil)
	atFull := dd.clone()
	checkBackup(t, full, atFull, "full")

	dd.write(t, 2)
	inc := backupPoint(t, b, g, src, dir, "inc", driver.LevelInc, "autosnap-suite-full", "autosnap-suite-inc", full)
	checkBackup(t, inc, dd, "inc")
	checkBackup(t, full, atFull, "full after the inc")
	names, unusable := checkpointNames(t, b, g)
	if !slices.Equal(names, []string{"autosnap-suite-full", "autosnap-suite-inc"}) || len(unusable) > 0 {
		t.Errorf("checkpoints after full and inc: %v (unusable: %v)", names, unusable)
	}

	dd.write(t, 3)
	cp := backupPoint(t, b, g, src, dir, "copy", driver.LevelCopy, "", "", nil)
	checkBackup(t, cp, dd, "copy")
	if after, _ := checkpointNames(t, b, g); !slices.Equal(after, names) {
		t.Errorf("a copy changed the checkpoints: %v, before %v", after, names)
	}

	if err := b.DeleteCheckpoint(ctx(t), g, "autosnap-suite-full"); err != nil {
		t.Fatalf("DeleteCheckpoint: %v", err)
	}
	if err := b.DeleteCheckpoint(ctx(t), g, "autosnap-suite-full"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("deleting a checkpoint twice: %v, want ErrNotFound", err)
	}
	dd.write(t, 4)
	inc2 := backupPoint(t, b, g, src, dir, "inc2", driver.LevelInc, "autosnap-suite-inc", "autosnap-suite-inc2", inc)
	checkBackup(t, inc2, dd, "inc after its parent's parent checkpoint was deleted")
	for _, n := range []string{"autosnap-suite-inc", "autosnap-suite-inc2"} {
		if err := b.DeleteCheckpoint(ctx(t), g, n); err != nil {
			t.Errorf("DeleteCheckpoint %s: %v", n, err)
		}
	}
	if left, _ := checkpointNames(t, b, g); len(left) != 0 {
		t.Errorf("checkpoints left after deleting all: %v", left)
	}
}

// testBitmapInspector: a checkpoint's bitmaps are listed as belonging to it, and are
// gone with it.
func testBitmapInspector(t *testing.T, s *suite, d driver.Driver) {
	bi := d.(driver.BitmapInspector)
	g := s.f.NewGuest(t, driver.StateRunning, 1)
	bms, err := bi.Bitmaps(ctx(t), g)
	if err != nil || len(bms) != 0 {
		t.Fatalf("Bitmaps of a new guest: %+v, %v", bms, err)
	}
	b, ok := d.(driver.Backupper)
	if !ok {
		t.Fatal("a BitmapInspector that is not a Backupper has no checkpoints to show")
	}
	src, err := b.BackupSource(ctx(t), g)
	if err != nil {
		t.Fatal(err)
	}
	backupPoint(t, b, g, src, t.TempDir(), "full", driver.LevelFull, "", "autosnap-suite-bm", nil)
	bms, err = bi.Bitmaps(ctx(t), g)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, bm := range bms {
		if bm.Name == "autosnap-suite-bm" && bm.Checkpoint && bm.Disk == src.Disks[0].Name {
			found = true
		}
		if !bm.Checkpoint {
			t.Errorf("bitmap %+v listed as an orphan while its checkpoint exists", bm)
		}
	}
	if !found {
		t.Errorf("Bitmaps after a full with checkpoint autosnap-suite-bm: %+v", bms)
	}
	if err := b.DeleteCheckpoint(ctx(t), g, "autosnap-suite-bm"); err != nil {
		t.Fatal(err)
	}
	if bms, err = bi.Bitmaps(ctx(t), g); err != nil || len(bms) != 0 {
		t.Errorf("Bitmaps after the checkpoint was deleted: %+v, %v", bms, err)
	}
}

// defineCopy defines a throwaway guest from g's definition, on a new empty disk.
func defineCopy(t *testing.T, d driver.Driver, g driver.Guest) (driver.Guest, driver.BackupSource) {
	t.Helper()
	gd, ok1 := d.(driver.GuestDefiner)
	b, ok2 := d.(driver.Backupper)
	gr, ok3 := d.(driver.GuestRemover)
	if !ok1 || !ok2 || !ok3 {
		t.Fatal("defining a guest from a saved definition needs GuestDefiner, Backupper (the definition) and GuestRemover (to clean up)")
	}
	src, err := b.BackupSource(ctx(t), g)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	disk := filepath.Join(dir, "new.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, fmt.Sprint(src.Disks[0].VirtualSize)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	name := driver.ThrowawayPrefix + "suite-" + g.Name
	ng, _, err := gd.DefineGuest(ctx(t), driver.DefineRequest{Config: src.Config, Name: name, Disks: map[string]string{src.Disks[0].Name: disk}, Dir: dir})
	if err != nil {
		t.Fatalf("DefineGuest: %v", err)
	}
	t.Cleanup(func() { _ = gr.RemoveGuest(ctx(t), ng) })
	return ng, src
}

// testGuestDefiner: a guest defined from another's saved definition is a new guest
// (its own name and UUID, shut off) beside the original, which is unchanged.
// MoveDisks needs a running copy and is covered by the restore --instant tests.
func testGuestDefiner(t *testing.T, s *suite, d driver.Driver) {
	g := s.f.NewGuest(t, driver.StateShutoff, 1)
	ng, _ := defineCopy(t, d, g)
	if ng.Name == g.Name || ng.UUID == "" || ng.UUID == g.UUID || ng.State != driver.StateShutoff {
		t.Errorf("defined guest %+v from %+v: want a new name and UUID, shut off", ng, g)
	}
	if _, ok := find(t, d, ng); !ok {
		t.Errorf("the defined guest %s is not listed", ng.Name)
	}
	if og, ok := find(t, d, g); !ok || og.UUID != g.UUID {
		t.Errorf("the original guest changed: %+v", og)
	}
	gd := d.(driver.GuestDefiner)
	src, _ := d.(driver.Backupper).BackupSource(ctx(t), g)
	if _, _, err := gd.DefineGuest(ctx(t), driver.DefineRequest{Config: src.Config, Name: ng.Name, Disks: map[string]string{}}); err == nil {
		t.Errorf("DefineGuest with a name already taken (%s) succeeded", ng.Name)
	}
}

// testGuestRemover: a throwaway guest is removed; any other guest is refused.
func testGuestRemover(t *testing.T, s *suite, d driver.Driver) {
	gr := d.(driver.GuestRemover)
	g := s.f.NewGuest(t, driver.StateShutoff, 1)
	if err := gr.RemoveGuest(ctx(t), g); err == nil {
		t.Fatalf("RemoveGuest removed %s, a guest autosnap did not define", g.Name)
	}
	if _, ok := find(t, d, g); !ok {
		t.Fatalf("guest %s is gone after a refused RemoveGuest", g.Name)
	}
	ng, _ := defineCopy(t, d, g)
	if err := gr.RemoveGuest(ctx(t), ng); err != nil {
		t.Fatalf("RemoveGuest %s: %v", ng.Name, err)
	}
	if _, ok := find(t, d, ng); ok {
		t.Errorf("guest %s still listed after RemoveGuest", ng.Name)
	}
}

// testDiskStater: a running guest's disks are reported with the image each uses and no
// block copy.
func testDiskStater(t *testing.T, s *suite, d driver.Driver) {
	ds := d.(driver.DiskStater)
	g := s.f.NewGuest(t, driver.StateRunning, 2)
	st, err := ds.DiskStates(ctx(t), g)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 {
		t.Fatalf("DiskStates of a two-disk guest: %+v", st)
	}
	for name, s := range st {
		if s.Source == "" || s.Mirror != "" {
			t.Errorf("disk %s: %+v, want its image and no copy", name, s)
		}
		if _, err := os.Stat(s.Source); err != nil {
			t.Errorf("disk %s: source %s: %v", name, s.Source, err)
		}
	}
}
