package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/retention"
)

// minimal is issue 12's minimal file, as written there.
const minimal = `policies:
  - name: web
    host: qemu:///system
    vmid: "web%,-web-test"
    snapshot:
      schedule: "@every 2s"
      keep_last: 3
`

func TestParseMinimal(t *testing.T) {
	cfg, err := Parse([]byte(minimal), "min.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Policies) != 1 {
		t.Fatalf("policies = %d", len(cfg.Policies))
	}
	p := cfg.Policies[0]
	if p.Name != "web" || p.Line != 2 || p.Host != "qemu:///system" || p.VMID != "web%,-web-test" || p.Backup != nil {
		t.Errorf("policy = %+v", p)
	}
	s := p.Snapshot
	if s == nil || s.Label != "web" || s.Quiesce != "auto" || s.Schedule.Spec != "@every 2s" || s.Schedule.Line != 6 {
		t.Fatalf("snapshot = %+v", s)
	}
	if s.Keep.Last != 3 || s.Keep.Daily != 0 || s.Keep.Location != time.Local {
		t.Errorf("keep = %+v", s.Keep)
	}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := s.Schedule.Parsed().Next(start); !got.Equal(start.Add(2 * time.Second)) {
		t.Errorf("Parsed().Next = %v", got)
	}
	if p.MaxParallel != DefaultMaxParallel || p.Timeout != DefaultTimeout {
		t.Errorf("defaults: max_parallel %d timeout %v", p.MaxParallel, p.Timeout)
	}
	if cfg.StateDir != DefaultStateDir || cfg.Location != time.Local || cfg.Monitor.Warning != 2 || cfg.Monitor.Critical != 3 || cfg.Path != "min.yaml" {
		t.Errorf("config defaults = %+v", cfg)
	}
}

