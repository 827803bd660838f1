package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/testbed"
)

// History round trip through the CLI: jobs recorded by a writer that stays open
// (as the daemon does) read back identical through `history -o json`, and the
// filters select what they say.
func TestHistoryCommandRoundTrip(t *testing.T) {
	db := filepath.Join(t.TempDir(), "state", "history.db")
	st, err := history.Open(db, history.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	base := time.Now().Add(-3 * time.Hour).Truncate(time.Second).UTC()
	var want []history.Job
	for i, spec := range []struct {
		policy  string
		out     history.Outcome
		guests  []string
		errText string
	}{
		{"web", history.OK, []string{"web1", "web2"}, ""},
		{"db", history.Failed, []string{"db1"}, "guest db1: freeze failed: agent timeout"},
		{"web", history.OK, []string{"web1"}, ""},
	} {
		j := history.Job{Policy: spec.policy, Kind: history.KindSnapshot, Trigger: "schedule", Started: base.Add(time.Duration(i) * time.Hour)}
		id, err := st.Begin(ctx, j)
		if err != nil {
			t.Fatal(err)
		}
		j.ID = id
		for _, g := range spec.guests {
			gr := history.GuestRun{Host: "qemu:///system", Guest: g, Started: j.Started, Ended: j.Started.Add(2 * time.Second),
				Outcome: spec.out, Error: spec.errText, Created: []string{"auto" + spec.policy + "261130080000"}, Removed: []string{},
				Bytes: 4096, Freeze: 150 * time.Millisecond}
			if err := st.Guest(ctx, id, gr); err != nil {
				t.Fatal(err)
			}
			j.Guests = append(j.Guests, gr)
		}
		j.Outcome, j.Error, j.Ended = spec.out, spec.errText, j.Started.Add(time.Minute)
		if err := st.End(ctx, id, j.Outcome, j.Error, j.Ended); err != nil {
			t.Fatal(err)
		}
		want = append([]history.Job{j}, want...)
	}

	jobs := func(args ...string) []history.Job {
		t.Helper()
		r := mustRun(t, append([]string{"-o", "json", "history", "--db", db}, args...)...)
		var js []history.Job
		if err := json.Unmarshal([]byte(r.stdout), &js); err != nil {
			t.Fatalf("history JSON: %v\n%s", err, r.stdout)
		}
		for i := range js {
			js[i].Started, js[i].Ended = js[i].Started.UTC(), js[i].Ended.UTC()
			for k := range js[i].Guests {
				js[i].Guests[k].Started, js[i].Guests[k].Ended = js[i].Guests[k].Started.UTC(), js[i].Guests[k].Ended.UTC()
			}
		}
		return js
	}
	if got := jobs(); !reflect.DeepEqual(got, want) {
		t.Fatalf("history -o json:\n got %+v\nwant %+v", got, want)
	}
	ids := func(js []history.Job) string {
		var s []string
		for _, j := range js {
			s = append(s, fmt.Sprint(j.ID))
			for _, g := range j.Guests {
				s = append(s, g.Guest)
			}
		}
		return strings.Join(s, " ")
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--policy", "web"}, "3 web1 1 web1 web2"},
		{[]string{"--failed"}, "2 db1"},
		{[]string{"--limit", "1"}, "3 web1"},
		{[]string{"--since", "150m"}, "3 web1 2 db1"},
		{[]string{"--vmid", "web2"}, "1 web2"},
		{[]string{"--vmid", "web%,-web1"}, "1 web2"},
	} {
		if got := ids(jobs(c.args...)); got != c.want {
			t.Errorf("history %s: got %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
	}
	// The raw keys are the documented snake_case ones.
	r := mustRun(t, "-o", "json", "history", "--db", db, "--limit", "1")
	for _, k := range []string{`"id":`, `"policy":`, `"kind":`, `"trigger":`, `"dry_run":`, `"started":`, `"ended":`, `"outcome":`,
		`"error":`, `"guests":`, `"host":`, `"guest":`, `"created":`, `"removed":`, `"bytes":`, `"freeze_ns":150000000`} {
		if !strings.Contains(r.stdout, k) {
			t.Errorf("history JSON lacks %s: %s", k, r.stdout)
		}
	}
	text := mustRun(t, "history", "--db", db).stdout
	for _, s := range []string{"db1", "guest db1: freeze failed: agent timeout", "2 guests", "4.0 KiB", "autoweb261130080000"} {
		if !strings.Contains(text, s) {
			t.Errorf("history table lacks %q:\n%s", s, text)
		}
	}
	if r := run(t, "history", "--db", filepath.Join(t.TempDir(), "none.db")); r.code != ExitFailure || !strings.Contains(r.stderr, "no history database") {
		t.Errorf("history of a missing database: exit %d, %s", r.code, r.stderr)
	}
	if r := run(t, "history", "--db", db, "--since", "yesterday"); r.code != ExitUsage {
		t.Errorf("history --since yesterday: exit %d, want %d", r.code, ExitUsage)
	}
}

// monitorConfig writes a policy file for domain vm on the local libvirt, snapshots
// every 2 hours under label "mon"; extra is appended to the file.
func monitorConfig(t *testing.T, vm, extra string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "autosnap.yaml")
	cfg := fmt.Sprintf(`state_dir: %s
policies:
  - name: mon
    host: qemu:///system
    vmid: "%s"
    snapshot:
      schedule: "@every 2h"
      keep_last: 3
%s`, filepath.Join(dir, "state"), vm, extra)
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A guest whose newest snapshot is 7 hours old under a 2-hour cadence makes
// `monitor` CRITICAL (exit 2); once a fresh snapshot is taken it is OK (exit 0); a
// failed last run in the history makes it WARNING; an unreachable host UNKNOWN.
func TestMonitorRealGuest(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 16})
	cfg := monitorConfig(t, d.Name, "")

	// No snapshot at all: CRITICAL.
	r := run(t, "monitor", "--config", cfg)
	if r.code != ExitMonitorCritical || !strings.HasPrefix(r.stdout, "AUTOSNAP CRITICAL - 1 of 1 guest stale: "+d.Name+" (no snapshot") {
		t.Fatalf("monitor without snapshots: exit %d\n%s", r.code, r.stdout)
	}

	// A snapshot named 7 hours ago, as autosnap names them.
	ctx := context.Background()
	drv, err := driver.Open(ctx, "qemu:///system", driver.Config{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	gs, err := drv.Guests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var g driver.Guest
	for _, x := range gs {
		if x.Name == d.Name {
			g = x
		}
	}
	f, _ := naming.ParseFormat(naming.DefaultFormat)
	old := naming.Name("mon", f, time.Now().Add(-7*time.Hour))
	if _, err := drv.CreateSnapshot(ctx, g, driver.CreateOptions{Name: old, Description: naming.Description(naming.NameFields("mon", f))}); err != nil {
		t.Fatal(err)
	}
	r = run(t, "monitor", "--config", cfg)
	wantLine := "AUTOSNAP CRITICAL - 1 of 1 guest stale: " + d.Name + " (snapshot 7h old, cadence 2h)"
	if r.code != ExitMonitorCritical || !strings.HasPrefix(r.stdout, wantLine) ||
		!strings.Contains(r.stdout, "| guests=1;;;0 stale=1;;;0 failed=0;;;0") || !strings.Contains(r.stdout, "oldest_snapshot_age=252") {
		t.Fatalf("monitor with a 7h old snapshot: exit %d, want %d and %q\n%s%s", r.code, ExitMonitorCritical, wantLine, r.stdout, r.stderr)
	}
	if r.stderr != "" {
		t.Errorf("monitor wrote to stderr: %s", r.stderr)
	}
	// With a looser threshold the same age is only WARNING (7h > 3×2h, < 4×2h).
	if r := run(t, "monitor", "--config", cfg, "--warning", "3", "--critical", "4"); r.code != ExitMonitorWarning {
		t.Fatalf("monitor --warning 3 --critical 4: exit %d\n%s", r.code, r.stdout)
	}

	// A policy that snapshots only running guests does not check this shut-off one.
	onlyRunning := monitorConfig(t, d.Name, "")
	ob, _ := os.ReadFile(onlyRunning)
	if err := os.WriteFile(onlyRunning, []byte(strings.Replace(string(ob), "      keep_last: 3\n", "      keep_last: 3\n      only_running: true\n", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "monitor", "--config", onlyRunning); r.code != ExitMonitorOK || !strings.Contains(r.stdout, "only_running and the guest is shutoff") {
		t.Fatalf("monitor of a shut-off guest under only_running: exit %d\n%s", r.code, r.stdout)
	}

	// A fresh snapshot through the CLI: OK.
	mustRun(t, "--vmid", d.Name, "snap", "--label", "mon", "--keep", "3")
	r = run(t, "monitor", "--config", cfg)
	if r.code != ExitMonitorOK || !strings.HasPrefix(r.stdout, "AUTOSNAP OK - 1 guest, ") || !strings.Contains(r.stdout, "[OK] "+d.Name+" (policy mon") {
		t.Fatalf("monitor after a fresh snapshot: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// The daemon recorded a failed snapshot run of the guest (and keeps the database
	// open): WARNING, with the error.
	st, err := history.Open(filepath.Join(filepath.Dir(cfg), "state", history.FileName), history.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	id, err := st.Begin(ctx, history.Job{Policy: "mon", Kind: history.KindSnapshot, Trigger: "schedule", Started: now})
	if err != nil {
		t.Fatal(err)
	}
	st.Guest(ctx, id, history.GuestRun{Host: "qemu:///system", Guest: d.Name, Started: now, Ended: now, Outcome: history.Failed, Error: "storage full"})
	st.End(ctx, id, history.Failed, "1 guest failed", now)
	r = run(t, "monitor", "--config", cfg)
	if r.code != ExitMonitorWarning || !strings.Contains(r.stdout, "1 failed: "+d.Name+" (snapshot run failed: storage full)") {
		t.Fatalf("monitor after a failed run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// A second policy on a host that does not answer: UNKNOWN, naming it.
	bad := monitorConfig(t, d.Name, `  - name: far
    host: qemu+tcp://127.0.0.1:1/system
    vmid: "far1"
    snapshot:
      schedule: "@every 1h"
      keep_last: 1
`)
	r = run(t, "--timeout", "5", "monitor", "--config", bad)
	if r.code != ExitMonitorUnknown || !strings.Contains(r.stdout, "policy far: host qemu+tcp://127.0.0.1:1/system: cannot connect") {
		t.Fatalf("monitor with an unreachable host: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// A selection that matches nothing protects nothing: WARNING.
	none := monitorConfig(t, "nomatch-"+d.Name+"%", "")
	if r := run(t, "monitor", "--config", none); r.code != ExitMonitorWarning || !strings.HasPrefix(r.stdout, "AUTOSNAP WARNING - policy mon selects no guest") {
		t.Fatalf("monitor of a policy selecting nothing: exit %d\n%s", r.code, r.stdout)
	}
	// --policy checks only the reachable one.
	if r := run(t, "monitor", "--config", bad, "--policy", "mon"); r.code != ExitMonitorOK {
		t.Fatalf("monitor --policy mon: exit %d\n%s", r.code, r.stdout)
	}
	if r := run(t, "monitor", "--config", bad, "--policy", "nope"); r.code != ExitMonitorUnknown || !strings.Contains(r.stdout, `--policy "nope": no such policy`) {
		t.Fatalf("monitor --policy nope: exit %d\n%s", r.code, r.stdout)
	}
}

// The newest point in the policy's backup repository is checked against the backup
// cadence, and backing chains against --max-chain-depth.
func TestMonitorBackupAndChainDepth(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 16})
	target := filepath.Join(t.TempDir(), "repo")
	cfg := monitorConfig(t, d.Name, "")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	withBackup := strings.Replace(string(b), "    snapshot:\n", "    backup:\n      schedule: \"@every 1s\"\n      target: "+target+"\n    snapshot:\n", 1)
	if err := os.WriteFile(cfg, []byte(withBackup), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "--vmid", d.Name, "snap", "--label", "mon", "--keep", "3")

	r := run(t, "monitor", "--config", cfg)
	if r.code != ExitMonitorUnknown || !strings.Contains(r.stdout, "policy mon: backup repository "+target+" cannot be read") {
		t.Fatalf("monitor before the repository exists: exit %d\n%s", r.code, r.stdout)
	}
	mustRun(t, "--vmid", d.Name, "backup", "--target", target)
	r = run(t, "monitor", "--config", cfg)
	if r.code != ExitMonitorOK || !strings.Contains(r.stdout, "oldest_backup_age=") {
		t.Fatalf("monitor after a backup: exit %d\n%s", r.code, r.stdout)
	}
	time.Sleep(3500 * time.Millisecond) // past 3 × the 1s cadence
	r = run(t, "monitor", "--config", cfg)
	if r.code != ExitMonitorCritical || !regexp.MustCompile(regexp.QuoteMeta(d.Name)+` \(backup [3-9]s old, cadence 1s\)`).MatchString(r.stdout) {
		t.Fatalf("monitor 3.5s after a backup with a 1s cadence: exit %d\n%s", r.code, r.stdout)
	}

	// A second snapshot: the disk's chain is two overlays deep.
	mustRun(t, "--vmid", d.Name, "snap", "--label", "mon", "--keep", "3")
	r = run(t, "monitor", "--config", cfg, "--max-chain-depth", "1")
	if !strings.Contains(r.stdout, "1 with chains too deep: "+d.Name+" (chain depth 2 > 1)") {
		t.Fatalf("monitor --max-chain-depth 1 with two overlays: exit %d\n%s", r.code, r.stdout)
	}
	if r := run(t, "monitor", "--config", cfg, "--max-chain-depth", "2"); strings.Contains(r.stdout, "chains too deep") {
		t.Fatalf("monitor --max-chain-depth 2 with two overlays:\n%s", r.stdout)
	}
}
