package backup

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/hook"
)

type engineFixture struct {
	d     *fakeDriver
	store Store
	out   *syncBuffer
	guest driver.Guest
	clock time.Time
	lock  string
	dir   string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newEngineFixture(t *testing.T) *engineFixture {
	dir := t.TempDir()
	return &engineFixture{
		d: newFakeDriver(), store: newTestStore(t, filepath.Join(dir, "repo")), out: &syncBuffer{},
		guest: driver.Guest{Node: "h1", Name: "vm1", UUID: "11111111-2222-3333-4444-555555555555", State: driver.StateRunning, Kind: driver.KindQEMU},
		clock: time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC), lock: filepath.Join(dir, "locks"), dir: dir,
	}
}

func (f *engineFixture) job(level Level) *Job {
	return &Job{
		Driver: f.d, Store: f.store, Target: "REPO", Level: level, Quiesce: engine.QuiesceOff,
		MaxParallel: 2, Timeout: 5 * time.Second, LockDir: f.lock, Out: f.out, Version: "test",
		Now: func() time.Time { f.clock = f.clock.Add(time.Minute); return f.clock },
	}
}

func (f *engineFixture) run(t *testing.T, j *Job) (*Report, error) {
	t.Helper()
	return j.Run(context.Background(), []driver.Guest{f.guest})
}

func (f *engineFixture) points(t *testing.T) []Point {
	t.Helper()
	gs, err := f.store.Guest(f.guest, "fake")
	if err != nil {
		t.Fatal(err)
	}
	p, err := gs.Points()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustRun(t *testing.T, f *engineFixture, j *Job) Result {
	t.Helper()
	rep, err := f.run(t, j)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, f.out.String())
	}
	return rep.Guests[0]
}

// TestChainLevelsAndCheckpoints runs auto (full), auto (inc), diff, auto (inc) and
// checks each point's parent and chain, the checkpoint each request copies from, and
// that the guest keeps only the checkpoints the chain needs.
func TestChainLevelsAndCheckpoints(t *testing.T) {
	f := newEngineFixture(t)
	steps := []struct {
		level     Level
		want      driver.BackupLevel
		parentIdx int // index of the parent point, -1 none
		sinceIdx  int // point whose checkpoint the request copies from
		keep      []int
	}{
		{LevelAuto, driver.LevelFull, -1, -1, []int{0}},
		{LevelAuto, driver.LevelInc, 0, 0, []int{0, 1}},
		{Level(driver.LevelDiff), driver.LevelDiff, 0, 0, []int{0, 2}},
		{LevelAuto, driver.LevelInc, 2, 2, []int{0, 3}},
		{Level(driver.LevelCopy), driver.LevelCopy, -1, -1, []int{0, 3}},
		{Level(driver.LevelInc), driver.LevelInc, 3, 3, []int{0, 5}},
	}
	for i, s := range steps {
		res := mustRun(t, f, f.job(s.level))
		pts := f.points(t)
		if len(pts) != i+1 {
			t.Fatalf("step %d: %d points, want %d", i, len(pts), i+1)
		}
		p := pts[i]
		if p.Level != s.want || res.Level != s.want {
			t.Fatalf("step %d: level %s (result %s), want %s\n%s", i, p.Level, res.Level, s.want, f.out.String())
		}
		req := f.d.reqs[len(f.d.reqs)-1]
		wantParent, wantSince, wantChain := "", "", pts[0].ID
		if s.parentIdx >= 0 {
			wantParent, wantSince = pts[s.parentIdx].ID, pts[s.sinceIdx].Checkpoint
		}
		if s.want == driver.LevelCopy {
			wantChain = ""
		}
		if req.Since != wantSince || p.Chain != wantChain || req.Level != s.want {
			t.Fatalf("step %d: since %q chain %q, want since %q chain %q", i, req.Since, p.Chain, wantSince, wantChain)
		}
		for _, tg := range req.Targets {
			wantBacking := ""
			if wantParent != "" {
				wantBacking = "../" + wantParent + "/" + tg.Disk + ".qcow2"
			}
			if tg.Backing != wantBacking {
				t.Fatalf("step %d: disk %s backing %q, want %q", i, tg.Disk, tg.Backing, wantBacking)
			}
		}
		if (s.want == driver.LevelCopy) != (p.Checkpoint == "") || (req.Checkpoint != p.Checkpoint) {
			t.Fatalf("step %d: checkpoint %q (requested %q)", i, p.Checkpoint, req.Checkpoint)
		}
		var want []string
		for _, k := range s.keep {
			want = append(want, pts[k].Checkpoint)
		}
		if got := f.d.checkpoints(f.guest); !slices.Equal(got, want) {
			t.Fatalf("step %d: guest checkpoints %v, want %v\n%s", i, got, want, f.out.String())
		}
	}
}

