package proxmox_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/drivertest"
	"github.com/autosnap/autosnap/internal/driver/proxmox"
	"github.com/autosnap/autosnap/internal/pveemu"
)

const (
	tokenID     = "root@pam!autosnap"
	tokenSecret = "5f0c1a7e-9d4b-4c1e-8a55-0123456789ab"
	password    = "correct-horse-battery-staple"
)

// env is an emulated cluster with pve1 and pve2 listening.
type env struct {
	c     *pveemu.Cluster
	addrs map[string]string
	mu    sync.Mutex
	next  int
}

func newEnv(t *testing.T, nodes ...string) *env {
	t.Helper()
	if len(nodes) == 0 {
		nodes = []string{"pve1", "pve2"}
	}
	c := pveemu.New(pveemu.Options{
		Nodes:        nodes,
		TaskDuration: 30 * time.Millisecond,
		Users:        map[string]string{"root@pam": password, "snap@pve": password},
		Tokens:       map[string]string{tokenID: tokenSecret},
	})
	t.Cleanup(c.Close)
	e := &env{c: c, addrs: map[string]string{}, next: 1000}
	for _, n := range nodes {
		addr, err := c.ListenNode(n)
		if err != nil {
			t.Fatal(err)
		}
		e.addrs[n] = addr
	}
	return e
}

func (e *env) vmid() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.next++
	return e.next
}

// cfg is a token config for the given hosts, pinned to the emulator's certificate.
func (e *env) cfg(hosts ...string) driver.Config {
	if len(hosts) == 0 {
		hosts = []string{e.addrs["pve1"]}
	}
	return driver.Config{Host: strings.Join(hosts, ","), APIToken: tokenID + "=" + tokenSecret,
		Fingerprint: e.c.Fingerprint(), Timeout: 10 * time.Second}
}

