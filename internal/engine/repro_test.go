package engine

// Tests for the reproductions of issue 8 that the engine owns, against the fake driver.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/hook"
	"github.com/autosnap/autosnap/internal/naming"
)

// Repro 6: with --strict-hooks a failing *-pre hook aborts that guest's operation and
// the guest is reported failed with the hook's exit status; without it the failure is
// a warning, as in cv4pve-autosnap.
func TestStrictHooks(t *testing.T) {
	old := "autohourly260901000000"
	setup := func(t *testing.T, exits map[hook.Phase]int, strict bool, keep int) (*harness, *Job) {
		h := newHarness(t, running("g"))
		h.f.addSnap("g", old, ours("crash"), t0)
		j := h.job("hourly", keep)
		j.Hooks = h.hookScript(exits, "")
		j.StrictHooks = strict
		return h, j
	}
	phases := func(h *harness) string {
		var p []string
		for _, l := range h.eventLines("hook") {
			p = append(p, strings.Fields(l)[1])
		}
		return strings.Join(p, ",")
	}

	t.Run("create-pre strict", func(t *testing.T) {
		h, j := setup(t, map[hook.Phase]int{hook.SnapCreatePre: 3}, true, 1)
		rep, err := h.snap(j)
		if !errors.Is(err, ErrGuestsFailed) {
			t.Fatalf("job error %v", err)
		}
		g := rep.Guests[0]
		if g.Outcome != OutcomeFailed || !strings.Contains(g.Reason, "exit status 3") || !strings.Contains(fmt.Sprint(g.Err), "exited with status 3") {
			t.Errorf("guest result %+v", g)
		}
		var ee *hook.ExitError
		if !errors.As(g.Err, &ee) || ee.Code != 3 {
			t.Errorf("the error does not carry the hook's exit status: %v", g.Err)
		}
		if ev := h.f.Events("create", "delete", "prepare"); len(ev) != 0 {
			t.Errorf("the guest was touched: %v", ev)
		}
		if got := phases(h); got != "snap-job-start,snap-create-pre,snap-create-abort,snap-job-end" {
			t.Errorf("phases %s", got)
		}
		if !slices.Equal(h.f.names("g"), []string{old}) {
			t.Errorf("snapshots %v", h.f.names("g"))
		}
	})

	t.Run("create-pre default warns", func(t *testing.T) {
		h, j := setup(t, map[hook.Phase]int{hook.SnapCreatePre: 3}, false, 1)
		rep, err := h.snap(j)
		if err != nil || rep.Guests[0].Outcome != OutcomeOK {
			t.Fatalf("job %v, outcome %s", err, rep.Guests[0].Outcome)
		}
		if !strings.Contains(h.out.String(), "WARNING: hook script") || len(h.f.Events("create")) != 1 {
			t.Errorf("without --strict-hooks a failing pre hook must only warn")
		}
	})

	t.Run("remove-pre strict", func(t *testing.T) {
		h, j := setup(t, map[hook.Phase]int{hook.SnapRemovePre: 4}, true, 1)
		rep, err := h.snap(j)
		if !errors.Is(err, ErrGuestsFailed) {
			t.Fatalf("job error %v", err)
		}
		g := rep.Guests[0]
		if g.Outcome != OutcomeFailed || !strings.Contains(g.Reason, "exit status 4") || g.Created != rep.SnapName || len(g.Removed) != 0 {
			t.Errorf("guest result %+v", g)
		}
		if ev := h.f.Events("delete"); len(ev) != 0 {
			t.Errorf("the removal was done: %v", ev)
		}
		if got := phases(h); got != "snap-job-start,snap-create-pre,snap-remove-pre,snap-remove-abort,snap-job-end" {
			t.Errorf("phases %s", got)
		}
	})

	t.Run("clean remove-pre strict", func(t *testing.T) {
		h, j := setup(t, map[hook.Phase]int{hook.SnapRemovePre: 5}, true, 0)
		rep, err := h.clean(j)
		if !errors.Is(err, ErrGuestsFailed) || rep.Guests[0].Outcome != OutcomeFailed || !strings.Contains(rep.Guests[0].Reason, "exit status 5") {
			t.Fatalf("job %v, result %+v", err, rep.Guests[0])
		}
		if ev := h.f.Events("delete"); len(ev) != 0 {
			t.Errorf("the removal was done: %v", ev)
		}
		if got := phases(h); got != "clean-job-start,snap-remove-pre,snap-remove-abort,clean-job-end" {
			t.Errorf("phases %s", got)
		}
	})

	t.Run("remove-pre default warns", func(t *testing.T) {
		h, j := setup(t, map[hook.Phase]int{hook.SnapRemovePre: 4}, false, 0)
		if _, err := h.clean(j); err != nil {
			t.Fatal(err)
		}
		if len(h.f.names("g")) != 0 {
			t.Errorf("without --strict-hooks the removal must go ahead")
		}
	})
}

