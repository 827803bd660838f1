package repo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/retention"
)

// The test binary doubles as a helper process (REPO_TEST_HELPER) so tests can
// SIGKILL a real prune or commit at a chosen point and repair what it left.
func TestMain(m *testing.M) {
	if h := os.Getenv("REPO_TEST_HELPER"); h != "" {
		if err := helperMain(h); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helperEnv is what a helper process is told.
type helperEnv struct {
	Dir     string          `json:"dir"`
	Guest   GuestID         `json:"guest"`
	Policy  retention.GFS   `json:"policy"`
	Now     time.Time       `json:"now"`
	Parent  string          `json:"parent"`
	At      time.Time       `json:"at"`
	CrashAt string          `json:"crash_at"` // point name, "#N" for its N-th hit
	Extra   json.RawMessage `json:"extra,omitempty"`
}

func helperMain(kind string) error {
	var env helperEnv
	if err := json.Unmarshal([]byte(os.Getenv("REPO_TEST_ENV")), &env); err != nil {
		return err
	}
	if env.CrashAt != "" {
		name, nth := env.CrashAt, 1
		if i := strings.LastIndexByte(name, '#'); i >= 0 {
			nth, _ = strconv.Atoi(name[i+1:])
			name = name[:i]
		}
		hits := 0
		testPoint = func(p string) {
			if p != name {
				return
			}
			if hits++; hits == nth {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
	}
	ctx := context.Background()
	r, err := Open(env.Dir)
	if err != nil {
		return err
	}
	g, err := r.Guest(env.Guest)
	if err != nil {
		return err
	}
	unlock, err := g.Lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	switch kind {
	case "prune":
		plan, err := g.PlanPrune(env.Policy, env.Now)
		if err != nil {
			return err
		}
		return g.Prune(ctx, plan)
	case "commit":
		p, err := g.Begin(Manifest{Level: LevelInc, Parent: env.Parent, Started: env.At, Disks: []DiskManifest{{Name: "vda", VirtualSize: simSize}}})
		if err != nil {
			return err
		}
		file := p.File("vda")
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", p.Backing("vda"), "-F", "qcow2", file).CombinedOutput(); err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		if out, err := exec.Command("qemu-io", "-c", "write -P 0xee 0 1M", file).CombinedOutput(); err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		_, err = p.Commit(ctx, Manifest{Consistency: "crash"})
		return err
	case "hold":
		fmt.Println("locked")
		time.Sleep(time.Hour)
	}
	return nil
}

// runHelper runs a helper process and reports whether it was killed by SIGKILL.
func runHelper(t *testing.T, kind string, env helperEnv) (killed bool) {
	t.Helper()
	data, _ := json.Marshal(env)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "REPO_TEST_HELPER="+kind, "REPO_TEST_ENV="+string(data))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	if err != nil {
		t.Fatalf("helper %s: %v\n%s", kind, err, out)
	}
	return false
}

// TestPruneKilledAnywhereIsRepaired SIGKILLs a prune (which removes two fulls with
// dependants and rebases five files) at each of its steps. Until the repair every
// point the plan keeps still restores exactly; Repair finishes the prune and the
// result equals an uninterrupted prune.
func TestPruneKilledAnywhereIsRepaired(t *testing.T) {
	s, tmpl := history(t)
	policy := retention.GFS{Last: 2, Daily: 2, Weekly: 2, Monthly: 3, Yearly: 1, Within: retention.Span{Hours: 2}}
	ref := openGuest(t, tmpl, s.id)
	plan, err := ref.PlanPrune(policy, pruneNow)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Rebase) < 4 {
		t.Fatalf("the plan rebases only %d files; the test needs several: %s", len(plan.Rebase), planJSON(t, plan))
	}
	kept := plan.Kept()
	for _, at := range []string{
		PointPruneJournaled,
		PointPruneRebased + "#1",
		PointPruneRebased + "#3",
		PointPruneManifests,
		PointPruneRemoving + "#1",
		PointPruneRemoving + "#4",
	} {
		t.Run(at, func(t *testing.T) {
			dir := copyRepo(t, tmpl)
			if !runHelper(t, "prune", helperEnv{Dir: dir, Guest: s.id, Policy: policy, Now: pruneNow, CrashAt: at}) {
				t.Fatalf("the prune was not killed at %s", at)
			}
			g := openGuest(t, dir, s.id)
			ps, err := g.Points()
			if err != nil {
				t.Fatal(err)
			}
			// Before any repair, every kept point is intact.
			for _, p := range ps {
				if contains(kept, p.ID) {
					s.checkRestore(g, p)
				}
			}
			// Verify reports the unfinished prune, and nothing else.
			faults, err := g.Verify(context.Background(), VerifyOptions{ReadData: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(faults) != 1 || faults[0].File != g.journal().Path(pruneKey) || !strings.Contains(faults[0].Problem, "interrupted prune") {
				t.Errorf("verify of an interrupted prune: %v", faults)
			}
			// A new prune refuses to start over an interrupted one.
			unlock, err := g.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if pl2, err := g.PlanPrune(policy, pruneNow); err == nil {
				if err := g.Prune(context.Background(), pl2); err == nil || !strings.Contains(err.Error(), "Repair") {
					t.Errorf("prune over an interrupted one: %v", err)
				}
			}
			did, err := g.Repair(context.Background())
			unlock()
			if err != nil {
				t.Fatal(err)
			}
			if len(did) == 0 || !strings.Contains(strings.Join(did, "\n"), "interrupted prune") {
				t.Errorf("repair says %q", did)
			}
			checkPruned(t, s, g, kept)
		})
	}
}

// TestCommitKilledIsRepaired SIGKILLs a backup after its manifest is written but
// before the point is renamed complete: the point is not listed, Repair removes it,
// and the chain continues from the last complete point.
func TestCommitKilledIsRepaired(t *testing.T) {
	s := newSim(t, "vda")
	dir := filepath.Join(t.TempDir(), "repo")
	g := openGuest(t, dir, s.id)
	s.write("vda", 0x51, 0, 2<<20)
	full := s.backup(g, LevelFull, "", t0)
	at := t0.Add(time.Hour)
	if !runHelper(t, "commit", helperEnv{Dir: dir, Guest: s.id, Parent: full.ID, At: at, CrashAt: PointCommitManifest}) {
		t.Fatal("the commit was not killed")
	}
	partial := filepath.Join(g.Dir, PartialPfx+NewID(at, LevelInc))
	if _, err := os.Stat(filepath.Join(partial, ManifestFile)); err != nil {
		t.Fatalf("the helper did not reach the manifest: %v", err)
	}
	ps, _ := g.Points()
	if len(ps) != 1 {
		t.Fatalf("points listed after a killed commit: %v", ids(ps))
	}
	unlock, _ := g.Lock(context.Background())
	did, err := g.Repair(context.Background())
	unlock()
	if err != nil || len(did) != 1 || !strings.Contains(did[0], "unfinished point "+NewID(at, LevelInc)) {
		t.Fatalf("repair: %q %v", did, err)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Fatalf("repair left %s", partial)
	}
	s.write("vda", 0x52, 1<<20, 4096)
	inc := s.backup(g, LevelInc, full.ID, at)
	if inc.ID != NewID(at, LevelInc) {
		t.Errorf("the next inc is %s", inc.ID)
	}
	s.checkRestore(g, inc)
	s.checkRestore(g, full)
}

// TestLockExcludesOtherProcesses: a guest locked by another process cannot be locked
// until that process dies (SIGKILL releases the lock).
func TestLockExcludesOtherProcesses(t *testing.T) {
	dir := t.TempDir()
	id := GuestID{UUID: "22222222-2222-2222-2222-222222222222", Name: "held"}
	g := openGuest(t, dir, id)
	data, _ := json.Marshal(helperEnv{Dir: dir, Guest: id})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "REPO_TEST_HELPER=hold", "REPO_TEST_ENV="+string(data))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "locked\n" {
		t.Fatalf("helper said %q", line)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := g.Lock(ctx); err == nil {
		t.Fatal("locked a guest another process holds")
	}
	// A backup in progress elsewhere does not block readers.
	ur, err := g.RLock(ctx)
	if err != nil {
		t.Fatalf("readers blocked by another process's writer lock: %v", err)
	}
	ur()
	cmd.Process.Kill()
	cmd.Wait()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	unlock, err := g.Lock(ctx2)
	if err != nil {
		t.Fatalf("lock after the holder died: %v", err)
	}
	unlock()
	// Within one process: shared readers coexist and exclude a prune.
	u1, err := g.RLock(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	u2, err := g.RLock(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel3 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel3()
	if _, err := g.lockReaders(short); err == nil {
		t.Fatal("readers' lock taken exclusively while shared holders exist")
	}
	u1()
	u2()
	u3, err := g.lockReaders(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	u3()
}

// TestPruneWaitsForReaders: a prune does not change points while a reader (verify,
// restore) holds the readers' lock, and proceeds once it is released.
func TestPruneWaitsForReaders(t *testing.T) {
	s := newSim(t, "vda")
	g := openGuest(t, t.TempDir(), s.id)
	s.write("vda", 1, 0, 65536)
	f := s.backup(g, LevelFull, "", t0)
	s.write("vda", 2, 65536, 65536)
	inc := s.backup(g, LevelInc, f.ID, t0.Add(time.Hour))
	ctx := context.Background()
	unlock, err := g.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	plan, err := g.PlanPrune(retention.GFS{Last: 1}, t0.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	reader, err := g.RLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := g.Prune(short, plan); err == nil || !strings.Contains(err.Error(), "readers") {
		t.Fatalf("prune under a reader: %v", err)
	}
	if ps, _ := g.Points(); len(ps) != 2 {
		t.Fatalf("prune changed points under a reader: %v", ids(ps))
	}
	reader()
	if err := g.Prune(ctx, plan); err != nil {
		t.Fatal(err)
	}
	checkPruned(t, s, g, []string{inc.ID})
}