func (e *env) open(t *testing.T, cfg driver.Config) *proxmox.Driver {
	t.Helper()
	d, err := proxmox.Open(ctx(t), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// add puts a guest on the cluster and returns it as the driver lists it.
func (e *env) add(t *testing.T, d driver.Driver, g pveemu.Guest) driver.Guest {
	t.Helper()
	if g.VMID == 0 {
		g.VMID = e.vmid()
	}
	if g.Node == "" {
		g.Node = "pve1"
	}
	if g.Name == "" {
		g.Name = fmt.Sprintf("g%d", g.VMID)
	}
	e.c.AddGuest(g)
	t.Cleanup(func() { e.c.RemoveGuest(g.VMID) })
	gs, err := d.Guests(ctx(t))
	if err != nil {
		t.Fatalf("Guests: %v", err)
	}
	for _, x := range gs {
		if x.ID == g.VMID {
			return x
		}
	}
	t.Fatalf("guest %d not listed", g.VMID)
	return driver.Guest{}
}

// fixture runs the conformance suite on emulated guests.
type fixture struct {
	e *env
	d *proxmox.Driver
}

func (f *fixture) Driver(t *testing.T) driver.Driver { return f.d }

func (f *fixture) NewGuest(t *testing.T, st driver.State, disks int) driver.Guest {
	id := f.e.vmid()
	status := map[driver.State]string{driver.StateRunning: "running", driver.StatePaused: "paused", driver.StateShutoff: "stopped"}[st]
	ds := map[string]string{}
	for i := 0; i < disks; i++ {
		ds[fmt.Sprintf("scsi%d", i)] = fmt.Sprintf("local-lvm:vm-%d-disk-%d,size=1G", id, i)
	}
	return f.e.add(t, f.d, pveemu.Guest{VMID: id, Name: fmt.Sprintf("suite-%d", id), Kind: "qemu", Status: status,
		Disks: ds, Agent: "1", AgentRunning: st == driver.StateRunning})
}

// NewAgentGuest implements drivertest.AgentFixture: the emulator's running guests have
// an enabled agent that answers.
func (f *fixture) NewAgentGuest(t *testing.T) driver.Guest {
	return f.NewGuest(t, driver.StateRunning, 1)
}

func (f *fixture) Write(t *testing.T, g driver.Guest, disk int, off int64, pattern byte, n int) {
	f.e.c.WriteDisk(g.ID, fmt.Sprintf("scsi%d", disk), off, bytes.Repeat([]byte{pattern}, n))
}

func (f *fixture) Read(t *testing.T, g driver.Guest, disk int, off int64, n int) []byte {
	return f.e.c.ReadDisk(g.ID, fmt.Sprintf("scsi%d", disk), off, n)
}

func (f *fixture) ChainLen(t *testing.T, g driver.Guest, disk int) int { return -1 }

// TestProxmoxConformance runs the driver suite with the default options.
func TestProxmoxConformance(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg())
	drivertest.Run(t, &fixture{e: e, d: d})
}

func TestProxmoxMatch(t *testing.T) {
	for host, want := range map[string]bool{
		"pve1":                      true,
		"pve1:8006":                 true,
		"pve://pve1":                true,
		"PVE://10.0.0.1:8007":       true,
		"pve://[fd00::1]:8006":      true,
		"[fd00::1]":                 true,
		"192.168.1.10":              true,
		"qemu:///system":            false,
		"qemu+ssh://u@h/system":     false,
		"https://pve1:8006":         false,
		"pve1:0":                    false,
		"pve1:99999":                false,
		"fd00::1":                   false,
		"user@pve1":                 false,
		"pve1/api2/json":            false,
		"":                          false,
		"pve://":                    false,
		"host with space":           false,
		"qmp:///run/qemu/vm.sock":   false,
		"pve1.example.com:8006/":    true,
		"pve-node_1.example.org":    true,
		"pve1:port":                 false,
		"test:///default":           false,
		"pve1:8006:8006":            false,
		"pve://pve1:8006,pve2:8006": false, // driver.Open splits lists before matching
	} {
		if got := proxmox.Match(host); got != want {
			t.Errorf("Match(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestProxmoxRegistry(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg()
	d, err := driver.Open(ctx(t), "pve://"+e.addrs["pve1"]+","+e.addrs["pve2"], cfg)
	if err != nil {
		t.Fatalf("driver.Open: %v", err)
	}
	defer d.Close()
	if d.Name() != "proxmox" {
		t.Errorf("driver.Open picked %s", d.Name())
	}
	f := driver.FeaturesOf(d)
	if !f.AgentPing || !f.Storage {
		t.Errorf("features %+v, want AgentPing and Storage", f)
	}
}

func TestProxmoxGuests(t *testing.T) {
	e := newEnv(t, "pve1", "pve2", "pve3")
	d := e.open(t, e.cfg())
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running", Tags: []string{"Prod", "web"}, Pool: "prod/web"})
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 101, Name: "web2", Kind: "qemu", Status: "paused"})
	e.c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 102, Name: "tmpl", Kind: "qemu", Status: "stopped", Template: true})
	e.c.AddGuest(pveemu.Guest{Node: "pve2", VMID: 200, Name: "ct1", Kind: "lxc", Status: "running", Pool: "prod"})
	e.c.AddGuest(pveemu.Guest{Node: "pve3", VMID: 300, Name: "far", Kind: "qemu", Status: "running"})
	e.c.SetNodeOnline("pve3", false)
	gs, err := d.Guests(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	byID := map[int]driver.Guest{}
	for _, g := range gs {
		byID[g.ID] = g
	}
	check := func(id int, want driver.Guest) {
		t.Helper()
		got := byID[id]
		if got.Node != want.Node || got.Name != want.Name || got.State != want.State || got.Kind != want.Kind ||
			got.Template != want.Template || strings.Join(got.Tags, ";") != strings.Join(want.Tags, ";") ||
			strings.Join(got.Pools, ",") != strings.Join(want.Pools, ",") || got.UUID != "" {
			t.Errorf("guest %d = %+v, want %+v", id, got, want)
		}
		if got.Tags == nil {
			t.Errorf("guest %d: nil tags", id)
		}
	}
	check(100, driver.Guest{Node: "pve1", Name: "web1", State: driver.StateRunning, Kind: driver.KindQEMU, Tags: []string{"prod", "web"}, Pools: []string{"prod/web"}})
	check(101, driver.Guest{Node: "pve1", Name: "web2", State: driver.StatePaused, Kind: driver.KindQEMU})
	check(102, driver.Guest{Node: "pve2", Name: "tmpl", State: driver.StateShutoff, Kind: driver.KindQEMU, Template: true})
	check(200, driver.Guest{Node: "pve2", Name: "ct1", State: driver.StateRunning, Kind: driver.KindLXC, Pools: []string{"prod"}})
	if g := byID[300]; g.State != driver.StateUnknown || g.Node != "pve3" {
		t.Errorf("guest on the offline node: %+v, want state unknown", g)
	}
	if k := byID[100].Key(); k != "pve1/100" {
		t.Errorf("Key = %q, want node/vmid", k)
	}
}

func TestProxmoxAuthentication(t *testing.T) {
	e := newEnv(t)
	addr := e.addrs["pve1"]
	fp := e.c.Fingerprint()
	ok := []driver.Config{
		{Host: addr, Fingerprint: fp, APIToken: tokenID + "=" + tokenSecret},
		{Host: addr, Fingerprint: fp, APIToken: "PVEAPIToken=" + tokenID + "=" + tokenSecret},
		{Host: addr, Fingerprint: fp, Username: "root", Password: password},
		{Host: addr, Fingerprint: fp, Username: "snap@pve", Password: password},
		// A token wins over a (wrong) password, as in cv4pve-autosnap.
		{Host: addr, Fingerprint: fp, APIToken: tokenID + "=" + tokenSecret, Username: "root", Password: "nope"},
	}
	for _, cfg := range ok {
		d, err := proxmox.Open(ctx(t), cfg)
		if err != nil {
			t.Errorf("Open(user %q, token set %v): %v", cfg.Username, cfg.APIToken != "", err)
			continue
		}
		g := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "stopped"})
		// Writes need the CSRF token with tickets; a snapshot proves they work.
		if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autoauth", Description: "autosnap"}); err != nil {
			t.Errorf("CreateSnapshot with user %q: %v", cfg.Username, err)
		}
		d.Close()
	}
	const wrongSecret = "0badc0de-dead-beef-0000-000000000000"
	const wrongPassword = "Tr0ub4dor&3-wrong"
	bad := []struct {
		cfg     driver.Config
		secret  string
		connect bool
	}{
		{driver.Config{Host: addr, Fingerprint: fp, APIToken: tokenID + "=" + wrongSecret}, wrongSecret, true},
		{driver.Config{Host: addr, Fingerprint: fp, APIToken: "root@pam!nosuch=" + wrongSecret}, wrongSecret, true},
		{driver.Config{Host: addr, Fingerprint: fp, Username: "root@pam", Password: wrongPassword}, wrongPassword, true},
		{driver.Config{Host: addr, Fingerprint: fp, Username: "nobody", Password: wrongPassword}, wrongPassword, true},
		{driver.Config{Host: addr, Fingerprint: fp, APIToken: "not-a-token-" + wrongSecret}, wrongSecret, false},
		{driver.Config{Host: addr, Fingerprint: fp, Username: "root"}, "", false},
		{driver.Config{Host: addr, Fingerprint: fp}, "", false},
	}
	for _, tc := range bad {
		_, err := proxmox.Open(ctx(t), tc.cfg)
		if err == nil {
			t.Errorf("Open(%+v) succeeded", tc.cfg.Username)
			continue
		}
		if got := errors.Is(err, driver.ErrConnect); got != tc.connect {
			t.Errorf("Open error %q: ErrConnect = %v, want %v", err, got, tc.connect)
		}
		if tc.secret != "" && strings.Contains(err.Error(), tc.secret) {
			t.Errorf("error reveals the secret: %v", err)
		}
	}
	// The secrets never reached the emulator's request log in clear either (it redacts
	// passwords), and were sent only in the login body or the Authorization header.
	for _, r := range e.c.Requests() {
		for k, v := range r.Params {
			if strings.Contains(v, password) || strings.Contains(v, tokenSecret) {
				t.Errorf("%s %s sent a secret as parameter %s", r.Method, r.Path, k)
			}
		}
	}
}

