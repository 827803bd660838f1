//go:build crashtest

package crashtest

// Checks of the harness itself: a point that is never reached fails the scenario, the
// data and metadata checks catch what they claim to catch, and every flow of the
// matrix passes every check when nothing interrupts it.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestHarnessPointNotReached: a scenario whose point is not placed in the code fails
// with "not reached" instead of passing; the shipped binary ignores crash points.
func TestHarnessPointNotReached(t *testing.T) {
	t.Parallel()
	sc := scenario{name: "unplaced", point: "crashtest.unplaced", how: killAtPoint,
		spec: testbed.DomainSpec{Disks: 1, State: testbed.Paused}, bigMiB: 4, prior: 1,
		cmd:    func(e *env) []string { return e.snapArgs(2) },
		expect: keepNewest(2)}
	problems := runScenario(t, sc)
	if len(problems) != 1 || !strings.Contains(problems[0], "point crashtest.unplaced not reached") {
		t.Fatalf("a scenario whose point is never reached reported %q, want one \"point crashtest.unplaced not reached\"", problems)
	}
	t.Logf("reported as: %s", problems[0])

	// The next runs use the shipped binary: its crash points are compiled out.
	e := newEnv(t, testbed.DomainSpec{Disks: 1, State: testbed.Paused}, nil, 4)
	flag := filepath.Join(e.scratch, "flag")
	cmd := exec.Command(shippedBin, e.snapArgs(2)...)
	cmd.Env = append(baseEnv(e.stateDir), "AUTOSNAP_CRASH_AT="+crash.CreateDone, "AUTOSNAP_CRASH_FILE="+flag)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the shipped binary with AUTOSNAP_CRASH_AT set: %v\n%s", err, out)
	}
	if _, err := os.Stat(flag); err == nil {
		t.Fatalf("the shipped binary stopped at %s: it was built with crash points", crash.CreateDone)
	}
}

