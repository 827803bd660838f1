package libvirt_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/testbed"
)

// newCustomEnv makes a shut-off throwaway domain, lets change edit its definition,
// and brings it to state.
func newCustomEnv(t *testing.T, spec testbed.DomainSpec, state testbed.State, change func(x *libvirtxml.Domain)) *revertEnv {
	t.Helper()
	spec.State = testbed.Shutoff
	e := newRevertEnv(t, spec)
	if change != nil {
		x := e.dom.XML(t)
		change(x)
		out, err := x.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.bed.Conn.DomainDefineXML(out); err != nil {
			t.Fatalf("redefining %s: %v", e.dom.Name, err)
		}
	}
	if state != testbed.Shutoff {
		var flags uint32
		if state == testbed.Paused {
			flags = uint32(golibvirt.DomainStartPaused)
		}
		if _, err := e.bed.Conn.DomainCreateWithFlags(e.dom.Dom, flags); err != nil {
			t.Fatalf("starting %s: %v", e.dom.Name, err)
		}
	}
	return e
}

// dirFiles lists the file names in the domain's directory, sorted.
func (e *revertEnv) dirFiles(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(e.dom.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, en := range entries {
		if en.Name() != "console.log" {
			out = append(out, en.Name())
		}
	}
	sort.Strings(out)
	return out
}

func (e *revertEnv) snapshotNames(t *testing.T) []string {
	t.Helper()
	ss, err := e.d.Snapshots(rctx(t), e.guest(t))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range ss {
		out = append(out, s.Name)
	}
	return out
}

// TestCreateHonoursSnapshotNo: a disk marked snapshot='no' in the domain definition
// gets no overlay and is recorded as such, for a running and a shut-off guest.
func TestCreateHonoursSnapshotNo(t *testing.T) {
	for _, st := range []testbed.State{testbed.Shutoff, testbed.Running} {
		t.Run(st.String(), func(t *testing.T) {
			t.Parallel()
			e := newCustomEnv(t, testbed.DomainSpec{Disks: 2, DiskMiB: 8}, st, func(x *libvirtxml.Domain) {
				x.Devices.Disks[1].Snapshot = "no"
			})
			vdb := e.dom.Disks[1].Path
			s, err := e.d.CreateSnapshot(rctx(t), e.guest(t), driver.CreateOptions{Name: "s1"})
			if err != nil {
				t.Fatalf("snapshot: %v", err)
			}
			if c := e.dom.Chain(t, "vdb"); len(c) != 1 || c[0] != vdb {
				t.Errorf("vdb (snapshot='no') chain = %v, want just %s", c, vdb)
			}
			if c := e.dom.Chain(t, "vda"); len(c) != 2 {
				t.Errorf("vda chain = %v, want an overlay on the image", c)
			}
			ss, err := e.d.Snapshots(rctx(t), e.guest(t))
			if err != nil || len(ss) != 1 {
				t.Fatalf("snapshots: %+v %v", ss, err)
			}
			for _, got := range []driver.Snapshot{s, ss[0]} {
				kinds := map[string]string{}
				for _, dk := range got.Disks {
					kinds[dk.Name] = dk.Snapshot
				}
				if kinds["vda"] != "external" || kinds["vdb"] != "no" {
					t.Errorf("snapshot disks = %+v, want vda external, vdb no", got.Disks)
				}
			}
			if files, _ := filepath.Glob(filepath.Join(e.dom.Dir, "*-vdb.*")); len(files) > 0 {
				t.Errorf("files made for vdb: %v", files)
			}
			// Deleting the snapshot merges vda only and leaves vdb alone.
			if err := e.d.DeleteSnapshot(rctx(t), e.guest(t), "s1"); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if c := e.dom.Chain(t, "vda"); len(c) != 1 {
				t.Errorf("vda chain after delete = %v", c)
			}
		})
	}
}

// TestCreateCommaName: a shut-off guest whose name has a comma boots after a
// snapshot (libvirt doubles commas in the overlay file names it creates offline) and
// keeps its data.
func TestCreateCommaName(t *testing.T) {
	e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	name := e.dom.Name + ",x"
	if _, err := e.bed.Conn.DomainRename(e.dom.Dom, golibvirt.OptString{name}, 0); err != nil {
		t.Fatalf("rename: %v", err)
	}
	e.write(t, "vda", 0, 0x5a, 64<<10)
	if _, err := e.d.CreateSnapshot(rctx(t), e.guest(t), driver.CreateOptions{Name: "s1"}); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	chain := e.dom.Chain(t, "vda")
	if len(chain) != 2 || strings.Contains(filepath.Base(chain[0]), ",") || !exists(chain[0]) {
		t.Errorf("chain after the snapshot = %v, want an existing overlay without a comma in its name", chain)
	}
	if m := mode(t, chain[0]); m != 0o600 {
		t.Errorf("overlay mode %o", m)
	}
	e.write(t, "vda", 64<<10, 0x6b, 64<<10)
	if out, err := exec.Command("virsh", "start", name).CombinedOutput(); err != nil {
		t.Fatalf("virsh start %q after the snapshot: %v\n%s", name, err, out)
	}
	e.expect(t, "vda", 0, 0x5a, 64<<10)
	e.expect(t, "vda", 64<<10, 0x6b, 64<<10)
	if got := e.dirFiles(t); len(got) != 2 {
		t.Errorf("files beside the disk: %v, want the image and one overlay", got)
	}
}

// TestCreateVerifiesOverlays: an overlay libvirt did not create where the snapshot
// records it (a comma in a file name the caller chose, offline) is found, the
// snapshot is undone and the error says why.
func TestCreateVerifiesOverlays(t *testing.T) {
	e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	e.write(t, "vda", 0, 0x5a, 64<<10)
	sum := testbed.ImageSum(t, e.dom.Disks[0].Path)
	want := filepath.Join(e.dom.Dir, "a,b.qcow2")
	_, err := e.d.CreateSnapshot(rctx(t), e.guest(t), driver.CreateOptions{Name: "s1",
		Disks: []driver.DiskSpec{{Name: "vda", File: want}}})
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("snapshot onto a file libvirt mangles: %v, want an error naming %s", err, want)
	}
	t.Logf("error: %v", err)
	if got := e.snapshotNames(t); len(got) != 0 {
		t.Errorf("snapshots left: %v", got)
	}
	if c := e.dom.Chain(t, "vda"); len(c) != 1 || c[0] != e.dom.Disks[0].Path {
		t.Errorf("chain after the failed snapshot = %v, want the image alone", c)
	}
	if got := e.dirFiles(t); len(got) != 1 {
		t.Errorf("files left: %v", got)
	}
	if testbed.ImageSum(t, e.dom.Disks[0].Path) != sum {
		t.Errorf("the image changed")
	}
	if out, err := exec.Command("virsh", "start", e.guest(t).Name).CombinedOutput(); err != nil {
		t.Errorf("the guest does not start after the undone snapshot: %v\n%s", err, out)
	}
}

