package libvirt_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/libvirt"
	"github.com/autosnap/autosnap/internal/testbed"
)

// region is a byte range a test writes whole patterns into. Regions of one test never
// overlap; a region may be written several times.
type region struct{ off, n int64 }

// dataModel remembers every write of a test in order, and how many writes each
// snapshot saw, so that any point in time can be checked region by region.
type dataModel struct {
	writes []modelWrite
	marks  map[string]int // snapshot name → writes made before it
}

type modelWrite struct {
	r   region
	pat byte
}

// at returns each region's pattern after the first k writes (0: never written).
func (m *dataModel) at(k int) map[region]byte {
	out := map[region]byte{}
	for _, w := range m.writes {
		out[w.r] = 0
	}
	for _, w := range m.writes[:k] {
		out[w.r] = w.pat
	}
	return out
}

// mergeEnv is one throwaway domain, a driver with a private journal directory, and the
// data model of what the test wrote.
type mergeEnv struct {
	d        *libvirt.Driver
	bed      *testbed.Bed
	dom      *testbed.Domain
	stateDir string
	timeout  time.Duration
	active   bool
	m        dataModel
}

func newMergeEnv(t *testing.T, spec testbed.DomainSpec, timeout time.Duration) *mergeEnv {
	t.Helper()
	bed := testbed.Libvirt(t)
	e := &mergeEnv{bed: bed, stateDir: t.TempDir(), timeout: timeout, active: spec.State != testbed.Shutoff,
		m: dataModel{marks: map[string]int{}}}
	e.d = e.open(t)
	e.dom = bed.NewDomain(t, spec)
	return e
}

// open returns a new driver on the same journal directory, as the next run would.
func (e *mergeEnv) open(t *testing.T) *libvirt.Driver {
	t.Helper()
	d, err := libvirt.Open(context.Background(), driver.Config{Host: "qemu:///system", Timeout: e.timeout, StateDir: e.stateDir})
	if err != nil {
		t.Fatalf("open libvirt: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func (e *mergeEnv) guest() driver.Guest {
	st := driver.StateShutoff
	if e.active {
		st = driver.StateRunning
	}
	return driver.Guest{Node: e.d.Node(), Name: e.dom.Name, UUID: e.dom.UUID, State: st, Kind: driver.KindQEMU}
}

func mctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func (e *mergeEnv) write(t *testing.T, r region, pat byte) {
	t.Helper()
	if e.active {
		e.dom.WriteDisk(t, "vda", r.off, pat, int(r.n))
	} else {
		qemuIOWrite(t, e.dom.Chain(t, "vda")[0], r.off, pat, int(r.n))
	}
	e.m.writes = append(e.m.writes, modelWrite{r, pat})
}

func (e *mergeEnv) snap(t *testing.T, name string) {
	t.Helper()
	if _, err := e.d.CreateSnapshot(mctx(t), e.guest(), driver.CreateOptions{Name: name}); err != nil {
		t.Fatalf("snapshot %s: %v", name, err)
	}
	e.m.marks[name] = len(e.m.writes)
}

// checkImage compares every region the test ever wrote, whole, in the view of image
// against the model after k writes.
func (e *mergeEnv) checkImage(t *testing.T, what, image string, k int) {
	t.Helper()
	want := e.m.at(k)
	rs := make([]region, 0, len(want))
	for r := range want {
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].off < rs[j].off })
	for _, r := range rs {
		got := testbed.ReadImage(t, image, r.off, int(r.n))
		if exp := bytes.Repeat([]byte{want[r]}, int(r.n)); !bytes.Equal(got, exp) {
			i := 0
			for i < len(got) && got[i] == want[r] {
				i++
			}
			t.Errorf("%s (%s): region %d+%d: byte %d is %02x, want %02x throughout", what, image, r.off, r.n, i, got[i], want[r])
		}
	}
}

// checkAll checks the active view and the view of every snapshot that remains and is
// whole (a partly merged one is not, and says so).
func (e *mergeEnv) checkAll(t *testing.T, what string) {
	t.Helper()
	e.checkImage(t, what+": active view", e.dom.Chain(t, "vda")[0], len(e.m.writes))
	snaps, err := e.d.Snapshots(mctx(t), e.guest())
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	for _, s := range snaps {
		if s.Incomplete != "" {
			continue
		}
		k, ok := e.m.marks[s.Name]
		if !ok {
			t.Fatalf("%s: unknown snapshot %s", what, s.Name)
		}
		e.checkImage(t, what+": snapshot "+s.Name, e.stateOf(t, s.Name), k)
	}
}

