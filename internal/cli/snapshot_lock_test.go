package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/testbed"
)

// holdGuestLock takes d's cross-process guest lock in the test process, as another
// autosnap run would hold it (flock locks of two open files conflict within one process
// too). The returned function releases it; it is also released when the test ends.
func holdGuestLock(t *testing.T, d *testbed.Domain) func() {
	t.Helper()
	rows, r := vmList(t, d.Name)
	if r.code != 0 || len(rows) != 1 {
		t.Fatalf("vm list %s: exit %d, %d rows", d.Name, r.code, len(rows))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	unlock, err := engine.LockGuest(ctx, engine.DefaultLockDir(), rows[0].Node+"/"+rows[0].UUID)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release := func() { once.Do(unlock) }
	t.Cleanup(release)
	return release
}

// TestSnapshotCommandsTakeGuestLock: while another run holds a guest's lock, every
// snapshot command that changes the guest waits --timeout, then fails with exit 1 and
// the lock message, changing nothing; read-only commands do not wait. Once the lock is
// free a waiting command goes ahead.
func TestSnapshotCommandsTakeGuestLock(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	const n = 64 << 10
	for i := 1; i <= 2; i++ {
		mustRun(t, "snapshot", "create", d.Name, fmt.Sprintf("s%d", i), "--description", "mine")
		writeAny(t, d, "vda", int64(i*n), byte(i), n)
	}
	xmlFile := filepath.Join(t.TempDir(), "s2.xml")
	if err := os.WriteFile(xmlFile, []byte(mustRun(t, "snapshot", "dumpxml", d.Name, "s2").stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	before := tree(snapshotList(t, d.Name))
	chain := strings.Join(d.Chain(t, "vda"), " ")

	release := holdGuestLock(t, d)
	pid := fmt.Sprintf("pid %d", os.Getpid())
	for _, args := range [][]string{
		{"snapshot", "delete", d.Name, "s1"},
		{"snapshot", "delete", d.Name, "s1", "--metadata"},
		{"snapshot", "revert", d.Name, "s1"},
		{"snapshot", "create", d.Name, "s3", "--quiesce", "off"},
		{"snapshot", "edit", d.Name, "s1", "--description", "changed"},
		{"snapshot", "edit", d.Name, "s1", "--rename", "renamed"},
		{"snapshot", "redefine", d.Name, xmlFile},
		{"snapshot", "current", d.Name, "s1"},
		{"snapshot", "chain", "collapse", d.Name, "--forget-snapshots"},
	} {
		// 3 s: on a busy machine listing the guests alone can take more than a second.
		r := run(t, append([]string{"--timeout", "3"}, args...)...)
		if r.code != ExitFailure || !strings.Contains(r.stderr, "locked by another autosnap run") || !strings.Contains(r.stderr, pid) ||
			!strings.Contains(r.stderr, "raise --timeout") {
			t.Errorf("%s while the guest is locked: exit %d, want %d with the lock message naming %s and what to do\n%s",
				strings.Join(args, " "), r.code, ExitFailure, pid, r.stderr)
		}
		if r.took < 2900*time.Millisecond {
			t.Errorf("%s gave up after %s, before --timeout", strings.Join(args, " "), r.took)
		}
	}
	// Reading needs no lock (the lock is held for longer than --timeout).
	mustRun(t, "snapshot", "info", d.Name, "s1")
	mustRun(t, "snapshot", "chain", d.Name)
	if got := tree(snapshotList(t, d.Name)); got != before {
		t.Errorf("refused commands changed the snapshots: %s, was %s", got, before)
	}
	if got := strings.Join(d.Chain(t, "vda"), " "); got != chain {
		t.Errorf("refused commands changed the chain: %s, was %s", got, chain)
	}
	checkData(t, d, "vda", n, []int{1, 2}, nil)

	// A command with a long enough --timeout waits for the holder and then runs.
	go func() {
		time.Sleep(2 * time.Second)
		release()
	}()
	r := mustRun(t, "--timeout", "30", "snapshot", "delete", d.Name, "s1")
	if r.took < 1500*time.Millisecond {
		t.Errorf("delete took %s: it did not wait for the lock", r.took)
	}
	if got := snapNames(snapshotList(t, d.Name)); got != "s2" {
		t.Errorf("after the delete: %s, want s2", got)
	}
	checkData(t, d, "vda", n, []int{1, 2}, nil)
}

// TestSnapAndManualDeleteDoNotInterleave: a cron-like snap run holds the guest while it
// works (here: its snap-create-pre hook sleeps); a manual snapshot delete meanwhile
// either gives up with the lock message or waits its turn, and never runs inside the
// snap run.
func TestSnapAndManualDeleteDoNotInterleave(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	const n = 64 << 10
	d.WriteDisk(t, "vda", 0, 1, n)
	mustRun(t, "snapshot", "create", d.Name, "manual", "--quiesce", "off")
	d.WriteDisk(t, "vda", n, 2, n)

	dir := t.TempDir()
	started, finished := filepath.Join(dir, "started"), filepath.Join(dir, "finished")
	slow, _ := hookScript(t, dir, "case \"$AUTOSNAP_PHASE\" in snap-create-pre) touch "+started+"; sleep 8;; snap-create-post) touch "+finished+";; esac")
	var wg sync.WaitGroup
	var cron result
	wg.Add(1)
	go func() {
		defer wg.Done()
		cron = snap(t, d.Name, "cron", 3, "--quiesce", "off", "--script", slow)
	}()
	for i := 0; i < 1000; i++ {
		if _, err := os.Stat(started); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(started); err != nil {
		wg.Wait()
		t.Fatalf("the snap run never reached its pre hook: exit %d", cron.code)
	}
	r := run(t, "--timeout", "2", "snapshot", "delete", d.Name, "manual")
	if r.code != ExitFailure || !strings.Contains(r.stderr, "locked by another autosnap run") {
		t.Errorf("delete during the snap run: exit %d, want %d with the lock message", r.code, ExitFailure)
	}
	r = run(t, "--timeout", "60", "snapshot", "delete", d.Name, "manual")
	_, err := os.Stat(finished)
	wg.Wait()
	if cron.code != 0 || r.code != 0 {
		t.Fatalf("snap exit %d, delete exit %d", cron.code, r.code)
	}
	if err != nil {
		t.Errorf("the delete finished before the snap run released the guest")
	}
	rows := snapshotList(t, d.Name)
	if len(rows) != 1 || !strings.HasPrefix(rows[0].Name, "autocron") {
		t.Errorf("snapshots after both runs: %s, want only the snap run's", snapNames(rows))
	}
	if got := len(d.Chain(t, "vda")); got != 2 {
		t.Errorf("chain has %d images, want 2 (base, the snap run's overlay)", got)
	}
	for i, want := range []byte{1, 2} {
		if got := testbed.ReadImage(t, d.Chain(t, "vda")[0], int64(i*n), n); string(got) != strings.Repeat(string([]byte{want}), n) {
			t.Errorf("vda at %d lost its data", i*n)
		}
	}
}
