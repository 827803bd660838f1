//go:build crashtest

package crashtest

// env is one scenario's world: its domain, the data the test wrote, the snapshots it
// knows of, and the checks run after the repair.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/journal"
	"github.com/autosnap/autosnap/internal/testbed"
)

// label is the snapshot label of every scenario.
const label = "cm"

// fmtMS gives snapshot names millisecond resolution, so runs need not wait a second.
const fmtMS = "yyMMddHHmmssfff"

type env struct {
	t        *testing.T
	bed      *testbed.Bed
	dom      *testbed.Domain
	scratch  string // test-owned files, outside the domain's directory
	stateDir string // AUTOSNAP_STATE_DIR of every run: the scenario's own journal
	// regions[i] are the regions generations write on disks[i]: the first disk has the
	// big region (its merge is the one interrupted), the others a small one.
	regions [][]region
	disks   []string // the patterned disks; others belong to the guest or stay blank
	gen     int      // newest generation written
	// activeGen is the generation the guest's current data holds.
	activeGen int
	// snaps maps every snapshot the test expects to exist (or to have existed) to the
	// generation it holds; order lists them oldest first.
	snaps map[string]int
	order []string
	// jobDisk is the disk whose block job the scenario throttled; qemuImg the qemu-img
	// it interrupted.
	jobDisk string
	qemuImg int
}

func newEnv(t *testing.T, spec testbed.DomainSpec, disks []string, bigMiB int) *env {
	t.Helper()
	bed := testbed.Libvirt(t)
	orig := bed.Conn
	// A libvirtd restart replaces bed.Conn; registered before the domain so that it
	// runs after the domain's cleanup, which needs the connection.
	t.Cleanup(func() {
		if bed.Conn != orig {
			_ = bed.Conn.Disconnect()
		}
	})
	e := &env{t: t, bed: bed, scratch: t.TempDir(), snaps: map[string]int{}}
	e.stateDir = filepath.Join(e.scratch, "state")
	e.dom = bed.NewDomain(t, spec)
	if len(disks) == 0 {
		for _, d := range e.dom.Disks {
			disks = append(disks, d.Target)
		}
	}
	e.disks = disks
	for i := range disks {
		mib := bigMiB
		if i > 0 {
			mib = min(bigMiB, smallMiB)
		}
		e.regions = append(e.regions, layout(mib))
	}
	return e
}

func (e *env) logf(format string, a ...any) {
	e.t.Helper()
	e.t.Logf(format, a...)
}

// global is the global flags of every run.
func (e *env) global() []string {
	return []string{"--timestamp-format", fmtMS, "--timeout", "60"}
}

// snapArgs is `snap` of this scenario's domain.
func (e *env) snapArgs(keep int, extra ...string) []string {
	return append(append(e.global(), "--vmid", e.dom.Name, "snap", "--label", label, "--keep", strconv.Itoa(keep)), extra...)
}

func (e *env) cleanArgs(keep int) []string {
	return append(e.global(), "--vmid", e.dom.Name, "clean", "--label", label, "--keep", strconv.Itoa(keep))
}

func (e *env) snapshotArgs(sub ...string) []string {
	return append(append(e.global(), "snapshot"), sub...)
}

// run runs the shipped binary and logs it.
func (e *env) run(args ...string) result {
	e.t.Helper()
	r := runShipped(e.stateDir, args...)
	e.logf("%s\n%s", r, r.output())
	return r
}

// state is the domain's libvirt state.
func (e *env) state() (libvirt.DomainState, error) {
	st, _, err := e.bed.Conn.DomainGetState(e.dom.Dom, 0)
	return libvirt.DomainState(st), err
}

func (e *env) active() bool {
	st, err := e.state()
	return err == nil && st != libvirt.DomainShutoff
}

// write writes the next generation over every region of every patterned disk: through
// QEMU when the domain is active, with qemu-io on the active image otherwise.
func (e *env) write() {
	e.t.Helper()
	start := time.Now()
	e.gen++
	active := e.active()
	for i, disk := range e.disks {
		p := pattern(e.gen, i)
		top, err := e.activeImage(disk, false)
		if err != nil {
			e.t.Fatalf("generation %d: %v", e.gen, err)
		}
		for _, r := range e.regions[i] {
			if active {
				err = e.writeLive(disk, r, p)
			} else {
				err = writeOffline(top, r, p)
			}
			if err != nil {
				e.t.Fatalf("generation %d: %v", e.gen, err)
			}
		}
		// A running block job keeps the chain from being read; the checks after the
		// repair read it then.
		if job, _, _, err := e.blockJob(); err == nil && job != "" {
			continue
		}
		if bad := checkView(e.scratch, top, e.regions[i], p); len(bad) > 0 {
			e.t.Fatalf("generation %d did not reach %s: %s", e.gen, top, strings.Join(bad, "; "))
		}
	}
	e.activeGen = e.gen
	e.logf("crashtest: generation %d written in %v", e.gen, time.Since(start).Round(time.Millisecond))
}

