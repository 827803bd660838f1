package libvirt_test

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/cli"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/drivertest"
	"github.com/autosnap/autosnap/internal/driver/libvirt"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/testbed"
	"github.com/autosnap/autosnap/internal/watchdog"
)

// fixture runs the conformance suite on real throwaway libvirt domains. New guests
// are placed on the hosts in nodes in turn (a Fleet has several; all reach the same
// libvirtd under different host names).
type fixture struct {
	mu    sync.Mutex
	d     driver.Driver
	nodes []string
	next  int
	bed   *testbed.Bed
	doms  map[string]*testbed.Domain // by UUID
}

func newFixture(t *testing.T, d driver.Driver, nodes ...string) *fixture {
	return &fixture{d: d, nodes: nodes, bed: testbed.Libvirt(t), doms: map[string]*testbed.Domain{}}
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
	return f.add(t, f.bed.NewDomain(t, spec))
}

// NewAgentGuest implements drivertest.AgentFixture with the tiny real guest, whose
// qemu-guest-agent answers and which mounts an ext4 filesystem from vda.
func (f *fixture) NewAgentGuest(t *testing.T) driver.Guest {
	return f.add(t, f.bed.NewDomain(t, testbed.DomainSpec{Guest: true, DiskMiB: 32}))
}

// add returns the domain as the driver lists it on the next host in turn.
func (f *fixture) add(t *testing.T, dom *testbed.Domain) driver.Guest {
	t.Helper()
	f.mu.Lock()
	f.doms[dom.UUID] = dom
	node := f.nodes[f.next%len(f.nodes)]
	f.next++
	f.mu.Unlock()
	gs, err := f.d.Guests(context.Background())
	if err != nil {
		t.Fatalf("Guests: %v", err)
	}
	for _, g := range gs {
		if g.UUID == dom.UUID && g.Node == node {
			return g
		}
	}
	t.Fatalf("the driver does not list %s on host %s", dom.Name, node)
	return driver.Guest{}
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

// Write writes through the domain's QEMU when it runs (whatever g says: the suite's
// reverts change the state), else into the active image directly.
func (f *fixture) Write(t *testing.T, g driver.Guest, disk int, off int64, pattern byte, n int) {
	d := f.dom(t, g)
	st, _, err := f.bed.Conn.DomainGetState(d.Dom, 0)
	if err != nil {
		t.Fatalf("state of %s: %v", d.Name, err)
	}
	if golibvirt.DomainState(st) != golibvirt.DomainShutoff {
		d.WriteDisk(t, target(disk), off, pattern, n)
		return
	}
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

// fleetFixture is the fixture of a Fleet; its members are libvirt drivers.
type fleetFixture struct {
	*fixture
	inner driver.Driver
}

// Inner implements drivertest.WrapperFixture.
func (f *fleetFixture) Inner(t *testing.T) driver.Driver { return f.inner }

func open(t *testing.T) *libvirt.Driver {
	t.Helper()
	d, err := libvirt.Open(context.Background(), driver.Config{Host: "qemu:///system", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("open libvirt: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// fleetAlias is the second host name of the test fleet: a qemu+unix URI with a host
// part reaches the local libvirtd and reports that name, so one libvirtd stands in for
// two hosts whose guests are all local (offline merges and reverts work on both).
const fleetAlias = "fleet-b"

// openFleet opens qemu:///system and the alias as a --host list does, returning the
// Fleet and its two host names.
func openFleet(t *testing.T) (string, *driver.Fleet, []string) {
	t.Helper()
	hosts := "qemu:///system,qemu+unix://" + fleetAlias + "/system"
	d, err := driver.Open(context.Background(), hosts, driver.Config{Timeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("open %s: %v", hosts, err)
	}
	t.Cleanup(func() { d.Close() })
	fl, ok := d.(*driver.Fleet)
	if !ok {
		t.Fatalf("--host %s opened a %T, want a *driver.Fleet", hosts, d)
	}
	local := open(t).Node()
	if local == fleetAlias {
		t.Fatalf("this host is named %s like the fleet's alias", local)
	}
	return hosts, fl, []string{local, fleetAlias}
}

func TestConformance(t *testing.T) {
	d := open(t)
	drivertest.Run(t, newFixture(t, d, d.Node()))
}

// TestFleetConformance runs the suite on a Fleet of two libvirt hosts, guests placed
// on both in turn.
func TestFleetConformance(t *testing.T) {
	_, fl, nodes := openFleet(t)
	drivertest.Run(t, &fleetFixture{fixture: newFixture(t, fl, nodes...), inner: open(t)})
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
	// TestFleetEngine's freeze watchdog is this binary running the CLI.
	if slices.Contains(os.Args[1:], watchdogCommand) {
		os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	flag.Parse()
	if os.Geteuid() != 0 && flag.Lookup("test.run").Value.String() != unitTests {
		fmt.Fprintln(os.Stderr, "libvirt driver tests need root and a running libvirtd (make test sets both up)")
		os.Exit(1)
	}
	// Journals the tests' drivers write stay out of the host's state directory.
	os.Exit(testbed.RunWithStateDir(m))
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

// watchdogCommand is the CLI's hidden command that serves the freeze watchdog.
const watchdogCommand = "__freeze-watchdog"

// TestFleetEngine runs the engine's snap on a guest of the second host of a real
// two-host Fleet and shows that the guarantees that depend on optional capabilities
// hold there: a freeze left by an earlier run is thawed (Quiescer.FrozenState, Thaw),
// the snapshot is taken inside the watchdog-guarded freeze (Quiescer.Freeze, with the
// watchdog process itself thawing through a Fleet), the storage guard stops a snapshot
// on a full storage (StorageReporter) and --max-chain-depth reads the chains
// (ChainReporter).
func TestFleetEngine(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{Guest: true, DiskMiB: 32})
	hosts, fl, nodes := openFleet(t)
	ctx := context.Background()
	gs, err := fl.Guests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var g driver.Guest
	for _, x := range gs {
		if x.UUID == dom.UUID && x.Node == nodes[1] {
			g = x
		}
	}
	if g.Name == "" {
		t.Fatalf("the fleet does not list %s on %s", dom.Name, nodes[1])
	}
	wd := &watchdog.Client{Command: func() *exec.Cmd {
		return exec.Command(os.Args[0], "--host", hosts, "--timeout", "30", watchdogCommand)
	}}
	t.Cleanup(func() { wd.Close() })
	format, err := naming.ParseFormat("yyMMddHHmmssfff")
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	job := &engine.Job{Driver: fl, Label: "fleet", Keep: 3, Format: format, Quiesce: engine.QuiesceOn,
		Watchdog: wd, Timeout: 30 * time.Second, LockDir: t.TempDir(), Out: &out}
	snap := func(t *testing.T) *engine.GuestResult {
		t.Helper()
		out.Reset()
		rep, err := job.Snap(ctx, []driver.Guest{g})
		t.Logf("snap through the fleet: %v\n%s", err, out.String())
		if rep == nil || len(rep.Guests) != 1 {
			t.Fatalf("snap: %v, report %+v", err, rep)
		}
		return &rep.Guests[0]
	}
	frozen := func() bool {
		return strings.Contains(dom.Agent(t, `{"execute":"guest-fsfreeze-status"}`), `"frozen"`)
	}
	count := func() int {
		ss, err := fl.Snapshots(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		return len(ss)
	}

	t.Run("Quiesce", func(t *testing.T) {
		// An earlier run died with the guest frozen.
		dom.Agent(t, `{"execute":"guest-fsfreeze-freeze"}`)
		t.Cleanup(func() { dom.Agent(t, `{"execute":"guest-fsfreeze-thaw"}`) })
		if !frozen() {
			t.Fatal("the guest did not freeze")
		}
		r := snap(t)
		if r.Outcome != engine.OutcomeOK || r.Consistency != driver.ConsistencyQuiesced {
			t.Fatalf("outcome %s (%s), consistency %q; want ok and quiesced: %v", r.Outcome, r.Reason, r.Consistency, r.Err)
		}
		for _, want := range []string{"was found with frozen filesystems", "Filesystems frozen for"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("the output lacks %q: the engine did not use the fleet's Quiescer", want)
			}
		}
		if strings.Contains(out.String(), "watchdog unavailable") {
			t.Errorf("the freeze watchdog could not serve the fleet")
		}
		if frozen() {
			t.Error("the guest is still frozen after the run")
		}
		if n := count(); n != 1 {
			t.Errorf("%d snapshots, want 1", n)
		}
	})
	t.Run("WatchdogThaws", func(t *testing.T) {
		// A run that dies while the guest is frozen: the watchdog, connected to the
		// same fleet, thaws it when its input closes.
		c := &watchdog.Client{Command: wd.Command}
		if _, err := c.Arm(ctx, g.Key()); err != nil {
			t.Fatalf("arming the watchdog of a fleet: %v", err)
		}
		dom.Agent(t, `{"execute":"guest-fsfreeze-freeze"}`)
		t.Cleanup(func() { dom.Agent(t, `{"execute":"guest-fsfreeze-thaw"}`) })
		if err := c.Close(); err != nil {
			t.Errorf("watchdog: %v", err)
		}
		if frozen() {
			t.Error("the watchdog did not thaw the guest through the fleet")
		}
	})
	t.Run("StorageGuard", func(t *testing.T) {
		job.MaxPercStorage = 0.0001
		defer func() { job.MaxPercStorage = 0 }()
		before := count()
		r := snap(t)
		if r.Outcome != engine.OutcomeFailed || r.Reason != "storage full" {
			t.Errorf("outcome %s (%s): %v; want failed: storage full", r.Outcome, r.Reason, r.Err)
		}
		if n := count(); n != before {
			t.Errorf("%d snapshots after the storage guard stopped the run, want %d", n, before)
		}
	})
	t.Run("ChainDepth", func(t *testing.T) {
		// One overlay per disk already; another would exceed depth 1.
		if _, err := fl.CreateSnapshot(ctx, g, driver.CreateOptions{Name: "autofleetdepth", Description: "autosnap"}); err != nil {
			t.Fatal(err)
		}
		job.MaxChainDepth = 1
		defer func() { job.MaxChainDepth = 0 }()
		before := count()
		r := snap(t)
		if r.Outcome != engine.OutcomeFailed || r.Reason != "chain too deep" {
			t.Errorf("outcome %s (%s): %v; want failed: chain too deep", r.Outcome, r.Reason, r.Err)
		}
		if n := count(); n != before {
			t.Errorf("%d snapshots after the chain check stopped the run, want %d", n, before)
		}
	})
}
