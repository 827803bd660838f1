package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/pveemu"
)

// caCluster starts a two-node emulated cluster whose node certificates its own CA
// signed (not trusted by the system), listening on TLS; it returns the nodes' addresses.
func caCluster(t *testing.T) (*pveemu.Cluster, []string) {
	t.Helper()
	c := pveemu.New(pveemu.Options{Nodes: []string{"pve1", "pve2"}, TaskDuration: 30 * time.Millisecond,
		Tokens: map[string]string{pveTokenID: pveSecret}, ClusterCA: true})
	t.Cleanup(c.Close)
	var hosts []string
	for _, n := range c.Nodes() {
		a, err := c.ListenNode(n)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, a)
	}
	return c, hosts
}

// TestPVECAFileAndFingerprintHint: verification stays on; a cron line without
// --fingerprint fails (exit 3) with the exact flag to add for every node, and works
// once it is added; --ca-file with the cluster CA trusts every node at once.
func TestPVECAFileAndFingerprintHint(t *testing.T) {
	c, hosts := caCluster(t)
	c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 100, Name: "web1", Kind: "qemu", Status: "stopped"})
	base := []string{"--host", strings.Join(hosts, ","), "--api-token", pveTokenID + "=" + pveSecret, "--vmid", "100"}
	with := func(a ...string) []string { return append(append([]string{}, base...), a...) }

	r := run(t, with("vm", "list")...)
	flag := "--fingerprint " + c.NodeFingerprint("pve1") + "," + c.NodeFingerprint("pve2")
	if r.code != ExitConnect || !strings.Contains(r.stderr, "add "+flag+" to the command line") {
		t.Fatalf("untrusted certificates: exit %d, want %d and the flag %q in:\n%s", r.code, ExitConnect, flag, r.stderr)
	}
	mustRun(t, with(append(strings.Fields(flag), "vm", "list")...)...)

	ca := filepath.Join(t.TempDir(), "pve-root-ca.pem")
	if err := os.WriteFile(ca, c.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, with("--ca-file", ca, "snap", "--label", "hourly", "--keep", "1")...)
	if n := len(c.Snapshots(100)); n != 1 {
		t.Errorf("snap with --ca-file: %d snapshots, want 1", n)
	}
	if r := run(t, with("--ca-file", filepath.Join(t.TempDir(), "none.pem"), "vm", "list")...); r.code != 2 || !strings.Contains(r.stderr, "pve-root-ca.pem") {
		t.Errorf("missing --ca-file: exit %d, want 2 naming pve-root-ca.pem", r.code)
	}
}