// stateOf returns the image that holds snapshot snap's vda as its metadata says.
func (e *mergeEnv) stateOf(t *testing.T, snap string) string {
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
		if dk.Target != nil && dk.Target.Dev == "vda" {
			return dk.Source.File.File
		}
	}
	t.Fatalf("snapshot %s records no vda", snap)
	return ""
}

// incomplete returns the snapshots and their Incomplete reasons (empty: whole).
// incomplete returns every snapshot's Incomplete; a listing in a driver.ListingScope
// (status's, which reads the journal directory once) must say the same.
func (e *mergeEnv) incomplete(t *testing.T) map[string]string {
	t.Helper()
	read := func(ctx context.Context) map[string]string {
		snaps, err := e.d.Snapshots(ctx, e.guest())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, s := range snaps {
			out[s.Name] = s.Incomplete
		}
		return out
	}
	out := read(mctx(t))
	if scoped := read(driver.WithListingScope(mctx(t))); !maps.Equal(out, scoped) {
		t.Errorf("a listing scope reads incomplete snapshots %v, outside one %v", scoped, out)
	}
	return out
}

func (e *mergeEnv) names(t *testing.T) []string {
	t.Helper()
	var out []string
	for n := range e.incomplete(t) {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// killed is what a point hook panics with to stop a merge as SIGKILL would.
type killed struct{ point string }

// killAt makes the nth arrival at point on e's guest stop the merge.
func (e *mergeEnv) killAt(t *testing.T, at string, nth int) {
	var mu sync.Mutex
	n := 0
	libvirt.SetPointHook(t, e.dom.UUID, func(p string) {
		if p != at {
			return
		}
		mu.Lock()
		n++
		hit := n == nth
		mu.Unlock()
		if hit {
			panic(killed{p})
		}
	})
}

// runKilled runs f and reports the point where a hook stopped it ("" if none).
func runKilled(f func() error) (at string, err error) {
	defer func() {
		if r := recover(); r != nil {
			k, ok := r.(killed)
			if !ok {
				panic(r)
			}
			at = k.point
		}
	}()
	return "", f()
}

const mib = 1 << 20

// TestMergeKilledAtEveryPoint stops a live delete at each crash point of the merge, as
// SIGKILL would (no abort, no cleanup; libvirt carries on with a started block job),
// and checks that the deleted snapshot is reported partly merged once its data was
// touched, that running the delete again finishes it (adopting a block job still
// running, pivoting an active commit left ready), that every kept snapshot and the
// active view keep their data, and that the next snap round does not grow the chain.
func TestMergeKilledAtEveryPoint(t *testing.T) {
	type tc struct {
		point   string
		newest  bool // delete the newest snapshot (active commit) instead of the oldest
		touched bool // the deleted snapshot's data changed before the kill
	}
	cases := []tc{
		{crash.MergeJournaled, false, false},
		{crash.MergeCommitStarted, false, true},
		{crash.MergeStepDone, false, true},
		{crash.MergeBeforeMetadata, false, true},
		{crash.MergeBeforeForget, false, true},
		{crash.MergeCommitStarted, true, true},
		{crash.MergeCommitReady, true, true},
		{crash.MergeStepDone, true, true},
	}
	for _, c := range cases {
		which := "oldest"
		if c.newest {
			which = "newest"
		}
		t.Run(which+"/"+c.point, func(t *testing.T) {
			e := newMergeEnv(t, testbed.DomainSpec{DiskMiB: 32}, 10*time.Second)
			g := e.guest()
			e.write(t, region{0, mib}, 0x01)
			e.snap(t, "a")
			e.write(t, region{mib, 2 * mib}, 0x02)
			e.write(t, region{0, mib}, 0x03)
			e.snap(t, "b")
			e.write(t, region{4 * mib, mib}, 0x04)
			e.write(t, region{mib, 2 * mib}, 0x05)
			del, keep := "a", "b"
			if c.newest {
				del, keep = "b", "a"
			}
			e.killAt(t, c.point, 1)
			at, err := runKilled(func() error { return e.d.DeleteSnapshot(mctx(t), g, del) })
			if at != c.point {
				t.Fatalf("the delete did not reach %s (err %v)", c.point, err)
			}
			libvirt.SetPointHook(t, e.dom.UUID, func(string) {})
			inc := e.incomplete(t)
			if _, ok := inc[del]; !ok {
				t.Fatalf("snapshot %s vanished with the kill: %v", del, inc)
			}
			if got := inc[del] != ""; got != c.touched {
				t.Errorf("Incomplete of %s = %q; want partly merged: %v", del, inc[del], c.touched)
			} else if c.touched && !strings.Contains(inc[del], "partly merged") {
				t.Errorf("Incomplete of %s = %q does not say it is partly merged", del, inc[del])
			}
			if inc[keep] != "" {
				t.Errorf("kept snapshot %s reported incomplete: %q", keep, inc[keep])
			}

			// The next run, with a fresh driver: the same delete finishes.
			e.d = e.open(t)
			if err := e.d.DeleteSnapshot(mctx(t), g, del); err != nil {
				t.Fatalf("running the delete again: %v", err)
			}
			if n := e.names(t); len(n) != 1 || n[0] != keep {
				t.Fatalf("snapshots after finishing: %v, want [%s]", n, keep)
			}
			if ch := e.dom.Chain(t, "vda"); len(ch) != 2 {
				t.Errorf("chain after finishing: %v", ch)
			}
			e.checkAll(t, "after finishing")

			// Two snap --keep 1 rounds: the chain stays two images long.
			for i, name := range []string{"c", "d"} {
				e.snap(t, name)
				e.write(t, region{int64(8+i) * mib, mib}, byte(0x10+i))
				if err := e.d.DeleteSnapshot(mctx(t), g, keep); err != nil {
					t.Fatalf("round %s: deleting %s: %v", name, keep, err)
				}
				keep = name
				if ch := e.dom.Chain(t, "vda"); len(ch) != 2 {
					t.Errorf("round %s: chain %v", name, ch)
				}
			}
			e.checkAll(t, "after two rounds")
			if files, err := os.ReadDir(e.stateDir + "/journal"); err != nil || len(files) != 0 {
				t.Errorf("journal records left: %v %v", files, err)
			}
		})
	}
}

// throttle limits every block commit the driver starts on e's vda to bytesPerSec, as
// soon as the start returned (before it copied much).
func (e *mergeEnv) throttle(t *testing.T, bytesPerSec uint64) {
	libvirt.SetPointHook(t, e.dom.UUID, func(p string) {
		if p != crash.MergeCommitStarted {
			return
		}
		if err := e.bed.Conn.DomainBlockJobSetSpeed(e.dom.Dom, "vda", bytesPerSec, golibvirt.DomainBlockJobSpeedBandwidthBytes); err != nil {
			t.Errorf("setting the block job's speed: %v", err)
		}
	})
}

// TestMergeInterruptedIsIncomplete is reproduction 1: a live merge really in progress
// (throttled to 1 MiB/s) is interrupted. The snapshot being deleted must be reported
// partly merged (status, info and revert read Snapshot.Incomplete), the kept ones not;
// the next delete finishes it and every kept view and the active view are whole.
func TestMergeInterruptedIsIncomplete(t *testing.T) {
	e := newMergeEnv(t, testbed.DomainSpec{DiskMiB: 64}, 10*time.Second)
	g := e.guest()
	e.write(t, region{0, mib}, 0x01)
	e.snap(t, "a")
	e.write(t, region{mib, mib}, 0x02)
	e.snap(t, "b")
	// What the merge of b copies: large enough that the throttle set right after the
	// job started always catches it in progress on a loaded machine.
	e.write(t, region{2 * mib, 40 * mib}, 0x03)
	e.write(t, region{mib, mib}, 0x04)
	e.snap(t, "c")
	e.write(t, region{48 * mib, mib}, 0x05)
	e.write(t, region{2 * mib, 40 * mib}, 0x06)

	ctx, cancel := context.WithCancel(mctx(t))
	defer cancel()
	e.throttle(t, mib)
	var progressed uint64
	start := time.Now()
	err := e.d.DeleteSnapshotTree(ctx, g, "b", driver.DeleteOptions{Progress: func(disk string, done, total uint64) {
		if done > 0 && progressed == 0 {
			progressed = done
			cancel() // SIGTERM half-way
		}
	}})
	t.Logf("interrupted after %s at %d bytes: %v", time.Since(start).Round(time.Millisecond), progressed, err)
	if err == nil {
		t.Fatal("the throttled merge was not interrupted")
	}
	if !strings.Contains(err.Error(), "partly merged") || !strings.Contains(err.Error(), "b") {
		t.Errorf("the error does not name b as partly merged: %v", err)
	}
	inc := e.incomplete(t)
	if !strings.Contains(inc["b"], "partly merged") {
		t.Errorf("Incomplete of b = %q, want partly merged", inc["b"])
	}
	if inc["a"] != "" || inc["c"] != "" {
		t.Errorf("kept snapshots reported incomplete: %v", inc)
	}
	e.checkImage(t, "active view after the interruption", e.dom.Chain(t, "vda")[0], len(e.m.writes))

	libvirt.SetPointHook(t, e.dom.UUID, func(string) {})
	if err := e.d.DeleteSnapshot(mctx(t), g, "b"); err != nil {
		t.Fatalf("running the delete again: %v", err)
	}
	if n := e.names(t); strings.Join(n, ",") != "a,c" {
		t.Fatalf("snapshots: %v", n)
	}
	e.checkAll(t, "after finishing")
	if inc := e.incomplete(t); inc["a"] != "" || inc["c"] != "" {
		t.Errorf("incomplete after finishing: %v", inc)
	}
}

// TestMergeCancelledAtCompletion cancels a live delete (SIGTERM, or --timeout racing
// the job's end) after libvirt finished its block job but before the driver noticed:
// the next thing the driver sees is its own cancelled ctx, and the abort it sends
// finds no job. A job that finished is a success: the delete must complete its
// bookkeeping and report success, and the next delete must not be blocked by a
// snapshot naming a merged file. Four rounds, each deleting the older of two.
func TestMergeCancelledAtCompletion(t *testing.T) {
	e := newMergeEnv(t, testbed.DomainSpec{DiskMiB: 32}, 10*time.Second)
	g := e.guest()
	e.snap(t, "s0")
	for i := 1; i <= 4; i++ {
		e.write(t, region{int64(i) * 2 * mib, 2 * mib}, byte(i))
		e.snap(t, fmt.Sprintf("s%d", i))
		ctx, cancel := context.WithCancel(mctx(t))
		libvirt.SetPointHook(t, e.dom.UUID, func(p string) {
			if p != crash.MergeCommitStarted {
				return
			}
			for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				if found, _, _, _, _, err := e.bed.Conn.DomainGetBlockJobInfo(e.dom.Dom, "vda", 0); err == nil && found == 0 {
					break
				}
			}
			cancel()
		})
		err := e.d.DeleteSnapshot(ctx, g, fmt.Sprintf("s%d", i-1))
		cancel()
		if err != nil {
			t.Errorf("round %d: a merge that libvirt finished was reported failed: %v", i, err)
		}
		if inc := e.incomplete(t); len(inc) != 1 || inc[fmt.Sprintf("s%d", i)] != "" {
			t.Errorf("round %d: snapshots %v", i, inc)
		}
	}
	libvirt.SetPointHook(t, e.dom.UUID, func(string) {})
	e.checkAll(t, "after four rounds")
	if err := e.d.DeleteSnapshot(mctx(t), g, "s4"); err != nil {
		t.Fatalf("final delete: %v", err)
	}
	if n := e.names(t); len(n) != 0 {
		t.Errorf("snapshots left: %v", n)
	}
	if ch := e.dom.Chain(t, "vda"); len(ch) != 1 {
		t.Errorf("chain: %v", ch)
	}
	e.checkAll(t, "at the end")
}

// TestMergeStallTimeout: with a 2 s timeout, a merge that keeps progressing for longer
// completes, and one throttled to no progress is aborted about 2 s after it stalled,
// leaving a valid chain that the next delete merges.
func TestMergeStallTimeout(t *testing.T) {
	const timeout = 2 * time.Second
	e := newMergeEnv(t, testbed.DomainSpec{DiskMiB: 128}, timeout)
	if sb, ok := driver.Driver(e.d).(driver.StallBounded); !ok || !sb.StallBounded() {
		t.Error("the libvirt driver does not declare its merges stall-bounded")
	}
	g := e.guest()
	// Each merge copies 40 MiB: what the job copies before the throttle set right after
	// its start lands (a few MiB on a loaded machine) leaves seconds of work.
	e.snap(t, "a")
	e.write(t, region{0, 40 * mib}, 0x01)
	e.snap(t, "b")
	e.write(t, region{48 * mib, 40 * mib}, 0x02)
	e.snap(t, "c")
	e.write(t, region{96 * mib, mib}, 0x03)

	// The engine passes no deadline to a stall-bounded driver; this one only keeps a
	// broken test from hanging.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	e.throttle(t, 5*mib)
	start := time.Now()
	err := e.d.DeleteSnapshotTree(ctx, g, "a", driver.DeleteOptions{}) // 40 MiB at 5 MiB/s
	took := time.Since(start)
	t.Logf("progressing merge: %s, %v", took.Round(time.Millisecond), err)
	if err != nil {
		t.Fatalf("a merge that kept progressing for %s failed (timeout %s): %v", took, timeout, err)
	}
	if took < timeout+time.Second {
		t.Errorf("the throttled merge took only %s; it did not outlast the timeout", took)
	}
	e.checkAll(t, "after the progressing merge")

	start = time.Now()
	e.throttle(t, 1)
	err = e.d.DeleteSnapshotTree(ctx, g, "b", driver.DeleteOptions{}) // stalls after one chunk
	took = time.Since(start)
	t.Logf("stalled merge: %s, %v", took.Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("a merge that made no progress succeeded")
	}
	if !strings.Contains(err.Error(), "no progress") {
		t.Errorf("the error does not say the merge stalled: %v", err)
	}
	if took < timeout || took > timeout+12*time.Second {
		t.Errorf("the stalled merge was given up after %s; want about %s", took, timeout)
	}
	if inc := e.incomplete(t); !strings.Contains(inc["b"], "partly merged") || inc["c"] != "" {
		t.Errorf("after the stall: %v", inc)
	}
	e.checkImage(t, "active view after the stall", e.dom.Chain(t, "vda")[0], len(e.m.writes))
	libvirt.SetPointHook(t, e.dom.UUID, func(string) {})
	if err := e.d.DeleteSnapshot(ctx, g, "b"); err != nil {
		t.Fatalf("running the delete again: %v", err)
	}
	if n := e.names(t); strings.Join(n, ",") != "c" {
		t.Errorf("snapshots: %v", n)
	}
	e.checkAll(t, "after finishing")
}

// TestDryRunPrepareRepairsNothing: preparing a snapshot for a dry run
// (CreateOptions.DryRun) must change nothing — not even finish a merge an interrupted
// run left (the real run does that first) — and its prepared snapshot cannot be
// taken. A real prepare then finishes the merge.
func TestDryRunPrepareRepairsNothing(t *testing.T) {
	e := newMergeEnv(t, testbed.DomainSpec{DiskMiB: 16}, 10*time.Second)
	g := e.guest()
	e.write(t, region{0, mib}, 0x01)
	e.snap(t, "a")
	e.write(t, region{0, mib}, 0x02)
	e.snap(t, "b")
	e.killAt(t, crash.MergeStepDone, 1)
	if at, err := runKilled(func() error { return e.d.DeleteSnapshot(mctx(t), g, "a") }); at != crash.MergeStepDone {
		t.Fatalf("the delete did not reach %s (err %v)", crash.MergeStepDone, err)
	}
	libvirt.SetPointHook(t, e.dom.UUID, func(string) {})
	before := e.incomplete(t)
	if before["a"] == "" {
		t.Fatalf("snapshot a is not reported partly merged after the kill: %v", before)
	}
	sp := driver.SnapshotPreparer(e.d)
	p, err := sp.PrepareSnapshot(mctx(t), g, driver.CreateOptions{Name: "c", DryRun: true})
	if err != nil {
		t.Fatalf("dry-run prepare: %v", err)
	}
	if _, err := p.Create(mctx(t)); err == nil {
		t.Error("a snapshot prepared for a dry run was taken")
	}
	p.Close()
	if got := e.incomplete(t); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Errorf("the dry run changed the interrupted merge: incomplete %v, was %v", got, before)
	}
	if got := e.names(t); fmt.Sprint(got) != "[a b]" {
		t.Errorf("after the dry run the snapshots are %v, want [a b]", got)
	}
	p, err = sp.PrepareSnapshot(mctx(t), g, driver.CreateOptions{Name: "c"})
	if err != nil {
		t.Fatalf("real prepare: %v", err)
	}
	p.Close()
	if got := e.names(t); fmt.Sprint(got) != "[b]" {
		t.Errorf("the real prepare did not finish the interrupted delete: snapshots %v, want [b]", got)
	}
}
