package engine

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/hook"
	"github.com/autosnap/autosnap/internal/naming"
)

// harness runs jobs against one fake driver with an injected clock.
type harness struct {
	t       *testing.T
	f       *fakeDriver
	clock   *testClock
	out     bytes.Buffer
	lockDir string
	events  string // shared event file for the driver and hook scripts
}

func newHarness(t *testing.T, guests ...driver.Guest) *harness {
	h := &harness{t: t, f: newFake(guests...), clock: newClock(), lockDir: t.TempDir()}
	h.events = filepath.Join(t.TempDir(), "events")
	h.f.eventFile = h.events
	h.f.clock = h.clock.Now
	return h
}

func (h *harness) job(label string, keep int) *Job {
	return &Job{
		Driver: h.f, Label: label, Keep: keep, Format: mustFormat(h.t, naming.DefaultFormat), Location: time.UTC,
		MaxParallel: 2, Timeout: 2 * time.Second, LockDir: h.lockDir, Now: h.clock.Now, Out: &h.out,
	}
}

// snap runs one snap job and returns its report; the job's error is checked by the caller.
func (h *harness) snap(j *Job) (*Report, error) {
	h.t.Helper()
	h.out.Reset()
	rep, err := j.Snap(context.Background(), h.f.guests)
	h.t.Logf("snap %s keep %d: %v\n%s", j.Label, j.Keep, err, h.out.String())
	return rep, err
}

func (h *harness) clean(j *Job) (*Report, error) {
	h.t.Helper()
	h.out.Reset()
	rep, err := j.Clean(context.Background(), h.f.guests)
	h.t.Logf("clean %s keep %d: %v\n%s", j.Label, j.Keep, err, h.out.String())
	return rep, err
}

// eventLines returns the shared event file's lines that start with one of prefixes.
func (h *harness) eventLines(prefixes ...string) []string {
	b, err := os.ReadFile(h.events)
	if err != nil && !os.IsNotExist(err) {
		h.t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" && (len(prefixes) == 0 || slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(l, p) })) {
			out = append(out, l)
		}
	}
	return out
}

// hookScript writes a hook that appends "hook PHASE VM SNAP" to the event file and
// exits with the status given for its phase (0 for the others).
func (h *harness) hookScript(exits map[hook.Phase]int, extra string) *hook.Runner {
	h.t.Helper()
	var cases strings.Builder
	for p, code := range exits {
		cases.WriteString("  " + string(p) + ") exit " + strconv.Itoa(code) + " ;;\n")
	}
	body := "#!/bin/sh\necho \"hook $AUTOSNAP_PHASE $AUTOSNAP_VMNAME $AUTOSNAP_SNAP_NAME\" >> " + h.events + "\n" + extra + "\ncase \"$AUTOSNAP_PHASE\" in\n" + cases.String() + "esac\nexit 0\n"
	p := filepath.Join(h.t.TempDir(), "hook.sh")
	if err := os.WriteFile(p, []byte(body), 0o700); err != nil {
		h.t.Fatal(err)
	}
	return &hook.Runner{Path: p, Timeout: 10 * time.Second}
}

func ours(desc string) string { return naming.Description(map[string]string{"consistency": desc}) }

var t0 = time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)

