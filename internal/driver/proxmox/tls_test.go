package proxmox_test

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/proxmox"
	"github.com/autosnap/autosnap/internal/pveemu"
)

// fingerprintFlag finds the --fingerprint flag an error tells the user to add.
var fingerprintFlag = regexp.MustCompile(`add --fingerprint ([0-9A-F:,]+) to the command line`)

// TestProxmoxSelfSignedHint: with verification on (the default), a self-signed
// certificate fails with the server's SHA-256 fingerprint and the exact --fingerprint
// flag to add, and that flag then connects. Before, the error only said to pass
// --fingerprint, without the fingerprint, so a cron job could not be fixed without
// looking it up on the node.
func TestProxmoxSelfSignedHint(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg()
	cfg.Fingerprint = ""
	_, err := proxmox.Open(ctx(t), cfg)
	if !errors.Is(err, driver.ErrConnect) {
		t.Fatalf("self-signed certificate accepted or wrong error: %v", err)
	}
	m := fingerprintFlag.FindStringSubmatch(err.Error())
	if m == nil || m[1] != e.c.Fingerprint() {
		t.Fatalf("the error does not give the exact flag --fingerprint %s:\n%v", e.c.Fingerprint(), err)
	}
	cfg.Fingerprint = m[1]
	if _, err := proxmox.Open(ctx(t), cfg); err != nil {
		t.Errorf("with the advised %s: %v", m[0], err)
	}
}

// caEnv is a two-node cluster whose nodes serve their own certificates, signed by the
// cluster CA, and the CA as a file.
func caEnv(t *testing.T) (*pveemu.Cluster, map[string]string, string) {
	t.Helper()
	c := pveemu.New(pveemu.Options{
		Nodes: []string{"pve1", "pve2"}, TaskDuration: 30 * time.Millisecond,
		Tokens: map[string]string{tokenID: tokenSecret}, ClusterCA: true,
	})
	t.Cleanup(c.Close)
	addrs := map[string]string{}
	for _, n := range c.Nodes() {
		a, err := c.ListenNode(n)
		if err != nil {
			t.Fatal(err)
		}
		addrs[n] = a
	}
	ca := filepath.Join(t.TempDir(), "pve-root-ca.pem")
	if err := os.WriteFile(ca, c.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return c, addrs, ca
}

// TestProxmoxCAFile: --ca-file with the cluster CA trusts every node, each with a
// certificate of its own, with names still verified; without it the error lists one
// fingerprint per node in the flag to add; a CA file that does not hold the cluster's
// CA fails; a missing or empty one is an error before connecting.
func TestProxmoxCAFile(t *testing.T) {
	c, addrs, ca := caEnv(t)
	if c.NodeFingerprint("pve1") == c.NodeFingerprint("pve2") {
		t.Fatal("nodes share a certificate")
	}
	cfg := func(hosts ...string) driver.Config {
		return driver.Config{Host: strings.Join(hosts, ","), APIToken: tokenID + "=" + tokenSecret, Timeout: 10 * time.Second}
	}
	for _, h := range []string{addrs["pve1"], addrs["pve2"], strings.Replace(addrs["pve2"], "127.0.0.1", "localhost", 1)} {
		k := cfg(h)
		k.CAFile = ca
		d, err := proxmox.Open(ctx(t), k)
		if err != nil {
			t.Errorf("--ca-file, host %s: %v", h, err)
			continue
		}
		if _, err := d.Guests(ctx(t)); err != nil {
			t.Errorf("--ca-file, host %s: Guests: %v", h, err)
		}
		d.Close()
	}

	// Without the CA: both nodes' fingerprints in one flag, which then connects.
	_, err := proxmox.Open(ctx(t), cfg(addrs["pve1"], addrs["pve2"]))
	m := fingerprintFlag.FindStringSubmatch(errString(err))
	want := c.NodeFingerprint("pve1") + "," + c.NodeFingerprint("pve2")
	if !errors.Is(err, driver.ErrConnect) || m == nil || m[1] != want {
		t.Fatalf("without --ca-file: %v\nwant the flag --fingerprint %s", err, want)
	}
	k := cfg(addrs["pve2"])
	k.Fingerprint = m[1]
	if _, err := proxmox.Open(ctx(t), k); err != nil {
		t.Errorf("with the advised fingerprints: %v", err)
	}

	// Another cluster's CA does not vouch for these nodes.
	_, _, other := caEnv(t)
	k = cfg(addrs["pve1"])
	k.CAFile = other
	if _, err := proxmox.Open(ctx(t), k); !errors.Is(err, driver.ErrConnect) || !strings.Contains(err.Error(), "--fingerprint "+c.NodeFingerprint("pve1")) {
		t.Errorf("another cluster's CA: %v", err)
	}
	// --ca-file with --fingerprint: a pinned certificate or one the CA signed.
	k = cfg(addrs["pve1"], addrs["pve2"])
	k.CAFile, k.Fingerprint = ca, strings.Repeat("AB:", 31)+"AB"
	if _, err := proxmox.Open(ctx(t), k); err != nil {
		t.Errorf("--ca-file with an unrelated --fingerprint: %v", err)
	}

	empty := filepath.Join(t.TempDir(), "empty.pem")
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(t.TempDir(), "missing.pem"), empty} {
		k := cfg(addrs["pve1"])
		k.CAFile = f
		if _, err := proxmox.Open(ctx(t), k); err == nil || errors.Is(err, driver.ErrConnect) || !strings.Contains(err.Error(), "pve-root-ca.pem") {
			t.Errorf("--ca-file %s: %v, want an error before connecting that names pve-root-ca.pem", f, err)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestProxmoxCAFileNameMismatch: with --ca-file the names are still verified; an
// address the certificate does not list fails with the names it does list.
func TestProxmoxCAFileNameMismatch(t *testing.T) {
	c := pveemu.New(pveemu.Options{Nodes: []string{"pve1"}, Tokens: map[string]string{tokenID: tokenSecret}, ClusterCA: true})
	t.Cleanup(c.Close)
	addr, err := c.ListenNodeOn("pve1", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "pve-root-ca.pem")
	if err := os.WriteFile(ca, c.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := driver.Config{Host: addr, APIToken: tokenID + "=" + tokenSecret, Timeout: 10 * time.Second, CAFile: ca}
	_, err = proxmox.Open(ctx(t), cfg)
	if !errors.Is(err, driver.ErrConnect) || !strings.Contains(err.Error(), "valid for pve1, pve1.local, localhost, 127.0.0.1") ||
		!strings.Contains(err.Error(), c.NodeFingerprint("pve1")) {
		t.Fatalf("address not in the certificate: %v", err)
	}
	cfg.Fingerprint = c.NodeFingerprint("pve1")
	if _, err := proxmox.Open(ctx(t), cfg); err != nil {
		t.Errorf("pinned: %v", err)
	}
}
