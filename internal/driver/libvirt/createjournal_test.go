package libvirt

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/testbed"
)

// jenv is a throwaway domain seen through a driver, for tests that need the driver's
// internals (its journal records).
type jenv struct {
	d   *Driver
	bed *testbed.Bed
	dom *testbed.Domain
}

func newJEnv(t *testing.T, spec testbed.DomainSpec) *jenv {
	t.Helper()
	bed := testbed.Libvirt(t)
	d, err := Open(context.Background(), driver.Config{Host: "qemu:///system", Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	e := &jenv{d: d, bed: bed, dom: bed.NewDomain(t, spec)}
	t.Cleanup(func() {
		// A record a failed test leaves would only confuse a later run on a recycled UUID.
		_ = d.createStore().Delete(e.key())
		_ = d.createStore().Delete(revertKey(d.node, e.dom.Dom))
	})
	return e
}

func jctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func (e *jenv) guest() driver.Guest {
	return driver.Guest{Node: e.d.node, Name: e.dom.Name, UUID: e.dom.UUID}
}

func (e *jenv) key() string { return createKey(e.d.node, e.dom.Dom) }

func (e *jenv) hasRecord(t *testing.T) bool {
	t.Helper()
	var r createRecord
	ok, err := e.d.createStore().Get(e.key(), &r)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func (e *jenv) names(t *testing.T) []string {
	t.Helper()
	ss, err := e.d.Snapshots(jctx(t), e.guest())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range ss {
		out = append(out, s.Name)
	}
	sort.Strings(out)
	return out
}

func (e *jenv) files(t *testing.T) []string {
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
	return out
}

// putRecord writes the record a run that died during the create of snap would leave.
func (e *jenv) putRecord(t *testing.T, snap string, overlays map[string]string, mem string) {
	t.Helper()
	r := createRecord{Op: "create", Guest: e.dom.Name, UUID: e.dom.UUID, Snapshot: snap, Overlays: overlays,
		States: map[string]string{"vda": e.dom.Disks[0].Path}, Memory: mem, PID: 1 << 22, Started: time.Now()}
	if err := e.d.createStore().Put(e.key(), r); err != nil {
		t.Fatal(err)
	}
}

func jQemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v %s", args, err, out)
	}
}

// TestSettleCreate: what a create cut off at any point leaves is reconciled by the
// next create: strays go, a snapshot libvirt made stays, an overlay the guest uses is
// never deleted.
func TestSettleCreate(t *testing.T) {
	t.Run("Strays", func(t *testing.T) {
		t.Parallel()
		e := newJEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
		ov := overlayPath(e.dom.Name, "vda", e.dom.Disks[0].Path, "lost1")
		mem := memoryPath(e.dom.Name, e.dom.Disks[0].Path, "lost1")
		jQemuImg(t, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", e.dom.Disks[0].Path, ov)
		if err := os.WriteFile(mem, []byte("ram"), 0o600); err != nil {
			t.Fatal(err)
		}
		e.putRecord(t, "lost1", map[string]string{"vda": ov}, mem)
		if _, err := e.d.CreateSnapshot(jctx(t), e.guest(), driver.CreateOptions{Name: "s2"}); err != nil {
			t.Fatalf("create after an interrupted one: %v", err)
		}
		if jexists(ov) || jexists(mem) {
			t.Errorf("strays left: overlay %v, memory %v", jexists(ov), jexists(mem))
		}
		if e.hasRecord(t) {
			t.Errorf("the record is still there")
		}
		if got := e.names(t); fmt.Sprint(got) != "[s2]" {
			t.Errorf("snapshots = %v", got)
		}
	})
	t.Run("SnapshotExists", func(t *testing.T) {
		t.Parallel()
		e := newJEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
		s, err := e.d.CreateSnapshot(jctx(t), e.guest(), driver.CreateOptions{Name: "s1"})
		if err != nil {
			t.Fatal(err)
		}
		ov := s.Disks[0].File
		// As libvirt leaves it when autosnap dies right after the create call.
		if err := os.Chmod(ov, 0o644); err != nil {
			t.Fatal(err)
		}
		e.putRecord(t, "s1", map[string]string{"vda": ov}, "")
		if _, err := e.d.CreateSnapshot(jctx(t), e.guest(), driver.CreateOptions{Name: "s2"}); err != nil {
			t.Fatalf("create after an interrupted one: %v", err)
		}
		if got := e.names(t); fmt.Sprint(got) != "[s1 s2]" {
			t.Errorf("snapshots = %v, want the interrupted one kept", got)
		}
		if fi, err := os.Stat(ov); err != nil {
			t.Errorf("the kept snapshot's overlay: %v", err)
		} else if fi.Mode().Perm() != 0o600 {
			t.Errorf("the kept snapshot's overlay has mode %o, want 0600", fi.Mode().Perm())
		}
		if e.hasRecord(t) {
			t.Errorf("the record is still there")
		}
	})
	t.Run("OverlayInUse", func(t *testing.T) {
		t.Parallel()
		e := newJEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
		ov := overlayPath(e.dom.Name, "vda", e.dom.Disks[0].Path, "lost1")
		jQemuImg(t, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", e.dom.Disks[0].Path, ov)
		x := e.dom.XML(t)
		x.Devices.Disks[0].Source.File.File = ov
		out, err := x.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.bed.Conn.DomainDefineXML(out); err != nil {
			t.Fatal(err)
		}
		e.putRecord(t, "lost1", map[string]string{"vda": ov}, "")
		_, err = e.d.CreateSnapshot(jctx(t), e.guest(), driver.CreateOptions{Name: "s2"})
		t.Logf("create: %v", err)
		if err == nil || !strings.Contains(err.Error(), ov) || !strings.Contains(err.Error(), "nothing was deleted") {
			t.Errorf("create with an unrecorded overlay in use: %v, want an error naming %s", err, ov)
		}
		if !jexists(ov) || !e.hasRecord(t) {
			t.Errorf("overlay exists %v, record kept %v; want both", jexists(ov), e.hasRecord(t))
		}
		if c := e.dom.Chain(t, "vda"); len(c) != 2 || c[0] != ov {
			t.Errorf("chain = %v, want [%s base]", c, ov)
		}
		if got := e.names(t); len(got) != 0 {
			t.Errorf("snapshots = %v", got)
		}
	})
	t.Run("Abandoned", func(t *testing.T) {
		t.Parallel()
		// Running, not paused: QEMU 7.2 leaves a paused guest's disks read-only after a
		// memory snapshot, so taking the snapshot back would fail until it is resumed.
		e := newJEnv(t, testbed.DomainSpec{State: testbed.Running, DiskMiB: 8})
		files := e.files(t)
		// The create call is sent and then given up on at once; libvirt's answer comes
		// within the grace period: the snapshot it made is taken back.
		p, err := e.d.prepareSnapshot(jctx(t), e.guest(), driver.CreateOptions{Name: "s1", Memory: true})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		_, err = p.Create(ctx)
		cancel()
		p.Close()
		t.Logf("abandoned create: %v", err)
		if err == nil {
			t.Fatal("a create given up on after 5 ms succeeded")
		}
		if got := e.names(t); len(got) != 0 {
			t.Errorf("snapshots after a failed create: %v", got)
		}
		if got := e.files(t); fmt.Sprint(got) != fmt.Sprint(files) {
			t.Errorf("files after a failed create: %v, want %v", got, files)
		}
		if e.hasRecord(t) {
			t.Errorf("the record is still there though the outcome is known")
		}
	})
	t.Run("ReportedFailedButExists", func(t *testing.T) {
		t.Parallel()
		e := newJEnv(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
		// No grace at all: the create is reported failed while libvirt still makes it.
		p, err := e.d.prepareSnapshot(jctx(t), e.guest(), driver.CreateOptions{Name: "s1", Memory: true})
		if err != nil {
			t.Fatal(err)
		}
		e.d.timeout = time.Nanosecond
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		_, err = p.Create(ctx)
		cancel()
		p.Close()
		e.d.timeout = 20 * time.Second
		t.Logf("create given up on: %v", err)
		if err == nil || !e.hasRecord(t) {
			t.Fatalf("create: %v, record kept %v; want a failure and the record", err, e.hasRecord(t))
		}
		v, _ := pendingCreates.Load(e.key())
		select {
		case <-v.(chan struct{}):
		case <-time.After(time.Minute):
			t.Fatal("the create call never returned")
		}
		if _, err := e.d.CreateSnapshot(jctx(t), e.guest(), driver.CreateOptions{Name: "s2"}); err != nil {
			t.Fatalf("the next create: %v", err)
		}
		if got := e.names(t); fmt.Sprint(got) != "[s1 s2]" {
			t.Errorf("snapshots = %v, want the one reported failed kept", got)
		}
		if e.hasRecord(t) {
			t.Errorf("the record is still there")
		}
		want := []string{e.dom.Name + "-vda.s1.qcow2", e.dom.Name + "-vda.s2.qcow2", e.dom.Name + ".s1.mem", "vda.qcow2"}
		sort.Strings(want)
		if got := e.files(t); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("files = %v, want %v", got, want)
		}
	})
}

func jexists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