// trustedCAEnv makes the test binary connect to the host it names with the token and
// verified TLS, and exit; see TestProxmoxTLS.
const trustedCAEnv = "AUTOSNAP_TEST_PVE_TRUSTED_HOST"

func TestMain(m *testing.M) {
	if host := os.Getenv(trustedCAEnv); host != "" {
		d, err := proxmox.Open(context.Background(), driver.Config{Host: host, APIToken: tokenID + "=" + tokenSecret, Timeout: 10 * time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		d.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestProxmoxTLS(t *testing.T) {
	e := newEnv(t)
	base := e.cfg()
	base.Fingerprint = ""
	// Verified by default: a self-signed certificate is refused, with a hint.
	_, err := proxmox.Open(ctx(t), base)
	if !errors.Is(err, driver.ErrConnect) || !strings.Contains(err.Error(), "--fingerprint") {
		t.Errorf("self-signed without --fingerprint: %v", err)
	}
	// Trusted CA: the system's trust store (SSL_CERT_FILE, read once per process, so in
	// a process of its own) holds the emulator's certificate.
	pemFile := filepath.Join(t.TempDir(), "ca.pem")
	der := e.c.Certificate().Certificate[0]
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+pemFile, "SSL_CERT_DIR="+t.TempDir(), trustedCAEnv+"="+base.Host)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("with the CA trusted: %v: %s", err, out)
	}
	// Fingerprint pinning: AA:BB form, plain lower-case hex.
	fp := e.c.Fingerprint()
	for _, f := range []string{fp, strings.ToLower(strings.ReplaceAll(fp, ":", ""))} {
		c := base
		c.Fingerprint = f
		if _, err := proxmox.Open(ctx(t), c); err != nil {
			t.Errorf("--fingerprint %s: %v", f, err)
		}
	}
	wrong := base
	wrong.Fingerprint = strings.Repeat("AB:", 31) + "AB"
	if _, err := proxmox.Open(ctx(t), wrong); !errors.Is(err, driver.ErrConnect) || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("wrong fingerprint: %v", err)
	}
	// One fingerprint per node: any of them is accepted.
	several := base
	several.Fingerprint = wrong.Fingerprint + "," + fp
	if _, err := proxmox.Open(ctx(t), several); err != nil {
		t.Errorf("--fingerprint with one per node: %v", err)
	}
	malformed := base
	malformed.Fingerprint = "12:34"
	if _, err := proxmox.Open(ctx(t), malformed); err == nil || errors.Is(err, driver.ErrConnect) {
		t.Errorf("malformed fingerprint must be a usage error: %v", err)
	}
	insecure := base
	insecure.Insecure = true
	if _, err := proxmox.Open(ctx(t), insecure); err != nil {
		t.Errorf("--insecure: %v", err)
	}
}

func TestProxmoxDeadline(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg())
	g := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "running"})
	c, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if _, err := d.Snapshots(c, g); err == nil {
		t.Error("Snapshots with a cancelled context succeeded")
	}
	if _, err := d.CreateSnapshot(c, g, driver.CreateOptions{Name: "autox"}); err == nil {
		t.Error("CreateSnapshot with a cancelled context succeeded")
	}
	if time.Since(start) > time.Second {
		t.Errorf("took %s with a cancelled context", time.Since(start))
	}
	// A host that accepts connections but never answers is bounded by ctx.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	cfg := e.cfg(ln.Addr().String())
	cfg.Timeout = 500 * time.Millisecond
	start = time.Now()
	_, err = proxmox.Open(context.Background(), cfg)
	if !errors.Is(err, driver.ErrConnect) || time.Since(start) > 3*time.Second {
		t.Errorf("hung host: %v after %s", err, time.Since(start))
	}
}

