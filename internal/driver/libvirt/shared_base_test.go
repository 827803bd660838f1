package libvirt_test

import (
	"bytes"
	"context"
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

// The tests of this file build linked clones of a guest's disk elsewhere on the host
// and check that neither a retention merge nor a chain collapse writes into the
// shared image. Each step opens a fresh driver: the host-wide scan of who uses which
// image is cached per driver for a short time.

const sbBlk = 1 << 20

func sbCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// sbQemuImg runs qemu-img and fails the test with its output on an error.
func sbQemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// sbClone creates a qcow2 linked clone of base at path, mode 0600.
func sbClone(t *testing.T, base, path string) {
	t.Helper()
	sbQemuImg(t, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, path)
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
}

// sbWrite writes n bytes of pattern at off into the image file directly (the domain
// must not have it open).
func sbWrite(t *testing.T, image string, off int64, pattern byte, n int) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %d %d", pattern, off, n), image).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io on %s: %v: %s", image, err, out)
	}
}

// sbExpect checks that image reads pattern over the whole block i.
func sbExpect(t *testing.T, what, image string, i int, pattern byte) {
	t.Helper()
	if got := testbed.ReadImage(t, image, int64(i)*sbBlk, sbBlk); !bytes.Equal(got, bytes.Repeat([]byte{pattern}, sbBlk)) {
		t.Errorf("%s: block %d of %s reads %x…, want %02x throughout", what, i, image, got[:4], pattern)
	}
}

// sbSetDisk points the persistent definition's disk vda of dom at image.
func sbSetDisk(t *testing.T, bed *testbed.Bed, dom *testbed.Domain, image string) {
	t.Helper()
	s, err := bed.Conn.DomainGetXMLDesc(dom.Dom, golibvirt.DomainXMLInactive|golibvirt.DomainXMLSecure)
	if err != nil {
		t.Fatal(err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(s); err != nil {
		t.Fatal(err)
	}
	for i := range x.Devices.Disks {
		if dk := &x.Devices.Disks[i]; dk.Target != nil && dk.Target.Dev == "vda" {
			dk.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: image}}
			dk.BackingStore = nil
		}
	}
	out, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bed.Conn.DomainDefineXML(out); err != nil {
		t.Fatalf("redefining %s with vda on %s: %v", dom.Name, image, err)
	}
}

// sbStart starts a defined domain paused (QEMU opens its images, the CPUs stay off).
func sbStart(t *testing.T, bed *testbed.Bed, dom *testbed.Domain) {
	t.Helper()
	started, err := bed.Conn.DomainCreateWithFlags(dom.Dom, uint32(golibvirt.DomainStartPaused))
	if err != nil {
		t.Fatalf("starting %s: %v", dom.Name, err)
	}
	dom.Dom = started
}

// sbRemove destroys and undefines a fixture domain before its test ends.
func sbRemove(t *testing.T, bed *testbed.Bed, dom *testbed.Domain) {
	t.Helper()
	if st, _, err := bed.Conn.DomainGetState(dom.Dom, 0); err == nil && golibvirt.DomainState(st) != golibvirt.DomainShutoff {
		if err := bed.Conn.DomainDestroy(dom.Dom); err != nil {
			t.Fatal(err)
		}
	}
	if err := bed.Conn.DomainUndefineFlags(dom.Dom, golibvirt.DomainUndefineSnapshotsMetadata); err != nil {
		t.Fatal(err)
	}
}

// sbPool defines and starts a directory storage pool on dir; the cleanup removes it.
func sbPool(t *testing.T, bed *testbed.Bed, name, dir string) golibvirt.StoragePool {
	t.Helper()
	x := &libvirtxml.StoragePool{Type: "dir", Name: name, Target: &libvirtxml.StoragePoolTarget{Path: dir}}
	s, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	pool, err := bed.Conn.StoragePoolDefineXML(s, 0)
	if err != nil {
		t.Fatalf("defining pool %s: %v", name, err)
	}
	remove := func() {
		_ = bed.Conn.StoragePoolDestroy(pool)
		_ = bed.Conn.StoragePoolUndefine(pool)
	}
	t.Cleanup(remove)
	if err := bed.Conn.StoragePoolCreate(pool, 0); err != nil {
		remove()
		t.Fatalf("starting pool %s: %v", name, err)
	}
	return pool
}

func sbGuest(d interface{ Node() string }, dom *testbed.Domain, st driver.State) driver.Guest {
	return driver.Guest{Node: d.Node(), Name: dom.Name, UUID: dom.UUID, State: st, Kind: driver.KindQEMU}
}