func TestSnapCreatesAndRetains(t *testing.T) {
	a, b := running("a"), withState(running("b"), driver.StateShutoff)
	h := newHarness(t, a, b)
	h.f.agent["a"] = true
	h.f.addSnap("a", "before-upgrade", "my own", t0)
	h.f.addSnap("a", "autodaily260901000000", ours("crash"), t0)
	h.f.addSnap("a", "autohourly260901010000", "cv4pve-autosnap", t0.Add(time.Hour))
	var created []string
	for range 3 {
		rep, err := h.snap(h.job("hourly", 2))
		if err != nil {
			t.Fatal(err)
		}
		created = append(created, rep.SnapName)
		for _, g := range rep.Guests {
			if g.Outcome != OutcomeOK || g.Created != rep.SnapName {
				t.Errorf("%s: %+v", g.Guest.Name, g)
			}
		}
	}
	want := []string{"before-upgrade", "autodaily260901000000", created[1], created[2]}
	if got := h.f.names("a"); !slices.Equal(got, want) {
		t.Errorf("guest a keeps %v, want %v", got, want)
	}
	if got := h.f.names("b"); !slices.Equal(got, created[1:]) {
		t.Errorf("guest b keeps %v, want %v", got, created[1:])
	}
	s, _ := h.f.snap("a", created[2])
	if !naming.IsOurs(s.Description) || s.Consistency != driver.ConsistencyQuiesced {
		t.Errorf("guest a's snapshot: description %q, consistency %q", s.Description, s.Consistency)
	}
	if s, _ := h.f.snap("b", created[2]); s.Consistency != driver.ConsistencyOffline {
		t.Errorf("shut-off guest's snapshot: consistency %q, want offline", s.Consistency)
	}
	// Removals are oldest first, and only ever of this label.
	var deletes []string
	for _, e := range h.f.Events("delete a") {
		deletes = append(deletes, strings.Fields(e)[2])
	}
	if wantDel := []string{"autohourly260901010000", created[0]}; !slices.Equal(deletes, wantDel) {
		t.Errorf("deletes on a: %v, want %v", deletes, wantDel)
	}
}

func TestSnapFailuresAndSkips(t *testing.T) {
	type setup func(h *harness, j *Job)
	cases := []struct {
		name    string
		guest   driver.Guest
		setup   setup
		outcome Outcome
		reason  string // substring of the output
		creates bool
	}{
		{"create fails", running("g"), func(h *harness, j *Job) { h.f.failCreate["g"] = errInjected }, OutcomeFailed, "injected failure", true},
		{"template", func() driver.Guest { g := running("g"); g.Template = true; return g }(), nil, OutcomeSkipped, "is template", false},
		{"unknown state", withState(running("g"), driver.StateUnknown), nil, OutcomeFailed, "status unknown", false},
		{"only running", withState(running("g"), driver.StateShutoff), func(h *harness, j *Job) { j.OnlyRunning = true }, OutcomeSkipped, "--only-running", false},
		{"storage full", running("g"), func(h *harness, j *Job) { h.f.storage["g"] = 99; j.MaxPercStorage = 95 }, OutcomeFailed, "above --max-perc-storage 95%", false},
		{"chain too deep", running("g"), func(h *harness, j *Job) { j.MaxChainDepth = 1; j.Keep = 5 }, OutcomeFailed, "--max-chain-depth 1", false},
		{"quiesce on without agent", running("g"), func(h *harness, j *Job) { j.Quiesce = QuiesceOn }, OutcomeFailed, "--quiesce on, but the guest agent does not answer", false},
		{"locked", running("g"), func(h *harness, j *Job) {
			unlock, err := LockGuest(context.Background(), j.LockDir, running("g").Key())
			if err != nil {
				h.t.Fatal(err)
			}
			h.t.Cleanup(unlock)
			j.Timeout = 300 * time.Millisecond
		}, OutcomeFailed, "locked by another autosnap run", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, c.guest)
			h.f.addSnap("g", "autohourly260901000000", ours("crash"), t0)
			h.f.addSnap("g", "autohourly260901010000", ours("crash"), t0.Add(time.Hour))
			j := h.job("hourly", 1)
			if c.setup != nil {
				c.setup(h, j)
			}
			rep, err := h.snap(j)
			if c.outcome == OutcomeFailed && !errors.Is(err, ErrGuestsFailed) || c.outcome != OutcomeFailed && err != nil {
				t.Errorf("job error %v", err)
			}
			if got := rep.Guests[0].Outcome; got != c.outcome {
				t.Errorf("outcome %s, want %s", got, c.outcome)
			}
			if !strings.Contains(h.out.String(), c.reason) {
				t.Errorf("output does not say %q", c.reason)
			}
			if got := len(h.f.Events("create")) > 0; got != c.creates {
				t.Errorf("create called: %v, want %v", got, c.creates)
			}
			if d := h.f.Events("delete"); len(d) > 0 {
				t.Errorf("a guest that failed or was skipped lost snapshots: %v", d)
			}
			if n := len(h.f.names("g")); n != 2 {
				t.Errorf("%d snapshots left, want the 2 old ones", n)
			}
		})
	}
}

