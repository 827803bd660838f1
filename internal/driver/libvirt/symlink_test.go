package libvirt_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestDeleteThroughSymlinkedDir: the guest's disk lives in a directory reached
// through a symlink. The domain and the snapshot metadata name the images one way,
// the newest overlay's qcow2 header names its backing file the other way (an admin
// rebased it, or a tool canonicalised the path). Deleting the newest snapshot must
// recognise the two names as one file: merge the active overlay into it, keep every
// file the chain needs and every byte of the guest's and the kept snapshot's data.
func TestDeleteThroughSymlinkedDir(t *testing.T) {
	for _, tc := range []struct {
		name string
		// viaLink: the domain names the disk through the symlink and the header names
		// the real directory; otherwise the reverse.
		viaLink bool
	}{{"domain via symlink, header resolved", true}, {"domain resolved, header via symlink", false}} {
		t.Run(tc.name, func(t *testing.T) {
			bed := testbed.Libvirt(t)
			a := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 16})
			real, link := filepath.Join(a.Dir, "real"), filepath.Join(a.Dir, "link")
			if err := os.Mkdir(real, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("real", link); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(a.Disks[0].Path, filepath.Join(real, "vda.qcow2")); err != nil {
				t.Fatal(err)
			}
			domDir, hdrDir := real, link
			if tc.viaLink {
				domDir, hdrDir = link, real
			}
			base := filepath.Join(domDir, "vda.qcow2")
			sbSetDisk(t, bed, a, base)
			ctx := sbCtx(t)
			d := open(t)
			g := sbGuest(d, a, driver.StateShutoff)
			sbWrite(t, base, 0, 0x11, sbBlk)
			for i, n := range []string{"s1", "s2"} {
				if _, err := d.CreateSnapshot(ctx, g, driver.CreateOptions{Name: n}); err != nil {
					t.Fatal(err)
				}
				sbWrite(t, a.Chain(t, "vda")[0], int64(i+1)*sbBlk, byte(0x22+0x11*i), sbBlk)
			}
			chain := a.Chain(t, "vda")
			if len(chain) != 3 || filepath.Dir(chain[1]) != domDir {
				t.Fatalf("chain after two snapshots: %v", chain)
			}
			o1 := filepath.Join(hdrDir, filepath.Base(chain[1]))
			sbQemuImg(t, "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", o1, chain[0])
			sbStart(t, bed, a)
			g.State = driver.StatePaused
			if live := a.Chain(t, "vda"); live[1] != o1 {
				t.Fatalf("libvirt's chain %v does not name the overlay as its header does (%s)", live, o1)
			}
			a.WriteDisk(t, "vda", 3*sbBlk, 0x44, sbBlk)

			if err := d.DeleteSnapshotTree(ctx, g, "s2", driver.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			after := a.Chain(t, "vda")
			t.Logf("chain %v became %v", chain, after)
			for _, f := range after {
				if _, err := os.Stat(f); err != nil {
					t.Errorf("an image of the guest's chain is gone: %v", err)
				}
			}
			if len(after) != 2 {
				t.Errorf("the newest overlay was not merged: chain %v", after)
			}
			for i, p := range []byte{0x11, 0x22, 0x33, 0x44} {
				sbExpect(t, "guest", after[0], i, p)
			}
			// s1's point in time is its state image, the disk as it was.
			sbExpect(t, "s1", base, 0, 0x11)
			for i := 1; i <= 3; i++ {
				sbExpect(t, "s1", base, i, 0)
			}
			ss, err := d.Snapshots(ctx, g)
			if err != nil || len(ss) != 1 || ss[0].Name != "s1" {
				t.Errorf("snapshots after deleting s2: %v %v", ss, err)
			}
			if !strings.HasPrefix(after[len(after)-1], a.Dir) {
				t.Errorf("odd chain %v", after)
			}
		})
	}
}

// TestDeleteRefusesMissingImage: an image of the running guest's chain was deleted
// behind QEMU's back (QEMU still has it open). Deleting a snapshot must stop with an
// error naming the file, not merge into a file that no longer exists on disk.
func TestDeleteRefusesMissingImage(t *testing.T) {
	bed := testbed.Libvirt(t)
	a := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 16})
	d := open(t)
	g := sbGuest(d, a, driver.StatePaused)
	ctx := sbCtx(t)
	for i, n := range []string{"m1", "m2"} {
		if _, err := d.CreateSnapshot(ctx, g, driver.CreateOptions{Name: n}); err != nil {
			t.Fatal(err)
		}
		a.WriteDisk(t, "vda", int64(i)*sbBlk, byte(i+1), sbBlk)
	}
	chain := a.Chain(t, "vda")
	if err := os.Remove(chain[1]); err != nil {
		t.Fatal(err)
	}
	err := d.DeleteSnapshotTree(ctx, g, "m2", driver.DeleteOptions{})
	if err == nil || !strings.Contains(err.Error(), chain[1]) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("deleting m2 whose state image %s is gone: %v, want an error naming the file", chain[1], err)
	}
	t.Logf("refusal: %v", err)
	if got := a.Chain(t, "vda"); strings.Join(got, " ") != strings.Join(chain, " ") {
		t.Errorf("chain changed from %v to %v", chain, got)
	}
	if ss, err := d.Snapshots(ctx, g); err != nil || len(ss) != 2 {
		t.Errorf("snapshots after the refusal: %v %v", ss, err)
	}
}