func snapNames(t *testing.T, d driver.Driver, g driver.Guest) string {
	t.Helper()
	ss, err := d.Snapshots(ctx(t), g)
	if err != nil {
		t.Fatalf("Snapshots: %v", err)
	}
	var n []string
	for _, s := range ss {
		n = append(n, s.Name)
	}
	return strings.Join(n, ",")
}

func TestProxmoxDescriptionMarker(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg())
	g := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "stopped"})
	s, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autohourly1", Description: "autosnap\nconsistency: offline"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Description != "cv4pve-autosnap" || s.Consistency != driver.ConsistencyOffline || !s.Current || s.Location != driver.LocationInternal {
		t.Errorf("created %+v", s)
	}
	if got := e.c.Snapshots(g.ID)[0].Description; got != "cv4pve-autosnap" {
		t.Errorf("stored description %q, want exactly cv4pve-autosnap", got)
	}
	if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "manual1", Description: "before upgrade\nby hand"}); err != nil {
		t.Fatal(err)
	}
	if got := e.c.Snapshots(g.ID)[1].Description; got != "before upgrade\nby hand" {
		t.Errorf("other descriptions must pass unchanged, got %q", got)
	}
}

func TestProxmoxCreateParameters(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg())
	run := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "running"})
	off := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "stopped"})
	ct := e.add(t, d, pveemu.Guest{Kind: "lxc", Status: "running"})
	for _, tc := range []struct {
		g       driver.Guest
		vmstate string
	}{{run, "1"}, {off, ""}, {ct, ""}} {
		e.c.ResetRequests()
		s, err := d.CreateSnapshot(ctx(t), tc.g, driver.CreateOptions{Name: "automem", Description: "autosnap", Memory: true})
		if err != nil {
			t.Fatalf("%s: %v", tc.g.Name, err)
		}
		if s.Memory != (tc.vmstate == "1") {
			t.Errorf("%s: Memory = %v", tc.g.Name, s.Memory)
		}
		var posts int
		for _, r := range e.c.Requests() {
			if r.Method == http.MethodPost && strings.HasSuffix(r.Path, "/snapshot") {
				posts++
				if r.Params["vmstate"] != tc.vmstate || r.Params["snapname"] != "automem" {
					t.Errorf("%s: sent %v", tc.g.Name, r.Params)
				}
			}
		}
		if posts != 1 {
			t.Errorf("%s: %d snapshot POSTs", tc.g.Name, posts)
		}
	}
}

