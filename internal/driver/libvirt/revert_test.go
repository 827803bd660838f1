package libvirt_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/libvirt"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/testbed"
)

// revertEnv is one throwaway domain with the driver's view of it.
type revertEnv struct {
	d   *libvirt.Driver
	bed *testbed.Bed
	dom *testbed.Domain
}

func newRevertEnv(t *testing.T, spec testbed.DomainSpec) *revertEnv {
	t.Helper()
	bed := testbed.Libvirt(t)
	return &revertEnv{d: open(t), bed: bed, dom: bed.NewDomain(t, spec)}
}

func rctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// guest returns the driver's guest with its current state.
func (e *revertEnv) guest(t *testing.T) driver.Guest {
	t.Helper()
	gs, err := e.d.Guests(rctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		if g.UUID == e.dom.UUID {
			return g
		}
	}
	t.Fatalf("guest %s not listed", e.dom.Name)
	return driver.Guest{}
}

func (e *revertEnv) state(t *testing.T) driver.State { return e.guest(t).State }

func (e *revertEnv) snap(t *testing.T, name string, memory, quiesce bool) {
	t.Helper()
	if _, err := e.d.CreateSnapshot(rctx(t), e.guest(t), driver.CreateOptions{Name: name, Memory: memory, Quiesce: quiesce}); err != nil {
		t.Fatalf("snapshot %s: %v", name, err)
	}
}

// revert reverts and returns the notes.
func (e *revertEnv) revert(t *testing.T, name string, opts driver.RevertOptions) ([]string, error) {
	t.Helper()
	var notes []string
	start := time.Now()
	err := e.d.RevertSnapshotNotes(rctx(t), e.guest(t), name, opts, func(s string) { notes = append(notes, s) })
	t.Logf("revert to %s %+v took %s: err=%v\n  %s", name, opts, time.Since(start).Round(time.Millisecond), err, strings.Join(notes, "\n  "))
	return notes, err
}

func (e *revertEnv) mustRevert(t *testing.T, name string, opts driver.RevertOptions) []string {
	t.Helper()
	notes, err := e.revert(t, name, opts)
	if err != nil {
		t.Fatalf("revert to %s: %v", name, err)
	}
	return notes
}

// write writes pattern into the disk's active image, through QEMU when the domain is
// active, with qemu-io on the image otherwise.
func (e *revertEnv) write(t *testing.T, disk string, off int64, pattern byte, n int) {
	t.Helper()
	if e.state(t).Active() {
		e.dom.WriteDisk(t, disk, off, pattern, n)
		return
	}
	top := e.dom.Chain(t, disk)[0]
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %d %d", pattern, off, n), top).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io on %s: %v: %s", top, err, out)
	}
}

func (e *revertEnv) expect(t *testing.T, disk string, off int64, pattern byte, n int) {
	t.Helper()
	got := testbed.ReadImage(t, e.dom.Chain(t, disk)[0], off, n)
	if !bytes.Equal(got, bytes.Repeat([]byte{pattern}, n)) {
		t.Errorf("%s at %d: got %x…, want %02x", disk, off, got[:min(8, len(got))], pattern)
	}
}

