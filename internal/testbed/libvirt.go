package testbed

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// URI is the libvirt connection every Bed uses.
const URI = "qemu:///system"

// Bed is a connection to libvirt for creating fixture domains.
type Bed struct {
	// Conn is the Bed's own connection, open until the test that made it ends. Tests
	// may use it to inspect what the code under test did.
	Conn *libvirt.Libvirt
}

var sweepOnce sync.Once

// Libvirt connects to qemu:///system and fails the test with a clear message if that
// is impossible. The first call in a process removes fixtures left by dead test
// processes (see SweepStale). The connection is closed when the test ends.
func Libvirt(t testing.TB) *Bed {
	t.Helper()
	u, _ := url.Parse(URI)
	conn, err := libvirt.ConnectToURI(u)
	if err != nil {
		t.Fatalf("testbed: cannot connect to %s: %v (is libvirtd running? try: bash scripts/start-libvirt.sh)", URI, err)
	}
	t.Cleanup(func() {
		if err := conn.Disconnect(); err != nil {
			t.Logf("testbed: disconnect from %s: %v", URI, err)
		}
	})
	b := &Bed{Conn: conn}
	sweepOnce.Do(func() { b.SweepStale(t) })
	return b
}

// SweepStale removes what test processes that no longer exist left behind: libvirt
// domains named "ast-<pid>-…" (destroyed, then undefined with their snapshot and
// checkpoint metadata), standalone QEMU processes started by StartQEMU, and their
// directories under WorkDir. Fixtures of live processes are never touched. Problems
// are logged, not fatal, because concurrent processes may sweep the same leftovers.
// Libvirt calls it once per process; StartQEMU sweeps the QEMUs and directories (not
// the domains) once per process.
func (b *Bed) SweepStale(t testing.TB) {
	t.Helper()
	doms, _, err := b.Conn.ConnectListAllDomains(1, 0)
	if err != nil {
		t.Logf("testbed: sweep: listing domains: %v", err)
	}
	for _, d := range doms {
		pid, ok := ownerPid(d.Name)
		if !ok || pidAlive(pid) {
			continue
		}
		if err := removeDomain(b.Conn, d); err != nil && !libvirt.IsNotFound(err) {
			t.Logf("testbed: sweep: %v", err)
			continue
		}
		t.Logf("testbed: sweep: removed stale domain %s", d.Name)
	}
	sweepDirs(t)
}

var sweepDirsOnce sync.Once

