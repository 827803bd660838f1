//go:build crashtest

package crashtest

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/testbed"
)

// scenario is one row of the matrix: a domain with some history, one command run
// with the crash binary and interrupted at a point, then the same command run again
// with the shipped binary, then every check.
type scenario struct {
	name  string // the row's name: the point, and what is special about the row
	point string // AUTOSNAP_CRASH_AT
	how   interruption
	// killGroup (pauseThenKill) kills what autosnap started along with it.
	killGroup bool
	// atPoint runs while autosnap waits at the point (pauseThenKill, restartAtPoint).
	atPoint func(e *env, p *paused) error
	// slowCommit starts the interrupted run's live block commits at 1 MiB/s, so that
	// the job is still in flight when the test looks at it, however fast this machine
	// copies (a fast copy once finished 256 MiB before the harness could throttle it).
	slowCommit bool

	spec   testbed.DomainSpec
	disks  []string // patterned disks; all when empty
	bigMiB int      // size of the big region every generation writes
	// prior snapshots are taken (each after writing a generation) before the
	// interrupted run, with priorArgs added to snap; then one more generation is
	// written.
	prior     int
	priorArgs []string

	cmd      func(e *env) []string // the command, interrupted and then run again
	cmdLabel string                // the command as the matrix shows it
	// crashNew is how many snapshots the interrupted run leaves behind: 0 or 1, or -1
	// when either is right (a run that carries on after a libvirtd restart).
	crashNew int
	// afterCrash checks and acts right after the interruption: that a merge is really
	// in flight, or waiting for libvirt to finish it behind autosnap's back.
	afterCrash func(e *env) error
	// writeAfterCrash: the guest writes a new generation between the interrupted run
	// and the next one, as a live guest would.
	writeAfterCrash bool
	expect          func(e *env) expectation
	fsck            string // guest disk whose file system every kept snapshot holds clean
}

// Domain specs.
var (
	// pausedSpec: QEMU runs, so merges are live block commits; CPUs stopped, so only
	// the test writes to the disks.
	pausedSpec = testbed.DomainSpec{Disks: 2, DiskMiB: 64, State: testbed.Paused}
	// bigPausedSpec holds a region large enough that a block commit of it runs for a
	// while even unthrottled.
	bigPausedSpec = testbed.DomainSpec{Disks: 2, DiskMiB: 320, State: testbed.Paused}
	shutoffSpec   = testbed.DomainSpec{Disks: 2, DiskMiB: 64, State: testbed.Shutoff}
	// bigShutoffSpec: qemu-img commit runs at disk speed, so it needs much data to be
	// caught half-way.
	bigShutoffSpec = testbed.DomainSpec{Disks: 1, DiskMiB: 1024, State: testbed.Shutoff}
	// guestSpec boots the tiny guest with qemu-guest-agent; vda is its ext4 /data,
	// vdb is left to the test.
	guestSpec = testbed.DomainSpec{Guest: true, Disks: 2, DiskMiB: 64, State: testbed.Running}
)

const (
	smallMiB   = 32
	bigLiveMiB = 256
	bigOffMiB  = 768
)