// Repro 7: snapshots taken with another --timestamp-format are still ours: status
// shows them with their label, and snap and clean count and remove them. A literal in
// the format never becomes part of the label.
func TestOtherTimestampFormats(t *testing.T) {
	h := newHarness(t, running("g"))
	// Made by earlier runs (and by cv4pve-autosnap) with other formats.
	h.f.addSnap("g", "autohourly20260901-0000", ours("crash"), time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC))
	h.f.addSnap("g", "autohourly20260901T010000", "cv4pve-autosnap", time.Date(2026, 9, 1, 1, 0, 0, 0, time.UTC))
	h.f.addSnap("g", "autohourly260901020000123", ours("crash"), time.Date(2026, 9, 1, 2, 0, 0, 0, time.UTC))
	h.f.addSnap("g", "autodaily2026_09_01", ours("crash"), time.Date(2026, 9, 1, 3, 0, 0, 0, time.UTC))

	rows, err := Status(context.Background(), h.f, h.f.guests, "", mustFormat(t, naming.DefaultFormat), time.UTC, time.Second, 1)
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, r := range rows {
		labels = append(labels, r.Name+"="+r.Label)
	}
	want := []string{"autohourly20260901-0000=hourly", "autohourly20260901T010000=hourly", "autohourly260901020000123=hourly", "autodaily2026_09_01=daily"}
	if !slices.Equal(labels, want) {
		t.Errorf("status: %v, want %v", labels, want)
	}

	// A format with a leading literal: the literal is not part of the label, whatever
	// format status is later run with.
	j := h.job("lit", 5)
	j.Format = mustFormat(t, "'tflit'yyMMddHHmmss")
	rep, err := h.snap(j)
	if err != nil {
		t.Fatal(err)
	}
	rows, err = Status(context.Background(), h.f, h.f.guests, "", mustFormat(t, naming.DefaultFormat), time.UTC, time.Second, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.Name == rep.SnapName && r.Label != "lit" {
			t.Errorf("%s: label %q, want lit", r.Name, r.Label)
		}
	}
	if rows, _ := Status(context.Background(), h.f, h.f.guests, "lit", mustFormat(t, "yyyyMMdd"), time.UTC, time.Second, 1); len(rows) != 1 {
		t.Errorf("status --label lit with another format: %d rows, want 1", len(rows))
	}

	// clean with the default format removes every hourly snapshot, whatever its format.
	if _, err := h.clean(h.job("hourly", 0)); err != nil {
		t.Fatal(err)
	}
	if got := h.f.names("g"); !slices.Equal(got, []string{"autodaily2026_09_01", rep.SnapName}) {
		t.Errorf("after clean --label hourly --keep 0: %v", got)
	}
}

// Repro 8: a name that already exists (two runs within one timestamp unit) fails the
// guest before anything is changed, with a message that says what happened.
func TestNameCollision(t *testing.T) {
	for _, tc := range []struct {
		name    string
		visible bool // the snapshot is listed; otherwise only the driver notices
	}{{"listed", true}, {"driver", false}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, running("g"))
			h.f.addSnap("g", "autohourly260901000000", ours("crash"), t0)
			j := h.job("hourly", 1)
			j.Format = mustFormat(t, "yyyyMMdd")
			taken := naming.Name("hourly", j.Format, h.clock.t)
			if tc.visible {
				h.f.addSnap("g", taken, ours("crash"), h.clock.t)
			} else {
				h.f.failCreate["g"] = fmt.Errorf("external snapshot file for disk vda already exists: %w", driver.ErrExists)
			}
			before := h.f.names("g")
			rep, err := h.snap(j)
			if !errors.Is(err, ErrGuestsFailed) || rep.Guests[0].Outcome != OutcomeFailed {
				t.Fatalf("job %v, outcome %s", err, rep.Guests[0].Outcome)
			}
			msg := fmt.Sprintf("snapshot %s already exists on guest g (two runs within one timestamp unit? use a finer --timestamp-format)", taken)
			if !strings.Contains(h.out.String(), msg) {
				t.Errorf("output does not say %q", msg)
			}
			if !errors.Is(rep.Guests[0].Err, driver.ErrExists) {
				t.Errorf("error %v does not wrap driver.ErrExists", rep.Guests[0].Err)
			}
			if tc.visible && len(h.f.Events("create", "prepare")) != 0 {
				t.Errorf("create attempted for a name that is listed already")
			}
			if len(h.f.Events("delete")) != 0 || !slices.Equal(h.f.names("g"), before) {
				t.Errorf("snapshots changed: %v → %v", before, h.f.names("g"))
			}
		})
	}
}