// TestRemovalFailureStops: the first failed removal ends the guest's retention; older
// snapshots after it are not attempted, and the guest has failed.
func TestRemovalFailureStops(t *testing.T) {
	h := newHarness(t, running("g"))
	for i := range 3 {
		h.f.addSnap("g", naming.Name("hourly", mustFormat(t, naming.DefaultFormat), t0.Add(time.Duration(i)*time.Hour)), ours("crash"), t0.Add(time.Duration(i)*time.Hour))
	}
	first := h.f.names("g")[0]
	h.f.failDelete[first] = errInjected
	rep, err := h.snap(h.job("hourly", 1))
	if !errors.Is(err, ErrGuestsFailed) || rep.Guests[0].Outcome != OutcomeFailed {
		t.Fatalf("job %v, outcome %s", err, rep.Guests[0].Outcome)
	}
	if d := h.f.Events("delete"); len(d) != 1 {
		t.Errorf("deletes after a failure: %v", d)
	}
	if n := len(h.f.names("g")); n != 4 {
		t.Errorf("%d snapshots, want 4 (3 old + new)", n)
	}
}

func TestHooksOrder(t *testing.T) {
	h := newHarness(t, running("g"))
	h.f.addSnap("g", "autohourly260901000000", ours("crash"), t0)
	j := h.job("hourly", 1)
	j.Hooks = h.hookScript(nil, "")
	rep, err := h.snap(j)
	if err != nil {
		t.Fatal(err)
	}
	n := rep.SnapName
	want := []string{
		"hook snap-job-start  ",
		"hook snap-create-pre g " + n,
		"create g " + n + " quiesce=false memory=false frozen=false",
		"hook snap-remove-pre g autohourly260901000000",
		"delete g autohourly260901000000",
		"hook snap-remove-post g autohourly260901000000",
		"hook snap-create-post g " + n,
		"hook snap-job-end  ",
	}
	if got := h.eventLines("hook", "create", "delete"); !slices.Equal(got, want) {
		t.Errorf("order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	os.Remove(h.events)
	j = h.job("hourly", 0)
	j.Hooks = h.hookScript(nil, "")
	if _, err := h.clean(j); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"hook clean-job-start  ",
		"hook snap-remove-pre g " + n,
		"delete g " + n,
		"hook snap-remove-post g " + n,
		"hook clean-job-end  ",
	}
	if got := h.eventLines("hook", "create", "delete"); !slices.Equal(got, want) {
		t.Errorf("clean order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestDryRunMatchesRealRun: a dry run changes nothing, runs no hook, and announces
// exactly the creation and removals the real run then performs.
func TestDryRunMatchesRealRun(t *testing.T) {
	h := newHarness(t, running("g"))
	for i := range 3 {
		h.f.addSnap("g", naming.Name("hourly", mustFormat(t, naming.DefaultFormat), t0.Add(time.Duration(i)*time.Hour)), ours("crash"), t0.Add(time.Duration(i)*time.Hour))
	}
	before := h.f.names("g")
	j := h.job("hourly", 2)
	j.DryRun = true
	j.Hooks = h.hookScript(nil, "")
	rep, err := h.snap(j)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.eventLines("hook", "create", "delete", "freeze", "thaw", "prepare "); len(got) != 0 {
		t.Errorf("dry run changed something: %v", got)
	}
	if got := h.eventLines("prepare-dry"); len(got) != 1 {
		t.Errorf("dry run prepared %v, want one check-only prepare (CreateOptions.DryRun)", got)
	}
	if !slices.Equal(h.f.names("g"), before) {
		t.Errorf("dry run changed snapshots")
	}
	dryRemoved := rep.Guests[0].Removed
	if want := before[:2]; !slices.Equal(dryRemoved, want) {
		t.Errorf("dry run removes %v, want %v", dryRemoved, want)
	}
	rep, err = h.snap(h.job("hourly", 2))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Guests[0].Removed, dryRemoved) {
		t.Errorf("real run removed %v, dry run said %v", rep.Guests[0].Removed, dryRemoved)
	}
}
