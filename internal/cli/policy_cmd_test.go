package cli

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/policy"
)

var updatePolicyGolden = flag.Bool("update-policy-golden", false, "rewrite testdata/policy/*.golden from the current output")

func policyGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "policy", name)
	if *updatePolicyGolden {
		if err := os.WriteFile(path, []byte(got), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update-policy-golden to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (rerun with -update-policy-golden after checking):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

const planFixture = "testdata/policy/plan.yaml"

// TestPolicyPlanGolden: the plan over a DST change, every run and every kept item
// compared with the golden file.
func TestPolicyPlanGolden(t *testing.T) {
	r := mustRun(t, "policy", "plan", "--config", planFixture, "--at", "2026-03-27 11:00", "--days", "5", "--max-runs", "-1", "--policy", "web")
	policyGolden(t, "plan-web.txt.golden", r.stdout)
	r = mustRun(t, "policy", "plan", "--config", planFixture, "--at", "2026-03-27 11:00", "--days", "9", "--policy", "nightly")
	policyGolden(t, "plan-nightly.txt.golden", r.stdout)
	r = mustRun(t, "policy", "plan", "--config", planFixture, "--at", "2026-03-27T10:00:00Z", "--days", "1", "--max-runs", "4")
	policyGolden(t, "plan-all.txt.golden", r.stdout)
	r = mustRun(t, "-o", "jsonpretty", "policy", "plan", "--config", planFixture, "--at", "2026-03-27 11:00", "--days", "3", "--max-runs", "3")
	policyGolden(t, "plan.json.golden", r.stdout)
	var p policy.Plan
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		t.Fatalf("plan JSON: %v", err)
	}
	if len(p.Policies) != 3 || p.Policies[0].Snapshot.TotalRuns != 13 || len(p.Policies[0].Snapshot.Runs) != 3 {
		t.Errorf("plan = %+v", p.Policies)
	}
}

// TestPolicyPlanSemantics checks the plan's figures against the schedule and keep
// rules directly, not against a golden file.
func TestPolicyPlanSemantics(t *testing.T) {
	plan := func(name, days, maxRuns string) policy.Plan {
		r := mustRun(t, "-o", "json", "policy", "plan", "--config", planFixture, "--at", "2026-03-27 11:00", "--days", days, "--max-runs", maxRuns, "--policy", name)
		var p policy.Plan
		if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || len(p.Policies) != 1 || p.Policies[0].Policy != name {
			t.Fatalf("plan JSON: %v\n%s", err, r.stdout)
		}
		return p
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	web := plan("web", "9", "-1").Policies[0].Snapshot
	// 11:00 first (no history), then every 6 hours of wall time: 12:00, 18:00 …; the
	// night of the switch to summer time has no 02:00, but 00:00, 06:00 exist.
	if got := web.Runs[0].At.In(berlin).Format("15:04"); got != "11:00" {
		t.Errorf("first run at %s", got)
	}
	if got := web.Runs[1].At.In(berlin).Format("15:04"); got != "12:00" {
		t.Errorf("second run at %s", got)
	}
	// Friday 11:00, 12:00, 18:00; eight whole days; Sunday 00:00 and 06:00.
	if web.TotalRuns != 1+2+8*4+2 {
		t.Errorf("web runs = %d", web.TotalRuns)
	}
	for _, run := range web.Runs {
		if want := "autoweb" + run.At.In(berlin).Format("060102150405"); run.Name != want {
			t.Errorf("name %s, want %s", run.Name, want)
		}
	}
	// keep_last 4 + keep_daily 3 (days not already covered) + keep_weekly 2 (weeks
	// not covered): the newest 4 runs cover the last day, dailies the 3 days before,
	// and one week more.
	if len(web.Kept) != 4+3+1 || web.Removed != web.TotalRuns-len(web.Kept) {
		t.Errorf("kept %d removed %d of %d", len(web.Kept), web.Removed, web.TotalRuns)
	}
	nightly := plan("nightly", "9", "-1").Policies[0].Backup
	var fulls []string
	for _, run := range nightly.Runs {
		if run.Level == "full" {
			fulls = append(fulls, run.At.In(berlin).Format("Mon 01-02 15:04"))
		} else if run.Level != "inc" {
			t.Errorf("level %q", run.Level)
		}
	}
	// 02:30 does not exist on 2026-03-29 in Berlin: that night's backup runs when the
	// clock jumps, at 03:00 summer time, and the full rule due since Sunday 00:00
	// makes it a full.
	if got := strings.Join(fulls, ", "); got != "Fri 03-27 11:00, Sun 03-29 03:00, Sun 04-05 02:30" {
		t.Errorf("fulls at %s", got)
	}
	p := plan("fast", "3", "0")
	fast := p.Policies[0].Snapshot
	// Three calendar days across the switch to summer time are 3×24−1 hours.
	if want := int(p.Until.Sub(p.From) / (2 * time.Second)); want != (3*24-1)*1800 || fast.TotalRuns != want || len(fast.Kept) != 3 {
		t.Errorf("fast: %d runs, %d kept", fast.TotalRuns, len(fast.Kept))
	}
}

func TestPolicyCheck(t *testing.T) {
	r := mustRun(t, "policy", "check", "--config", planFixture)
	if !strings.HasPrefix(r.stdout, "OK "+planFixture+": 3 policies, time zone Europe/Berlin\n") ||
		!strings.Contains(r.stdout, `  web: host qemu:///system, vmid "web%,-web-test"; snapshot "0 */6 * * *" label web, keep_last 4, keep_daily 3, keep_weekly 2`) ||
		!strings.Contains(r.stdout, `  nightly: host qemu:///system, vmid "@all"; backup "30 2 * * *" into /srv/backup, level full "0 0 * * 0", else inc, prune keep_daily 5, keep_weekly 1`) {
		t.Errorf("stdout:\n%s", r.stdout)
	}

	t.Setenv("AUTOSNAP_CONFIG", filepath.Join("..", "..", "examples", "autosnap.yaml"))
	if r := run(t, "policy", "check"); r.code != 0 || !strings.Contains(r.stdout, "OK ") {
		t.Errorf("AUTOSNAP_CONFIG: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	src := "policies:\n  - name: a\n    vmid: \"@all\"\n    snapshot: {schedule: \"@hourly\", keep_lst: 3}\n  - name: a\n    vmid: \"x\"\n    backup: {schedule: \"0 25 * * *\", target: /b}\n"
	if err := os.WriteFile(bad, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	r = run(t, "policy", "check", "--config", bad)
	if r.code != ExitUsage || r.stdout != "" {
		t.Fatalf("exit %d, stdout %q", r.code, r.stdout)
	}
	for _, want := range []string{
		bad + `:4: unknown key "keep_lst" in policy "a": snapshot: did you mean "keep_last"?`,
		bad + `:4: policy "a": snapshot: no retention`,
		bad + `:5: duplicate policy name "a" (first on line 2)`,
		bad + `:7: policy "a": backup: schedule "0 25 * * *"`,
		"ERROR: " + bad + ": 4 problems",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}

	if r := run(t, "policy", "check", "--config", filepath.Join(t.TempDir(), "none.yaml")); r.code != ExitUsage || !strings.Contains(r.stderr, "no such file") {
		t.Errorf("missing file: exit %d\n%s", r.code, r.stderr)
	}
	if r := run(t, "policy", "plan", "--config", planFixture, "--at", "tomorrow"); r.code != ExitUsage || !strings.Contains(r.stderr, `--at "tomorrow"`) {
		t.Errorf("bad --at: exit %d\n%s", r.code, r.stderr)
	}
	if r := run(t, "policy", "plan", "--config", planFixture, "--policy", "nope"); r.code != ExitUsage {
		t.Errorf("unknown --policy: exit %d", r.code)
	}
	if r := run(t, "policy", "check", "--help"); r.code != 0 || !strings.Contains(r.stdout, "EXIT STATUS") || !strings.Contains(r.stdout, "AUTOSNAP_CONFIG") {
		t.Errorf("help:\n%s", r.stdout)
	}
}