// Repro 9: a dry run shows the outcome the real run would have; it promises no
// removal the real run would not reach, and it shows every kept snapshot with its
// reason.
func TestDryRunIsHonest(t *testing.T) {
	existing := func(h *harness) {
		for i := range 3 {
			at := t0.Add(time.Duration(i) * time.Hour)
			h.f.addSnap("g", naming.Name("hourly", mustFormat(t, naming.DefaultFormat), at), ours("crash"), at)
		}
	}
	for _, tc := range []struct {
		name  string
		setup func(h *harness, j *Job)
		say   string
	}{
		{"name taken", func(h *harness, j *Job) {
			h.f.addSnap("g", naming.Name("hourly", j.Format, h.clock.t), ours("crash"), h.clock.t)
		}, "already exists on guest g"},
		{"driver refuses", func(h *harness, j *Job) { h.f.failPrepare["g"] = errInjected }, "injected failure"},
		{"quiesce on without agent", func(h *harness, j *Job) { j.Quiesce = QuiesceOn }, "--quiesce on"},
		{"chain depth", func(h *harness, j *Job) { j.MaxChainDepth = 2; j.Keep = 4 }, "--max-chain-depth 2"},
		{"storage", func(h *harness, j *Job) { j.MaxPercStorage = 50; h.f.storage["g"] = 60 }, "--max-perc-storage"},
		{"strict hooks", func(h *harness, j *Job) {
			j.StrictHooks = true
			j.Hooks = h.hookScript(map[hook.Phase]int{hook.SnapCreatePre: 1}, "")
		}, "hooks do not run in a dry run"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, running("g"))
			existing(h)
			run := func(dry bool) (*Report, string) {
				j := h.job("hourly", 1)
				j.DryRun = dry
				tc.setup(h, j)
				rep, _ := h.snap(j)
				return rep, h.out.String()
			}
			h.clock.inc = 0
			dry, out := run(true)
			if !strings.Contains(out, tc.say) {
				t.Errorf("dry run does not say %q", tc.say)
			}
			if len(h.f.Events("create", "delete", "freeze")) != 0 {
				t.Fatalf("dry run changed something")
			}
			if tc.name == "strict hooks" {
				return // the hook's verdict is unknown without running it
			}
			real, _ := run(false)
			d, r := dry.Guests[0], real.Guests[0]
			if d.Outcome != r.Outcome || !slices.Equal(d.Removed, r.Removed) || d.Created != r.Created {
				t.Errorf("dry run: %s created %q removed %v; real run: %s created %q removed %v", d.Outcome, d.Created, d.Removed, r.Outcome, r.Created, r.Removed)
			}
		})
	}

	t.Run("keeps with reasons", func(t *testing.T) {
		h := newHarness(t, running("g"))
		existing(h)
		names := h.f.names("g")
		j := h.job("hourly", 3)
		j.DryRun = true
		rep, err := h.snap(j)
		if err != nil {
			t.Fatal(err)
		}
		out := h.out.String()
		for _, want := range []string{
			"Remove snapshot: " + names[0] + " (beyond keep 3)",
			"Keep snapshot: " + names[1] + " (newest 3 of 3)",
			"Keep snapshot: " + names[2] + " (newest 2 of 3)",
			"Keep snapshot: " + rep.SnapName + " (created now; newest 1 of 3)",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("dry run does not print %q", want)
			}
		}
	})
}

