package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/testbed"
)

// runAt runs autosnap with the jobs' clock at and names read in loc.
func runAt(t *testing.T, at time.Time, loc *time.Location, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := execute(context.Background(), args, &out, &errb, func(g *GlobalOptions) {
		g.adjustJob = func(j *engine.Job) { j.Location, j.Now = loc, func() time.Time { return at } }
	})
	r := result{stdout: out.String(), stderr: errb.String(), code: code}
	t.Logf("autosnap %s at %s → %d\n%s%s", strings.Join(args, " "), at.In(loc).Format(time.RFC3339), code, r.stdout, r.stderr)
	return r
}

// gfsLabelNames returns the guest's snapshot names of label, sorted.
func gfsLabelNames(t *testing.T, vm, label string) []string {
	t.Helper()
	var names []string
	for _, r := range status(t, vm, label) {
		names = append(names, r.Name)
	}
	slices.Sort(names)
	return names
}

// TestSnapGFSLibvirt takes snapshots of a real guest at simulated times in
// Europe/Berlin with calendar rules and checks exactly which remain after each
// step, that a snapshot not ours in the chain is never touched, that status shows
// the keep reasons, and that every region written before each snapshot is intact
// after the merges.
func TestSnapGFSLibvirt(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	const n = 64 << 10
	const format = "yyMMddHHmmss"
	at := func(day, hour int) time.Time { return time.Date(2026, 11, day, hour, 0, 0, 0, berlin) }
	rules := []string{"--keep-last", "2", "--keep-daily", "2", "--keep-weekly", "2"}

	// A manual snapshot named like ours, in the chain below all of them.
	mustRun(t, "snapshot", "create", d.Name, "autogfs261101000000", "--description", "manual", "--quiesce", "off")
	d.WriteDisk(t, "vda", 0, 0x01, n)

	steps := []struct {
		at   time.Time
		want []string // the label's snapshots after the step
	}{
		{at(15, 12), []string{"autogfs261115120000"}},
		{at(20, 12), []string{"autogfs261115120000", "autogfs261120120000"}},
		{at(23, 0), []string{"autogfs261115120000", "autogfs261120120000", "autogfs261123000000"}},
		{at(23, 12), []string{"autogfs261115120000", "autogfs261120120000", "autogfs261123000000", "autogfs261123120000"}},
		// 23 00:00 was last #2; now last are 24 00:00 and 23 12:00, which also is
		// daily 2026-11-23: 23 00:00 is kept by no rule.
		{at(24, 0), []string{"autogfs261115120000", "autogfs261120120000", "autogfs261123120000", "autogfs261124000000"}},
		{at(24, 12), []string{"autogfs261115120000", "autogfs261120120000", "autogfs261123120000", "autogfs261124000000", "autogfs261124120000"}},
		{at(25, 0), []string{"autogfs261115120000", "autogfs261120120000", "autogfs261123120000", "autogfs261124120000", "autogfs261125000000"}},
		{at(25, 12), []string{"autogfs261115120000", "autogfs261120120000", "autogfs261123120000", "autogfs261124120000", "autogfs261125000000", "autogfs261125120000"}},
		// Days 26 and 25 are covered by last: daily keeps 24 and 23.
		{at(26, 0), []string{"autogfs261115120000", "autogfs261120120000", "autogfs261123120000", "autogfs261124120000", "autogfs261125120000", "autogfs261126000000"}},
		{at(26, 12), []string{"autogfs261115120000", "autogfs261120120000", "autogfs261124120000", "autogfs261125120000", "autogfs261126000000", "autogfs261126120000"}},
	}
	for i, s := range steps {
		// Region i+1 holds pattern i+2 from before the snapshot on.
		d.WriteDisk(t, "vda", int64(i+1)*n, byte(i+2), n)
		r := runAt(t, s.at, berlin, append([]string{"--vmid", d.Name, "--timestamp-format", format, "snap", "--label", "gfs", "--quiesce", "off"}, rules...)...)
		if r.code != 0 {
			t.Fatalf("snap at %s: exit %d", s.at, r.code)
		}
		if got := gfsLabelNames(t, d.Name, "gfs"); !slices.Equal(got, s.want) {
			t.Fatalf("after the snap at %s: %v, want %v", s.at.Format(time.RFC3339), got, s.want)
		}
	}
	regions := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
	checkGFSData := func() {
		t.Helper()
		top := d.Chain(t, "vda")[0]
		if got := testbed.ReadImage(t, top, 0, n); !bytes.Equal(got, bytes.Repeat([]byte{1}, n)) {
			t.Errorf("region 0 lost")
		}
		for _, i := range regions[:len(steps)] {
			if got := testbed.ReadImage(t, top, int64(i)*n, n); !bytes.Equal(got, bytes.Repeat([]byte{byte(i + 1)}, n)) {
				t.Errorf("region %d (written before snapshot %d) reads %x…", i, i, got[:4])
			}
		}
	}
	checkGFSData()
	// The chain: base, the manual snapshot's overlay, one per surviving snapshot.
	if got, want := len(d.Chain(t, "vda")), 2+len(steps[len(steps)-1].want); got != want {
		t.Errorf("chain of %d images, want %d", got, want)
	}

	// status with rules shows what clean would do now and why.
	r := runAt(t, at(26, 13), berlin, "--vmid", d.Name, "--timestamp-format", format, "-o", "json", "status", "--label", "gfs", "--keep-last", "1", "--keep-weekly", "1")
	if r.code != 0 {
		t.Fatalf("status: exit %d", r.code)
	}
	var rows []struct {
		Name        string   `json:"name"`
		Keep        bool     `json:"keep"`
		KeepReasons []string `json:"keep_reasons"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, row := range rows {
		got[row.Name] = strings.Join(row.KeepReasons, ", ")
		if row.Keep != !strings.HasPrefix(got[row.Name], "kept by no rule") {
			t.Errorf("%s: keep %v with reasons %q", row.Name, row.Keep, row.KeepReasons)
		}
	}
	if got["autogfs261126120000"] != "last #1, covers weekly 2026-W48" || got["autogfs261120120000"] != "weekly #1 (2026-W47)" ||
		!strings.HasPrefix(got["autogfs261115120000"], "kept by no rule") || len(rows) != 6 {
		t.Errorf("status keep reasons: %q", got)
	}
	text := runAt(t, at(26, 13), berlin, "--vmid", d.Name, "--timestamp-format", format, "status", "--label", "gfs", "--keep-last", "1", "--keep-weekly", "1")
	if !strings.Contains(text.stdout, "KEEP") || !strings.Contains(text.stdout, "keep (weekly #1 (2026-W47))") {
		t.Errorf("status text lacks the KEEP column:\n%s", text.stdout)
	}

	// clean with the same rules removes what status said, and nothing else.
	dry := runAt(t, at(26, 13), berlin, "--dry-run", "--vmid", d.Name, "--timestamp-format", format, "clean", "--label", "gfs", "--keep-last", "1", "--keep-weekly", "1")
	if dry.code != 0 || strings.Count(dry.stdout, "Remove snapshot: ") != 4 || strings.Count(dry.stdout, "Keep snapshot: ") != 2 {
		t.Errorf("clean --dry-run: exit %d", dry.code)
	}
	runAt(t, at(26, 13), berlin, "--vmid", d.Name, "--timestamp-format", format, "clean", "--label", "gfs", "--keep-last", "1", "--keep-weekly", "1")
	if got, want := gfsLabelNames(t, d.Name, "gfs"), []string{"autogfs261120120000", "autogfs261126120000"}; !slices.Equal(got, want) {
		t.Errorf("after clean: %v, want %v", got, want)
	}
	if len(d.Chain(t, "vda")) != 4 {
		t.Errorf("chain after clean: %v", d.Chain(t, "vda"))
	}
	checkGFSData()
	var manual bool
	for _, s := range snapshotList(t, d.Name) {
		manual = manual || s.Name == "autogfs261101000000"
	}
	if !manual {
		t.Errorf("the manual snapshot autogfs261101000000 was removed")
	}

	// --keep with calendar rules, and rules that keep nothing, are refused.
	r = runAt(t, at(26, 14), berlin, "--vmid", d.Name, "snap", "--label", "gfs", "--keep", "3", "--keep-daily", "7")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "exclude each other") {
		t.Errorf("--keep with --keep-daily: exit %d", r.code)
	}
	r = runAt(t, at(26, 14), berlin, "--vmid", d.Name, "snap", "--label", "gfs", "--keep-daily", "0")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "keeps nothing") {
		t.Errorf("--keep-daily 0 alone: exit %d", r.code)
	}
}