func TestParseDefaultHost(t *testing.T) {
	cfg, err := Parse([]byte("policies:\n  - name: a\n    vmid: \"100\"\n    backup: {schedule: \"@daily\", target: /b}\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policies[0]
	if p.Host != driver.DefaultHost || p.VMID != "100" || p.Backup.Default != "auto" || p.Backup.Quiesce != "auto" || !p.Backup.Prune.IsEmpty() {
		t.Errorf("policy = %+v backup %+v", p, p.Backup)
	}
}

func TestExampleFileParses(t *testing.T) {
	path := filepath.Join("..", "..", "examples", "autosnap.yaml")
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("the shipped example must stay valid:\n%v", err)
	}
	var snap, backup, levels, prune bool
	for _, p := range cfg.Policies {
		if p.Snapshot != nil && p.Snapshot.Keep.Daily > 0 && p.Snapshot.Keep.Weekly > 0 {
			snap = true
		}
		if b := p.Backup; b != nil {
			backup = true
			levels = len(b.Levels) > 0 && b.Levels[0].Level == "full" && b.Default == "inc"
			prune = !b.Prune.IsEmpty()
		}
	}
	conn := cfg.Connection("pve")
	if !snap || !backup || !levels || !prune || conn == nil || !strings.HasPrefix(conn.Secret, "file:") ||
		cfg.Notify.Webhook == "" || cfg.Monitor.MaxChainDepth == 0 || cfg.Location.String() != "Europe/Berlin" {
		t.Errorf("the example lacks a section the docs promise: snap %v backup %v levels %v prune %v conn %+v notify %+v monitor %+v",
			snap, backup, levels, prune, conn, cfg.Notify, cfg.Monitor)
	}
}

func TestParseFull(t *testing.T) {
	src := `timezone: UTC
state_dir: /srv/state
connections:
  - name: pve
    host: pve.example.com
    user: root@pam
    password: env:PVE_PASSWORD
    api_token: file:/etc/autosnap/token
    insecure: true
policies:
  - name: db
    host: pve
    vmid: 100:199
    tags: prod
    max_parallel: 8
    timeout: 90
    script: /usr/local/bin/hook
    snapshot:
      schedule: "0 */4 * * *"
      label: four
      keep_within: 2d
      keep_daily: unlimited
      state: true
      only_running: yes
      quiesce: off
      max_chain_depth: 5
    backup:
      schedule: "0 2 * * *"
      target: /srv/backup/
      levels:
        - {level: full, schedule: "0 3 * * 0"}
        - level: diff
          schedule: "0 3 * * 3"
      include_disks: [vda, vdb]
      compress: true
      prune: {keep_last: 3, keep_monthly: 12}
monitor: {warning: 1.5, critical: 4, max_chain_depth: 10}
notify: {webhook: "http://127.0.0.1:9/x", secret: env:S}
`
	cfg, err := Parse([]byte(src), "full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policies[0]
	host, conn := cfg.HostOf(&p)
	if host != "pve.example.com" || conn == nil || conn.User != "root@pam" || conn.Secret != "env:PVE_PASSWORD" || conn.APIToken != "file:/etc/autosnap/token" || !conn.Insecure || conn.Line != 4 {
		t.Errorf("host %q conn %+v", host, conn)
	}
	if p.MaxParallel != 8 || p.Timeout != 90*time.Second || p.Script != "/usr/local/bin/hook" || len(p.Tags) != 1 || p.Tags[0] != "prod" {
		t.Errorf("policy = %+v", p)
	}
	s := p.Snapshot
	if s.Label != "four" || s.Keep.Within != (retention.Span{Days: 2}) || s.Keep.Daily != -1 || !s.State || !s.OnlyRunning || s.Quiesce != "off" || s.MaxChainDepth != 5 {
		t.Errorf("snapshot = %+v", s)
	}
	b := p.Backup
	if b.Target != "/srv/backup/" || len(b.Levels) != 2 || b.Levels[1].Level != "diff" || b.Levels[1].Schedule.Line != 33 || b.Default != "auto" ||
		!b.Compress || len(b.IncludeDisks) != 2 || b.Prune.Last != 3 || b.Prune.Monthly != 12 || b.Prune.Location != time.UTC {
		t.Errorf("backup = %+v", b)
	}
	if cfg.Monitor != (Monitor{Warning: 1.5, Critical: 4, MaxChainDepth: 10}) || cfg.Notify.Secret != "env:S" || cfg.StateDir != "/srv/state" {
		t.Errorf("monitor %+v notify %+v state %q", cfg.Monitor, cfg.Notify, cfg.StateDir)
	}
}

// TestParseErrors: every error names its line, and Parse reports all of them.
func TestParseErrors(t *testing.T) {
	pol := func(body string) string {
		return "policies:\n  - name: p\n    vmid: \"@all\"\n" + body
	}
	snap := func(extra string) string {
		return pol("    snapshot:\n      schedule: \"@hourly\"\n" + extra)
	}
	cases := []struct {
		name string
		src  string
		line int
		want string
	}{
		{"yaml syntax", "policies: [\n", 1, "not valid YAML"},
		{"empty file", "", 1, "empty"},
		{"not a mapping", "- a\n", 1, "must be a mapping"},
		{"unknown top key", "timezone: UTC\npolicys: []\n", 2, `unknown key "policys" in the file: did you mean "policies"?`},
		{"unknown policy key", pol("    vmdi: x\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n"), 4, `did you mean "vmid"?`},
		{"unknown snapshot key", snap("      keep_lst: 2\n      keep_last: 1\n"), 6, `unknown key "keep_lst"`},
		{"misplaced keep", pol("    keep_daily: 3\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n"), 4, "belongs under snapshot: or backup: prune:"},
		{"unknown key far from any", "bogus_thing: 1\npolicies: []\n", 1, "known keys: timezone"},
		{"duplicate key", "timezone: UTC\ntimezone: UTC\n" + snapLine(), 2, `key "timezone" given twice (first on line 1)`},
		{"no policies key", "timezone: UTC\n", 1, "no policies"},
		{"empty policies", "policies: []\n", 1, "the list is empty"},
		{"bad timezone", "timezone: Mars/Olympus\n" + snapLine(), 1, "not a known time zone"},
		{"relative state dir", "state_dir: var/lib\n" + snapLine(), 1, "absolute path"},
		{"duplicate policy", snapLine() + "  - name: p\n    vmid: x\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: other}\n", 5, `duplicate policy name "p" (first on line 2)`},
		{"missing name", "policies:\n  - vmid: x\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n", 2, "needs a name"},
		{"bad name", "policies:\n  - name: \"a b\"\n    vmid: x\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n", 2, "use letters, digits"},
		{"missing vmid", "policies:\n  - name: p\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n", 2, "needs a vmid"},
		{"bad vmid", "policies:\n  - name: p\n    vmid: \"web,,db\"\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n", 3, "empty token"},
		{"vmid only excludes", "policies:\n  - name: p\n    vmid: \"-web\"\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n", 3, "only excludes"},
		{"neither snapshot nor backup", pol("    tags: [x]\n"), 2, "neither snapshots nor backs up"},
		{"bad schedule", pol("    snapshot:\n      schedule: \"61 * * * *\"\n      keep_last: 1\n"), 5, `policy "p": snapshot: schedule "61 * * * *"`},
		{"every too short", pol("    snapshot:\n      schedule: \"@every 10ms\"\n      keep_last: 1\n"), 5, "at least 1s"},
		{"tz in schedule", pol("    snapshot:\n      schedule: \"CRON_TZ=UTC 0 * * * *\"\n      keep_last: 1\n"), 5, "timezone: key"},
		{"missing schedule", pol("    snapshot:\n      keep_last: 1\n"), 4, "needs a schedule"},
		{"keeps nothing (zeros)", snap("      keep_last: 0\n      keep_daily: 0\n"), 6, "keeps nothing (every keep_* is 0)"},
		{"keeps nothing (none)", snap(""), 4, "the retention keeps nothing"},
		{"negative keep", snap("      keep_last: -2\n"), 6, "out of range"},
		{"keep not a number", snap("      keep_daily: seven\n"), 6, `"seven" is not a whole number`},
		{"bad keep_within", snap("      keep_within: 7 days\n"), 6, "keep_within"},
		{"bad label", snap("      label: \"a.b\"\n      keep_last: 1\n"), 6, `label "a.b" contains '.'`},
		{"label too long", snap("      label: abcdefghijklmnopqrstuvwxyz\n      keep_last: 1\n"), 6, "exceeds Proxmox VE's 40-character limit"},
		{"default label too long", "policies:\n  - name: abcdefghijklmnopqrstuvwxyz\n    vmid: x\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n", 4, "set label:"},
		{"bad quiesce", snap("      keep_last: 1\n      quiesce: maybe\n"), 7, "use auto, on or off"},
		{"bad bool", snap("      keep_last: 1\n      state: perhaps\n"), 7, "use true or false"},
		{"bad max_parallel", pol("    max_parallel: 0\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n"), 4, "out of range 1 to 256"},
		{"bad timeout", pol("    timeout: soon\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n"), 4, "positive duration"},
		{"relative script", pol("    script: hook.sh\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n"), 4, "absolute path"},
		{"snapshot not a mapping", pol("    snapshot: hourly\n"), 4, "must be a mapping"},
		{"snapshot empty", pol("    snapshot:\n"), 4, "is empty"},
		{"backup missing target", pol("    backup:\n      schedule: \"@daily\"\n"), 4, "needs a target"},
		{"backup bad level", pol("    backup:\n      schedule: \"@daily\"\n      target: /b\n      level: fast\n"), 7, "use auto, full, inc, diff or copy"},
		{"levels entry auto", pol("    backup:\n      schedule: \"@daily\"\n      target: /b\n      levels:\n        - {level: auto, schedule: \"@weekly\"}\n"), 8, "use full, inc, diff or copy"},
		{"levels entry incomplete", pol("    backup:\n      schedule: \"@daily\"\n      target: /b\n      levels:\n        - level: full\n"), 8, "needs level: and schedule:"},
		{"levels bad schedule", pol("    backup:\n      schedule: \"@daily\"\n      target: /b\n      levels:\n        - level: full\n          schedule: \"0 3 * * 8\"\n"), 9, "levels: schedule"},
		{"prune keeps nothing", pol("    backup:\n      schedule: \"@daily\"\n      target: /b\n      prune:\n        keep_daily: 0\n"), 8, "prune: the retention keeps nothing"},
		{"include and exclude", pol("    backup:\n      schedule: \"@daily\"\n      target: /b\n      include_disks: [vda]\n      exclude_disks: [vdb]\n"), 8, "not both"},
		{"literal password", "connections:\n  - name: c\n    host: h\n    password: hunter2\n" + snapLine(), 4, "not the secret itself"},
		{"password and secret", "connections:\n  - name: c\n    host: h\n    password: env:A\n    secret: env:B\n" + snapLine(), 5, "give one of them"},
		{"connection without host", "connections:\n  - name: c\n" + snapLine(), 2, "needs a host"},
		{"duplicate connection", "connections:\n  - {name: c, host: h}\n  - {name: c, host: h2}\n" + snapLine(), 3, `connection "c" is defined twice (first on line 2)`},
		{"monitor critical below warning", "monitor:\n  warning: 3\n  critical: 2\n" + snapLine(), 3, "below warning"},
		{"monitor bad number", "monitor:\n  warning: lots\n" + snapLine(), 2, "positive number"},
		{"notify bad url", "notify:\n  webhook: ftp://x\n" + snapLine(), 2, "http:// or https://"},
		{"notify literal secret", "notify:\n  webhook: https://x/y\n  secret: s3cret\n" + snapLine(), 3, "not the secret itself"},
		{"merge key", "policies:\n  - name: p\n    <<: {vmid: x}\n    vmid: x\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n", 3, "merge keys"},
		{"overlap same label", snapLine() + "  - name: q\n    vmid: \"@all\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: p}\n", 5, `policies "p" (line 2) and "q" (line 5) overlap`},
		{"overlap wildcard", "policies:\n  - name: a\n    vmid: \"web%\"\n    backup: {schedule: \"@daily\", target: /b}\n  - name: b\n    vmid: \"web1,db1\"\n    backup: {schedule: \"@weekly\", target: /b/}\n", 5, `both select guest "web1" on one host and both use backup target "/b"`},
		{"overlap range", "policies:\n  - name: a\n    vmid: \"100:199\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n  - name: b\n    vmid: \"150:250\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n", 5, "guest 199"},
		{"overlap via connection", "connections:\n  - {name: c, host: \"qemu:///system\"}\npolicies:\n  - name: a\n    host: c\n    vmid: \"@all\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n  - name: b\n    vmid: \"db\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n", 8, "overlap"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.src), "t.yaml")
			if err == nil {
				t.Fatalf("no error for\n%s", c.src)
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error %T %v is not Errors", err, err)
			}
			for _, e := range es {
				if e.Line == c.line && strings.Contains(e.Msg, c.want) && strings.HasPrefix(e.Error(), "t.yaml:") {
					return
				}
			}
			t.Errorf("want an error at line %d containing %q; got:\n%v", c.line, c.want, err)
		})
	}
}