func TestProxmoxConsistencyAndAgent(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg())
	cases := []struct {
		g       pveemu.Guest
		ping    bool
		cons    driver.Consistency
		advice  bool // the error carries cv4pve's "consider enabling" advice
		memory  bool
		quiesce bool // CreateOptions.Quiesce allowed
	}{
		{pveemu.Guest{Kind: "qemu", Status: "running", Agent: "1", AgentRunning: true}, true, driver.ConsistencyQuiesced, false, false, true},
		{pveemu.Guest{Kind: "qemu", Status: "running", Agent: "enabled=1,fstrim_cloned_disks=1", AgentRunning: true}, true, driver.ConsistencyQuiesced, false, false, true},
		{pveemu.Guest{Kind: "qemu", Status: "running", Agent: "1,type=virtio", AgentRunning: true}, true, driver.ConsistencyCrash, false, true, true},
		{pveemu.Guest{Kind: "qemu", Status: "running", Agent: "1", AgentRunning: false}, false, driver.ConsistencyCrash, false, false, true},
		{pveemu.Guest{Kind: "qemu", Status: "running", Agent: "1,freeze-fs=0", AgentRunning: true}, false, driver.ConsistencyCrash, false, false, false},
		{pveemu.Guest{Kind: "qemu", Status: "running", Agent: "0", AgentRunning: true}, false, driver.ConsistencyCrash, true, false, false},
		{pveemu.Guest{Kind: "qemu", Status: "running", Agent: "enabled=0", AgentRunning: true}, false, driver.ConsistencyCrash, true, false, false},
		{pveemu.Guest{Kind: "qemu", Status: "running"}, false, driver.ConsistencyCrash, true, false, false},
		{pveemu.Guest{Kind: "qemu", Status: "stopped", Agent: "1"}, false, driver.ConsistencyOffline, false, false, true},
		{pveemu.Guest{Kind: "lxc", Status: "running"}, false, driver.ConsistencyCrash, false, false, false},
		{pveemu.Guest{Kind: "lxc", Status: "stopped"}, false, driver.ConsistencyOffline, false, false, false},
	}
	for i, tc := range cases {
		g := e.add(t, d, tc.g)
		err := d.AgentPing(ctx(t), g)
		if (err == nil) != tc.ping {
			t.Errorf("case %d (%s agent %q): AgentPing = %v, want ok=%v", i, tc.g.Kind, tc.g.Agent, err, tc.ping)
		}
		if err != nil && !errors.Is(err, driver.ErrAgent) {
			t.Errorf("case %d: AgentPing error %v does not wrap ErrAgent", i, err)
		}
		if tc.advice && (err == nil || !strings.Contains(err.Error(), "consider enabling") || !strings.Contains(err.Error(), "Qemu-guest-agent")) {
			t.Errorf("case %d: no advice to enable the agent: %v", i, err)
		}
		s, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autocons", Description: "autosnap", Memory: tc.memory})
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if s.Consistency != tc.cons {
			t.Errorf("case %d (%s %s agent %q): consistency %q, want %q", i, tc.g.Kind, tc.g.Status, tc.g.Agent, s.Consistency, tc.cons)
		}
		before := len(e.c.Snapshots(g.ID))
		_, err = d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autoq", Description: "autosnap", Quiesce: true})
		if tc.quiesce && err != nil {
			t.Errorf("case %d: Quiesce: %v", i, err)
		}
		if !tc.quiesce {
			if !errors.Is(err, driver.ErrAgent) {
				t.Errorf("case %d: Quiesce without an enabled agent: %v, want ErrAgent", i, err)
			}
			if after := len(e.c.Snapshots(g.ID)); after != before {
				t.Errorf("case %d: a refused quiesced snapshot was created anyway", i)
			}
		}
	}
}

func TestProxmoxUnsupportedGuests(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg())
	cases := []struct {
		g    pveemu.Guest
		want string
	}{
		{pveemu.Guest{Kind: "lxc", Status: "running", Disks: map[string]string{"rootfs": "local-lvm:subvol-1-disk-0,size=8G", "mp0": "/srv/data,mp=/data"}}, "mp0 is a bind mount (/srv/data)"},
		{pveemu.Guest{Kind: "lxc", Status: "running", Disks: map[string]string{"rootfs": "local-lvm:subvol-1-disk-0,size=8G", "mp1": "/dev/sdb1,mp=/mnt"}}, "mp1 is a device mount (/dev/sdb1)"},
		{pveemu.Guest{Kind: "qemu", Status: "running", Disks: map[string]string{"scsi0": "local-lvm:vm-1-disk-0,size=8G", "scsi1": "/dev/disk/by-id/ata-X,size=100G"}}, "scsi1 is a passthrough device"},
		{pveemu.Guest{Kind: "qemu", Status: "stopped", Template: true}, "template"},
	}
	for _, tc := range cases {
		g := e.add(t, d, tc.g)
		e.c.ResetRequests()
		_, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autox", Description: "autosnap"})
		if !errors.Is(err, driver.ErrUnsupported) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want ErrUnsupported saying %q", tc.g.Disks, err, tc.want)
		}
		for _, r := range e.c.Requests() {
			if r.Method != http.MethodGet {
				t.Errorf("refused guest got %s %s", r.Method, r.Path)
			}
		}
	}
	// CD-ROMs and empty drives are not disks.
	g := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "stopped", Disks: map[string]string{
		"scsi0": "local-lvm:vm-2-disk-0,size=8G", "ide2": "local:iso/debian.iso,media=cdrom", "ide0": "none,media=cdrom"}})
	if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autocd", Description: "autosnap"}); err != nil {
		t.Errorf("VM with CD-ROMs: %v", err)
	}
}