// TestHarnessDetectsCorruption: checkView finds one wrong byte anywhere in a region,
// at a region's last byte, in the never-written region, and a view one generation
// off.
func TestHarnessDetectsCorruption(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
	regions := layout(8)
	for _, r := range regions {
		if err := writeOffline(base, r, pattern(1, 0)); err != nil {
			t.Fatal(err)
		}
	}
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	for _, r := range regions {
		if err := writeOffline(top, r, pattern(2, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if p := checkView(dir, top, regions, pattern(2, 0)); len(p) > 0 {
		t.Fatalf("a whole view reported %q", p)
	}
	if p := checkView(dir, base, regions, pattern(1, 0)); len(p) > 0 {
		t.Fatalf("the base's view (through no chain) reported %q", p)
	}
	if p := checkView(dir, top, regions, pattern(1, 0)); len(p) != len(regions) {
		t.Fatalf("a view one generation off reported %q, want every region", p)
	}

	big := regions[len(regions)-1]
	for _, c := range []struct {
		name string
		off  int64
		r    region
	}{
		{"inside the big region", big.off + big.n/2 + 3, big},
		{"last byte of an unaligned region", regions[1].off + regions[1].n - 1, regions[1]},
		{"in the never-written region", zeroRegion.off + 4097, zeroRegion},
	} {
		if err := writeOffline(top, region{c.off, 1}, 0x5a); err != nil {
			t.Fatal(err)
		}
		p := checkView(dir, top, regions, pattern(2, 0))
		want := fmt.Sprintf("region %s: 1 bytes differ, first at %d (0x5a, want ", c.r, c.off)
		if len(p) != 1 || !strings.HasPrefix(p[0], want) {
			t.Errorf("%s: one corrupted byte at %d reported %q, want %q…", c.name, c.off, p, want)
		} else {
			t.Logf("%s: %s", c.name, p[0])
		}
		// Put the byte back for the next case.
		back := pattern(2, 0)
		if c.r == zeroRegion {
			back = 0
		}
		if err := writeOffline(top, region{c.off, 1}, back); err != nil {
			t.Fatal(err)
		}
	}
}

func mustTool(t *testing.T, name string, args ...string) {
	t.Helper()
	if _, err := runTool(name, args...); err != nil {
		t.Fatal(err)
	}
}

// TestHarnessDetectsMetadataMismatch: verify passes on a guest autosnap left whole,
// and reports a stray overlay, a snapshot that should be gone, a missing one, a file a
// snapshot names that is gone, and data of the wrong generation.
func TestHarnessDetectsMetadataMismatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testbed.DomainSpec{Disks: 2, State: testbed.Paused}, nil, 4)
	for range 2 {
		e.write()
		e.takeSnapshot()
	}
	e.write()
	want := keepNewest(2)(e)
	if p := e.verify(want, ""); len(p) > 0 {
		t.Fatalf("verify on a whole guest reported:\n%s", strings.Join(p, "\n"))
	}
	expectOne := func(what, substr string, w expectation) {
		t.Helper()
		p := e.verify(w, "")
		if len(p) == 0 || !strings.Contains(strings.Join(p, "\n"), substr) {
			t.Errorf("%s: verify reported %q, want a line containing %q", what, p, substr)
			return
		}
		t.Logf("%s: %s", what, p[0])
	}

	stray := filepath.Join(e.dom.Dir, e.dom.Name+"-vda.stray.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", e.dom.Disks[0].Path, "-F", "qcow2", stray)
	expectOne("stray overlay", "stray file "+stray, want)
	os.Remove(stray)

	fewer := keepNewest(1)(e)
	fewer.maxChain = 3
	expectOne("a snapshot that should be gone", "snapshots that should be gone: "+e.order[0], fewer)

	more := keepNewest(2)(e)
	more.snaps = map[string]int{"autocmnosuch": 1}
	for n, g := range want.snaps {
		more.snaps[n] = g
	}
	expectOne("a missing snapshot", "snapshots missing: autocmnosuch", more)

	wrong := keepNewest(2)(e)
	wrong.snaps[e.order[0]] = 2
	expectOne("wrong generation", fmt.Sprintf("snapshot %s, disk vda", e.order[0]), wrong)

	shallow := keepNewest(2)(e)
	shallow.maxChain = 2
	expectOne("chain too deep", "want at most 2", shallow)

	sx, err := e.snapshotXML()
	if err != nil {
		t.Fatal(err)
	}
	// The newest snapshot's vdb state is the older snapshot's overlay, an image in the
	// guest's chain: move it aside and back, without the guest noticing (QEMU keeps its
	// file open).
	st, err := stateImage(sx[e.order[1]], "vdb")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(st, st+".away"); err != nil {
		t.Fatal(err)
	}
	expectOne("a state image gone", "snapshot "+e.order[1]+" names "+st+" as its state of vdb", want)
	if err := os.Rename(st+".away", st); err != nil {
		t.Fatal(err)
	}
	if p := e.verify(want, ""); len(p) > 0 {
		t.Fatalf("verify after putting everything back reported:\n%s", strings.Join(p, "\n"))
	}
}

// TestHarnessControl runs each command of the matrix once without interruption and
// checks that everything passes: the matrix's expectations describe what the
// uninterrupted code does, so a failing row is the interruption's doing.
func TestHarnessControl(t *testing.T) {
	seen := map[string]bool{}
	for _, sc := range scenarios() {
		if sc.how == restartAtPoint || seen[sc.cmdLabel] {
			continue
		}
		seen[sc.cmdLabel] = true
		t.Run(sc.cmdLabel, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, sc.spec, sc.disks, sc.bigMiB)
			for i := 0; i < sc.prior; i++ {
				e.write()
				e.takeSnapshot(sc.priorArgs...)
			}
			e.write()
			before, err := e.snapshotNames()
			if err != nil {
				t.Fatal(err)
			}
			if r := e.run(sc.cmd(e)...); r.code != 0 {
				t.Fatalf("%s failed:\n%s", r, r.output())
			}
			e.recordNew(before)
			for _, p := range e.verify(sc.expect(e), sc.fsck) {
				t.Error(p)
			}
		})
	}
}

// TestHarnessDetectsFrozenOrPausedGuest: a guest left frozen or paused is reported.
func TestHarnessDetectsFrozenOrPausedGuest(t *testing.T) {
	t.Parallel()
	e := newEnv(t, guestSpec, []string{"vdb"}, 4)
	e.write()
	e.takeSnapshot()
	want := keepNewest(1)(e)
	if p := e.verify(want, ""); len(p) > 0 {
		t.Fatalf("verify on a whole guest reported:\n%s", strings.Join(p, "\n"))
	}
	e.dom.Agent(t, `{"execute":"guest-fsfreeze-freeze"}`)
	if err := thawedWithin(time.Second)(e); err == nil || !strings.Contains(err.Error(), "still frozen") {
		t.Errorf("thawedWithin on a frozen guest returned %v, want \"still frozen\"", err)
	}
	if p := e.verify(want, ""); len(p) != 1 || p[0] != "the guest's file systems are frozen" {
		t.Errorf("verify on a frozen guest reported %q, want only that it is frozen", p)
	}
	e.dom.Agent(t, `{"execute":"guest-fsfreeze-thaw"}`)
	if err := e.bed.Conn.DomainSuspend(e.dom.Dom); err != nil {
		t.Fatal(err)
	}
	if p := e.verify(want, ""); len(p) != 1 || p[0] != "the domain is paused, want running" {
		t.Errorf("verify on a paused guest reported %q, want only that it is paused", p)
	}
}
