package testbed

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

func domainState(t *testing.T, b *Bed, d *Domain) libvirt.DomainState {
	t.Helper()
	st, _, err := b.Conn.DomainGetState(d.Dom, 0)
	if err != nil {
		t.Fatalf("state of %s: %v", d.Name, err)
	}
	return libvirt.DomainState(st)
}

func TestPausedTwoDisks(t *testing.T) {
	t.Parallel()
	b := Libvirt(t)
	d := b.NewDomain(t, DomainSpec{Disks: 2, State: Paused})
	if got := domainState(t, b, d); got != libvirt.DomainPaused {
		t.Fatalf("state = %v, want paused", got)
	}
	if len(d.Disks) != 2 || d.Disks[0].Target != "vda" || d.Disks[1].Target != "vdb" {
		t.Fatalf("disks = %+v", d.Disks)
	}
	for _, p := range []string{d.Dir, d.Disks[0].Path, d.Disks[1].Path} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s has mode %v, want no group/other access", p, perm)
		}
	}

	const off, n = 1<<20 + 512, 64 << 10
	d.WriteDisk(t, "vdb", off, 0xab, n)
	if got := ReadImage(t, d.Disks[1].Path, off, n); !bytes.Equal(got, bytes.Repeat([]byte{0xab}, n)) {
		t.Fatalf("vdb at %d does not hold the written pattern", off)
	}
	if got := ReadImage(t, d.Disks[1].Path, off-1, 1); got[0] != 0 {
		t.Fatalf("byte before the write is %#x, want 0", got[0])
	}
	if got := ReadImage(t, d.Disks[0].Path, off, n); !bytes.Equal(got, make([]byte, n)) {
		t.Fatalf("vda changed by a write to vdb")
	}

	blank := filepath.Join(t.TempDir(), "blank.qcow2")
	newBlankDisk(t, blank, 64)
	if ImageSum(t, d.Disks[0].Path) != ImageSum(t, blank) {
		t.Errorf("untouched vda differs from a blank disk")
	}
	if ImageSum(t, d.Disks[1].Path) == ImageSum(t, blank) {
		t.Errorf("written vdb has the sum of a blank disk")
	}
	if chain := d.Chain(t, "vdb"); len(chain) != 1 || chain[0] != d.Disks[1].Path {
		t.Errorf("Chain(vdb) = %v, want [%s]", chain, d.Disks[1].Path)
	}
}

func TestRunningNoGuest(t *testing.T) {
	t.Parallel()
	b := Libvirt(t)
	d := b.NewDomain(t, DomainSpec{})
	if got := domainState(t, b, d); got != libvirt.DomainRunning {
		t.Fatalf("state = %v, want running", got)
	}
	x := d.XML(t)
	if x.Type != "qemu" || x.Name != d.Name || x.UUID != d.UUID {
		t.Errorf("XML type/name/uuid = %s/%s/%s, want qemu/%s/%s", x.Type, x.Name, x.UUID, d.Name, d.UUID)
	}
	if len(x.Devices.Channels) != 0 {
		t.Errorf("non-guest domain has channels: %+v", x.Devices.Channels)
	}
	d.WriteDisk(t, "vda", 0, 0x5a, 4096)
	if got := ReadImage(t, d.Disks[0].Path, 100, 1); got[0] != 0x5a {
		t.Fatalf("byte 100 of vda = %#x, want 0x5a", got[0])
	}
	if err := d.AgentPing(t); err == nil {
		t.Errorf("AgentPing on a domain without agent succeeded")
	}
}