// writeLive writes pattern over r into disk of the active domain through QEMU's
// qemu-io (below the guest) and flushes.
func (e *env) writeLive(disk string, r region, p byte) error {
	x, err := e.domXML(false)
	if err != nil {
		return err
	}
	d := diskOf(x, disk)
	if d == nil || d.Alias == nil || d.Alias.Name == "" {
		return fmt.Errorf("%s: disk %s has no alias; is the domain active?", e.dom.Name, disk)
	}
	dev := "/machine/peripheral/" + d.Alias.Name + "/virtio-backend"
	for _, io := range []string{fmt.Sprintf("write -P 0x%02x %d %d", p, r.off, r.n), "flush"} {
		out, err := e.bed.Conn.QEMUDomainMonitorCommand(e.dom.Dom, fmt.Sprintf("qemu-io -d %s %q", dev, io), 1)
		if err != nil {
			return fmt.Errorf("%s: HMP qemu-io %q on %s: %w", e.dom.Name, io, disk, err)
		}
		// qemu-io prints to QEMU's log, not the reply; a reply means HMP rejected it.
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("%s: HMP qemu-io %q on %s: %s", e.dom.Name, io, disk, out)
		}
	}
	return nil
}

// domXML returns the domain's live (or, with inactive, persistent) definition.
func (e *env) domXML(inactive bool) (*libvirtxml.Domain, error) {
	var flags libvirt.DomainXMLFlags
	if inactive {
		flags = libvirt.DomainXMLInactive
	}
	s, err := e.bed.Conn.DomainGetXMLDesc(e.dom.Dom, flags)
	if err != nil {
		return nil, fmt.Errorf("reading the definition of %s: %w", e.dom.Name, err)
	}
	x := &libvirtxml.Domain{}
	if err := x.Unmarshal(s); err != nil {
		return nil, err
	}
	return x, nil
}

func diskOf(x *libvirtxml.Domain, target string) *libvirtxml.DomainDisk {
	if x == nil || x.Devices == nil {
		return nil
	}
	for i := range x.Devices.Disks {
		if d := &x.Devices.Disks[i]; d.Target != nil && d.Target.Dev == target {
			return d
		}
	}
	return nil
}

func fileOf(s *libvirtxml.DomainDiskSource) string {
	if s == nil || s.File == nil {
		return ""
	}
	return s.File.File
}

// activeImage is the image disk uses now (from the live definition when the domain is
// active, unless inactive asks for the persistent one).
func (e *env) activeImage(disk string, inactive bool) (string, error) {
	x, err := e.domXML(inactive)
	if err != nil {
		return "", err
	}
	d := diskOf(x, disk)
	if d == nil || fileOf(d.Source) == "" {
		return "", fmt.Errorf("%s has no file-backed disk %s", e.dom.Name, disk)
	}
	return fileOf(d.Source), nil
}

// imageChain reads path's backing chain from the image headers, path first.
func imageChain(path string) ([]string, error) {
	out, err := runTool("qemu-img", "info", "--backing-chain", "-U", "--output=json", path)
	if err != nil {
		return nil, err
	}
	var infos []imageInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	var chain []string
	for _, i := range infos {
		chain = append(chain, i.Filename)
	}
	return chain, nil
}

// snapshotXML reads every snapshot of the domain.
func (e *env) snapshotXML() (map[string]*libvirtxml.DomainSnapshot, error) {
	snaps, _, err := e.bed.Conn.DomainListAllSnapshots(e.dom.Dom, 1, 0)
	if err != nil {
		return nil, fmt.Errorf("listing the snapshots of %s: %w", e.dom.Name, err)
	}
	out := map[string]*libvirtxml.DomainSnapshot{}
	for _, s := range snaps {
		raw, err := e.bed.Conn.DomainSnapshotGetXMLDesc(s, 0)
		if err != nil {
			return nil, fmt.Errorf("reading snapshot %s: %w", s.Name, err)
		}
		x := &libvirtxml.DomainSnapshot{}
		if err := x.Unmarshal(raw); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", s.Name, err)
		}
		out[s.Name] = x
	}
	return out, nil
}

