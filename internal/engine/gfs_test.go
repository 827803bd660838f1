package engine

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/retention"
)

// gfsHarness runs GFS jobs with a clock the test sets.
type gfsHarness struct {
	*harness
	now time.Time
	loc *time.Location
}

func newGFSHarness(t *testing.T, loc *time.Location, start time.Time) *gfsHarness {
	h := &gfsHarness{harness: newHarness(t, running("a")), now: start, loc: loc}
	h.f.clock = func() time.Time { return h.now }
	return h
}

func (h *gfsHarness) job(p retention.GFS) *Job {
	j := h.harness.job("gfs", 0)
	j.Retain, j.Location, j.Now = &p, h.loc, func() time.Time { return h.now }
	return j
}

// labelled gives the autosnap description recording label and the default format.
func labelled(t *testing.T, label string) string {
	return naming.Description(naming.NameFields(label, mustFormat(t, naming.DefaultFormat)))
}

// TestSnapGFSCalendar runs snap hourly through Berlin's October DST change with
// calendar rules and checks which snapshots remain, which snap failed (the repeated
// hour's name is taken), and that nothing not ours, of another label, protected or
// unreadable is removed.
func TestSnapGFSCalendar(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	h := newGFSHarness(t, berlin, time.Date(2026, 10, 22, 0, 0, 0, 0, berlin))
	old := time.Date(2026, 10, 1, 12, 0, 0, 0, berlin)
	foreign := []string{"before-upgrade", "autodaily261001120000", "autogfs261002120000", "autogfsbroken", "autogfs261003120000"}
	h.f.addSnap("a", "before-upgrade", "my own", old)
	h.f.addSnap("a", "autodaily261001120000", "cv4pve-autosnap", old)        // another label
	h.f.addSnap("a", "autogfs261002120000", "cv4pve-autosnap\nkeep me", old) // edited: not ours
	h.f.addSnap("a", "autogfsbroken", "cv4pve-autosnap", old)                // ours, unreadable
	h.f.addSnap("a", "autogfs261003120000", protectedDesc(t), old)           // protected
	h.f.addSnap("a", "autogfs261001120000", "cv4pve-autosnap", old)          // W40
	p := retention.GFS{Hourly: 6, Daily: 3, Weekly: 2}
	var failed []string
	for end := time.Date(2026, 10, 27, 12, 0, 0, 0, berlin); h.now.Before(end); h.now = h.now.Add(time.Hour) {
		rep, err := h.snap(h.job(p))
		if err != nil {
			if !errors.Is(err, ErrGuestsFailed) {
				t.Fatal(err)
			}
			failed = append(failed, rep.SnapName+": "+rep.Guests[0].Reason)
			continue
		}
		if rep.Guests[0].Outcome != OutcomeOK || rep.Guests[0].Created != rep.SnapName {
			t.Fatalf("%s: %+v", h.now, rep.Guests[0])
		}
		if !strings.Contains(h.out.String(), "Skip snapshot: autogfsbroken (its name does not read") {
			t.Fatalf("the unreadable snapshot is not reported:\n%s", h.out.String())
		}
	}
	if want := []string{"autogfs261025020000: name exists"}; !slices.Equal(failed, want) {
		t.Errorf("failed snaps %q, want %q (the repeated 02:00 of 2026-10-25)", failed, want)
	}
	want := append(slices.Clone(foreign),
		"autogfs261001120000",                                               // weekly #1 (2026-W40): W43 and W44 are covered by newer ones
		"autogfs261024230000", "autogfs261025230000", "autogfs261026230000", // daily #3..#1
		"autogfs261027060000", "autogfs261027070000", "autogfs261027080000", "autogfs261027090000", "autogfs261027100000", "autogfs261027110000", // hourly
	)
	got := h.f.names("a")
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("guest a keeps\n%q\nwant\n%q", got, want)
	}
	for _, e := range h.f.Events("delete a") {
		if n := strings.Fields(e)[2]; slices.Contains(foreign, n) {
			t.Errorf("removed %s, which is not the label's or not ours or protected", n)
		}
	}
}