func TestShutoffAndChains(t *testing.T) {
	t.Parallel()
	b := Libvirt(t)
	d := b.NewDomain(t, DomainSpec{Disks: 3, DiskMiB: 16, State: Shutoff})
	if got := domainState(t, b, d); got != libvirt.DomainShutoff {
		t.Fatalf("state = %v, want shutoff", got)
	}
	if chain := d.Chain(t, "vdc"); len(chain) != 1 || chain[0] != d.Disks[2].Path {
		t.Errorf("Chain(vdc) = %v, want [%s]", chain, d.Disks[2].Path)
	}

	// An overlay on vda, switched in through the inactive definition, as an external
	// snapshot of a stopped domain would do.
	base := d.Disks[0].Path
	mustRun(t, time.Minute, "qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 8192 4096", base)
	overlay := filepath.Join(d.Dir, "vda.snap1.qcow2")
	mustRun(t, time.Minute, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay)
	x := d.XML(t)
	x.Devices.Disks[0].Source.File.File = overlay
	s, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Conn.DomainDefineXML(s); err != nil {
		t.Fatal(err)
	}
	if chain := d.Chain(t, "vda"); len(chain) != 2 || chain[0] != overlay || chain[1] != base {
		t.Errorf("Chain(vda) = %v, want [%s %s]", chain, overlay, base)
	}
	if got := ReadImage(t, overlay, 8192, 4096); !bytes.Equal(got, bytes.Repeat([]byte{0xcd}, 4096)) {
		t.Errorf("overlay does not show the base's data")
	}
	if ImageSum(t, overlay) != ImageSum(t, base) {
		t.Errorf("fresh overlay and its base differ")
	}
}

func TestReadImagePastEnd(t *testing.T) {
	t.Parallel()
	img := filepath.Join(t.TempDir(), "small.qcow2")
	newBlankDisk(t, img, 1)
	if got := ReadImage(t, img, 1<<20-10, 10); len(got) != 10 {
		t.Fatalf("read %d bytes at the end, want 10", len(got))
	}
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ReadImage(ft, img, 1<<20-10, 11)
	}()
	<-done
	if !ft.failed {
		t.Fatalf("ReadImage past the end did not fail")
	}
}

// fatalRecorder records Fatalf instead of failing the real test.
type fatalRecorder struct {
	testing.TB
	failed bool
	msg    string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fatalRecorder) Helper() {}

func TestGuestBootsWithAgent(t *testing.T) {
	t.Parallel()
	b := Libvirt(t)
	start := time.Now()
	d := b.NewDomain(t, DomainSpec{Guest: true, Writer: true, Disks: 2})
	t.Logf("guest domain ready in %v", time.Since(start).Round(100*time.Millisecond))
	if err := d.AgentPing(t); err != nil {
		t.Fatalf("guest-ping: %v", err)
	}
	if got := d.Agent(t, `{"execute":"guest-ping"}`); got != `{"return":{}}` {
		t.Errorf("guest-ping reply %s", got)
	}
	x := d.XML(t)
	if len(x.Devices.Channels) != 1 || x.Devices.Channels[0].Target.VirtIO.State != "connected" {
		t.Errorf("agent channel not connected: %+v", x.Devices.Channels)
	}

	freezeCount := func() int {
		t.Helper()
		if got := d.Agent(t, `{"execute":"guest-fsfreeze-freeze"}`); got != `{"return":1}` {
			t.Fatalf("guest-fsfreeze-freeze = %s, want 1 file system frozen", got)
		}
		defer func() {
			if got := d.Agent(t, `{"execute":"guest-fsfreeze-thaw"}`); got != `{"return":1}` {
				t.Fatalf("guest-fsfreeze-thaw = %s", got)
			}
		}()
		if got := d.Agent(t, `{"execute":"guest-fsfreeze-status"}`); got != `{"return":"frozen"}` {
			t.Fatalf("guest-fsfreeze-status = %s", got)
		}
		// Frozen means flushed, so the image on disk is a consistent file system.
		if err := FsckImage(t, d.Disks[0].Path); err != nil {
			t.Fatalf("frozen data disk: %v", err)
		}
		if len(GuestFile(t, d.Disks[0].Path, "/boot-ok")) == 0 {
			t.Fatalf("/boot-ok is empty")
		}
		return checkCounter(t, GuestFile(t, d.Disks[0].Path, "/counter"))
	}
	first := freezeCount()
	if got := d.Agent(t, `{"execute":"guest-fsfreeze-status"}`); got != `{"return":"thawed"}` {
		t.Fatalf("after thaw guest-fsfreeze-status = %s", got)
	}
	time.Sleep(1500 * time.Millisecond)
	second := freezeCount()
	if second <= first {
		t.Errorf("writer did not advance after thaw: %d then %d", first, second)
	}
	t.Logf("counter %d, then %d after thaw", first, second)
	if !strings.Contains(d.ConsoleTail(20), "boot complete") {
		t.Errorf("console log lacks 'boot complete':\n%s", d.ConsoleTail(20))
	}
}