// sbTwoSnapshots makes a paused guest whose disk has snapshots s1 and s2, 1 MiB
// written before each and after the last (0x11, 0x22, 0x33).
func sbTwoSnapshots(t *testing.T) (*testbed.Bed, *libvirt.Driver, context.Context, *testbed.Domain, driver.Guest) {
	t.Helper()
	bed := testbed.Libvirt(t)
	a := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 16})
	d := open(t)
	g := sbGuest(d, a, driver.StatePaused)
	ctx := sbCtx(t)
	a.WriteDisk(t, "vda", 0, 0x11, sbBlk)
	for i, n := range []string{"s1", "s2"} {
		if _, err := d.CreateSnapshot(ctx, g, driver.CreateOptions{Name: n}); err != nil {
			t.Fatal(err)
		}
		a.WriteDisk(t, "vda", int64(i+1)*sbBlk, byte(0x22+0x11*i), sbBlk)
	}
	return bed, d, ctx, a, g
}

// TestDeleteRefusesSharedBase: a retention merge would commit the deleted snapshot's
// overlay into its state image, the guest's own disk. A linked clone of that disk,
// defined as another guest in another directory, makes the merge refuse: the
// snapshot stays and neither the disk nor the clone changes.
func TestDeleteRefusesSharedBase(t *testing.T) {
	bed, d, ctx, a, g := sbTwoSnapshots(t)
	base := a.Disks[0].Path
	b := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 16})
	clone := filepath.Join(b.Dir, "clone-of-a.qcow2")
	sbClone(t, base, clone)
	sbSetDisk(t, bed, b, clone)
	sbWrite(t, clone, 3*sbBlk, 0x77, sbBlk)
	cloneSum, baseSum := testbed.ImageSum(t, clone), testbed.ImageSum(t, base)
	chain := a.Chain(t, "vda")

	err := d.DeleteSnapshotTree(ctx, g, "s1", driver.DeleteOptions{})
	if err == nil || !strings.Contains(err.Error(), b.Name) {
		t.Errorf("deleting s1, whose state image %s guest %s builds on: %v, want a refusal naming %s", base, b.Name, err, b.Name)
	}
	t.Logf("refusal: %v", err)
	if got := testbed.ImageSum(t, clone); got != cloneSum {
		t.Errorf("the linked clone's data changed")
	}
	if got := testbed.ImageSum(t, base); got != baseSum {
		t.Errorf("the shared base image was written")
	}
	if got := a.Chain(t, "vda"); strings.Join(got, " ") != strings.Join(chain, " ") {
		t.Errorf("chain changed from %v to %v", chain, got)
	}
	if ss, err := d.Snapshots(ctx, g); err != nil || len(ss) != 2 {
		t.Errorf("snapshots after the refusal: %v %v, want s1 and s2", ss, err)
	}
	sbExpect(t, "clone", clone, 0, 0x11)
	sbExpect(t, "clone", clone, 1, 0)
	sbExpect(t, "clone", clone, 3, 0x77)
}

// TestCollapseSharedBase: a collapse writes every overlay into the chain's bottom
// image. It refuses when autosnap did not create that image unless ForceBase names
// it, and even then while anything else on the host uses it: another guest (running,
// or shut off with the image somewhere in its chain), a file in a storage pool. With
// ForceBase and no other user it collapses, keeping the data.
func TestCollapseSharedBase(t *testing.T) {
	bed := testbed.Libvirt(t)
	a := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 16})
	base := a.Disks[0].Path
	ctx := sbCtx(t)
	g := sbGuest(open(t), a, driver.StateShutoff)
	sbWrite(t, base, 0, 0x11, sbBlk)
	for i, n := range []string{"c1", "c2"} {
		if _, err := open(t).CreateSnapshot(ctx, g, driver.CreateOptions{Name: n}); err != nil {
			t.Fatal(err)
		}
		sbWrite(t, a.Chain(t, "vda")[0], int64(i+1)*sbBlk, byte(0x22+0x11*i), sbBlk)
	}
	if err := open(t).DeleteSnapshotTree(ctx, g, "c1", driver.DeleteOptions{Children: true, MetadataOnly: true}); err != nil {
		t.Fatal(err)
	}
	top := a.Chain(t, "vda")[0]
	topSum, baseSum := testbed.ImageSum(t, top), testbed.ImageSum(t, base)
	force := driver.CollapseOptions{ForceBase: []string{base}}
	refused := func(t *testing.T, opts driver.CollapseOptions, want ...string) {
		t.Helper()
		err := open(t).CollapseChain(ctx, g, opts)
		if err == nil {
			t.Fatalf("collapse into the shared base %s succeeded", base)
		}
		t.Logf("refusal: %v", err)
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("the refusal does not say %q", w)
			}
		}
		if got := testbed.ImageSum(t, base); got != baseSum {
			t.Fatalf("the base image was written")
		}
		if got := len(a.Chain(t, "vda")); got != 3 {
			t.Fatalf("a refused collapse changed the chain: %d images", got)
		}
	}

	t.Run("not created by autosnap", func(t *testing.T) {
		refused(t, driver.CollapseOptions{}, "--force-base "+base)
	})
	t.Run("running guest builds on it", func(t *testing.T) {
		b := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 16})
		clone := filepath.Join(b.Dir, "clone.qcow2")
		sbClone(t, base, clone)
		sbSetDisk(t, bed, b, clone)
		sbStart(t, bed, b)
		sum := testbed.ImageSum(t, clone)
		refused(t, force, b.Name)
		if testbed.ImageSum(t, clone) != sum {
			t.Errorf("the clone's data changed")
		}
		sbRemove(t, bed, b)
	})
	t.Run("shut-off guest builds on it", func(t *testing.T) {
		c := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 16})
		mid := filepath.Join(c.Dir, "mid.qcow2")
		sbClone(t, base, mid)
		leaf := filepath.Join(c.Dir, "leaf.qcow2")
		sbClone(t, mid, leaf)
		sbSetDisk(t, bed, c, leaf)
		refused(t, force, c.Name)
		sbRemove(t, bed, c)
	})
	t.Run("file in a storage pool builds on it", func(t *testing.T) {
		dir := filepath.Join(a.Dir, "pool")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, "template-user.qcow2")
		sbClone(t, base, f)
		pool := sbPool(t, bed, a.Name+"-pool", dir)
		refused(t, force, f)
		_ = bed.Conn.StoragePoolDestroy(pool)
		_ = bed.Conn.StoragePoolUndefine(pool)
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("forced, no other user", func(t *testing.T) {
		if err := open(t).CollapseChain(ctx, g, force); err != nil {
			t.Fatal(err)
		}
		if c := a.Chain(t, "vda"); len(c) != 1 || c[0] != base {
			t.Fatalf("chain after the collapse: %v", c)
		}
		if got := testbed.ImageSum(t, base); got != topSum {
			t.Errorf("the collapsed disk does not hold the data the chain showed")
		}
		sbExpect(t, "collapsed", base, 0, 0x11)
		sbExpect(t, "collapsed", base, 1, 0x22)
		sbExpect(t, "collapsed", base, 2, 0x33)
	})
}