func (e *revertEnv) current(t *testing.T) string {
	t.Helper()
	ss, err := e.d.Snapshots(rctx(t), e.guest(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if s.Current {
			return s.Name
		}
	}
	return ""
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// counterLines parses the writer's /data/counter and checks it reads 1, 2, …, n.
func counterLines(t *testing.T, b []byte) int {
	t.Helper()
	s := strings.TrimRight(string(b), "\n")
	if s == "" {
		return 0
	}
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if n, err := strconv.Atoi(l); err != nil || n != i+1 {
			lo := max(0, i-2)
			t.Fatalf("counter line %d is %q, want %d (lines %d..: %q)", i+1, l, i+1, lo+1, lines[lo:min(len(lines), i+3)])
		}
	}
	return len(lines)
}

// frozenCounter freezes the running guest, reads its counter from the data disk's
// active image and thaws it.
func (e *revertEnv) frozenCounter(t *testing.T) int {
	t.Helper()
	e.dom.Agent(t, `{"execute":"guest-fsfreeze-freeze"}`)
	defer e.dom.Agent(t, `{"execute":"guest-fsfreeze-thaw"}`)
	top := e.dom.Chain(t, "vda")[0]
	if err := testbed.FsckImage(t, top); err != nil {
		t.Errorf("frozen data disk: %v", err)
	}
	return counterLines(t, testbed.GuestFile(t, top, "/counter"))
}

func TestRevertMemoryContinuesCounter(t *testing.T) {
	e := newRevertEnv(t, testbed.DomainSpec{Guest: true, Writer: true, DiskMiB: 32})
	time.Sleep(time.Second)
	before := e.dom.Chain(t, "vda")[0]
	// Frozen around the snapshot as the engine does for snap --state: the state image
	// is a clean file system, so the counter at the snapshot can be read from it
	// exactly, and the saved RAM has the filesystems frozen.
	g := e.guest(t)
	if _, err := e.d.Freeze(rctx(t), g); err != nil {
		t.Fatal(err)
	}
	desc := naming.Description(map[string]string{"consistency": string(driver.ConsistencyQuiesced)})
	if _, err := e.d.CreateSnapshot(rctx(t), g, driver.CreateOptions{Name: "mem1", Memory: true, Description: desc}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.Thaw(rctx(t), g); err != nil {
		t.Fatal(err)
	}
	if err := testbed.FsckImage(t, before); err != nil {
		t.Fatalf("state image: %v", err)
	}
	atSnap := counterLines(t, testbed.GuestFile(t, before, "/counter"))
	time.Sleep(2 * time.Second)
	later := e.frozenCounter(t)
	if later <= atSnap+3 {
		t.Fatalf("writer did not advance after the snapshot: %d then %d", atSnap, later)
	}
	notes := e.mustRevert(t, "mem1", driver.RevertOptions{})
	if st := e.state(t); st != driver.StateRunning {
		t.Fatalf("state after revert = %s, want running", st)
	}
	if !strings.Contains(strings.Join(notes, "\n"), "stopped") {
		t.Errorf("notes do not say the guest was stopped: %q", notes)
	}
	time.Sleep(time.Second)
	after := e.frozenCounter(t)
	t.Logf("counter: %d at the snapshot, %d later, %d after the revert", atSnap, later, after)
	// counterLines checked that the lines run 1, 2, …: the guest went on from the
	// snapshot's value, not from the later one and not from a fresh boot.
	if after <= atSnap {
		t.Errorf("writer did not run after the revert: %d lines, %d at the snapshot", after, atSnap)
	}

	// A memory file that went missing is refused before the guest is touched.
	e.snap(t, "mem2", true, false)
	mem := filepath.Join(e.dom.Dir, e.dom.Name+".mem2.mem")
	if err := os.Rename(mem, mem+".away"); err != nil {
		t.Fatal(err)
	}
	_, err := e.revert(t, "mem2", driver.RevertOptions{})
	if err == nil || !strings.Contains(err.Error(), "memory file") {
		t.Errorf("revert without its memory file: %v", err)
	}
	if st := e.state(t); st != driver.StateRunning {
		t.Errorf("a refused revert left the guest %s", st)
	}
	if err := os.Rename(mem+".away", mem); err != nil {
		t.Fatal(err)
	}
	// Paused on request; the overlay of the previous revert is deleted.
	first := e.dom.Chain(t, "vda")
	e.mustRevert(t, "mem1", driver.RevertOptions{Paused: true})
	if st := e.state(t); st != driver.StatePaused {
		t.Errorf("state after revert --paused = %s", st)
	}
	if e.current(t) != "mem1" {
		t.Errorf("current snapshot = %q, want mem1", e.current(t))
	}
	chain := e.dom.Chain(t, "vda")
	if len(chain) != 2 || chain[1] != before || chain[0] == first[0] {
		t.Errorf("chain after the second revert = %v (before it %v), want [new overlay %s]", chain, first, before)
	}
}

// snapshotState returns the state image a snapshot records for disk.
func (e *revertEnv) snapshotState(t *testing.T, snap, disk string) string {
	t.Helper()
	s, err := e.bed.Conn.DomainSnapshotLookupByName(e.dom.Dom, snap, 0)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := e.bed.Conn.DomainSnapshotGetXMLDesc(s, 0)
	if err != nil {
		t.Fatal(err)
	}
	var x libvirtxml.DomainSnapshot
	if err := x.Unmarshal(raw); err != nil {
		t.Fatal(err)
	}
	for _, dk := range x.Domain.Devices.Disks {
		if dk.Target != nil && dk.Target.Dev == disk {
			return dk.Source.File.File
		}
	}
	t.Fatalf("snapshot %s records no disk %s", snap, disk)
	return ""
}

func TestRevertInternal(t *testing.T) {
	e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 16})
	e.write(t, "vda", 0, 0xa1, 4096)
	// virsh makes an internal snapshot of a shut-off domain with qcow2 disks.
	if out, err := exec.Command("virsh", "snapshot-create-as", e.dom.Name, "int1").CombinedOutput(); err != nil {
		t.Fatalf("virsh snapshot-create-as: %v %s", err, out)
	}
	ss, err := e.d.Snapshots(rctx(t), e.guest(t))
	if err != nil || len(ss) != 1 || ss[0].Location != driver.LocationInternal {
		t.Fatalf("snapshots = %+v, %v; want one internal", ss, err)
	}
	e.write(t, "vda", 0, 0xb2, 4096)
	e.mustRevert(t, "int1", driver.RevertOptions{})
	e.expect(t, "vda", 0, 0xa1, 4096)
	if st := e.state(t); st != driver.StateShutoff {
		t.Errorf("state = %s, want shutoff", st)
	}
	e.write(t, "vda", 0, 0xc3, 4096)
	e.mustRevert(t, "int1", driver.RevertOptions{Running: true})
	if st := e.state(t); st != driver.StateRunning {
		t.Errorf("state after revert --running = %s", st)
	}
	e.expect(t, "vda", 0, 0xa1, 4096)
	if _, err := e.revert(t, "nosuch", driver.RevertOptions{}); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("revert to a missing snapshot: %v", err)
	}
}