func TestFullReasonWhenCheckpointGone(t *testing.T) {
	f := newEngineFixture(t)
	mustRun(t, f, f.job(LevelAuto))
	// The guest lost its checkpoint (redefined, bitmap dropped by hand…).
	f.d.cps = map[string][]driver.Checkpoint{}
	_, err := f.run(t, f.job(Level(driver.LevelInc)))
	if !errors.Is(err, engine.ErrGuestsFailed) || !strings.Contains(f.out.String(), "is gone from the guest") {
		t.Fatalf("explicit inc: err %v\n%s", err, f.out.String())
	}
	if n := len(f.points(t)); n != 1 {
		t.Fatalf("%d points after the refused inc, want 1", n)
	}
	res := mustRun(t, f, f.job(LevelAuto))
	if res.Level != driver.LevelFull || !strings.Contains(res.FullReason, "is gone from the guest") {
		t.Fatalf("auto after losing the checkpoint: %s (%q)", res.Level, res.FullReason)
	}
	if !strings.Contains(f.out.String(), "Taking a full backup: checkpoint ") {
		t.Fatalf("the output does not say why a full is taken:\n%s", f.out.String())
	}
}

// TestFailureAbortsAndRemovesCheckpoint: a backup that fails after its checkpoint was
// created leaves no partial point, no checkpoint, and runs backup-abort; the next run
// continues the chain.
func TestFailureAbortsAndRemovesCheckpoint(t *testing.T) {
	f := newEngineFixture(t)
	script := filepath.Join(f.dir, "hook.sh")
	logf := filepath.Join(f.dir, "hook.log")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$AUTOSNAP_PHASE $AUTOSNAP_VMNAME $AUTOSNAP_BACKUP_LEVEL $AUTOSNAP_BACKUP_POINT $AUTOSNAP_STATE\" >> "+logf+"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	j := f.job(LevelAuto)
	j.Hooks = &hook.Runner{Path: script}
	mustRun(t, f, j)
	cpsBefore := f.d.checkpoints(f.guest)
	f.d.failNext = errInjected
	j = f.job(LevelAuto)
	j.Hooks = &hook.Runner{Path: script}
	rep, err := f.run(t, j)
	if !errors.Is(err, engine.ErrGuestsFailed) || !errors.Is(rep.Guests[0].Err, errInjected) {
		t.Fatalf("err %v / %v", err, rep.Guests[0].Err)
	}
	if got := f.d.checkpoints(f.guest); !slices.Equal(got, cpsBefore) {
		t.Fatalf("checkpoints after the failure %v, want %v", got, cpsBefore)
	}
	if m, _ := filepath.Glob(filepath.Join(f.dir, "repo", "*", "*", ".partial-*")); len(m) > 0 {
		t.Fatalf("partial points left: %v", m)
	}
	if n := len(f.points(t)); n != 1 {
		t.Fatalf("%d points, want 1", n)
	}
	log, _ := os.ReadFile(logf)
	lines := strings.Split(strings.TrimSpace(string(log)), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "backup-pre vm1 full ") || !strings.HasPrefix(lines[1], "backup-post vm1 full ") ||
		!strings.HasPrefix(lines[2], "backup-pre vm1 inc ") || !strings.HasPrefix(lines[3], "backup-abort vm1 inc ") || !strings.HasSuffix(lines[3], " 0") {
		t.Fatalf("hook phases:\n%s", log)
	}
	res := mustRun(t, f, f.job(LevelAuto))
	if res.Level != driver.LevelInc {
		t.Fatalf("after the failure: %s (%s), want inc", res.Level, res.FullReason)
	}
}