// scenarios is the matrix, kill rows first, then the rows that restart libvirtd.
func scenarios() []scenario {
	snapKeep := func(k int, extra ...string) func(e *env) []string {
		return func(e *env) []string { return e.snapArgs(k, extra...) }
	}
	deleteNewest := func(e *env) []string {
		return e.snapshotArgs("delete", e.dom.Name, e.order[len(e.order)-1])
	}
	revertTo := func(i int, extra ...string) func(e *env) []string {
		return func(e *env) []string {
			return e.snapshotArgs(append([]string{"revert", e.dom.Name, e.order[i]}, extra...)...)
		}
	}
	collapse := func(e *env) []string {
		args := []string{"chain", "collapse", e.dom.Name, "--forget-snapshots"}
		for _, d := range e.dom.Disks {
			args = append(args, "--force-base", d.Path) // the disks' own images, which autosnap did not create
		}
		return e.snapshotArgs(args...)
	}
	quiesced := []string{"--quiesce", "on"}

	kill := []scenario{
		{name: "freeze.frozen", point: crash.FreezeFrozen, how: killAtPoint,
			spec: guestSpec, disks: []string{"vdb"}, bigMiB: smallMiB, prior: 1, priorArgs: quiesced,
			cmd: snapKeep(2, quiesced...), cmdLabel: "snap --keep 2 --quiesce on", crashNew: 0,
			afterCrash: thawedWithin(15 * time.Second), writeAfterCrash: true, expect: keepNewest(2), fsck: "vda"},
		{name: "create.done", point: crash.CreateDone, how: killAtPoint,
			spec: pausedSpec, bigMiB: smallMiB, prior: 2,
			cmd: snapKeep(2), cmdLabel: "snap --keep 2", crashNew: 1,
			writeAfterCrash: true, expect: keepNewest(2)},
		{name: "merge.journaled", point: crash.MergeJournaled, how: killAtPoint,
			spec: pausedSpec, bigMiB: smallMiB, prior: 1,
			cmd: snapKeep(1), cmdLabel: "snap --keep 1", crashNew: 1,
			writeAfterCrash: true, expect: keepNewest(1)},
		{name: "merge.commit-started (job left running)", point: crash.MergeCommitStarted, how: pauseThenKill, killGroup: true,
			atPoint: throttleJob, slowCommit: true, spec: bigPausedSpec, bigMiB: bigLiveMiB, prior: 1,
			cmd: snapKeep(1), cmdLabel: "snap --keep 1", crashNew: 1,
			afterCrash: jobKeepsRunning, writeAfterCrash: true, expect: keepNewest(1)},
		{name: "merge.commit-started (libvirt finishes it)", point: crash.MergeCommitStarted, how: pauseThenKill, killGroup: true,
			atPoint: throttleJob, slowCommit: true, spec: bigPausedSpec, bigMiB: bigLiveMiB, prior: 1,
			cmd: snapKeep(1), cmdLabel: "snap --keep 1", crashNew: 1,
			afterCrash: jobFinishes, writeAfterCrash: true, expect: keepNewest(1)},
		{name: "merge.commit-ready", point: crash.MergeCommitReady, how: killAtPoint,
			spec: pausedSpec, bigMiB: smallMiB, prior: 2,
			cmd: deleteNewest, cmdLabel: "snapshot delete (newest)", crashNew: 0,
			afterCrash: jobLeftReady, writeAfterCrash: true, expect: withoutNewest},
		{name: "merge.step-done", point: crash.MergeStepDone, how: killAtPoint,
			spec: pausedSpec, bigMiB: smallMiB, prior: 3,
			cmd: func(e *env) []string { return e.cleanArgs(1) }, cmdLabel: "clean --keep 1", crashNew: 0,
			writeAfterCrash: true, expect: keepNewest(1)},
		{name: "merge.before-metadata", point: crash.MergeBeforeMetadata, how: killAtPoint,
			spec: pausedSpec, bigMiB: smallMiB, prior: 1,
			cmd: snapKeep(1), cmdLabel: "snap --keep 1", crashNew: 1,
			writeAfterCrash: true, expect: keepNewest(1)},
		{name: "merge.before-forget", point: crash.MergeBeforeForget, how: killAtPoint,
			spec: pausedSpec, bigMiB: smallMiB, prior: 2,
			cmd: snapKeep(2), cmdLabel: "snap --keep 2", crashNew: 1,
			writeAfterCrash: true, expect: keepNewest(2)},
		{name: "merge.offline-commit (qemu-img killed too)", point: crash.MergeOfflineCommit, how: pauseThenKill, killGroup: true,
			atPoint: midOfflineCommit(true), spec: bigShutoffSpec, bigMiB: bigOffMiB, prior: 1,
			cmd: snapKeep(1), cmdLabel: "snap --keep 1 (shut off)", crashNew: 1,
			expect: keepNewest(1)},
		{name: "merge.offline-commit (only autosnap killed)", point: crash.MergeOfflineCommit, how: pauseThenKill,
			atPoint: midOfflineCommit(false), spec: bigShutoffSpec, bigMiB: bigOffMiB, prior: 1,
			cmd: snapKeep(1), cmdLabel: "snap --keep 1 (shut off)", crashNew: 1,
			afterCrash: childDiesWithAutosnap, expect: keepNewest(1)},
		{name: "revert.overlays-created", point: crash.RevertOverlays, how: killAtPoint,
			spec: shutoffSpec, bigMiB: smallMiB, prior: 2,
			cmd: revertTo(0), cmdLabel: "snapshot revert (oldest, shut off)", crashNew: 0,
			expect: revertedTo(0, libvirt.DomainShutoff)},
		{name: "revert.pointed", point: crash.RevertPointed, how: killAtPoint,
			spec: pausedSpec, bigMiB: smallMiB, prior: 2,
			cmd: revertTo(0, "--force"), cmdLabel: "snapshot revert --force (oldest)", crashNew: 0,
			expect: revertedTo(0, libvirt.DomainShutoff)},
		{name: "revert.before-current", point: crash.RevertBeforeCurrent, how: killAtPoint,
			spec: shutoffSpec, bigMiB: smallMiB, prior: 2,
			cmd: revertTo(1), cmdLabel: "snapshot revert (newest, shut off)", crashNew: 0,
			expect: revertedTo(1, libvirt.DomainShutoff)},
		{name: "revert.before-memory", point: crash.RevertBeforeMemory, how: killAtPoint,
			spec: guestSpec, disks: []string{"vdb"}, bigMiB: smallMiB, prior: 2, priorArgs: []string{"--state"},
			cmd: revertTo(0), cmdLabel: "snapshot revert (oldest, with RAM)", crashNew: 0,
			expect: revertedTo(0, libvirt.DomainRunning)},
		{name: "collapse.started", point: crash.CollapseStarted, how: pauseThenKill, killGroup: true,
			atPoint: throttleJob, slowCommit: true, spec: bigPausedSpec, bigMiB: bigLiveMiB, prior: 2,
			cmd: collapse, cmdLabel: "snapshot chain collapse --forget-snapshots", crashNew: 0,
			afterCrash: jobKeepsRunning, writeAfterCrash: true, expect: collapsed},
	}
	restart := []scenario{
		{name: "freeze.frozen", point: crash.FreezeFrozen,
			spec: guestSpec, disks: []string{"vdb"}, bigMiB: smallMiB, prior: 1, priorArgs: quiesced,
			cmd: snapKeep(2, quiesced...), cmdLabel: "snap --keep 2 --quiesce on", crashNew: -1,
			afterCrash: thawedWithin(30 * time.Second), writeAfterCrash: true, expect: keepNewest(2), fsck: "vda"},
		{name: "create.done", point: crash.CreateDone,
			spec: pausedSpec, bigMiB: smallMiB, prior: 2,
			cmd: snapKeep(2), cmdLabel: "snap --keep 2", crashNew: 1,
			writeAfterCrash: true, expect: keepNewest(2)},
		{name: "merge.commit-started", point: crash.MergeCommitStarted, atPoint: throttleJob, slowCommit: true,
			spec: bigPausedSpec, bigMiB: bigLiveMiB, prior: 1,
			cmd: snapKeep(1), cmdLabel: "snap --keep 1", crashNew: 1,
			afterCrash: speedUpJob, writeAfterCrash: true, expect: keepNewest(1)},
		{name: "merge.commit-ready", point: crash.MergeCommitReady,
			spec: pausedSpec, bigMiB: smallMiB, prior: 2,
			cmd: deleteNewest, cmdLabel: "snapshot delete (newest)", crashNew: 0,
			writeAfterCrash: true, expect: withoutNewest},
		{name: "merge.before-metadata", point: crash.MergeBeforeMetadata,
			spec: pausedSpec, bigMiB: smallMiB, prior: 1,
			cmd: snapKeep(1), cmdLabel: "snap --keep 1", crashNew: 1,
			writeAfterCrash: true, expect: keepNewest(1)},
		{name: "revert.pointed", point: crash.RevertPointed,
			spec: pausedSpec, bigMiB: smallMiB, prior: 2,
			cmd: revertTo(0, "--force"), cmdLabel: "snapshot revert --force (oldest)", crashNew: 0,
			expect: revertedTo(0, libvirt.DomainShutoff)},
		{name: "collapse.started", point: crash.CollapseStarted, atPoint: throttleJob, slowCommit: true,
			spec: bigPausedSpec, bigMiB: bigLiveMiB, prior: 2,
			cmd: collapse, cmdLabel: "snapshot chain collapse --forget-snapshots", crashNew: 0,
			afterCrash: speedUpJob, writeAfterCrash: true, expect: collapsed},
	}
	for i := range restart {
		restart[i].how = restartAtPoint
	}
	return append(kill, restart...)
}