func TestRevertExternalDiskOnly(t *testing.T) {
	for _, st := range []testbed.State{testbed.Shutoff, testbed.Paused, testbed.Running} {
		t.Run(st.String(), func(t *testing.T) {
			t.Parallel()
			e := newRevertEnv(t, testbed.DomainSpec{State: st, Disks: 2, DiskMiB: 16})
			base := []string{e.dom.Disks[0].Path, e.dom.Disks[1].Path}
			e.write(t, "vda", 0, 0x11, 4096)
			e.write(t, "vdb", 4096, 0x21, 4096)
			e.snap(t, "s1", false, false)
			ov := []string{e.dom.Chain(t, "vda")[0], e.dom.Chain(t, "vdb")[0]}
			sums := []string{testbed.ImageSum(t, base[0]), testbed.ImageSum(t, base[1])}
			e.write(t, "vda", 0, 0x12, 4096)
			e.write(t, "vdb", 4096, 0x22, 4096)
			e.write(t, "vda", 8192, 0x13, 4096)

			if st != testbed.Shutoff {
				_, err := e.revert(t, "s1", driver.RevertOptions{})
				if err == nil || !strings.Contains(err.Error(), "--force") {
					t.Fatalf("revert of an active guest without force: %v", err)
				}
				if e.state(t) == driver.StateShutoff || e.dom.Chain(t, "vda")[0] != ov[0] {
					t.Fatalf("a refused revert changed the guest")
				}
			}
			notes := e.mustRevert(t, "s1", driver.RevertOptions{Force: true})
			all := strings.Join(notes, "\n")
			if st != testbed.Shutoff && !strings.Contains(all, "virsh destroy") {
				t.Errorf("notes do not say the guest was stopped hard: %q", notes)
			}
			if got := e.state(t); got != driver.StateShutoff {
				t.Errorf("state after revert = %s, want shutoff", got)
			}
			for i, disk := range []string{"vda", "vdb"} {
				chain := e.dom.Chain(t, disk)
				want := filepath.Join(e.dom.Dir, e.dom.Name+"-"+disk+".s1.revert1.qcow2")
				if len(chain) != 2 || chain[0] != want || chain[1] != base[i] {
					t.Errorf("%s chain = %v, want [%s %s]", disk, chain, want, base[i])
				} else if m := mode(t, chain[0]); m != 0o600 {
					t.Errorf("%s overlay mode %o", disk, m)
				}
				if exists(ov[i]) {
					t.Errorf("%s: the overlay with the discarded state %s is still there", disk, ov[i])
				}
				if !strings.Contains(all, "deleted "+ov[i]) {
					t.Errorf("notes do not report deleting %s", ov[i])
				}
			}
			e.expect(t, "vda", 0, 0x11, 4096)
			e.expect(t, "vda", 8192, 0, 4096)
			e.expect(t, "vdb", 4096, 0x21, 4096)
			if e.current(t) != "s1" {
				t.Errorf("current snapshot = %q", e.current(t))
			}

			// Again, from the reverted state, into the state asked for.
			e.write(t, "vda", 0, 0x14, 4096)
			opts := driver.RevertOptions{Running: st == testbed.Running, Paused: st == testbed.Paused}
			e.mustRevert(t, "s1", opts)
			want := map[testbed.State]driver.State{testbed.Shutoff: driver.StateShutoff, testbed.Paused: driver.StatePaused, testbed.Running: driver.StateRunning}[st]
			if got := e.state(t); got != want {
				t.Errorf("state after the second revert = %s, want %s", got, want)
			}
			e.expect(t, "vda", 0, 0x11, 4096)
			e.expect(t, "vdb", 4096, 0x21, 4096)
			for i, disk := range []string{"vda", "vdb"} {
				chain := e.dom.Chain(t, disk)
				want := filepath.Join(e.dom.Dir, e.dom.Name+"-"+disk+".s1.revert2.qcow2")
				if len(chain) != 2 || chain[0] != want {
					t.Errorf("%s chain after the second revert = %v, want %s on top", disk, chain, want)
				}
				if exists(filepath.Join(e.dom.Dir, e.dom.Name+"-"+disk+".s1.revert1.qcow2")) {
					t.Errorf("%s: the first revert's overlay is still there", disk)
				}
				if got := testbed.ImageSum(t, base[i]); got != sums[i] {
					t.Errorf("%s: the snapshot's state image changed", disk)
				}
			}
			// The snapshot's <disks> now name the overlay on its state, so deleting it
			// merges that overlay away and keeps the data.
			if st != testbed.Running {
				e.write(t, "vda", 12288, 0x15, 4096)
			}
			if err := e.d.DeleteSnapshot(rctx(t), e.guest(t), "s1"); err != nil {
				t.Fatalf("delete s1 after the reverts: %v", err)
			}
			if chain := e.dom.Chain(t, "vda"); len(chain) != 1 || chain[0] != base[0] {
				t.Errorf("vda chain after deleting s1 = %v, want [%s]", chain, base[0])
			}
			e.expect(t, "vda", 0, 0x11, 4096)
			if st != testbed.Running {
				e.expect(t, "vda", 12288, 0x15, 4096)
			}
		})
	}
}