// sweepDirs kills the standalone QEMUs and removes the directories under WorkDir of
// test processes that no longer exist.
func sweepDirs(t testing.TB) {
	t.Helper()
	entries, _ := os.ReadDir(WorkDir)
	for _, e := range entries {
		pid, ok := ownerPid(e.Name())
		if !ok || pidAlive(pid) {
			continue
		}
		dir := filepath.Join(WorkDir, e.Name())
		if err := killQEMU(dir, time.Now().Add(10*time.Second)); err != nil {
			t.Logf("testbed: sweep: %v", err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("testbed: sweep: %v", err)
		}
	}
}

// removeDomain destroys d if it is active and undefines it with all metadata that
// would otherwise block undefining.
func removeDomain(conn *libvirt.Libvirt, d libvirt.Domain) error {
	state, _, err := conn.DomainGetState(d, 0)
	if err != nil {
		return fmt.Errorf("state of %s: %w", d.Name, err)
	}
	if libvirt.DomainState(state) != libvirt.DomainShutoff {
		if err := conn.DomainDestroy(d); err != nil {
			// A domain that stopped between the two calls is fine.
			if st, _, err2 := conn.DomainGetState(d, 0); err2 != nil || libvirt.DomainState(st) != libvirt.DomainShutoff {
				return fmt.Errorf("destroy %s: %w", d.Name, err)
			}
		}
	}
	if err := conn.DomainUndefineFlags(d, libvirt.DomainUndefineSnapshotsMetadata|
		libvirt.DomainUndefineCheckpointsMetadata|libvirt.DomainUndefineManagedSave); err != nil {
		// A transient domain vanishes on destroy.
		if libvirt.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("undefine %s: %w", d.Name, err)
	}
	return nil
}

// State is the state NewDomain leaves a domain in.
type State int

// Domain states.
const (
	Running State = iota // started; the default
	Paused               // started with VIR_DOMAIN_START_PAUSED: QEMU runs, the CPUs do not
	Shutoff              // defined only
)

func (s State) String() string {
	switch s {
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Shutoff:
		return "shutoff"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// DomainSpec describes a fixture domain. The zero value is a running domain with one
// blank 64 MiB disk that boots nothing.
type DomainSpec struct {
	// Disks is the number of virtio disks, vda, vdb, vdc: 1 to 3; 0 means 1.
	Disks int
	// DiskMiB is the virtual size of each disk; 0 means 64.
	DiskMiB int
	// State is the state NewDomain leaves the domain in.
	State State
	// Guest boots the test guest (GuestImage) with a qemu-guest-agent channel. vda is
	// then an ext4 data disk the guest mounts at /data; the other disks stay blank. When
	// State is Running, NewDomain returns once the agent answers guest-ping.
	// Without Guest the domain has no agent channel and SeaBIOS finds nothing to boot.
	Guest bool
	// Writer starts the guest's writer loop (requires Guest): a counter line appended to
	// /data/counter and synced every ~100 ms.
	Writer bool
	// MemoryMiB is the guest memory; 0 means 256 with Guest, else 64.
	MemoryMiB int
}

func (s DomainSpec) normalize(t testing.TB) DomainSpec {
	t.Helper()
	if s.Disks == 0 {
		s.Disks = 1
	}
	if s.Disks < 1 || s.Disks > 3 {
		t.Fatalf("testbed: spec Disks = %d, want 1..3", s.Disks)
	}
	if s.DiskMiB == 0 {
		s.DiskMiB = 64
	}
	if s.DiskMiB < 1 {
		t.Fatalf("testbed: spec DiskMiB = %d", s.DiskMiB)
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = 64
		if s.Guest {
			s.MemoryMiB = 256
		}
	}
	if s.Writer && !s.Guest {
		t.Fatalf("testbed: spec Writer requires Guest")
	}
	if s.State < Running || s.State > Shutoff {
		t.Fatalf("testbed: spec State = %v", s.State)
	}
	return s
}

// Domain is a persistent throwaway libvirt domain made by NewDomain.
type Domain struct {
	Name string
	UUID string // canonical lower-case form
	// Dir is the domain's private directory (0700). Put overlays and other files for
	// this domain here: the cleanup removes the directory with everything in it.
	Dir string
	// Disks are the disks as created, in target order.
	Disks []Disk
	// ConsoleLog is the file receiving the domain's serial console.
	ConsoleLog string
	// Spec is the spec the domain was made from, defaults filled in.
	Spec DomainSpec
	// Dom is the go-libvirt handle.
	Dom libvirt.Domain

	bed *Bed
}

// NewDomain defines a uniquely named persistent domain "ast-<pid>-<random>" of type
// "qemu" (TCG) with qcow2 disks in a private directory under WorkDir and brings it to
// spec.State. A guest domain that is Running has an answering agent when NewDomain
// returns; if the agent does not answer within BootTimeout the test fails with the
// tail of the console log. The cleanup destroys the domain, undefines it with snapshot
// and checkpoint metadata, and removes Dir, whatever state the test left it in (it
// finds the domain by UUID, so a rename does not hide it).
func (b *Bed) NewDomain(t testing.TB, spec DomainSpec) *Domain {
	t.Helper()
	spec = spec.normalize(t)
	var guest GuestFiles
	if spec.Guest {
		guest = GuestImage(t)
	}
	name := newName(t)
	d := &Domain{Name: name, Spec: spec, bed: b}
	d.Dir = makeFixtureDir(t, name)
	d.ConsoleLog = filepath.Join(d.Dir, "console.log")
	t.Cleanup(func() { d.cleanup(t) })

	for i := 0; i < spec.Disks; i++ {
		target := "vd" + string(rune('a'+i))
		disk := Disk{Target: target, Path: filepath.Join(d.Dir, target+".qcow2")}
		if spec.Guest && i == 0 {
			NewDataDisk(t, disk.Path, spec.DiskMiB)
		} else {
			newBlankDisk(t, disk.Path, spec.DiskMiB)
		}
		d.Disks = append(d.Disks, disk)
	}

	xml, err := d.xml(guest).Marshal()
	if err != nil {
		t.Fatalf("testbed: domain XML: %v", err)
	}
	dom, err := b.Conn.DomainDefineXML(xml)
	if err != nil {
		t.Fatalf("testbed: define %s: %v\n%s", name, err, xml)
	}
	d.Dom = dom
	d.UUID = formatUUID(dom.UUID)

	switch spec.State {
	case Running, Paused:
		var flags uint32
		if spec.State == Paused {
			flags = uint32(libvirt.DomainStartPaused)
		}
		started, err := b.Conn.DomainCreateWithFlags(dom, flags)
		if err != nil {
			t.Fatalf("testbed: start %s: %v\nconsole:\n%s", name, err, fileTail(d.ConsoleLog, 30))
		}
		d.Dom = started
		if spec.Guest && spec.State == Running {
			d.waitAgent(t)
		}
	}
	return d
}

func (d *Domain) xml(guest GuestFiles) *libvirtxml.Domain {
	port := uint(0)
	x := &libvirtxml.Domain{
		Type:   "qemu",
		Name:   d.Name,
		Memory: &libvirtxml.DomainMemory{Value: uint(d.Spec.MemoryMiB), Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 1},
		OS: &libvirtxml.DomainOS{
			Type: &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "pc", Type: "hvm"},
		},
		// A guest that panics and reboots would loop; keep it down for inspection.
		OnReboot: "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Serials: []libvirtxml.DomainSerial{{
				Source: &libvirtxml.DomainChardevSource{File: &libvirtxml.DomainChardevSourceFile{Path: d.ConsoleLog}},
				Target: &libvirtxml.DomainSerialTarget{Port: &port},
			}},
			MemBalloon: &libvirtxml.DomainMemBalloon{Model: "none"},
		},
	}
	if d.Spec.Guest {
		x.OS.Kernel = guest.Kernel
		x.OS.Initrd = guest.Initrd
		x.OS.Cmdline = GuestCmdline(d.Spec.Writer)
		x.Devices.Channels = []libvirtxml.DomainChannel{{
			Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
			Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: AgentChannel}},
		}}
	}
	for _, disk := range d.Disks {
		x.Devices.Disks = append(x.Devices.Disks, libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2"},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: disk.Path}},
			Target: &libvirtxml.DomainDiskTarget{Dev: disk.Target, Bus: "virtio"},
		})
	}
	return x
}