// TestCollapseRemote: over a remote connection autosnap cannot read the host's files,
// so a collapse needs ForceBase for the bottom image and still refuses while the scan
// through libvirt finds another guest using it.
func TestCollapseRemote(t *testing.T) {
	uri := testbed.SSHD(t)
	remote := func(t *testing.T) *libvirt.Driver {
		d, err := libvirt.Open(context.Background(), driver.Config{Host: uri, Timeout: 20 * time.Second})
		if err != nil {
			t.Fatalf("open %s: %v", uri, err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	bed := testbed.Libvirt(t)
	a := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 16})
	base := a.Disks[0].Path
	ctx := sbCtx(t)
	d := remote(t)
	g := sbGuest(d, a, driver.StatePaused)
	a.WriteDisk(t, "vda", 0, 0x11, sbBlk)
	for i, n := range []string{"r1", "r2"} {
		if _, err := d.CreateSnapshot(ctx, g, driver.CreateOptions{Name: n}); err != nil {
			t.Fatal(err)
		}
		a.WriteDisk(t, "vda", int64(i+1)*sbBlk, byte(0x22+0x11*i), sbBlk)
	}
	if err := d.DeleteSnapshotTree(ctx, g, "r1", driver.DeleteOptions{Children: true, MetadataOnly: true}); err != nil {
		t.Fatal(err)
	}
	baseSum := testbed.ImageSum(t, base)
	force := driver.CollapseOptions{ForceBase: []string{base}}

	err := d.CollapseChain(ctx, g, driver.CollapseOptions{})
	if err == nil || !strings.Contains(err.Error(), "remote connection") || !strings.Contains(err.Error(), "--force-base "+base) {
		t.Errorf("remote collapse without --force-base: %v, want a refusal that says what cannot be checked and which flag to add", err)
	}
	t.Logf("refusal: %v", err)

	b := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 16})
	clone := filepath.Join(b.Dir, "clone.qcow2")
	sbClone(t, base, clone)
	sbSetDisk(t, bed, b, clone)
	sbStart(t, bed, b)
	err = remote(t).CollapseChain(ctx, g, force)
	if err == nil || !strings.Contains(err.Error(), b.Name) {
		t.Errorf("remote collapse into an image guest %s builds on: %v, want a refusal naming it", b.Name, err)
	}
	t.Logf("refusal: %v", err)
	if got := testbed.ImageSum(t, base); got != baseSum {
		t.Fatalf("a refused collapse wrote into the base image")
	}
	if got := len(a.Chain(t, "vda")); got != 3 {
		t.Fatalf("a refused collapse changed the chain: %d images", got)
	}
	sbRemove(t, bed, b)

	if err := remote(t).CollapseChain(ctx, g, force); err != nil {
		t.Fatal(err)
	}
	if c := a.Chain(t, "vda"); len(c) != 1 || c[0] != base {
		t.Fatalf("chain after the collapse: %v", c)
	}
	for i, p := range []byte{0x11, 0x22, 0x33} {
		sbExpect(t, "collapsed", base, i, p)
	}
}