// TestGFSDryRunReasons: a dry run lists every snapshot of the label with the reason
// it is kept, or that it is removed, and changes nothing; the real run then removes
// exactly what the dry run said.
func TestGFSDryRunReasons(t *testing.T) {
	h := newGFSHarness(t, time.UTC, time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC))
	for _, n := range []string{"autogfs261127230000", "autogfs261128080000", "autogfs261128230000", "autogfs261129080000", "autogfs261129110000"} {
		h.f.addSnap("a", n, labelled(t, "gfs"), time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)) // created: after the names (restored, copied)
	}
	before := h.f.names("a")
	j := h.job(retention.GFS{Last: 1, Daily: 2, Weekly: 1})
	j.DryRun = true
	if _, err := h.snap(j); err != nil {
		t.Fatal(err)
	}
	out := h.out.String()
	for _, w := range []string{
		"Keep snapshot: autogfs261129120000 (created now, last #1, covers daily 2026-11-29, covers weekly 2026-W48)",
		"Keep snapshot: autogfs261128230000 (daily #1 (2026-11-28))",
		"Keep snapshot: autogfs261127230000 (daily #2 (2026-11-27))",
		"Remove snapshot: autogfs261128080000 (kept by no rule of --keep-last 1 --keep-daily 2 --keep-weekly 1)",
		"Remove snapshot: autogfs261129080000 (kept by no rule",
		"Remove snapshot: autogfs261129110000 (kept by no rule",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("dry run output lacks %q:\n%s", w, out)
		}
	}
	if got := h.f.names("a"); !slices.Equal(got, before) {
		t.Errorf("dry run changed the snapshots: %v", got)
	}
	if _, err := h.snap(h.job(retention.GFS{Last: 1, Daily: 2, Weekly: 1})); err != nil {
		t.Fatal(err)
	}
	if got, want := h.f.names("a"), []string{"autogfs261127230000", "autogfs261128230000", "autogfs261129120000"}; !slices.Equal(got, want) {
		t.Errorf("after the real run: %v, want %v", got, want)
	}
}

// TestCleanGFS: clean applies the rules at the clock's time; rules that keep nothing
// are refused before any guest is touched, and a policy that would remove every
// snapshot of a guest fails that guest and removes nothing.
func TestCleanGFS(t *testing.T) {
	h := newGFSHarness(t, time.UTC, time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC))
	names := []string{"autogfs261120000000", "autogfs261125000000", "autogfs261129000000", "autogfs261129060000"}
	for _, n := range names {
		h.f.addSnap("a", n, labelled(t, "gfs"), h.now)
	}
	if _, err := h.clean(h.job(retention.GFS{})); !errors.Is(err, retention.ErrKeepsNothing) {
		t.Errorf("empty policy: %v, want ErrKeepsNothing", err)
	}
	if _, err := h.clean(h.job(retention.GFS{Daily: -2})); err == nil {
		t.Errorf("--keep-daily -2 accepted")
	}
	if _, err := h.clean(h.job(retention.GFS{Within: retention.Span{Hours: 1}})); !errors.Is(err, ErrGuestsFailed) {
		t.Errorf("--keep-within 1h over snapshots all older: %v, want the guest failed", err)
	}
	if got := h.f.names("a"); !slices.Equal(got, names) {
		t.Fatalf("a refused policy removed snapshots: %v", got)
	}
	if _, err := h.clean(h.job(retention.GFS{Within: retention.Span{Days: 1}, Weekly: 1})); err != nil {
		t.Fatal(err)
	}
	// Within 1d keeps both of 11-29; weekly #1 is W47's newest (11-20), since W48 is
	// covered.
	if got, want := []string{"autogfs261120000000", "autogfs261129000000", "autogfs261129060000"}, h.f.names("a"); !slices.Equal(got, want) {
		t.Errorf("after clean: %v, want %v", got, want)
	}
}