func TestProxmoxStorage(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg())
	e.c.AddStorage("pve1", "fast", "zfspool", 1000<<20, 960<<20, true, "images,rootdir")
	e.c.AddStorage("pve2", "fast", "zfspool", 1000<<20, 10<<20, true, "images,rootdir")
	e.c.AddStorage("pve1", "bulk", "lvmthin", 0, 0, true, "images,rootdir")
	g := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "running", Disks: map[string]string{
		"scsi0": "fast:vm-1-disk-0,size=8G", "efidisk0": "fast:vm-1-disk-1,size=1M", "virtio1": "bulk:vm-1-disk-2,size=8G",
		"ide2": "local:iso/x.iso,media=cdrom"}})
	us, err := d.Storage(ctx(t), g)
	if err != nil {
		t.Fatal(err)
	}
	if len(us) != 2 {
		t.Fatalf("storages %+v, want bulk and fast", us)
	}
	bulk, fast := us[0], us[1]
	if fast.Name != "pve1/fast" || fast.Capacity != 1000<<20 || fast.Used != 960<<20 || fast.Percent < 95.9 || fast.Percent > 96.1 {
		t.Errorf("fast: %+v, want 96%% of pve1's", fast)
	}
	if bulk.Name != "pve1/bulk" || bulk.Capacity != 0 {
		t.Errorf("bulk without size: %+v, want capacity 0 (unknown)", bulk)
	}
	ct := e.add(t, d, pveemu.Guest{Kind: "lxc", Status: "running", Disks: map[string]string{
		"rootfs": "fast:subvol-2-disk-0,size=8G", "mp0": "/srv,mp=/srv"}})
	if us, err := d.Storage(ctx(t), ct); err != nil || len(us) != 1 || us[0].Name != "pve1/fast" {
		t.Errorf("container with bind mount: %+v, %v", us, err)
	}
}

func TestProxmoxSnapshotsOrderAndCurrent(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg())
	g := e.add(t, d, pveemu.Guest{Kind: "lxc", Status: "stopped"})
	now := time.Now()
	e.c.AddSnapshot(g.ID, "b", "", now.Add(-time.Hour), false)
	e.c.AddSnapshot(g.ID, "a", "x", now.Add(-time.Hour), false) // same second, child of b
	e.c.AddSnapshot(g.ID, "c", "", now, false)
	ss, err := d.Snapshots(ctx(t), g)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range ss {
		got = append(got, fmt.Sprintf("%s<%s cur=%v", s.Name, s.Parent, s.Current))
	}
	if want := "b< cur=false,a<b cur=false,c<a cur=true"; strings.Join(got, ",") != want {
		t.Errorf("Snapshots = %s, want %s", strings.Join(got, ","), want)
	}
}

func TestProxmoxLockedGuestRetried(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg())
	g := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "running"})
	e.c.Lock(g.ID, "backup")
	time.AfterFunc(700*time.Millisecond, func() { e.c.Unlock(g.ID) })
	start := time.Now()
	if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autolock", Description: "autosnap"}); err != nil {
		t.Fatalf("create on a guest unlocked after 0.7s: %v", err)
	}
	if time.Since(start) < 600*time.Millisecond {
		t.Errorf("created after %s, before the lock went away", time.Since(start))
	}
	// Still locked at the deadline: the error names the lock.
	e.c.Lock(g.ID, "backup")
	c, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := d.DeleteSnapshot(c, g, "autolock")
	if !errors.Is(err, driver.ErrLocked) || !strings.Contains(err.Error(), "locked (backup)") || !strings.Contains(err.Error(), "--timeout") {
		t.Errorf("delete on a locked guest: %v", err)
	}
	e.c.Unlock(g.ID)
	// A lock taken by a concurrent task (seen only in the task's exit status) is retried too.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: fmt.Sprintf("autopar%d", i), Description: "autosnap"})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("concurrent create %d: %v", i, err)
		}
	}
}

func TestProxmoxTaskOutcomes(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg())
	g := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "running"})
	e.c.FailNextTask(g.ID, "WARNINGS: 2")
	if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autowarn", Description: "autosnap"}); err != nil {
		t.Errorf("WARNINGS is success: %v", err)
	}
	e.c.FailNextTask(g.ID, "lvcreate snapshot 'pve/snap_vm-1-disk-0_x' error: free space in thin pool reached threshold")
	_, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autofail", Description: "autosnap"})
	if err == nil || !strings.Contains(err.Error(), "thin pool reached threshold") {
		t.Errorf("failed task: %v", err)
	}
	if strings.Contains(snapNames(t, d, g), "autofail") {
		t.Errorf("failed snapshot left behind")
	}
	if err := d.DeleteSnapshot(ctx(t), g, "autonosuch"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("delete of a missing snapshot: %v", err)
	}
	// A task still running at the deadline.
	e.c.SetTaskDuration(5 * time.Second)
	defer e.c.SetTaskDuration(30 * time.Millisecond)
	c, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = d.CreateSnapshot(c, g, driver.CreateOptions{Name: "autoslow", Description: "autosnap"})
	if err == nil || !strings.Contains(err.Error(), "still running") || !strings.Contains(err.Error(), "raise --timeout") {
		t.Errorf("slow task: %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("slow task returned after %s with a 0.7s deadline (want well under 3s)", took)
	}
}