// Repro 10: a --state snapshot is labelled "memory"; --max-chain-depth counts the
// depth after retention.
func TestMemoryConsistencyAndChainDepthAfterRetention(t *testing.T) {
	h := newHarness(t, running("g"))
	h.f.agent["g"] = true
	j := h.job("mem", 1)
	j.Memory = true
	rep, err := h.snap(j)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := h.f.snap("g", rep.SnapName)
	if s.Consistency != driver.ConsistencyMemory || rep.Guests[0].Consistency != driver.ConsistencyMemory {
		t.Errorf("--state snapshot recorded %q, reported %q; want memory", s.Consistency, rep.Guests[0].Consistency)
	}
	if !strings.Contains(h.out.String(), "RAM saved with the disks") {
		t.Errorf("output does not describe the memory snapshot")
	}

	for _, tc := range []struct {
		existing, keep, depth int
		ok                    bool
	}{
		{1, 1, 1, true},  // one overlay stays: the new one
		{1, 1, 2, true},  // the brief's case
		{2, 1, 2, true},  // 2 overlays + 1 new − 2 removed = 1
		{2, 2, 2, true},  // 2 + 1 − 1 = 2
		{2, 3, 2, false}, // 2 + 1 − 0 = 3
		{0, 5, 1, true},
		{1, 5, 1, false},
	} {
		t.Run(fmt.Sprintf("existing%d_keep%d_depth%d", tc.existing, tc.keep, tc.depth), func(t *testing.T) {
			h := newHarness(t, running("g"))
			for i := range tc.existing {
				at := t0.Add(time.Duration(i) * time.Hour)
				h.f.addSnap("g", naming.Name("cd", mustFormat(t, naming.DefaultFormat), at), ours("crash"), at)
			}
			j := h.job("cd", tc.keep)
			j.MaxChainDepth = tc.depth
			rep, _ := h.snap(j)
			if got := rep.Guests[0].Outcome == OutcomeOK; got != tc.ok {
				t.Errorf("ok = %v, want %v", got, tc.ok)
			}
		})
	}
}

// The freeze window holds only the snapshot call: the driver prepares before the
// freeze, and the prepared snapshot is closed on every path.
func TestFreezeWindowHoldsOnlyCreate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(h *harness)
		events []string
		ok     bool
	}{
		{"ok", nil, []string{"prepare g N", "freeze g", "create g N quiesce=false memory=false frozen=true", "thaw g", "close g N"}, true},
		{"prepare fails", func(h *harness) { h.f.failPrepare["g"] = errInjected }, []string{"prepare g N"}, false},
		{"create fails", func(h *harness) { h.f.failCreate["g"] = errInjected }, []string{"prepare g N", "freeze g", "create g N quiesce=false memory=false frozen=true", "thaw g", "close g N"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, running("g"))
			h.f.agent["g"] = true
			if tc.setup != nil {
				tc.setup(h)
			}
			j := h.job("fz", 1)
			j.Watchdog = testWatchdog(t)
			rep, _ := h.snap(j)
			var want []string
			for _, e := range tc.events {
				want = append(want, strings.ReplaceAll(e, " N", " "+rep.SnapName))
			}
			if got := h.f.Events("prepare", "freeze", "create", "thaw", "close"); !slices.Equal(got, want) {
				t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if got := rep.Guests[0].Outcome == OutcomeOK; got != tc.ok {
				t.Errorf("ok = %v, want %v", got, tc.ok)
			}
			if h.f.frozen["g"] {
				t.Errorf("guest left frozen")
			}
		})
	}
}

// Drivers whose merges are bounded by progress get deletes without a deadline.
func TestStallBoundedDeletesHaveNoDeadline(t *testing.T) {
	for _, stall := range []bool{false, true} {
		h := newHarness(t, running("g"))
		h.f.stall = stall
		h.f.addSnap("g", "autohourly260901000000", ours("crash"), t0)
		if _, err := h.clean(h.job("hourly", 0)); err != nil {
			t.Fatal(err)
		}
		if want := []bool{!stall}; !slices.Equal(h.f.deleteHadDeadline, want) {
			t.Errorf("stall-bounded %v: delete had a deadline %v, want %v", stall, h.f.deleteHadDeadline, want)
		}
	}
}

