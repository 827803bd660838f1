package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/testbed"
)

// TestPolicyCheckConnect: --connect lists what each policy selects on the real
// libvirtd and reports an overlap the selections alone do not prove (a prefix% and a
// %suffix wildcard), naming the guest and the line.
func TestPolicyCheckConnect(t *testing.T) {
	bed := testbed.Libvirt(t)
	d1 := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff})
	d2 := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff})
	suffix := "%" + d2.Name[len(d2.Name)-8:]
	prefix := d2.Name[:len(d2.Name)-2] + "%"
	dir := t.TempDir()
	write := func(name, src string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	clash := write("clash.yaml", fmt.Sprintf(`connections:
  - name: local
    host: qemu:///system
policies:
  - name: a
    host: local
    vmid: "%s,%s"
    snapshot: {schedule: "@hourly", keep_last: 2, label: x}
  - name: b
    vmid: "%s"
    snapshot: {schedule: "@daily", keep_last: 2, label: x}
`, d1.Name, prefix, suffix))
	r := mustRun(t, "policy", "check", "--config", clash) // the file alone proves nothing
	r = run(t, "policy", "check", "--config", clash, "--connect")
	if r.code != ExitUsage {
		t.Fatalf("exit %d, want %d", r.code, ExitUsage)
	}
	if want := fmt.Sprintf("  a selects now: %s, %s\n  b selects now: %s\n", d1.Name, d2.Name, d2.Name); !strings.Contains(r.stdout, want) {
		t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
	}
	if want := fmt.Sprintf(`%s:9: policies "a" (line 5) and "b" (line 9) overlap: both select guest %s and both use snapshot label "x"`, clash, d2.Name); !strings.Contains(r.stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
	}
	if strings.Contains(r.stderr, d1.Name) {
		t.Errorf("guest %s is selected by one policy only, yet reported:\n%s", d1.Name, r.stderr)
	}

	apart := write("apart.yaml", fmt.Sprintf(`policies:
  - name: a
    vmid: "%s"
    snapshot: {schedule: "@hourly", keep_last: 2, label: x}
  - name: b
    vmid: "%s"
    snapshot: {schedule: "@daily", keep_last: 2, label: x}
`, d1.Name, suffix))
	r = mustRun(t, "policy", "check", "--config", apart, "--connect")
	if want := fmt.Sprintf("  a selects now: %s\n  b selects now: %s\n", d1.Name, d2.Name); !strings.Contains(r.stdout, want) {
		t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
	}
	r = mustRun(t, "-o", "json", "policy", "plan", "--config", apart, "--connect", "--days", "1", "--policy", "b", "--max-runs", "0")
	if !strings.Contains(r.stdout, fmt.Sprintf(`"guests":[%q]`, d2.Name)) || strings.Contains(r.stdout, `"policy":"a"`) {
		t.Errorf("plan --connect:\n%s", r.stdout)
	}

	bad := write("badhost.yaml", `policies:
  - name: a
    host: "qemu+tcp://127.0.0.1:1/system"
    vmid: "@all"
    snapshot: {schedule: "@hourly", keep_last: 2}
`)
	if r := run(t, "--timeout", "5", "policy", "check", "--config", bad, "--connect"); r.code != ExitConnect {
		t.Errorf("unreachable host: exit %d, want %d", r.code, ExitConnect)
	}
}
