package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/pveemu"
)

// monitor reaches a Proxmox VE cluster through a named connection of the policy
// file with its API token and pinned certificate; a wrong token is UNKNOWN.
func TestMonitorProxmoxConnection(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	e.c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 101, Name: "web2", Kind: "qemu", Status: "stopped"})
	f, _ := naming.ParseFormat(naming.DefaultFormat)
	desc := naming.Description(naming.NameFields("mon", f))
	e.c.AddSnapshot(100, naming.Name("mon", f, time.Now().Add(-30*time.Minute)), desc, time.Now().Add(-30*time.Minute), false)
	e.c.AddSnapshot(101, naming.Name("mon", f, time.Now().Add(-5*time.Hour)), desc, time.Now().Add(-5*time.Hour), false)

	write := func(token string) string {
		t.Setenv("AUTOSNAP_TEST_MON_TOKEN", token)
		dir := t.TempDir()
		p := filepath.Join(dir, "autosnap.yaml")
		cfg := fmt.Sprintf(`state_dir: %s
connections:
  - name: cluster
    host: %q
    api_token: env:AUTOSNAP_TEST_MON_TOKEN
    fingerprint: %q
policies:
  - name: mon
    host: cluster
    vmid: "web%%"
    snapshot:
      schedule: "@every 2h"
      keep_last: 3
`, filepath.Join(dir, "state"), e.hosts(), e.c.Fingerprint())
		if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	r := run(t, "monitor", "--config", write(pveTokenID+"="+pveSecret))
	if r.code != ExitMonitorWarning || !strings.HasPrefix(r.stdout, "AUTOSNAP WARNING - 1 of 2 guests stale: web2 (snapshot 5h old, cadence 2h)") ||
		!strings.Contains(r.stdout, "[OK] web1 (policy mon, host cluster ("+e.hosts()+")") {
		t.Fatalf("monitor over a PVE connection: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, pveSecret) {
		t.Fatalf("the token's secret is in the output")
	}
	r = run(t, "monitor", "--config", write(pveTokenID+"=00000000-0000-0000-0000-000000000000"))
	if r.code != ExitMonitorUnknown || !strings.Contains(r.stdout, "policy mon: host cluster ("+e.hosts()+"): cannot connect to Proxmox VE") {
		t.Fatalf("monitor with a wrong token: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