func snapLine() string {
	return "policies:\n  - name: p\n    vmid: \"@all\"\n    snapshot: {schedule: \"@daily\", keep_last: 1}\n"
}

// TestParseSecretNeverEchoed: a literal secret in the file is refused without
// repeating it.
func TestParseSecretNeverEchoed(t *testing.T) {
	cfg, err := Parse([]byte("connections:\n  - name: c\n    host: h\n    secret: file:/etc/autosnap/c.secret\n"+snapLine()), "s.yaml")
	if err != nil || cfg.Connections[0].Secret != "file:/etc/autosnap/c.secret" {
		t.Fatalf("secret: alias: %v %+v", err, cfg)
	}
	_, err = Parse([]byte("connections:\n  - name: c\n    host: h\n    password: hunter2\n"+snapLine()), "s.yaml")
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error = %v", err)
	}
}

// TestParseNoStaticOverlap: policies that the selections do not prove to share a
// guest, or that do different work, are accepted.
func TestParseNoStaticOverlap(t *testing.T) {
	for name, src := range map[string]string{
		"excluded":        "policies:\n  - name: a\n    vmid: \"web%,-web-test\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n  - name: b\n    vmid: \"web-test\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n",
		"different label": "policies:\n  - name: a\n    vmid: \"@all\"\n    snapshot: {schedule: \"@hourly\", keep_last: 24}\n  - name: b\n    vmid: \"@all\"\n    snapshot: {schedule: \"@daily\", keep_last: 7}\n",
		"different host":  "policies:\n  - name: a\n    vmid: \"@all\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n  - name: b\n    host: pve.example.com\n    vmid: \"@all\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n",
		"unproven names":  "policies:\n  - name: a\n    vmid: \"web%\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n  - name: b\n    vmid: \"%db\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n",
		"different tags":  "policies:\n  - name: a\n    vmid: \"@tag-a\"\n    backup: {schedule: \"@daily\", target: /b}\n  - name: b\n    vmid: \"@tag-b\"\n    backup: {schedule: \"@daily\", target: /b}\n",
		"snap and backup": "policies:\n  - name: a\n    vmid: \"@all\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n  - name: x\n    vmid: \"@all\"\n    backup: {schedule: \"@daily\", target: /b}\n",
	} {
		if _, err := Parse([]byte(src), name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestOverlapsRealGuests: selections the file cannot prove to overlap do overlap
// on the real guest list.
func TestOverlapsRealGuests(t *testing.T) {
	src := "connections:\n  - {name: local, host: \"qemu:///system\"}\npolicies:\n" +
		"  - name: a\n    host: local\n    vmid: \"web%\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n" +
		"  - name: b\n    vmid: \"%db\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: x}\n" +
		"  - name: c\n    vmid: \"%db\"\n    snapshot: {schedule: \"@daily\", keep_last: 1, label: y}\n"
	cfg, err := Parse([]byte(src), "o.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Overlaps("qemu:///system", []string{"web1", "db1", "mail"}); len(got) != 0 {
		t.Errorf("no shared guest: %v", got)
	}
	got := cfg.Overlaps("local", []string{"web1", "webdb", "db1"})
	if len(got) != 1 || got[0].A != "a" || got[0].B != "b" || got[0].Guest != "webdb" || got[0].LineA != 4 || got[0].LineB != 8 || got[0].Static {
		t.Fatalf("Overlaps = %+v", got)
	}
	if !strings.Contains(got[0].String(), `both select guest webdb and both use snapshot label "x"`) {
		t.Errorf("message: %s", got[0])
	}
	if got := cfg.Overlaps("pve.example.com", []string{"webdb"}); len(got) != 0 {
		t.Errorf("other host: %v", got)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.yaml"))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("err = %v", err)
	}
}

func TestResolveSecret(t *testing.T) {
	t.Setenv("AUTOSNAP_TEST_SECRET", "s1")
	dir := t.TempDir()
	f := filepath.Join(dir, "pw")
	if err := os.WriteFile(f, []byte("s2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]string{"env:AUTOSNAP_TEST_SECRET": "s1", "file:" + f: "s2", "": ""} {
		if got, err := ResolveSecret(ref); err != nil || got != want {
			t.Errorf("ResolveSecret(%q) = %q, %v", ref, got, err)
		}
	}
	if _, err := ResolveSecret("env:AUTOSNAP_TEST_UNSET_XYZ"); err == nil {
		t.Error("unset variable accepted")
	}
	if _, err := ResolveSecret("plain"); err == nil || strings.Contains(err.Error(), "plain") {
		t.Errorf("literal: %v", err)
	}
}

// FuzzParse: Parse never panics, and what it accepts has what the daemon relies on.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	if b, err := os.ReadFile(filepath.Join("..", "..", "examples", "autosnap.yaml")); err == nil {
		f.Add(b)
	}
	f.Add([]byte("policies: [{name: a, vmid: x, snapshot: {schedule: '@daily', keep_last: 1}}]"))
	f.Add([]byte("a: &x [*x]"))
	f.Add([]byte("policies:\n  - &p {name: a}\n  - *p\n"))
	f.Add([]byte("policies:\n  - name: a\n    vmid: x\n    backup: {schedule: '0 3 * * 0', target: /b, levels: [{level: full, schedule: '@weekly'}], prune: {keep_within: 1y}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, "fuzz.yaml")
		if err != nil {
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error %T is not a non-empty Errors: %v", err, err)
			}
			return
		}
		if len(cfg.Policies) == 0 {
			t.Fatal("accepted a file without policies")
		}
		for _, p := range cfg.Policies {
			if p.Snapshot == nil && p.Backup == nil {
				t.Fatalf("policy %q does nothing", p.Name)
			}
			if p.Snapshot != nil && p.Snapshot.Keep.IsEmpty() {
				t.Fatalf("policy %q keeps nothing", p.Name)
			}
		}
	})
}
