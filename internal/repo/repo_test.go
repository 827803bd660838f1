package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestEveryPointRestoresBitIdentical takes full, inc, inc, diff and copy points of a
// two-disk guest with known writes (partial clusters, overwrites, a zeroed region)
// and restores each point, raw and qcow2, comparing whole images.
func TestEveryPointRestoresBitIdentical(t *testing.T) {
	s := newSim(t, "vda", "vdb")
	g := openGuest(t, filepath.Join(t.TempDir(), "repo"), s.id)

	s.write("vda", 0x11, 0, 3<<20)
	s.write("vda", 0x12, 5<<20+512, 70000)
	s.write("vdb", 0x21, 1<<20, 4<<20)
	full := s.backup(g, LevelFull, "", t0)

	s.write("vda", 0x13, 1<<20+4096, 8192)
	s.zero("vdb", 2<<20, 1<<20) // blocks that became zero must read as zero
	inc1 := s.backup(g, LevelInc, full.ID, t0.Add(time.Hour))

	s.write("vda", 0x14, 10<<20, 65536)
	s.write("vdb", 0x22, 2<<20+100, 1000)
	inc2 := s.backup(g, LevelInc, inc1.ID, t0.Add(2*time.Hour))

	s.write("vda", 0x15, 0, 4096)
	diff := s.backup(g, LevelDiff, full.ID, t0.Add(3*time.Hour))

	s.write("vdb", 0x23, 15<<20, 1<<20)
	cp := s.backup(g, LevelCopy, "", t0.Add(4*time.Hour))

	ps, err := g.Points()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(ps), []string{full.ID, inc1.ID, inc2.ID, diff.ID, cp.ID}; !slices.Equal(got, want) {
		t.Fatalf("points %v, want %v", got, want)
	}
	wantID := []string{"20261130T060000Z-full", "20261130T070000Z-inc", "20261130T080000Z-inc", "20261130T090000Z-diff", "20261130T100000Z-copy"}
	if !slices.Equal(ids(ps), wantID) {
		t.Errorf("ids %v, want %v", ids(ps), wantID)
	}
	for _, p := range ps {
		s.checkRestore(g, p)
	}
	// Chains and parents as documented.
	if inc2.Parent != inc1.ID || inc2.Chain != full.ID || diff.Parent != full.ID || diff.Chain != full.ID || cp.Chain != "" || cp.Parent != "" {
		t.Errorf("chain fields: inc2 %s/%s diff %s/%s copy %q/%q", inc2.Parent, inc2.Chain, diff.Parent, diff.Chain, cp.Parent, cp.Chain)
	}
	if d, _ := inc2.Disk("vda"); d.Backing != "../"+inc1.ID+"/vda.qcow2" {
		t.Errorf("inc2 vda backing %q", d.Backing)
	}
	// Each point opens with qemu-img alone, its chain down to the full.
	chain := run(t, "qemu-img", "info", "--backing-chain", filepath.Join(inc2.Dir, "vda.qcow2"))
	if strings.Count(chain, "image: ") != 3 {
		t.Errorf("qemu-img info --backing-chain of inc2 lists %d images:\n%s", strings.Count(chain, "image: "), chain)
	}
	// The manifest on disk is what Commit returned; config.xml beside it.
	var m Manifest
	data, err := os.ReadFile(filepath.Join(inc1.Dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	if m.ID != inc1.ID || m.Level != "inc" || len(m.Disks) != 2 || !strings.HasPrefix(m.Disks[0].Checksum, "xxh3-128:") || m.Disks[0].Size == 0 || m.Disks[0].VirtualSize != simSize || m.Guest.UUID != s.id.UUID {
		t.Errorf("manifest %+v", m)
	}
	if cfg, _ := os.ReadFile(filepath.Join(inc1.Dir, ConfigFile)); string(cfg) != "<domain><name>web 1</name></domain>\n" {
		t.Errorf("config.xml %q", cfg)
	}
	faults, err := g.Verify(context.Background(), VerifyOptions{ReadData: true})
	if err != nil || len(faults) != 0 {
		t.Fatalf("verify: %v %v", faults, err)
	}
	checkModes(t, g.repo.Dir)
}

// TestChainChangesShape: a disk added mid-chain and a disk resized mid-chain are
// copied whole in the next inc, with the reason recorded; both restore exactly.
func TestChainChangesShape(t *testing.T) {
	s := newSim(t, "vda", "vdb")
	g := openGuest(t, t.TempDir(), s.id)
	s.write("vda", 0x31, 0, 1<<20)
	full := s.backup(g, LevelFull, "", t0, "vda")
	s.write("vdb", 0x32, 0, 1<<20)
	s.write("vda", 0x33, 2<<20, 1<<20)
	inc1 := s.backup(g, LevelInc, full.ID, t0.Add(time.Hour))
	b, _ := inc1.Disk("vdb")
	a, _ := inc1.Disk("vda")
	if b.Backing != "" || !strings.Contains(b.FullReason, "not in the parent point") || a.Backing == "" || a.FullReason != "" {
		t.Errorf("added disk: vda %+v vdb %+v", a, b)
	}
	s.resize("vda", 24<<20)
	s.write("vda", 0x34, 20<<20, 1<<20)
	inc2 := s.backup(g, LevelInc, inc1.ID, t0.Add(2*time.Hour))
	a, _ = inc2.Disk("vda")
	b, _ = inc2.Disk("vdb")
	if a.Backing != "" || !strings.Contains(a.FullReason, "resized") || a.VirtualSize != 24<<20 || b.Backing == "" {
		t.Errorf("resized disk: vda %+v vdb %+v", a, b)
	}
	// A disk the engine copies whole (raw source, lost bitmap) in an inc.
	unlock, err := g.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pend, err := g.Begin(Manifest{Level: LevelInc, Parent: inc2.ID, Started: t0.Add(3 * time.Hour),
		Disks: []DiskManifest{{Name: "vda", VirtualSize: 24 << 20, FullReason: "vda is a raw image: no dirty bitmap"}}})
	if err != nil {
		t.Fatal(err)
	}
	if pend.Backing("vda") != "" || pend.FullReason("vda") != "vda is a raw image: no dirty bitmap" {
		t.Errorf("declared full disk: backing %q reason %q", pend.Backing("vda"), pend.FullReason("vda"))
	}
	pend.Abort()
	unlock()
	for _, p := range []Point{full, inc1, inc2} {
		s.checkRestore(g, p)
	}
}

// TestCommitRefusesWrongBacking: a file whose backing differs from Backing() is
// refused, and the point stays pending (not listed).
func TestCommitRefusesWrongBacking(t *testing.T) {
	s := newSim(t, "vda")
	g := openGuest(t, t.TempDir(), s.id)
	s.write("vda", 1, 0, 65536)
	full := s.backup(g, LevelFull, "", t0)
	unlock, err := g.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	p, err := g.Begin(Manifest{Level: LevelInc, Parent: full.ID, Started: t0.Add(time.Hour), Disks: []DiskManifest{{Name: "vda"}}})
	if err != nil {
		t.Fatal(err)
	}
	writeImage(t, p.File("vda"), full.Path(full.Disks[0]), simSize, nil) // absolute backing
	if _, err := p.Commit(context.Background(), Manifest{}); err == nil || !strings.Contains(err.Error(), "backing file") {
		t.Fatalf("commit of a file with an absolute backing: %v", err)
	}
	ps, _ := g.Points()
	if len(ps) != 1 {
		t.Errorf("points after a refused commit: %v", ids(ps))
	}
	if err := p.Abort(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.Dir); !os.IsNotExist(err) {
		t.Errorf("abort left %s", p.Dir)
	}
}

// TestBeginNeedsLock: Begin without the guest lock is refused.
func TestBeginNeedsLock(t *testing.T) {
	g := openGuest(t, t.TempDir(), GuestID{UUID: "11111111-2222-3333-4444-555555555555", Name: "a"})
	if _, err := g.Begin(Manifest{Level: LevelFull, Disks: []DiskManifest{{Name: "vda"}}}); err == nil {
		t.Fatal("Begin without the lock succeeded")
	}
}

// TestGuestDirectoryByUUID: a renamed guest keeps its directory; the name in
// guest.json follows.
func TestGuestDirectoryByUUID(t *testing.T) {
	dir := t.TempDir()
	id := GuestID{UUID: "AB12CD34-0000-0000-0000-000000000001", Name: "db/1", Node: "n1", Driver: "libvirt"}
	g := openGuest(t, dir, id)
	if filepath.Base(g.Dir) != "db_1-ab12cd34" {
		t.Errorf("guest dir %s", g.Dir)
	}
	id2 := id
	id2.Name = "db-renamed"
	g2 := openGuest(t, dir, id2)
	if g2.Dir != g.Dir || g2.ID.Name != "db-renamed" {
		t.Errorf("renamed guest: %s %+v", g2.Dir, g2.ID)
	}
	other := GuestID{UUID: "ab12cd34-0000-0000-0000-000000000002", Name: "db/1"}
	g3 := openGuest(t, dir, other)
	if g3.Dir == g.Dir || filepath.Base(g3.Dir) != "db_1-ab12cd340" {
		t.Errorf("second guest with the same uuid8: %s", g3.Dir)
	}
	r, _ := Open(dir)
	gs, err := r.Guests()
	if err != nil || len(gs) != 2 {
		t.Fatalf("guests %v %v", gs, err)
	}
	if _, err := Open(filepath.Join(dir, filepath.Base(g.Dir))); err == nil {
		t.Errorf("Open of a non-empty non-repository directory succeeded")
	}
	checkModes(t, dir)
}

// TestRestoreIntoBlockDevice: restoring into an existing block device writes the
// data into it (every block, zeroes included) instead of replacing the device node.
func TestRestoreIntoBlockDevice(t *testing.T) {
	s := newSim(t, "vda")
	g := openGuest(t, t.TempDir(), s.id)
	s.write("vda", 0x71, 1<<20, 2<<20)
	full := s.backup(g, LevelFull, "", t0)
	s.zero("vda", 1<<20, 65536)
	inc := s.backup(g, LevelInc, full.ID, t0.Add(time.Hour))
	backing := filepath.Join(t.TempDir(), "dev.img")
	// The device starts full of 0xff so that blocks left unwritten would show.
	if err := os.WriteFile(backing, bytes.Repeat([]byte{0xff}, simSize), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := strings.TrimSpace(run(t, "losetup", "-f", "--show", backing))
	defer exec.Command("losetup", "-d", dev).Run()
	if err := g.RestoreDisk(context.Background(), inc, "vda", dev, "qcow2"); err == nil {
		t.Error("qcow2 into a block device accepted")
	}
	if err := g.RestoreDisk(context.Background(), inc, "vda", dev, "raw"); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dev)
	if err != nil || st.Mode()&os.ModeDevice == 0 {
		t.Fatalf("%s is no longer a device: %v %v", dev, st.Mode(), err)
	}
	got, err := os.ReadFile(dev)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(s.expect[inc.ID]["vda"])
	if !bytes.Equal(got, want) {
		t.Errorf("device content differs from the guest's disk at %s (first difference at %d)", inc.ID, firstDiff(got, want))
	}
}