// Expectations after the repair.

// keepNewest: retention kept the newest k snapshots.
func keepNewest(k int) func(e *env) expectation {
	return func(e *env) expectation {
		names := make([]string, 0, len(e.snaps))
		for n := range e.snaps {
			names = append(names, n)
		}
		sort.Sort(sort.Reverse(sort.StringSlice(names)))
		want := map[string]int{}
		for _, n := range names[:min(k, len(names))] {
			want[n] = e.snaps[n]
		}
		return expectation{snaps: want, activeGen: e.activeGen, state: libvirtState(e.dom.Spec.State), maxChain: k + 1}
	}
}

// withoutNewest: the newest snapshot was deleted.
func withoutNewest(e *env) expectation {
	want := map[string]int{}
	for _, n := range e.order[:len(e.order)-1] {
		want[n] = e.snaps[n]
	}
	return expectation{snaps: want, activeGen: e.activeGen, state: libvirtState(e.dom.Spec.State), maxChain: len(want) + 1}
}

// revertedTo: the guest holds snapshot i's data, every snapshot stays, i is current;
// the chain is i's state chain plus the new overlay.
func revertedTo(i int, state libvirt.DomainState) func(e *env) expectation {
	return func(e *env) expectation {
		want := map[string]int{}
		for n, g := range e.snaps {
			want[n] = g
		}
		return expectation{snaps: want, activeGen: e.snaps[e.order[i]], current: e.order[i], state: state, maxChain: i + 2}
	}
}