// A driver's notes on a new snapshot reach the user; status shows an incomplete
// snapshot with the reason.
func TestNotesAndIncomplete(t *testing.T) {
	h := newHarness(t, running("g"))
	h.f.notes = []string{"the domain is transient: its original definition still names the base image"}
	rep, err := h.snap(h.job("n", 3))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(h.out.String(), "WARNING: the domain is transient: its original definition still names the base image") {
		t.Errorf("the driver's note is not shown")
	}
	h.f.incomplete[rep.SnapName] = "a merge removing it was interrupted"
	rows, err := Status(context.Background(), h.f, h.f.guests, "n", mustFormat(t, naming.DefaultFormat), time.UTC, time.Second, 1)
	if err != nil || len(rows) != 1 {
		t.Fatalf("status: %v, %+v", err, rows)
	}
	if rows[0].Incomplete != "a merge removing it was interrupted" {
		t.Errorf("status row incomplete = %q", rows[0].Incomplete)
	}
}

// Hook output of the guest whose output is being written streams through at once,
// while the hook still runs.
func TestHookOutputStreams(t *testing.T) {
	h := newHarness(t, running("g"))
	gate := h.t.TempDir() + "/gate"
	j := h.job("s", 1)
	j.Hooks = h.hookScript(nil, `if [ "$AUTOSNAP_PHASE" = snap-create-pre ]; then echo hook-says-hello; i=0; while [ ! -e `+gate+` ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; fi`)
	w := &watchWriter{want: "hook-says-hello", seen: make(chan struct{})}
	j.Out = w
	done := make(chan struct{})
	go func() {
		defer close(done)
		j.Snap(context.Background(), h.f.guests)
	}()
	select {
	case <-w.seen:
	case <-done:
		t.Fatalf("the hook's line appeared only after the guest was done:\n%s", w.String())
	case <-time.After(5 * time.Second):
		os.WriteFile(gate, nil, 0o600)
		<-done
		t.Fatalf("the hook's line did not appear while the hook ran (5s):\n%s", w.String())
	}
	os.WriteFile(gate, nil, 0o600)
	<-done
}

type watchWriter struct {
	mu   sync.Mutex
	buf  []byte
	want string
	seen chan struct{}
	once bool
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if !w.once && strings.Contains(string(w.buf), w.want) {
		w.once = true
		close(w.seen)
	}
	return len(p), nil
}

func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.buf)
}

// A snapshot whose earlier removal was interrupted (Incomplete) takes no place among
// the kept ones: it is removed, the dry run says why, and when the driver has already
// finished that removal by the time it is asked, the snapshot counts as gone.
func TestIncompleteSnapshotsAreFinished(t *testing.T) {
	h := newHarness(t, running("g"))
	for i := range 3 {
		at := t0.Add(time.Duration(i) * time.Hour)
		h.f.addSnap("g", naming.Name("hourly", mustFormat(t, naming.DefaultFormat), at), ours("crash"), at)
	}
	names := h.f.names("g")
	h.f.incomplete[names[2]] = "a merge removing it was interrupted"
	j := h.job("hourly", 2)
	j.DryRun = true
	dry, err := h.snap(j)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(h.out.String(), "Remove snapshot: "+names[2]+" (incomplete: a merge removing it was interrupted; finishing its interrupted removal)") {
		t.Errorf("dry run does not explain the incomplete snapshot's removal")
	}
	// The driver finishes the interrupted merge on its first call that changes the
	// guest (here: the create), so the later delete finds nothing.
	h.f.createHook = func(driver.Guest) {
		h.f.mu.Lock()
		defer h.f.mu.Unlock()
		h.f.snaps["g"] = slices.DeleteFunc(h.f.snaps["g"], func(s driver.Snapshot) bool { return s.Name == names[2] })
	}
	real, err := h.snap(h.job("hourly", 2))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{names[0], names[2]}; !slices.Equal(dry.Guests[0].Removed, want) || !slices.Equal(real.Guests[0].Removed, want) {
		t.Errorf("removed: dry %v, real %v, want %v", dry.Guests[0].Removed, real.Guests[0].Removed, want)
	}
	if got, want := h.f.names("g"), []string{names[1], real.SnapName}; !slices.Equal(got, want) {
		t.Errorf("left %v, want %v", got, want)
	}
}