func (d *Domain) cleanup(t testing.TB) {
	if d.UUID != "" {
		dom, err := d.bed.Conn.DomainLookupByUUID(d.Dom.UUID)
		switch {
		case libvirt.IsNotFound(err):
		case err != nil:
			t.Errorf("testbed: cleanup: look up %s: %v", d.Name, err)
		default:
			if err := removeDomain(d.bed.Conn, dom); err != nil {
				t.Errorf("testbed: cleanup: %v", err)
			}
		}
	}
	if err := os.RemoveAll(d.Dir); err != nil {
		t.Errorf("testbed: cleanup: %v", err)
	}
}

func (d *Domain) waitAgent(t testing.TB) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(BootTimeout)
	var err error
	for time.Now().Before(deadline) {
		// The agent reports "not connected" at once until the guest opens its port.
		if _, err = d.bed.Conn.QEMUDomainAgentCommand(d.Dom, `{"execute":"guest-ping"}`, 2, 0); err == nil {
			t.Logf("testbed: %s: agent answered %v after start", d.Name, time.Since(start).Round(100*time.Millisecond))
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("testbed: %s: guest agent did not answer within %v: %v\nconsole log tail:\n%s",
		d.Name, BootTimeout, err, fileTail(d.ConsoleLog, 40))
}

// AgentPing sends guest-ping through libvirt and returns libvirt's error, if any.
func (d *Domain) AgentPing(t testing.TB) error {
	t.Helper()
	_, err := d.bed.Conn.QEMUDomainAgentCommand(d.Dom, `{"execute":"guest-ping"}`, 5, 0)
	return err
}

// Agent sends a raw guest agent command (JSON) through libvirt, waiting up to 30 s, and
// returns the raw reply. An error fails the test.
func (d *Domain) Agent(t testing.TB, cmdJSON string) string {
	t.Helper()
	res, err := d.bed.Conn.QEMUDomainAgentCommand(d.Dom, cmdJSON, 30, 0)
	if err != nil {
		t.Fatalf("testbed: %s: agent command %s: %v", d.Name, cmdJSON, err)
	}
	if len(res) == 0 {
		return ""
	}
	return res[0]
}

// HMP runs a human monitor command in the domain's QEMU and returns its reply.
func (d *Domain) HMP(t testing.TB, cmd string) string {
	t.Helper()
	out, err := d.bed.Conn.QEMUDomainMonitorCommand(d.Dom, cmd, 1)
	if err != nil {
		t.Fatalf("testbed: %s: HMP %q: %v", d.Name, cmd, err)
	}
	return out
}

// WriteDisk writes length bytes of pattern at offset into the disk target ("vda", …)
// of the active (running or paused) domain, below the guest, through QEMU's qemu-io,
// flushes, and verifies by reading the bytes back from the disk's current top image.
// The write lands in whatever image is active for that disk, e.g. a snapshot overlay.
func (d *Domain) WriteDisk(t testing.TB, target string, offset int64, pattern byte, length int) {
	t.Helper()
	live := d.XML(t)
	disk := findDisk(live, target)
	if disk == nil {
		t.Fatalf("testbed: %s has no disk %s", d.Name, target)
	}
	alias := ""
	if disk.Alias != nil {
		alias = disk.Alias.Name
	}
	if alias == "" {
		t.Fatalf("testbed: %s: disk %s has no alias; is the domain active?", d.Name, target)
	}
	dev := "/machine/peripheral/" + alias + "/virtio-backend"
	for _, io := range []string{fmt.Sprintf("write -P 0x%02x %d %d", pattern, offset, length), "flush"} {
		// qemu-io prints to QEMU's log, not the reply; a reply means HMP rejected it.
		if out := d.HMP(t, fmt.Sprintf("qemu-io -d %s %q", dev, io)); strings.TrimSpace(out) != "" {
			t.Fatalf("testbed: %s: qemu-io %q on %s: %s", d.Name, io, target, out)
		}
	}
	top := diskChain(disk)
	if len(top) == 0 {
		t.Fatalf("testbed: %s: disk %s has no source file", d.Name, target)
	}
	got := ReadImage(t, top[0], offset, length)
	if !bytes.Equal(got, bytes.Repeat([]byte{pattern}, length)) {
		t.Fatalf("testbed: %s: qemu-io write of 0x%02x at %d+%d to %s did not reach %s (see QEMU's log in /var/log/libvirt/qemu/%s.log)",
			d.Name, pattern, offset, length, target, top[0], d.Name)
	}
}

// Chain returns the current backing chain of disk target, active image first, from
// the live XML of an active domain or the inactive XML otherwise. Without
// <backingStore> in the XML (libvirt only records it for active domains) it asks
// qemu-img instead.
func (d *Domain) Chain(t testing.TB, target string) []string {
	t.Helper()
	disk := findDisk(d.XML(t), target)
	if disk == nil {
		t.Fatalf("testbed: %s has no disk %s", d.Name, target)
	}
	chain := diskChain(disk)
	if len(chain) == 0 {
		t.Fatalf("testbed: %s: disk %s has no source file", d.Name, target)
	}
	if disk.BackingStore != nil {
		return chain
	}
	chain, err := imageChain(chain[0])
	if err != nil {
		t.Fatalf("testbed: %s: chain of %s: %v", d.Name, target, err)
	}
	return chain
}

// XML returns the domain's parsed XML: live for an active domain, else inactive.
func (d *Domain) XML(t testing.TB) *libvirtxml.Domain {
	t.Helper()
	s, err := d.bed.Conn.DomainGetXMLDesc(d.Dom, 0)
	if err != nil {
		t.Fatalf("testbed: %s: XML: %v", d.Name, err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(s); err != nil {
		t.Fatalf("testbed: %s: parse XML: %v", d.Name, err)
	}
	return &x
}

// ConsoleTail returns the last n lines of the serial console log.
func (d *Domain) ConsoleTail(n int) string { return fileTail(d.ConsoleLog, n) }

func findDisk(x *libvirtxml.Domain, target string) *libvirtxml.DomainDisk {
	if x.Devices == nil {
		return nil
	}
	for i := range x.Devices.Disks {
		if disk := &x.Devices.Disks[i]; disk.Target != nil && disk.Target.Dev == target {
			return disk
		}
	}
	return nil
}

// diskChain lists the file sources of a disk and its <backingStore> elements.
func diskChain(disk *libvirtxml.DomainDisk) []string {
	var chain []string
	if disk.Source == nil || disk.Source.File == nil {
		return nil
	}
	chain = append(chain, disk.Source.File.File)
	for bs := disk.BackingStore; bs != nil && bs.Source != nil && bs.Source.File != nil; bs = bs.BackingStore {
		chain = append(chain, bs.Source.File.File)
	}
	return chain
}

func formatUUID(u libvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