// collapsed: the snapshots were forgotten and every chain is one image.
func collapsed(e *env) expectation {
	return expectation{snaps: map[string]int{}, activeGen: e.activeGen, state: libvirtState(e.dom.Spec.State), maxChain: 1}
}

// Actions at the point and after the interruption.

// throttleJob holds the block job autosnap just started (at 1 MiB/s: slowCommit) at
// 1 MiB/s, so that it is still running when autosnap is interrupted, and checks that
// it has not finished.
func throttleJob(e *env, p *paused) error {
	disk, cur, end, err := e.blockJob()
	if err != nil {
		return err
	}
	if disk == "" {
		return errors.New("no block job is running: the merge is not in flight")
	}
	if err := e.bed.Conn.DomainBlockJobSetSpeed(e.dom.Dom, disk, 1, 0); err != nil {
		return fmt.Errorf("throttling the block job of %s: %w", disk, err)
	}
	late := time.Since(p.at)
	_, cur, end, err = e.blockJob()
	if err != nil {
		return err
	}
	if end == 0 || cur >= end {
		return fmt.Errorf("the block job of %s had already copied everything (%d of %d) when it was throttled: write a larger region", disk, cur, end)
	}
	e.jobDisk = disk
	e.logf("crashtest: throttled the block job of %s %v after the point, at %d of %d bytes", disk, late.Round(time.Millisecond), cur, end)
	return nil
}

// jobInFlight checks that the throttled job is still there after the interruption.
func jobInFlight(e *env) (cur, end uint64, err error) {
	found, _, _, cur, end, err := e.bed.Conn.DomainGetBlockJobInfo(e.dom.Dom, e.jobDisk, 0)
	if err != nil {
		return 0, 0, err
	}
	if found == 0 {
		return 0, 0, fmt.Errorf("the block job of %s is gone right after the interruption: nothing was in flight", e.jobDisk)
	}
	return cur, end, nil
}