// TestOrphanCheckpointRemoved: a checkpoint of this repository without a complete
// point (a crash between creating it and committing) is removed before the next
// backup, which continues from the last complete point; checkpoints of other
// repositories and not autosnap's stay.
func TestOrphanCheckpointRemoved(t *testing.T) {
	f := newEngineFixture(t)
	mustRun(t, f, f.job(LevelAuto))
	k := f.guest.Key()
	f.d.cps[k] = append(f.d.cps[k],
		driver.Checkpoint{Name: "autosnap-" + f.store.Tag() + "-20261130T090000Z", Disks: []string{"vda", "vdb"}},
		driver.Checkpoint{Name: "autosnap-other-20261130T090000Z", Disks: []string{"vda", "vdb"}},
		driver.Checkpoint{Name: "users-own", Disks: []string{"vda", "vdb"}})
	res := mustRun(t, f, f.job(LevelAuto))
	if res.Level != driver.LevelInc || f.d.reqs[1].Since != f.points(t)[0].Checkpoint {
		t.Fatalf("after the orphan: %s since %s", res.Level, f.d.reqs[1].Since)
	}
	if !slices.Contains(f.d.deleted, "autosnap-"+f.store.Tag()+"-20261130T090000Z") || slices.Contains(f.d.deleted, "autosnap-other-20261130T090000Z") || slices.Contains(f.d.deleted, "users-own") {
		t.Fatalf("deleted %v", f.d.deleted)
	}
	if !strings.Contains(f.out.String(), "Removed checkpoint autosnap-"+f.store.Tag()+"-20261130T090000Z (no complete point has it: an interrupted backup left it, or its point was pruned)") {
		t.Fatalf("output:\n%s", f.out.String())
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	f := newEngineFixture(t)
	mustRun(t, f, f.job(LevelAuto))
	k := f.guest.Key()
	f.d.cps[k] = append(f.d.cps[k], driver.Checkpoint{Name: "autosnap-" + f.store.Tag() + "-20261130T090000Z"})
	before := f.d.checkpoints(f.guest)
	j := f.job(LevelAuto)
	j.DryRun = true
	mustRun(t, f, j)
	if len(f.d.reqs) != 1 || !slices.Equal(f.d.checkpoints(f.guest), before) || len(f.points(t)) != 1 {
		t.Fatalf("dry run changed something: %d backups, checkpoints %v", len(f.d.reqs), f.d.checkpoints(f.guest))
	}
	out := f.out.String()
	if !strings.Contains(out, "Dry run: would take an inc backup") || !strings.Contains(out, "Dry run: would remove checkpoint autosnap-"+f.store.Tag()+"-20261130T090000Z") {
		t.Fatalf("output:\n%s", out)
	}
	f.d.cps = map[string][]driver.Checkpoint{}
	f.out.b.Reset()
	mustRun(t, f, j)
	if !strings.Contains(f.out.String(), "would take a full backup") || !strings.Contains(f.out.String(), "full because checkpoint") {
		t.Fatalf("dry run does not say why a full:\n%s", f.out.String())
	}
}

type fakeGuard struct{ armed, disarmed atomic.Int32 }

func (g *fakeGuard) Arm(context.Context, string) (string, error) { g.armed.Add(1); return "1", nil }
func (g *fakeGuard) Disarm(context.Context, string) error        { g.disarmed.Add(1); return nil }

// TestQuiesce: the guest is frozen only while the job starts (freeze, start, thaw),
// under the watchdog, and the point says quiesced; without an agent, auto takes a
// crash-consistent point and on fails.
func TestQuiesce(t *testing.T) {
	f := newEngineFixture(t)
	j := f.job(LevelAuto)
	j.Quiesce = engine.QuiesceOn
	guard := &fakeGuard{}
	j.Guard = guard
	var frozenDuringCopy bool
	f.d.onBackup = func(key string) { frozenDuringCopy = f.d.frozen[key] }
	res := mustRun(t, f, j)
	if !slices.Equal(f.d.events, []string{"freeze", "start", "thaw"}) || frozenDuringCopy {
		t.Fatalf("events %v, frozen while copying %v", f.d.events, frozenDuringCopy)
	}
	if res.Consistency != driver.ConsistencyQuiesced || guard.armed.Load() != 1 || guard.disarmed.Load() != 1 {
		t.Fatalf("consistency %s, armed %d disarmed %d", res.Consistency, guard.armed.Load(), guard.disarmed.Load())
	}
	f.d.agentErr = errors.New("agent not connected")
	j.Quiesce = engine.QuiesceAuto
	res = mustRun(t, f, j)
	if res.Consistency != driver.ConsistencyCrash || f.d.freezes != 1 {
		t.Fatalf("auto without agent: %s, %d freezes", res.Consistency, f.d.freezes)
	}
	j.Quiesce = engine.QuiesceOn
	if _, err := f.run(t, j); !errors.Is(err, engine.ErrGuestsFailed) || !strings.Contains(f.out.String(), "--quiesce on, but it cannot be frozen") {
		t.Fatalf("on without agent: %v\n%s", err, f.out.String())
	}
}

func TestDiskSelection(t *testing.T) {
	f := newEngineFixture(t)
	j := f.job(LevelAuto)
	j.ExcludeDisks = []string{"vdb"}
	mustRun(t, f, j)
	if r := f.d.reqs[0]; len(r.Targets) != 1 || r.Targets[0].Disk != "vda" {
		t.Fatalf("targets %+v", r.Targets)
	}
	// A disk joined: the inc copies it whole, says why, and the other disk stays
	// incremental.
	res := mustRun(t, f, f.job(LevelAuto))
	req := f.d.reqs[1]
	if res.Level != driver.LevelInc || len(req.Targets) != 2 || req.Targets[0].Backing == "" || req.Targets[1].Backing != "" ||
		!strings.Contains(f.out.String(), "Copying disk vdb whole in this inc: disk vdb was added since point ") {
		t.Fatalf("%s %+v\n%s", res.Level, req.Targets, f.out.String())
	}
	j = f.job(LevelAuto)
	j.IncludeDisks = []string{"vdz"}
	if _, err := f.run(t, j); err == nil || !strings.Contains(f.out.String(), "no disk vdz (the guest has vda, vdb)") {
		t.Fatalf("unknown disk: %v\n%s", err, f.out.String())
	}
}

// TestParallelBoundAndOrder: --max-parallel bounds the guests backed up at once and
// each guest's output is one block in selection order.
func TestParallelBoundAndOrder(t *testing.T) {
	f := newEngineFixture(t)
	var cur, peak atomic.Int32
	f.d.onBackup = func(string) {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
		cur.Add(-1)
	}
	var guests []driver.Guest
	for _, n := range []string{"g1", "g2", "g3", "g4", "g5"} {
		guests = append(guests, driver.Guest{Node: "h1", Name: n, UUID: n, State: driver.StateShutoff, Kind: driver.KindQEMU})
	}
	j := f.job(LevelAuto)
	j.MaxParallel = 2
	var mu sync.Mutex
	j.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); f.clock = f.clock.Add(time.Minute); return f.clock }
	rep, err := j.Run(context.Background(), guests)
	if err != nil {
		t.Fatalf("%v\n%s", err, f.out.String())
	}
	if peak.Load() != 2 {
		t.Fatalf("peak parallel backups %d, want 2", peak.Load())
	}
	out := f.out.String()
	last := -1
	for _, g := range guests {
		i := strings.Index(out, "----- VM "+g.Name+" ")
		if i < last {
			t.Fatalf("output out of order:\n%s", out)
		}
		last = i
	}
	for _, r := range rep.Guests {
		if r.Consistency != driver.ConsistencyOffline {
			t.Fatalf("%s: consistency %s", r.Guest.Name, r.Consistency)
		}
	}
}

// TestSameSecondBackups: two backups started within one second get distinct point IDs
// and distinct checkpoints, and the second continues the chain.
func TestSameSecondBackups(t *testing.T) {
	f := newEngineFixture(t)
	j := f.job(LevelAuto)
	j.Now = func() time.Time { return f.clock }
	mustRun(t, f, j)
	res := mustRun(t, f, j)
	pts := f.points(t)
	if res.Level != driver.LevelInc || len(pts) != 2 || pts[0].Checkpoint == pts[1].Checkpoint || pts[0].ID == pts[1].ID {
		t.Fatalf("second backup %s (%s); points %+v", res.Level, res.FullReason, pts)
	}
}