func TestProxmoxRevert(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg())
	g := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "stopped"})
	e.c.WriteDisk(g.ID, "scsi0", 0, []byte("before"))
	if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autorev", Description: "autosnap"}); err != nil {
		t.Fatal(err)
	}
	e.c.WriteDisk(g.ID, "scsi0", 0, []byte("after!"))
	e.c.ResetRequests()
	if err := d.RevertSnapshot(ctx(t), g, "autorev", driver.RevertOptions{Running: true}); err != nil {
		t.Fatal(err)
	}
	if got := string(e.c.ReadDisk(g.ID, "scsi0", 0, 6)); got != "before" {
		t.Errorf("disk after revert: %q", got)
	}
	for _, r := range e.c.Requests() {
		if strings.HasSuffix(r.Path, "/rollback") && r.Params["start"] != "1" {
			t.Errorf("rollback sent %v, want start=1", r.Params)
		}
	}
	if err := d.RevertSnapshot(ctx(t), g, "autonosuch", driver.RevertOptions{}); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("revert to a missing snapshot: %v", err)
	}
	running := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "running"})
	if err := d.RevertSnapshot(ctx(t), running, "x", driver.RevertOptions{}); err == nil {
		t.Errorf("revert of a running guest without Force succeeded")
	}
}

func TestProxmoxFailoverAtOpen(t *testing.T) {
	e := newEnv(t)
	down := e.addrs["pve1"]
	e.c.CloseNode("pve1")
	d := e.open(t, e.cfg(down, e.addrs["pve2"]))
	if d.Host() != e.addrs["pve2"] {
		t.Errorf("using %s, want the second host", d.Host())
	}
	// No host at all: every reason is listed, and exit code 3 material.
	e.c.CloseNode("pve2")
	_, err := proxmox.Open(ctx(t), e.cfg(down, e.addrs["pve2"]))
	if !errors.Is(err, driver.ErrConnect) || !strings.Contains(err.Error(), down) || !strings.Contains(err.Error(), e.addrs["pve2"]) {
		t.Errorf("all hosts down: %v", err)
	}
}

func TestProxmoxFailoverMidOperation(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, e.cfg(e.addrs["pve1"], e.addrs["pve2"]))
	g := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "running", Node: "pve2"})
	e.c.SetTaskDuration(600 * time.Millisecond)
	defer e.c.SetTaskDuration(30 * time.Millisecond)
	time.AfterFunc(200*time.Millisecond, func() { e.c.CloseNode("pve1") })
	if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autofo", Description: "autosnap"}); err != nil {
		t.Fatalf("create across a host failure: %v", err)
	}
	if d.Host() != e.addrs["pve2"] {
		t.Errorf("still on %s", d.Host())
	}
	if got := snapNames(t, d, g); got != "autofo" {
		t.Errorf("snapshots %s", got)
	}
}

// lossyHost serves pve1's API over TLS and, for the first request matching lose, lets
// the emulator act on it but kills the connection instead of answering; then it dies,
// or with survive keeps serving.
type lossyHost struct {
	srv     *httptest.Server
	lost    atomic.Bool
	survive bool
}

func newLossyHost(t *testing.T, e *env, survive bool, lose func(*http.Request) bool) *lossyHost {
	h := &lossyHost{survive: survive}
	real := e.c.NodeHandler("pve1")
	h.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !h.lost.Load() && lose(r) {
			h.lost.Store(true)
			real.ServeHTTP(httptest.NewRecorder(), r)
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			if !h.survive {
				go h.srv.CloseClientConnections()
			}
			return
		}
		if h.lost.Load() && !h.survive {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		real.ServeHTTP(w, r)
	}))
	h.srv.TLS = &tls.Config{Certificates: []tls.Certificate{e.c.Certificate()}}
	h.srv.StartTLS()
	t.Cleanup(h.srv.Close)
	return h
}

func (h *lossyHost) addr() string { return strings.TrimPrefix(h.srv.URL, "https://") }