// jobKeepsRunning leaves the interrupted job running into the next run, at a speed
// that lets it finish within about ten seconds.
func jobKeepsRunning(e *env) error {
	cur, end, err := jobInFlight(e)
	if err != nil {
		return err
	}
	if cur >= end {
		return fmt.Errorf("the block job of %s had finished copying (%d of %d) when autosnap was killed", e.jobDisk, cur, end)
	}
	mib := max(1, (end-cur)>>20/10)
	e.logf("crashtest: the block job of %s is in flight after the kill (%d of %d); %d MiB/s from now on", e.jobDisk, cur, end, mib)
	return e.bed.Conn.DomainBlockJobSetSpeed(e.dom.Dom, e.jobDisk, mib, 0)
}

// jobFinishes lets libvirt finish the interrupted job before the next run, as it does
// when autosnap dies late in a merge.
func jobFinishes(e *env) error {
	cur, end, err := jobInFlight(e)
	if err != nil {
		return err
	}
	if cur >= end {
		return fmt.Errorf("the block job of %s had finished copying (%d of %d) when autosnap was killed", e.jobDisk, cur, end)
	}
	if err := e.bed.Conn.DomainBlockJobSetSpeed(e.dom.Dom, e.jobDisk, 0, 0); err != nil {
		return fmt.Errorf("unthrottling: %w", err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		found, _, _, _, _, err := e.bed.Conn.DomainGetBlockJobInfo(e.dom.Dom, e.jobDisk, 0)
		if err != nil {
			return err
		}
		if found == 0 {
			e.logf("crashtest: libvirt finished the block job of %s after autosnap was killed", e.jobDisk)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the block job of %s did not finish within 3 minutes", e.jobDisk)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// speedUpJob (after a libvirtd restart) lets a job that survived the restart finish
// within about ten seconds.
func speedUpJob(e *env) error {
	found, _, _, cur, end, err := e.bed.Conn.DomainGetBlockJobInfo(e.dom.Dom, e.jobDisk, 0)
	if err != nil {
		return err
	}
	if found == 0 {
		e.logf("crashtest: no block job on %s after the interrupted run ended", e.jobDisk)
		return nil
	}
	mib := max(1, (end-cur)>>20/10)
	e.logf("crashtest: the block job of %s survived the restart (%d of %d); %d MiB/s from now on", e.jobDisk, cur, end, mib)
	return e.bed.Conn.DomainBlockJobSetSpeed(e.dom.Dom, e.jobDisk, mib, 0)
}

// jobLeftReady checks that the active commit killed at its ready point waits for a
// pivot that will not come from the dead run.
func jobLeftReady(e *env) error {
	disk, cur, end, err := e.blockJob()
	if err != nil {
		return err
	}
	if disk == "" {
		return errors.New("no block job is left after the kill at the ready point")
	}
	e.jobDisk = disk
	e.logf("crashtest: the active commit of %s waits to be pivoted (%d of %d)", disk, cur, end)
	return nil
}

// midOfflineCommit waits until the qemu-img commit autosnap started has written an
// eighth of the data, checks that it has not finished and, with stop, stops it there
// so that the kill catches it half-way.
func midOfflineCommit(stop bool) func(e *env, p *paused) error {
	return func(e *env, p *paused) error {
		pid, err := findChild(p.pid, "qemu-img", 10*time.Second)
		if err != nil {
			return fmt.Errorf("%w: the offline merge is not running", err)
		}
		total := int64(e.bigMiB()) << 20
		deadline := time.Now().Add(2 * time.Minute)
		for {
			w, err := bytesWritten(pid)
			if err != nil || !alive(pid) {
				return fmt.Errorf("qemu-img commit (pid %d) ended before it could be interrupted: write a larger region", pid)
			}
			if w >= total/8 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("qemu-img commit (pid %d) wrote only %d bytes in 2 minutes", pid, w)
			}
			time.Sleep(time.Millisecond)
		}
		if stop {
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				return fmt.Errorf("stopping qemu-img: %w", err)
			}
		}
		w, _ := bytesWritten(pid)
		if w >= total {
			return fmt.Errorf("qemu-img commit (pid %d) had written everything (%d bytes) when it was caught", pid, w)
		}
		e.qemuImg = pid
		e.logf("crashtest: qemu-img commit (pid %d) caught after writing %d of about %d bytes", pid, w, total)
		return nil
	}
}

// childDiesWithAutosnap checks that the qemu-img commit autosnap started did not
// outlive it (autosnap's children get SIGKILL when it dies), so no orphaned merge can
// race the next run's.
func childDiesWithAutosnap(e *env) error {
	deadline := time.Now().Add(5 * time.Second)
	for alive(e.qemuImg) {
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu-img (pid %d) outlived autosnap by 5 s: an orphaned merge could race the next run", e.qemuImg)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.logf("crashtest: qemu-img (pid %d) died with autosnap", e.qemuImg)
	return nil
}

// thawedWithin checks that the guest autosnap froze is thawed within limit of the
// interrupted run's end, before any next run: by the freeze watchdog, which outlives a
// killed run, or by the run itself after a libvirtd restart. A guest must not stay
// frozen until the next cron run.
func thawedWithin(limit time.Duration) func(e *env) error {
	return func(e *env) error {
		fs, err := e.waitThawed(limit)
		if err != nil {
			return fmt.Errorf("guest-fsfreeze-status after the interrupted run: %w", err)
		}
		if fs != "thawed" {
			return fmt.Errorf("the guest's file systems are still %s %v after the interrupted run ended", fs, limit)
		}
		return nil
	}
}

func (e *env) bigMiB() int { return int(e.regions[0][len(e.regions[0])-1].n >> 20) }

// The matrix.

// row is one scenario's outcome.
type row struct {
	sc      scenario
	outcome string // repaired, FAILED, not run
	reasons []string
}

// runScenario runs one scenario and returns why it failed (nothing when repaired).
func runScenario(t *testing.T, sc scenario) []string {
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
	args := sc.cmd(e)

	c := crashRun{point: sc.point, how: sc.how, killGroup: sc.killGroup}
	if sc.slowCommit {
		c.env = append(c.env, "AUTOSNAP_CRASH_COMMIT_MIBPS=1")
	}
	if sc.atPoint != nil {
		c.atPoint = func(p *paused) error { return sc.atPoint(e, p) }
	}
	r, err := runCrash(t, e.stateDir, e.scratch, c, func() error { return restartLibvirtd(t, e.bed) }, args...)
	e.logf("interrupted run: %s\n%s", r, r.output())
	if errors.Is(err, errPointNotReached) {
		return []string{fmt.Sprintf("point %s not reached: %v", sc.point, firstLine(err))}
	}
	if err != nil {
		return []string{fmt.Sprintf("interruption at %s failed: %v", sc.point, err)}
	}
	var problems []string
	added := e.recordNew(before)
	if sc.crashNew >= 0 && len(added) != sc.crashNew {
		problems = append(problems, fmt.Sprintf("the interrupted run left %d new snapshots %v, want %d", len(added), added, sc.crashNew))
	}
	if sc.afterCrash != nil {
		if err := sc.afterCrash(e); err != nil {
			return append(problems, fmt.Sprintf("after the interruption: %v", err))
		}
	}
	if sc.writeAfterCrash {
		e.write()
	}

	before, err = e.snapshotNames()
	if err != nil {
		t.Fatal(err)
	}
	rr := e.run(args...)
	if rr.code != 0 {
		problems = append(problems, fmt.Sprintf("the next run failed (%s): %s", exitOf(rr), errorLine(rr.output())))
	}
	e.recordNew(before)
	problems = append(problems, e.verify(sc.expect(e), sc.fsck)...)
	return problems
}

func exitOf(r result) string {
	if r.signal != 0 {
		return signalName(r.signal)
	}
	return fmt.Sprintf("exit %d", r.code)
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// errorLine picks the line of autosnap's output that says what went wrong: the first
// error that is not the closing count of failed guests, else the last lines.
func errorLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if (strings.Contains(l, "ERROR") || strings.HasPrefix(strings.ToLower(l), "error")) && !strings.Contains(l, "guests failed") {
			return l
		}
	}
	return lastLines(s, 2)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}

// TestCrashMatrix runs every scenario and prints the matrix.
func TestCrashMatrix(t *testing.T) {
	all := scenarios()
	rows := make([]*row, len(all))
	var mu sync.Mutex
	for i, sc := range all {
		rows[i] = &row{sc: sc, outcome: "not run", reasons: []string{"not selected (-run)"}}
	}
	record := func(i int, t *testing.T, problems []string) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case len(problems) > 0:
			rows[i].outcome, rows[i].reasons = "FAILED", problems
			for _, p := range problems {
				t.Errorf("%s", p)
			}
		case t.Failed():
			rows[i].outcome, rows[i].reasons = "FAILED", []string{"set-up or check failed; see the log above"}
		default:
			rows[i].outcome, rows[i].reasons = "repaired", nil
		}
	}
	one := func(i int, parallel bool) func(t *testing.T) {
		return func(t *testing.T) {
			if parallel {
				t.Parallel()
			}
			var problems []string
			defer func() { record(i, t, problems) }()
			problems = runScenario(t, all[i])
		}
	}
	t.Run("kill", func(t *testing.T) {
		for i, sc := range all {
			if sc.how != restartAtPoint {
				t.Run(sc.name, one(i, true))
			}
		}
	})
	// Restarts disconnect every libvirt client: one scenario at a time, alone.
	t.Run("restart", func(t *testing.T) {
		for i, sc := range all {
			if sc.how != restartAtPoint {
				continue
			}
			t.Run(sc.name, one(i, false))
		}
	})
	t.Logf("\n%s", matrixTable(rows))
	lastMatrix = rows
}

