package libvirt_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/drivertest"
	"github.com/autosnap/autosnap/internal/driver/libvirt"
	"github.com/autosnap/autosnap/internal/testbed"
)

// fixture runs the conformance suite on real throwaway libvirt domains.
type fixture struct {
	mu   sync.Mutex
	d    *libvirt.Driver
	bed  *testbed.Bed
	doms map[string]*testbed.Domain // by UUID
}

func (f *fixture) Driver(t *testing.T) driver.Driver { return f.d }

func (f *fixture) NewGuest(t *testing.T, st driver.State, disks int) driver.Guest {
	spec := testbed.DomainSpec{Disks: disks, DiskMiB: 16}
	switch st {
	case driver.StatePaused:
		spec.State = testbed.Paused
	case driver.StateShutoff:
		spec.State = testbed.Shutoff
	}
	dom := f.bed.NewDomain(t, spec)
	f.mu.Lock()
	f.doms[dom.UUID] = dom
	f.mu.Unlock()
	return driver.Guest{Node: f.d.Node(), Name: dom.Name, UUID: dom.UUID, State: st, Kind: driver.KindQEMU}
}

func (f *fixture) dom(t *testing.T, g driver.Guest) *testbed.Domain {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.doms[g.UUID]
	if !ok {
		t.Fatalf("unknown guest %s", g.Name)
	}
	return d
}

func target(i int) string { return "vd" + string(rune('a'+i)) }

func (f *fixture) Write(t *testing.T, g driver.Guest, disk int, off int64, pattern byte, n int) {
	d := f.dom(t, g)
	if g.State.Active() {
		d.WriteDisk(t, target(disk), off, pattern, n)
		return
	}
	// A shut-off domain has no QEMU: write into the active image directly.
	top := d.Chain(t, target(disk))[0]
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %d %d", pattern, off, n), top).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io on %s: %v: %s", top, err, out)
	}
}

func (f *fixture) Read(t *testing.T, g driver.Guest, disk int, off int64, n int) []byte {
	d := f.dom(t, g)
	return testbed.ReadImage(t, d.Chain(t, target(disk))[0], off, n)
}

func (f *fixture) ChainLen(t *testing.T, g driver.Guest, disk int) int {
	return len(f.dom(t, g).Chain(t, target(disk)))
}

func open(t *testing.T) *libvirt.Driver {
	t.Helper()
	d, err := libvirt.Open(context.Background(), driver.Config{Host: "qemu:///system", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("open libvirt: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestConformance(t *testing.T) {
	f := &fixture{d: open(t), bed: testbed.Libvirt(t), doms: map[string]*testbed.Domain{}}
	drivertest.Run(t, f)
}

func TestConnectTimeout(t *testing.T) {
	// A socket that accepts and never answers stands in for a hung libvirtd.
	dir := t.TempDir()
	sock := dir + "/hung.sock"
	ln := listenUnix(t, sock)
	defer ln.Close()
	start := time.Now()
	_, err := libvirt.Open(context.Background(), driver.Config{Host: "qemu+unix:///system?socket=" + sock, Timeout: 2 * time.Second})
	if err == nil {
		t.Fatal("connecting to a hung daemon succeeded")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("gave up after %s, want about 2s", el)
	}
	t.Logf("error: %v", err)
}

func TestTags(t *testing.T) {
	d := open(t)
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	g := driver.Guest{Node: d.Node(), Name: dom.Name, UUID: dom.UUID, State: driver.StatePaused}
	if err := d.SetTags(context.Background(), g, []string{"prod", "web"}); err != nil {
		t.Fatal(err)
	}
	gs, err := d.Guests(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := driver.LoadTags(context.Background(), d, gs); err != nil {
		t.Fatal(err)
	}
	for _, x := range gs {
		if x.UUID == dom.UUID {
			if fmt.Sprint(x.Tags) != "[prod web]" {
				t.Errorf("tags = %v", x.Tags)
			}
		}
	}
	// The persistent definition has them too, so they survive a restart.
	out, err := exec.Command("virsh", "metadata", dom.Name, libvirt.TagNamespace, "--config").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "<tag>prod</tag>") {
		t.Errorf("persistent metadata: %v %s", err, out)
	}
	if err := d.SetTags(context.Background(), g, nil); err != nil {
		t.Fatal(err)
	}
}

func listenUnix(t *testing.T, path string) net.Listener {
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return ln
}

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "libvirt driver tests need root and a running libvirtd (make test sets both up)")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func TestSessionURIUsesTheSessionSocket(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1234")
	_, err := libvirt.Open(context.Background(), driver.Config{Host: "qemu:///session", Timeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "/run/user/1234/libvirt/libvirt-sock") {
		t.Errorf("qemu:///session should dial the session socket, got %v", err)
	}
}

// TestSSHTransport drives the local libvirtd through qemu+ssh://, so the remote code
// paths run: live merges work, offline merges are refused with a clear reason.
func TestSSHTransport(t *testing.T) {
	uri := testbed.SSHD(t)
	d, err := libvirt.Open(context.Background(), driver.Config{Host: uri, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("open %s: %v", uri, err)
	}
	t.Cleanup(func() { d.Close() })
	if d.Node() != "127.0.0.1" {
		t.Errorf("node %q, want the URI's host", d.Node())
	}
	bed := testbed.Libvirt(t)
	run := bed.NewDomain(t, testbed.DomainSpec{DiskMiB: 8})
	off := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	gs, err := d.Guests(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	byUUID := map[string]driver.Guest{}
	for _, g := range gs {
		byUUID[g.UUID] = g
	}
	g, ok := byUUID[run.UUID]
	if !ok || g.State != driver.StateRunning || g.Node != "127.0.0.1" {
		t.Fatalf("guest over ssh: %+v (found %v)", g, ok)
	}
	ctx := context.Background()
	for _, n := range []string{"autossh1", "autossh2"} {
		if _, err := d.CreateSnapshot(ctx, g, driver.CreateOptions{Name: n, Description: "autosnap"}); err != nil {
			t.Fatalf("create %s over ssh: %v", n, err)
		}
	}
	run.WriteDisk(t, "vda", 0, 0x42, 4096)
	for _, n := range []string{"autossh1", "autossh2"} {
		if err := d.DeleteSnapshot(ctx, g, n); err != nil {
			t.Fatalf("delete %s over ssh: %v", n, err)
		}
	}
	if c := run.Chain(t, "vda"); len(c) != 1 || c[0] != run.Disks[0].Path {
		t.Errorf("chain after merging over ssh: %v", c)
	}
	if got := testbed.ReadImage(t, run.Disks[0].Path, 0, 4096); got[0] != 0x42 {
		t.Errorf("data lost merging over ssh")
	}
	og := byUUID[off.UUID]
	if _, err := d.CreateSnapshot(ctx, og, driver.CreateOptions{Name: "autossh3", Description: "autosnap"}); err != nil {
		t.Fatalf("offline create over ssh: %v", err)
	}
	err = d.DeleteSnapshot(ctx, og, "autossh3")
	if err == nil || !strings.Contains(err.Error(), "guest's host") {
		t.Errorf("offline merge over ssh: %v, want a refusal that says to run on the guest's host", err)
	}
}