func (e *env) snapshotNames() ([]string, error) {
	m, err := e.snapshotXML()
	if err != nil {
		return nil, err
	}
	var out []string
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// recordNew adds the snapshots that exist now and were not known before, holding the
// current generation, and returns their names.
func (e *env) recordNew(before []string) []string {
	e.t.Helper()
	now, err := e.snapshotNames()
	if err != nil {
		e.t.Fatalf("%v", err)
	}
	known := map[string]bool{}
	for _, n := range before {
		known[n] = true
	}
	var added []string
	for _, n := range now {
		if !known[n] {
			added = append(added, n)
			if _, ok := e.snaps[n]; !ok {
				e.snaps[n] = e.activeGen
				e.order = append(e.order, n)
			}
		}
	}
	return added
}

// takeSnapshot runs `snap` with the shipped binary (retention keeping everything) and
// returns the new snapshot's name.
func (e *env) takeSnapshot(extra ...string) string {
	e.t.Helper()
	before, err := e.snapshotNames()
	if err != nil {
		e.t.Fatal(err)
	}
	if r := e.run(e.snapArgs(99, extra...)...); r.code != 0 {
		e.t.Fatalf("setting up: %s failed:\n%s", r, r.output())
	}
	added := e.recordNew(before)
	if len(added) != 1 {
		e.t.Fatalf("setting up: snap made %v, want one snapshot", added)
	}
	return added[0]
}

// blockJob returns the first disk with a block job and the job's progress.
func (e *env) blockJob() (disk string, cur, end uint64, err error) {
	for _, d := range e.dom.Disks {
		found, _, _, c, en, err := e.bed.Conn.DomainGetBlockJobInfo(e.dom.Dom, d.Target, 0)
		if err != nil {
			return "", 0, 0, fmt.Errorf("block job of %s: %w", d.Target, err)
		}
		if found != 0 {
			return d.Target, c, en, nil
		}
	}
	return "", 0, 0, nil
}

// expectation is what must hold after the repair.
type expectation struct {
	// snaps are exactly the snapshots that must exist, with the generation each holds.
	snaps map[string]int
	// activeGen is the generation the guest's current data must hold.
	activeGen int
	// current is the snapshot libvirt must call current ("" = not checked).
	current string
	// state is the domain state the guest must be in: the scenario's own, or what the
	// command documents (a disk-only revert leaves the guest shut off).
	state libvirt.DomainState
	// maxChain bounds each disk's chain length (images, active one included).
	maxChain int
}

// verify checks every invariant after the repair and returns one line per violation.
// fsckDisk, when set, is a guest disk whose file system must be clean in every kept
// snapshot (a quiesced snapshot's).
func (e *env) verify(want expectation, fsckDisk string) []string {
	start := time.Now()
	defer func() { e.logf("crashtest: checks took %v", time.Since(start).Round(time.Millisecond)) }()
	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }

	// The guest: state, not frozen, no block job.
	st, err := e.state()
	switch {
	case err != nil:
		bad("%v", err)
	case st != want.state:
		bad("the domain is %s, want %s", stateName(st), stateName(want.state))
	}
	active := err == nil && st != libvirt.DomainShutoff
	if e.dom.Spec.Guest && st == libvirt.DomainRunning {
		if fs, err := e.freezeStatus(); err != nil {
			bad("guest-fsfreeze-status: %v", err)
		} else if fs != "thawed" {
			bad("the guest's file systems are %s", fs)
		}
	}
	if active {
		for _, d := range e.dom.Disks {
			found, _, _, cur, end, err := e.bed.Conn.DomainGetBlockJobInfo(e.dom.Dom, d.Target, 0)
			if err != nil {
				bad("block job of %s: %v", d.Target, err)
			} else if found != 0 {
				bad("disk %s still has a block job (%d of %d)", d.Target, cur, end)
			}
		}
	}

	// Snapshots: exactly the expected ones.
	sx, err := e.snapshotXML()
	if err != nil {
		return append(problems, err.Error())
	}
	var missing, extra []string
	for n := range want.snaps {
		if sx[n] == nil {
			missing = append(missing, n)
		}
	}
	for n := range sx {
		if _, ok := want.snaps[n]; !ok {
			extra = append(extra, n)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 {
		bad("snapshots missing: %s", strings.Join(missing, ", "))
	}
	if len(extra) > 0 {
		bad("snapshots that should be gone: %s", strings.Join(extra, ", "))
	}
	if want.current != "" {
		cur, err := e.bed.Conn.DomainSnapshotCurrent(e.dom.Dom, 0)
		switch {
		case err != nil:
			bad("current snapshot: %v (want %s)", err, want.current)
		case cur.Name != want.current:
			bad("current snapshot is %s, want %s", cur.Name, want.current)
		}
	}

	// Every file a snapshot names exists; each kept snapshot's state holds its data.
	named := map[string]string{} // file → which snapshot names it how
	referenced := map[string]bool{}
	names := make([]string, 0, len(sx))
	for n := range sx {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		x := sx[n]
		files := snapshotFiles(x)
		for _, f := range sortedKeys(files) {
			named[f] = fmt.Sprintf("%s (%s)", n, files[f])
			if _, err := os.Stat(f); err != nil {
				// The overlay a snapshot created holds what was written after it; a
				// revert to an older snapshot discards it by design and the merge
				// planner takes a missing overlay for merged away. A state image or
				// memory file holds the snapshot's own data and must exist.
				if errors.Is(err, os.ErrNotExist) && strings.HasPrefix(files[f], "overlay of ") {
					e.logf("crashtest: note: snapshot %s names %s as its %s, which is gone (discarded branch)", n, f, files[f])
					continue
				}
				bad("snapshot %s names %s as its %s, but: %v", n, f, files[f], err)
				continue
			}
			if files[f] == "memory" {
				referenced[f] = true
				continue
			}
			chain, err := imageChain(f)
			if err != nil {
				bad("snapshot %s: %s: %v", n, f, err)
				continue
			}
			for _, c := range chain {
				referenced[c] = true
			}
		}
		gen, expected := want.snaps[n]
		if !expected {
			continue
		}
		for i, disk := range e.disks {
			state, err := stateImage(x, disk)
			if err != nil {
				bad("snapshot %s: %v", n, err)
				continue
			}
			for _, p := range checkView(e.scratch, state, e.regions[i], pattern(gen, i)) {
				bad("snapshot %s, disk %s (state %s, generation %d): %s", n, disk, state, gen, p)
			}
		}
		if fsckDisk != "" {
			if state, err := stateImage(x, fsckDisk); err != nil {
				bad("snapshot %s: %v", n, err)
			} else if err := testbed.FsckImage(e.t, state); err != nil {
				bad("snapshot %s: the file system on %s is not clean: %v", n, fsckDisk, err)
			}
		}
	}

	// The guest's disks: current data, chains that libvirt and the headers agree on,
	// every image the active one or named by a snapshot, not too deep.
	live, err := e.domXML(false)
	if err != nil {
		return append(problems, err.Error())
	}
	persistent, err := e.domXML(true)
	if err != nil {
		return append(problems, err.Error())
	}
	for _, d := range e.dom.Disks {
		ld := diskOf(live, d.Target)
		top := ""
		if ld != nil {
			top = fileOf(ld.Source)
		}
		if top == "" {
			bad("disk %s has no image", d.Target)
			continue
		}
		if active {
			if pt := fileOf(diskOf(persistent, d.Target).Source); pt != top {
				bad("disk %s: the running guest uses %s but its persistent definition names %s (the next cold boot would use other data)", d.Target, top, pt)
			}
		}
		chain, err := imageChain(top)
		if err != nil {
			bad("disk %s: %v", d.Target, err)
			continue
		}
		if active {
			lchain := []string{top}
			for b := ld.BackingStore; b != nil && b.Source != nil; b = b.BackingStore {
				if f := fileOf(b.Source); f != "" {
					lchain = append(lchain, f)
				}
			}
			if strings.Join(lchain, " ← ") != strings.Join(chain, " ← ") {
				bad("disk %s: libvirt's chain %v differs from the image headers' %v", d.Target, lchain, chain)
			}
		}
		if len(chain) > want.maxChain {
			bad("disk %s: chain of %d images %v, want at most %d", d.Target, len(chain), chain, want.maxChain)
		}
		for i, c := range chain {
			referenced[c] = true
			if i > 0 && named[c] == "" {
				bad("disk %s: chain image %s is neither the active image nor named by a snapshot", d.Target, c)
			}
		}
		if i := indexOf(e.disks, d.Target); i >= 0 {
			for _, p := range checkView(e.scratch, top, e.regions[i], pattern(want.activeGen, i)) {
				bad("current data of disk %s (%s, generation %d): %s", d.Target, top, want.activeGen, p)
			}
		}
	}

	// No stray files beside the disks.
	files, err := dirFiles(e.dom.Dir)
	if err != nil {
		bad("%v", err)
	}
	for _, f := range files {
		if f == e.dom.ConsoleLog || referenced[f] {
			continue
		}
		bad("stray file %s: neither in a disk's chain nor named by a snapshot", f)
	}

	// Nothing left half done.
	keys, err := journal.Open(filepath.Join(e.stateDir, "journal")).Keys("")
	if err != nil {
		bad("reading the journal: %v", err)
	} else if len(keys) > 0 {
		bad("the journal still holds records after the repair: %s", strings.Join(keys, ", "))
	}
	return problems
}

// snapshotFiles maps each file a snapshot's XML names to its role: the overlays its
// <disks> created, the images its recorded domain used (its state) and its memory file.
func snapshotFiles(x *libvirtxml.DomainSnapshot) map[string]string {
	out := map[string]string{}
	if x.Disks != nil {
		for _, d := range x.Disks.Disks {
			if d.Snapshot == "external" {
				if f := fileOf(d.Source); f != "" {
					out[f] = "overlay of " + d.Name
				}
			}
		}
	}
	for _, dom := range []*libvirtxml.Domain{x.Domain, inactiveOf(x)} {
		if dom == nil || dom.Devices == nil {
			continue
		}
		for _, d := range dom.Devices.Disks {
			if f := fileOf(d.Source); f != "" && d.Target != nil {
				if _, ok := out[f]; !ok {
					out[f] = "state of " + d.Target.Dev
				}
			}
		}
	}
	if x.Memory != nil && x.Memory.Snapshot == "external" && x.Memory.File != "" {
		out[x.Memory.File] = "memory"
	}
	return out
}

func inactiveOf(x *libvirtxml.DomainSnapshot) *libvirtxml.Domain {
	if x.InactiveDomain == nil {
		return nil
	}
	return &x.InactiveDomain.Domain
}

// stateImage is the image holding a snapshot's state of disk: the disk's source in
// the snapshot's recorded domain.
func stateImage(x *libvirtxml.DomainSnapshot, disk string) (string, error) {
	external := false
	if x.Disks != nil {
		for _, d := range x.Disks.Disks {
			if d.Name == disk && d.Snapshot == "external" {
				external = true
			}
		}
	}
	if !external {
		return "", fmt.Errorf("it has no external snapshot of disk %s", disk)
	}
	d := diskOf(x.Domain, disk)
	if d == nil || fileOf(d.Source) == "" {
		return "", fmt.Errorf("its recorded domain has no image for disk %s", disk)
	}
	return fileOf(d.Source), nil
}

// freezeStatus asks the guest agent whether file systems are frozen.
func (e *env) freezeStatus() (string, error) {
	res, err := e.bed.Conn.QEMUDomainAgentCommand(e.dom.Dom, `{"execute":"guest-fsfreeze-status"}`, 10, 0)
	if err != nil {
		return "", err
	}
	if len(res) == 0 {
		return "", fmt.Errorf("empty reply")
	}
	var r struct {
		Return string `json:"return"`
	}
	if err := json.Unmarshal([]byte(res[0]), &r); err != nil {
		return "", fmt.Errorf("reply %q: %w", res[0], err)
	}
	return r.Return, nil
}

// waitThawed waits up to limit for the guest's file systems to be thawed.
func (e *env) waitThawed(limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	for {
		fs, err := e.freezeStatus()
		if (err == nil && fs == "thawed") || time.Now().After(deadline) {
			return fs, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func stateName(s libvirt.DomainState) string {
	switch s {
	case libvirt.DomainRunning:
		return "running"
	case libvirt.DomainPaused:
		return "paused"
	case libvirt.DomainShutoff:
		return "shut off"
	}
	return fmt.Sprintf("state %d", s)
}

func libvirtState(s testbed.State) libvirt.DomainState {
	switch s {
	case testbed.Paused:
		return libvirt.DomainPaused
	case testbed.Shutoff:
		return libvirt.DomainShutoff
	}
	return libvirt.DomainRunning
}

func indexOf(xs []string, s string) int {
	for i, x := range xs {
		if x == s {
			return i
		}
	}
	return -1
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