// lastMatrix is the matrix of the last TestCrashMatrix run; TestMain prints it, with
// every reason of every failed row, after all tests, so that it ends the log that CI
// shows (parallel harness tests otherwise print after it).
var lastMatrix []*row

// matrixFailures lists every failed row with all its reasons.
func matrixFailures(rows []*row) string {
	var b strings.Builder
	for i, r := range rows {
		if r.outcome != "FAILED" {
			continue
		}
		fmt.Fprintf(&b, "FAILED #%d %s (%s, %s):\n", i+1, r.sc.name, r.sc.how, r.sc.cmdLabel)
		for _, reason := range r.reasons {
			fmt.Fprintf(&b, "    %s\n", reason)
		}
	}
	return b.String()
}

// matrixTable renders the rows as a plain-text table, one line per scenario, with the
// first reason of each failure (the log above has all of them).
func matrixTable(rows []*row) string {
	header := []string{"#", "POINT (SCENARIO)", "INTERRUPTION", "COMMAND", "OUTCOME", "REASON"}
	cells := [][]string{header}
	count := map[string]int{}
	for i, r := range rows {
		count[r.outcome]++
		reason := ""
		if len(r.reasons) > 0 {
			reason = r.reasons[0]
			if len(reason) > 200 {
				reason = reason[:197] + "..."
			}
			if len(r.reasons) > 1 {
				reason += fmt.Sprintf(" (+%d more)", len(r.reasons)-1)
			}
		}
		cells = append(cells, []string{fmt.Sprint(i + 1), r.sc.name, r.sc.how.String(), r.sc.cmdLabel, r.outcome, reason})
	}
	width := make([]int, len(header))
	for _, c := range cells {
		for j, s := range c[:len(c)-1] {
			width[j] = max(width[j], len(s))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "CRASH MATRIX: %d scenarios, %d repaired, %d failed, %d not run\n",
		len(rows), count["repaired"], count["FAILED"], count["not run"])
	for _, c := range cells {
		for j, s := range c {
			if j == len(c)-1 {
				b.WriteString(s)
				continue
			}
			fmt.Fprintf(&b, "%-*s  ", width[j], s)
		}
		b.WriteString("\n")
	}
	return b.String()
}