// checkCounter verifies that the writer's lines are 1, 2, …, n and returns n.
func checkCounter(t *testing.T, b []byte) int {
	t.Helper()
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	for i, l := range lines {
		if n, err := strconv.Atoi(l); err != nil || n != i+1 {
			t.Fatalf("counter line %d is %q, want %d", i+1, l, i+1)
		}
	}
	if len(lines) == 0 || lines[0] == "" {
		t.Fatalf("counter is empty")
	}
	return len(lines)
}

func TestStartQEMUGuest(t *testing.T) {
	t.Parallel()
	start := time.Now()
	q := StartQEMU(t, QEMUSpec{Guest: true, Disks: 2})
	t.Logf("standalone guest ready in %v", time.Since(start).Round(100*time.Millisecond))

	conn, err := net.Dial("unix", q.AgentSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("{\"execute\":\"guest-ping\"}\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("reading guest-ping reply: %v", err)
	}
	if got := strings.TrimSpace(line); got != `{"return": {}}` {
		t.Fatalf("guest-ping reply %q", got)
	}
	conn.Close()

	if got := q.QMP(t, `{"execute":"query-status"}`); !strings.Contains(got, `"status": "running"`) {
		t.Errorf("query-status = %s", got)
	}
	if got := q.Agent(t, `{"execute":"guest-fsfreeze-freeze"}`); got != `{"return": 1}` {
		t.Fatalf("guest-fsfreeze-freeze = %s", got)
	}
	if got := q.Agent(t, `{"execute":"guest-fsfreeze-thaw"}`); got != `{"return": 1}` {
		t.Fatalf("guest-fsfreeze-thaw = %s", got)
	}

	hmp := `qemu-io -d /machine/peripheral/virtio-disk1/virtio-backend \"%s\"`
	for _, io := range []string{"write -P 0x77 65536 4096", "flush"} {
		cmd := fmt.Sprintf(`{"execute":"human-monitor-command","arguments":{"command-line":"%s"}}`, fmt.Sprintf(hmp, io))
		if got := q.QMP(t, cmd); got != `{"return": ""}` {
			t.Fatalf("%s = %s", cmd, got)
		}
	}
	if got := ReadImage(t, q.Disks[1].Path, 65536, 4096); !bytes.Equal(got, bytes.Repeat([]byte{0x77}, 4096)) {
		t.Fatalf("write through virtio-disk1 did not reach %s", q.Disks[1].Path)
	}
	if got := q.QMP(t, `{"execute":"query-named-block-nodes","arguments":{"flat":true}}`); !strings.Contains(got, `"node-name": "disk-vdb"`) {
		t.Errorf("node disk-vdb missing from %s", got)
	}
}

func TestStartQEMUStopped(t *testing.T) {
	t.Parallel()
	q := StartQEMU(t, QEMUSpec{})
	if got := q.QMP(t, `{"execute":"query-status"}`); !strings.Contains(got, `"running": false`) {
		t.Errorf("query-status = %s, want not running", got)
	}
	if q.Pid <= 0 || !pidAlive(q.Pid) {
		t.Fatalf("QEMU pid %d not alive", q.Pid)
	}
}

func TestSweepStale(t *testing.T) {
	t.Parallel()
	b := Libvirt(t)
	// The fixtures belong to a child that lives until they are set up, so that sweeps
	// of concurrent test processes leave them alone until then.
	owner := exec.Command("sleep", "600")
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	ownerDone := false
	endOwner := func() {
		if !ownerDone {
			owner.Process.Kill()
			owner.Wait()
			ownerDone = true
		}
	}
	t.Cleanup(endOwner)
	prefix := fmt.Sprintf("%s%d-", NamePrefix, owner.Process.Pid)

	// A paused domain with snapshot metadata, as a crashed test would leave it.
	name := prefix + "x"
	domDir := filepath.Join(WorkDir, name)
	if err := os.MkdirAll(filepath.Join(domDir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(domDir) })
	img := filepath.Join(domDir, "vda.qcow2")
	newBlankDisk(t, img, 8)
	port := uint(0)
	x := &libvirtxml.Domain{
		Type: "qemu", Name: name,
		Memory: &libvirtxml.DomainMemory{Value: 32, Unit: "MiB"},
		OS:     &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "pc", Type: "hvm"}},
		Devices: &libvirtxml.DomainDeviceList{
			Serials: []libvirtxml.DomainSerial{{
				Source: &libvirtxml.DomainChardevSource{Null: &libvirtxml.DomainChardevSourceNull{}},
				Target: &libvirtxml.DomainSerialTarget{Port: &port},
			}},
			Disks: []libvirtxml.DomainDisk{{
				Device: "disk",
				Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2"},
				Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: img}},
				Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
			}},
		},
	}
	s, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := b.Conn.DomainDefineXML(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if d, err := b.Conn.DomainLookupByName(name); err == nil {
			removeDomain(b.Conn, d)
		}
	})
	if _, err := b.Conn.DomainCreateWithFlags(dom, uint32(libvirt.DomainStartPaused)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Conn.DomainSnapshotCreateXML(dom, "<domainsnapshot><name>s1</name></domainsnapshot>", 0); err != nil {
		t.Fatalf("snapshot: %v", err)
	}

	// A standalone QEMU whose owner died.
	qdir := filepath.Join(WorkDir, prefix+"q")
	if err := os.MkdirAll(qdir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		killQEMU(qdir, time.Now().Add(10*time.Second))
		os.RemoveAll(qdir)
	})
	mustRun(t, time.Minute, "qemu-system-x86_64", "-S", "-accel", "tcg", "-nodefaults", "-display", "none",
		"-m", "32", "-qmp", "unix:"+qdir+"/qmp.sock,server=on,wait=off",
		"-daemonize", "-pidfile", qdir+"/qemu.pid")
	qpid, err := readPid(qdir + "/qemu.pid")
	if err != nil {
		t.Fatal(err)
	}

	endOwner()
	b.SweepStale(t)

	if _, err := b.Conn.DomainLookupByName(name); !libvirt.IsNotFound(err) {
		t.Errorf("stale domain %s still exists (lookup error %v)", name, err)
	}
	for _, dir := range []string{domDir, qdir} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("stale directory %s still exists", dir)
		}
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", qpid)); err == nil && bytes.Contains(cmdline, []byte(qdir)) {
		t.Errorf("stale QEMU pid %d still runs", qpid)
	}

	// Fixtures of live processes, this one included, survive a sweep.
	mine := b.NewDomain(t, DomainSpec{State: Shutoff})
	b.SweepStale(t)
	if _, err := b.Conn.DomainLookupByName(mine.Name); err != nil {
		t.Errorf("sweep removed live fixture %s: %v", mine.Name, err)
	}
	if _, err := os.Stat(mine.Dir); err != nil {
		t.Errorf("sweep removed live fixture dir: %v", err)
	}
}

func TestOwnerPid(t *testing.T) {
	for name, want := range map[string]int{"ast-123-abc": 123, "ast-1-x-y": 1, "ast-x-1": 0, "ast-123": 0, "foo-1-x": 0, "ast--x": 0} {
		got, ok := ownerPid(name)
		if got != want || ok != (want != 0) {
			t.Errorf("ownerPid(%q) = %d, %v; want %d", name, got, ok, want)
		}
	}
}

func TestGuestImageCached(t *testing.T) {
	t.Parallel()
	g := GuestImage(t)
	for _, p := range []string{g.Kernel, g.Initrd} {
		if !nonEmpty(p) {
			t.Fatalf("%s missing", p)
		}
	}
	if !strings.HasPrefix(g.Kernel, CacheDir+"/guest-") {
		t.Errorf("kernel %s not in the cache", g.Kernel)
	}
}