func protectedDesc(t *testing.T) string {
	d, err := naming.WithProtected(naming.Description(nil), true)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var _ = driver.StateRunning

// TestKeepStatus: per guest and label, what clean would keep now and why; protected
// rows are kept with their reason, a label the rules would empty is kept entirely
// with the refusal, and rows of other guests and labels are counted apart.
func TestKeepStatus(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	row := func(vm, label, name string, day, hour int, protected bool) StatusRow {
		return StatusRow{Node: "h1", VMID: vm, Label: label, Name: name, Named: time.Date(2026, 11, day, hour, 0, 0, 0, time.UTC), Protected: protected}
	}
	rows := []StatusRow{
		row("a", "gfs", "autogfs261127230000", 27, 23, false),
		row("a", "gfs", "autogfs261128230000", 28, 23, true),
		row("a", "gfs", "autogfs261129080000", 29, 8, false),
		row("a", "gfs", "autogfs261129100000", 29, 10, false),
		row("b", "gfs", "autogfs261129100000", 29, 10, false),
		row("a", "old", "autoold261101000000", 1, 0, false),
	}
	KeepStatus(rows, retention.GFS{Last: 1, Daily: 1, Within: retention.Span{Hours: 1}, Location: time.UTC}, now)
	want := []string{
		"true daily #1 (2026-11-27)",
		"true " + protectedReason,
		"false kept by no rule of --keep-within 1h --keep-last 1 --keep-daily 1",
		"true last #1, covers daily 2026-11-29",
		"true last #1, covers daily 2026-11-29",
		"true last #1, covers daily 2026-11-01",
	}
	for i, r := range rows {
		if got := strconv.FormatBool(r.Keep) + " " + strings.Join(r.KeepReasons, ", "); got != want[i] {
			t.Errorf("%s/%s: keep %v %q, want %s", r.VMID, r.Name, r.Keep, r.KeepReasons, want[i])
		}
	}
	only := []StatusRow{row("a", "gfs", "autogfs261101000000", 1, 0, false)}
	KeepStatus(only, retention.GFS{Within: retention.Span{Days: 1}, Location: time.UTC}, now)
	if !only[0].Keep || !strings.HasPrefix(only[0].KeepReasons[0], "clean would refuse: the retention policy keeps nothing") {
		t.Errorf("a label the rules would empty: keep %v %q", only[0].Keep, only[0].KeepReasons)
	}
}

// TestSnapGFSMatchesPlan runs snap hourly (with cron jitter) for 40 days across
// Berlin's spring DST change through the engine and the fake hypervisor, and after
// every run compares the label's snapshots with what retention.PlanGFS keeps of the
// previous ones plus the new name: the engine dates snapshots by their names, plans
// with the new one as "now", and removes exactly the plan's removals.
func TestSnapGFSMatchesPlan(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 3, 10, 0, 0, 0, 0, berlin)
	h := newGFSHarness(t, berlin, start)
	f := mustFormat(t, naming.DefaultFormat)
	p := retention.GFS{Last: 2, Hourly: 12, Daily: 5, Weekly: 3, Monthly: 2, Location: berlin}
	var want []retention.Item
	for i := 0; i < 40*24; i++ {
		h.now = start.Add(time.Duration(i)*time.Hour + time.Duration(i*37%60)*time.Second)
		name := naming.Name("gfs", f, h.now.In(berlin))
		pt, err := f.Parse(strings.TrimPrefix(name, "autogfs"), berlin)
		if err != nil {
			t.Fatal(err)
		}
		ds, err := retention.PlanGFS(want, &retention.Item{Name: name, Time: pt}, p, pt)
		if err != nil {
			t.Fatal(err)
		}
		want = want[:0]
		for _, d := range ds {
			if d.Keep {
				want = append(want, d.Item)
			}
		}
		h.out.Reset()
		if _, err := h.job(p).Snap(context.Background(), h.f.guests); err != nil {
			t.Fatalf("%s: %v\n%s", h.now, err, h.out.String())
		}
		var wantNames []string
		for _, it := range want {
			wantNames = append(wantNames, it.Name)
		}
		if got := h.f.names("a"); !slices.Equal(got, wantNames) {
			t.Fatalf("after the snap at %s:\n got %v\nwant %v", h.now, got, wantNames)
		}
	}
	if len(want) < 20 {
		t.Errorf("only %d snapshots at the end", len(want))
	}
}