// TestRevertGuestDisk: a disk-only revert of a real guest gives back exactly the
// file system at the snapshot, clean, and the guest boots from it.
func TestRevertGuestDisk(t *testing.T) {
	e := newRevertEnv(t, testbed.DomainSpec{Guest: true, Writer: true, DiskMiB: 32})
	time.Sleep(time.Second)
	state := e.dom.Chain(t, "vda")[0]
	e.snap(t, "q1", false, true)
	want := testbed.GuestFile(t, state, "/counter")
	atSnap := counterLines(t, want)
	time.Sleep(1500 * time.Millisecond)
	if later := e.frozenCounter(t); later <= atSnap {
		t.Fatalf("writer did not advance: %d then %d", atSnap, later)
	}
	e.mustRevert(t, "q1", driver.RevertOptions{Force: true})
	top := e.dom.Chain(t, "vda")[0]
	if got := testbed.GuestFile(t, top, "/counter"); !bytes.Equal(got, want) {
		t.Errorf("counter after the revert has %d lines, want the snapshot's %d", counterLines(t, got), atSnap)
	}
	if err := testbed.FsckImage(t, top); err != nil {
		t.Errorf("reverted disk: %v", err)
	}
	e.mustRevert(t, "q1", driver.RevertOptions{Running: true})
	deadline := time.Now().Add(testbed.BootTimeout)
	for e.dom.AgentPing(t) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the reverted guest did not boot:\n%s", e.dom.ConsoleTail(30))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func TestRevertRefusals(t *testing.T) {
	t.Run("DiskGone", func(t *testing.T) {
		t.Parallel()
		e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Shutoff, Disks: 2, DiskMiB: 8})
		e.snap(t, "s1", false, false)
		x := e.dom.XML(t)
		x.Devices.Disks = x.Devices.Disks[:1]
		out, err := x.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.bed.Conn.DomainDefineXML(out); err != nil {
			t.Fatal(err)
		}
		before := e.dom.Chain(t, "vda")
		_, err = e.revert(t, "s1", driver.RevertOptions{})
		if err == nil || !strings.Contains(err.Error(), "vdb, which the guest no longer has") {
			t.Errorf("revert with a covered disk gone: %v", err)
		}
		if after := e.dom.Chain(t, "vda"); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("a refused revert changed vda: %v → %v", before, after)
		}
	})
	t.Run("StateImageGone", func(t *testing.T) {
		t.Parallel()
		e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
		e.snap(t, "s1", false, false)
		e.snap(t, "s2", false, false)
		state := e.snapshotState(t, "s2", "vda")
		if err := os.Rename(state, state+".away"); err != nil {
			t.Fatal(err)
		}
		_, err := e.revert(t, "s2", driver.RevertOptions{})
		if err == nil || !strings.Contains(err.Error(), "state image of disk vda is missing") {
			t.Errorf("revert with the state image gone: %v", err)
		}
		if entries, _ := filepath.Glob(filepath.Join(e.dom.Dir, "*revert*")); len(entries) > 0 {
			t.Errorf("a refused revert left %v", entries)
		}
		if err := os.Rename(state+".away", state); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("RunningAndPaused", func(t *testing.T) {
		t.Parallel()
		e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
		e.snap(t, "s1", false, false)
		if _, err := e.revert(t, "s1", driver.RevertOptions{Running: true, Paused: true}); err == nil {
			t.Errorf("revert --running --paused succeeded")
		}
	})
}

// TestRevertOlderThenDelete reverts to an older snapshot, takes new snapshots on the
// new branch and deletes old ones with DeleteSnapshot, live: after each delete the
// current state and every remaining snapshot, on either branch, keep their data.
func TestRevertOlderThenDelete(t *testing.T) {
	e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 16})
	const blk = 4096
	check := func(what string, want map[int64]byte) {
		t.Helper()
		top := e.dom.Chain(t, "vda")[0]
		for off := int64(0); off < 6; off++ {
			got := testbed.ReadImage(t, top, off*blk, blk)
			if !bytes.Equal(got, bytes.Repeat([]byte{want[off]}, blk)) {
				t.Errorf("%s: block %d = %02x, want %02x", what, off, got[0], want[off])
			}
		}
	}
	e.write(t, "vda", 0*blk, 0x01, blk)
	e.snap(t, "s1", false, false)
	e.write(t, "vda", 1*blk, 0x02, blk)
	e.snap(t, "s2", false, false)
	e.write(t, "vda", 2*blk, 0x03, blk)
	e.snap(t, "s3", false, false)
	e.write(t, "vda", 3*blk, 0x04, blk)

	e.mustRevert(t, "s2", driver.RevertOptions{Force: true, Paused: true})
	check("after revert to s2", map[int64]byte{0: 1, 1: 2})
	e.write(t, "vda", 4*blk, 0x05, blk)
	e.snap(t, "s4", false, false)
	e.write(t, "vda", 5*blk, 0x06, blk)
	e.snap(t, "s5", false, false)
	if ss, _ := e.d.Snapshots(rctx(t), e.guest(t)); len(ss) != 5 || ss[3].Parent != "s2" {
		t.Fatalf("snapshots after the branch: %+v", ss)
	}

	want := map[string]map[int64]byte{
		"s1": {0: 1}, "s2": {0: 1, 1: 2}, "s3": {0: 1, 1: 2, 2: 3}, "s4": {0: 1, 1: 2, 4: 5}, "s5": {0: 1, 1: 2, 4: 5, 5: 6},
	}
	current := map[int64]byte{0: 1, 1: 2, 4: 5, 5: 6}
	for _, name := range []string{"s1", "s3", "s2"} {
		t.Logf("vda chain: %v", e.dom.Chain(t, "vda"))
		if err := e.d.DeleteSnapshot(rctx(t), e.guest(t), name); err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
		check("current after deleting "+name, current)
		ss, err := e.d.Snapshots(rctx(t), e.guest(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ss {
			e.mustRevert(t, s.Name, driver.RevertOptions{Force: true, Paused: true})
			check("revert to "+s.Name+" after deleting "+name, want[s.Name])
			current = want[s.Name]
		}
	}
	if files, _ := filepath.Glob(filepath.Join(e.dom.Dir, "*.qcow2")); len(files) > 4 {
		t.Errorf("images left with two snapshots: %v", files)
	}
}

// immutable makes path immutable (chattr +i) until the test ends or the returned
// function is called.
func immutable(t *testing.T, path string) func() {
	t.Helper()
	if out, err := exec.Command("chattr", "+i", path).CombinedOutput(); err != nil {
		t.Fatalf("chattr +i %s: %v %s", path, err, out)
	}
	undo := func() { exec.Command("chattr", "-i", path).Run() }
	t.Cleanup(undo)
	return undo
}

// TestRevertDeletesOnlyOnceRecorded: the image holding the discarded state survives
// a revert whose last step (marking the snapshot current) fails, and the next run
// finishes the revert: the snapshot is current, the image is gone, the data is the
// snapshot's.
func TestRevertDeletesOnlyOnceRecorded(t *testing.T) {
	e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	const n = 64 << 10
	e.write(t, "vda", 0, 0xa1, n)
	e.snap(t, "s1", false, false)
	discarded := e.dom.Chain(t, "vda")[0]
	e.write(t, "vda", 0, 0xb2, n)
	e.write(t, "vda", n, 0xb3, n)
	// libvirt cannot save s1's metadata: marking it current fails.
	allow := immutable(t, filepath.Join("/var/lib/libvirt/qemu/snapshot", e.dom.Name, "s1.xml"))
	notes, err := e.revert(t, "s1", driver.RevertOptions{})
	if err == nil {
		t.Fatal("the revert succeeded although s1's metadata could not be written")
	}
	if !exists(discarded) {
		t.Fatalf("%s, which held the discarded state, was deleted before the revert was recorded (notes %q)", discarded, notes)
	}
	if got := testbed.ReadImage(t, discarded, 0, 2*n); !bytes.Equal(got, append(bytes.Repeat([]byte{0xb2}, n), bytes.Repeat([]byte{0xb3}, n)...)) {
		t.Errorf("the discarded state changed")
	}
	allow()
	e.snap(t, "s2", false, false)
	if exists(discarded) {
		t.Errorf("the next run did not delete %s", discarded)
	}
	chain := e.dom.Chain(t, "vda")
	want := filepath.Join(e.dom.Dir, e.dom.Name+"-vda.s1.revert1.qcow2")
	if len(chain) != 3 || chain[1] != want || chain[2] != e.dom.Disks[0].Path {
		t.Errorf("chain = %v, want [s2's overlay %s %s]", chain, want, e.dom.Disks[0].Path)
	}
	e.expect(t, "vda", 0, 0xa1, n)
	e.expect(t, "vda", n, 0, n)
	ss, err := e.d.Snapshots(rctx(t), e.guest(t))
	if err != nil || len(ss) != 2 || ss[1].Name != "s2" || ss[1].Parent != "s1" {
		t.Errorf("snapshots = %+v, %v; want s2 a child of s1 (s1 current when it was taken)", ss, err)
	}
}

// TestRevertRefusesPartlyMerged: a delete interrupted while it merges a snapshot's
// overlay into that snapshot's state image (throttled so the interruption comes
// half-way) leaves the snapshot's data not whole; a revert to it afterwards must not
// give the guest that half-merged state: it is refused (or the snapshot is gone,
// its merge finished), or it yields exactly the snapshot's data.
//
// Needs the merge journal (incompleteReasons, settle): it fails on a branch without it.
func TestRevertRefusesPartlyMerged(t *testing.T) {
	e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 128})
	const n = 64 << 20
	e.write(t, "vda", 0, 0xa1, n)
	e.snap(t, "s1", false, false)
	e.write(t, "vda", 0, 0xb2, n)
	e.snap(t, "s2", false, false)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.d.DeleteSnapshot(ctx, e.guest(t), "s1") }()
	// Throttle the merge of s1's overlay into its state image to 1 MiB/s as soon as it
	// starts, and interrupt it once it has copied something.
	deadline := time.Now().Add(time.Minute)
	throttled := false
	for {
		if time.Now().After(deadline) {
			t.Fatal("the merge did not start or make progress within a minute")
		}
		found, _, _, cur, _, err := e.bed.Conn.DomainGetBlockJobInfo(e.dom.Dom, "vda", 0)
		if err != nil {
			t.Fatalf("block job info: %v", err)
		}
		if found == 1 && !throttled {
			if err := e.bed.Conn.DomainBlockJobSetSpeed(e.dom.Dom, "vda", 1, 0); err != nil {
				t.Fatalf("throttling the merge: %v", err)
			}
			throttled = true
		}
		if throttled && cur > 0 {
			t.Logf("interrupting the merge at %d bytes", cur)
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the delete ended before it could be interrupted: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	time.Sleep(500 * time.Millisecond)
	cancel()
	err := <-done
	t.Logf("interrupted delete: %v", err)
	if err == nil {
		t.Fatal("the interrupted delete reported success")
	}

	_, err = e.revert(t, "s1", driver.RevertOptions{Force: true, Paused: true})
	switch {
	case err == nil:
		// Allowed only if the data is exactly s1's.
		got := testbed.ReadImage(t, e.dom.Chain(t, "vda")[0], 0, n)
		for i, b := range got {
			if b != 0xa1 {
				t.Errorf("the revert to the partly merged s1 gave the guest other data than s1's: byte %d is %02x, want a1", i, b)
				break
			}
		}
	case errors.Is(err, driver.ErrNotFound):
		// The next run finished the merge: s1 is gone.
	case !strings.Contains(err.Error(), "not whole"):
		t.Errorf("revert to the partly merged s1: %v, want a refusal saying its data is not whole", err)
	}
}