func TestProxmoxLostWriteNotRepeated(t *testing.T) {
	e := newEnv(t)
	for _, op := range []string{"create", "delete"} {
		t.Run(op, func(t *testing.T) {
			isOp := func(r *http.Request) bool {
				if op == "create" {
					return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/snapshot")
				}
				return r.Method == http.MethodDelete
			}
			lossy := newLossyHost(t, e, false, isOp)
			d := e.open(t, e.cfg(lossy.addr(), e.addrs["pve2"]))
			g := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "running"})
			if op == "delete" {
				e.c.AddSnapshot(g.ID, "autodel", "cv4pve-autosnap", time.Now(), false)
			}
			e.c.ResetRequests()
			var err error
			if op == "create" {
				_, err = d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autolost", Description: "autosnap"})
			} else {
				err = d.DeleteSnapshot(ctx(t), g, "autodel")
			}
			if err != nil {
				t.Fatalf("%s with a lost answer: %v", op, err)
			}
			if !lossy.lost.Load() {
				t.Fatal("the answer was not lost; the test proves nothing")
			}
			writes := 0
			for _, r := range e.c.Requests() {
				if r.Method != http.MethodGet && strings.Contains(r.Path, "/snapshot") {
					writes++
				}
			}
			if writes != 1 {
				t.Errorf("%d snapshot writes reached PVE, want exactly 1", writes)
			}
			want := map[string]string{"create": "autolost", "delete": ""}[op]
			if got := snapNames(t, d, g); got != want {
				t.Errorf("snapshots %q, want %q", got, want)
			}
			if d.Host() != e.addrs["pve2"] {
				t.Errorf("not failed over: %s", d.Host())
			}
		})
	}
}

func TestProxmoxTicketRenewedOnExpiry(t *testing.T) {
	c := pveemu.New(pveemu.Options{Nodes: []string{"pve1"}, TaskDuration: 20 * time.Millisecond,
		Users: map[string]string{"root@pam": password}, TicketLifetime: 2 * time.Second})
	t.Cleanup(c.Close)
	addr, err := c.ListenNode("pve1")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{c: c, addrs: map[string]string{"pve1": addr}, next: 1000}
	d := e.open(t, driver.Config{Host: addr, Username: "root", Password: password, Fingerprint: c.Fingerprint()})
	gs := make([]driver.Guest, 6)
	for i := range gs {
		gs[i] = e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "stopped"})
	}
	// Ticket times have one-second resolution: after 3 s every ticket has expired.
	time.Sleep(3 * time.Second)
	c.ResetRequests()
	// Concurrent requests with an expired ticket log in once and all succeed.
	var wg sync.WaitGroup
	errs := make([]error, len(gs))
	for i, g := range gs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autorenew", Description: "autosnap"})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("guest %d after the ticket expired: %v", i, err)
		}
	}
	logins := 0
	for _, r := range c.Requests() {
		if r.Path == "/access/ticket" && r.Method == http.MethodPost {
			logins++
		}
	}
	if logins < 1 || logins > 2 {
		t.Errorf("%d logins for one expiry by six concurrent requests, want 1", logins)
	}
}

func TestProxmoxUnreachableNode(t *testing.T) {
	e := newEnv(t, "pve1", "pve2", "pve3")
	d := e.open(t, e.cfg())
	g := e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "running", Node: "pve2"})
	// A proxy hop that fails briefly is retried.
	e.c.SetNodeProxyError("pve2", 596, "Broken pipe")
	time.AfterFunc(150*time.Millisecond, func() { e.c.SetNodeProxyError("pve2", 0, "") })
	if _, err := d.Snapshots(ctx(t), g); err != nil {
		t.Errorf("Snapshots across a brief 596: %v", err)
	}
	// A node whose API is down for good does not stall the listing, and its guests
	// fail quickly with the reason.
	e.add(t, d, pveemu.Guest{Kind: "qemu", Status: "running", Node: "pve3"})
	e.c.CloseNode("pve3")
	start := time.Now()
	if _, err := d.Guests(ctx(t)); err != nil {
		t.Errorf("Guests with pve3's API down: %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Guests took %s with one node's API down", took)
	} else {
		t.Logf("Guests took %s with one node's API down", took)
	}
	e.c.SetNodeProxyError("pve2", 596, "Connection timed out")
	_, err := d.Snapshots(ctx(t), g)
	if err == nil || !strings.Contains(err.Error(), "596 Connection timed out") {
		t.Errorf("Snapshots with pve2 unreachable: %v", err)
	}
}

// TestProxmoxLostWriteSingleHost: one host that drops one connection is reconnected to, and the
// write is still not repeated.
func TestProxmoxLostWriteSingleHost(t *testing.T) {
	e := newEnv(t)
	lossy := newLossyHost(t, e, true, func(r *http.Request) bool {
		return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/snapshot")
	})
	d := e.open(t, e.cfg(lossy.addr()))
	g := e.add(t, d, pveemu.Guest{Kind: "lxc", Status: "running"})
	e.c.ResetRequests()
	if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "autoflaky", Description: "autosnap"}); err != nil {
		t.Fatalf("create with one dropped answer: %v", err)
	}
	if !lossy.lost.Load() {
		t.Fatal("the answer was not lost; the test proves nothing")
	}
	posts := 0
	for _, r := range e.c.Requests() {
		if r.Method == http.MethodPost && strings.HasSuffix(r.Path, "/snapshot") {
			posts++
		}
	}
	if posts != 1 || snapNames(t, d, g) != "autoflaky" {
		t.Errorf("%d POSTs, snapshots %q", posts, snapNames(t, d, g))
	}
}