// TestCreateNameExists: a name that exists, an overlay file or a memory file that
// exists fail with driver.ErrExists before anything changes.
func TestCreateNameExists(t *testing.T) {
	e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	e.snap(t, "s1", false, false)
	chain := e.dom.Chain(t, "vda")
	files := e.dirFiles(t)
	check := func(what string, err error, words string) {
		t.Helper()
		t.Logf("%s: %v", what, err)
		if !errors.Is(err, driver.ErrExists) || !strings.Contains(err.Error(), words) {
			t.Errorf("%s: %v, want driver.ErrExists saying %q", what, err, words)
		}
		if got := e.dom.Chain(t, "vda"); fmt.Sprint(got) != fmt.Sprint(chain) {
			t.Errorf("%s: chain changed: %v → %v", what, chain, got)
		}
		if got := e.dirFiles(t); fmt.Sprint(got) != fmt.Sprint(files) {
			t.Errorf("%s: files changed: %v → %v", what, files, got)
		}
		if got := e.snapshotNames(t); fmt.Sprint(got) != "[s1]" {
			t.Errorf("%s: snapshots: %v", what, got)
		}
		if e.state(t) != driver.StatePaused {
			t.Errorf("%s: guest is %s", what, e.state(t))
		}
	}
	_, err := e.d.CreateSnapshot(rctx(t), e.guest(t), driver.CreateOptions{Name: "s1"})
	check("same name", err, `snapshot named "s1" already exists`)

	// A file in the way: an overlay the caller names, one autosnap would choose, the
	// memory file.
	blocker := filepath.Join(e.dom.Dir, "blocker")
	if err := os.WriteFile(blocker, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	files = e.dirFiles(t)
	_, err = e.d.CreateSnapshot(rctx(t), e.guest(t), driver.CreateOptions{Name: "s2", Disks: []driver.DiskSpec{{Name: "vda", File: blocker}}})
	check("overlay file exists", err, blocker)
	_, err = e.d.CreateSnapshot(rctx(t), e.guest(t), driver.CreateOptions{Name: "s2", MemoryFile: blocker})
	check("memory file exists", err, blocker)
	if b, _ := os.ReadFile(blocker); string(b) != "precious" {
		t.Errorf("the file in the way was changed: %.40q", b)
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	// The overlay and memory file autosnap would choose for a snapshot "s3".
	for _, path := range []string{
		filepath.Join(e.dom.Dir, e.dom.Name+"-vda.s3.qcow2"),
		filepath.Join(e.dom.Dir, e.dom.Name+".s3.mem"),
	} {
		if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		files = e.dirFiles(t)
		_, err = e.d.CreateSnapshot(rctx(t), e.guest(t), driver.CreateOptions{Name: "s3", Memory: strings.HasSuffix(path, ".mem")})
		check("file exists: "+filepath.Base(path), err, path)
		if b, _ := os.ReadFile(path); string(b) != "precious" {
			t.Errorf("the file in the way was changed: %.40q", b)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCreateTransientNote: a snapshot of a transient domain tells the user that the
// XML it was started from still names the old images.
func TestCreateTransientNote(t *testing.T) {
	e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	if err := e.bed.Conn.DomainUndefine(e.dom.Dom); err != nil {
		t.Fatalf("making the domain transient: %v", err)
	}
	for _, name := range []string{"s1", "s2"} {
		s, err := e.d.CreateSnapshot(rctx(t), e.guest(t), driver.CreateOptions{Name: name})
		if err != nil {
			t.Fatalf("snapshot %s of a transient domain: %v", name, err)
		}
		// The XML the guest was started from names the image it started with, even
		// once the chain is longer.
		all := strings.Join(s.Notes, "\n")
		if !strings.Contains(all, "transient") || !strings.Contains(all, "names "+e.dom.Disks[0].Path+",") {
			t.Errorf("%s: notes = %q, want a warning that the original XML names %s", name, s.Notes, e.dom.Disks[0].Path)
		}
	}
	// A persistent guest gets no such note.
	p := newRevertEnv(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	s, err := p.d.CreateSnapshot(rctx(t), p.guest(t), driver.CreateOptions{Name: "s1"})
	if err != nil || len(s.Notes) != 0 {
		t.Errorf("persistent guest: notes %q, err %v", s.Notes, err)
	}
}

// TestPrepareSnapshot: PrepareSnapshot checks everything and holds the guest; Create
// takes the snapshot and releases it; Close without Create leaves nothing behind.
func TestPrepareSnapshot(t *testing.T) {
	e := newRevertEnv(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	sp, ok := any(e.d).(driver.SnapshotPreparer)
	if !ok {
		t.Fatal("the libvirt driver does not implement driver.SnapshotPreparer")
	}
	g := e.guest(t)
	files := e.dirFiles(t)
	p, err := sp.PrepareSnapshot(rctx(t), g, driver.CreateOptions{Name: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	p.Close() // idempotent
	if got := e.snapshotNames(t); len(got) != 0 {
		t.Errorf("Close without Create left snapshots %v", got)
	}
	if got := e.dirFiles(t); fmt.Sprint(got) != fmt.Sprint(files) {
		t.Errorf("Close without Create left files: %v", got)
	}

	p, err = sp.PrepareSnapshot(rctx(t), g, driver.CreateOptions{Name: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	// The guest is held: a delete of the same guest waits for Close.
	done := make(chan error, 1)
	go func() {
		_, err := e.d.CreateSnapshot(rctx(t), g, driver.CreateOptions{Name: "s2"})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a second create ran while the first was prepared: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	s, err := p.Create(rctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "s1" || !s.Current {
		t.Errorf("created %+v", s)
	}
	// Create releases the guest itself; Close afterwards does nothing.
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("second create after the first: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Create did not release the guest")
	}
	p.Close()
	if got := e.snapshotNames(t); fmt.Sprint(got) != "[s1 s2]" {
		t.Errorf("snapshots = %v", got)
	}

	// Every check runs in PrepareSnapshot.
	if _, err := sp.PrepareSnapshot(rctx(t), g, driver.CreateOptions{Name: "s1"}); !errors.Is(err, driver.ErrExists) {
		t.Errorf("prepare with a name that exists: %v", err)
	}
	if _, err := sp.PrepareSnapshot(rctx(t), g, driver.CreateOptions{Name: "s3", Disks: []driver.DiskSpec{{Name: "vdz"}}}); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("prepare with a disk that does not exist: %v", err)
	}
	// A prepared snapshot whose context ended is not taken.
	ctx, cancel := context.WithCancel(context.Background())
	p, err = sp.PrepareSnapshot(ctx, g, driver.CreateOptions{Name: "s3"})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := p.Create(ctx); err == nil {
		t.Errorf("Create with an ended context succeeded")
	}
	p.Close()
	if got := e.snapshotNames(t); fmt.Sprint(got) != "[s1 s2]" {
		t.Errorf("snapshots after a cancelled create = %v", got)
	}
	if bytes.Contains([]byte(strings.Join(e.dirFiles(t), " ")), []byte(".s3.")) {
		t.Errorf("files of the cancelled create: %v", e.dirFiles(t))
	}
}
