package cli

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/autosnap/autosnap/internal/daemon"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestDashboardRealGuests runs `autosnap daemon --listen` over a real guest with a
// snapshot tree s1 → s2 → {s3, s4} and opens the dashboard in headless Chromium:
// after the daemon's first (catch-up) run, the overview shows the guest shut off with
// a fresh snapshot and its count, another test guest no policy selects as
// unprotected, and the guest's page shows the same tree, in the same order and with
// the same current snapshot, as `snapshot list --tree`. The browser reports no
// console error.
func TestDashboardRealGuests(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	other := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
	const n = 64 << 10
	for i := 1; i <= 3; i++ {
		mustRun(t, "snapshot", "create", d.Name, fmt.Sprintf("s%d", i))
		writeAny(t, d, "vda", int64(i*n), byte(i), n)
	}
	// Branch at s2 as a revert does: a fresh overlay on s2's state image.
	chain := d.Chain(t, "vda") // [O_s3, O_s2, O_s1, base]
	r := filepath.Join(d.Dir, "revert.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", chain[2], r).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	x := d.XML(t)
	x.Devices.Disks[0].Source.File.File = r
	x.Devices.Disks[0].BackingStore = nil
	s, _ := x.Marshal()
	if _, err := bed.Conn.DomainDefineXML(s); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "snapshot", "current", d.Name, "s2")
	mustRun(t, "snapshot", "create", d.Name, "s4")

	stateDir := t.TempDir()
	path := writePolicy(t, fmt.Sprintf(`timezone: UTC
state_dir: %s
policies:
  - name: web
    host: qemu:///system
    vmid: %q
    snapshot:
      schedule: "@every 1h"
      keep_last: 3
`, stateDir, d.Name))
	started := make(chan net.Addr, 1)
	adjustDaemon = func(o *DaemonOptions) { o.started = func(_ *daemon.Daemon, a net.Addr) { started <- a } }
	t.Cleanup(func() { adjustDaemon = nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr lockedBuffer
	code := make(chan int, 1)
	go func() {
		code <- execute(ctx, []string{"--timeout", "60", "daemon", "--config", path, "--grace", "0s", "--listen", "127.0.0.1:0"}, &stdout, &stderr, nil)
	}()
	var base string
	select {
	case a := <-started:
		base = "http://" + a.String()
	case c := <-code:
		t.Fatalf("daemon exited %d before starting:\n%s", c, stderr.String())
	case <-time.After(time.Minute):
		t.Fatal("the daemon did not start")
	}
	defer func() {
		cancel()
		select {
		case c := <-code:
			if c != 0 {
				t.Errorf("daemon exited %d:\n%s", c, stderr.String())
			}
		case <-time.After(time.Minute):
			t.Error("the daemon did not stop")
		}
	}()

	// The catch-up run at start ends in the history, seen through the API.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var runs []struct {
			Outcome string `json:"outcome"`
			Trigger string `json:"trigger"`
		}
		resp, err := http.Get(base + "/api/v1/runs")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&runs)
			resp.Body.Close()
		}
		if err == nil && len(runs) == 1 && runs[0].Outcome != "running" {
			if runs[0].Outcome != "ok" {
				t.Fatalf("first run %+v:\n%s", runs[0], stderr.String())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no finished run (%v %+v):\n%s", err, runs, stderr.String())
		}
		time.Sleep(300 * time.Millisecond)
	}
	var pols []struct {
		Name string
		Jobs []struct {
			Kind    string
			LastRun time.Time `json:"last_run"`
		}
	}
	if resp, err := http.Get(base + "/api/v1/policies"); err == nil {
		_ = json.NewDecoder(resp.Body).Decode(&pols)
		resp.Body.Close()
	}
	if len(pols) != 1 || len(pols[0].Jobs) != 1 || pols[0].Jobs[0].Kind != "snapshot" || pols[0].Jobs[0].LastRun.IsZero() {
		t.Errorf("policies: %+v", pols)
	}
	want := snapshotList(t, d.Name, "--tree")
	if len(want) != 5 {
		t.Fatalf("snapshot list --tree: %+v", want)
	}

	b := newTestBrowser(t)
	if err := chromedp.Do(b.ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#guests"))); err != nil {
		t.Fatal(err)
	}
	type row struct{ Status, Fresh, Snap, State, Policy string }
	rowJS := func(name string) string {
		return fmt.Sprintf(`(r => r && {Status: r.dataset.status, Fresh: r.querySelector('.snap-age').dataset.fresh,
			Snap: r.querySelector('.snap-age').textContent.trim().replace(/\s+/g, ' '), State: r.querySelector('.state').textContent,
			Policy: r.cells[2].textContent})(document.querySelector('tr[data-guest=%q]'))`, name)
	}
	got, err := chromedp.Run(b.ctx, chromedp.Evaluate[*row](rowJS(d.Name)))
	if err != nil || got == nil {
		t.Fatalf("overview row of %s: %v", d.Name, err)
	}
	if got.Status != "ok" || got.Fresh != "ok" || got.State != "shutoff" || got.Policy != "web" || !strings.HasSuffix(got.Snap, "/ 1h (5)") ||
		!(strings.HasSuffix(strings.Fields(got.Snap)[0], "s") || strings.HasSuffix(strings.Fields(got.Snap)[0], "m")) {
		t.Errorf("overview row of %s: %+v", d.Name, *got)
	}
	o, err := chromedp.Run(b.ctx, chromedp.Evaluate[*row](rowJS(other.Name)))
	if err != nil || o == nil || o.Status != "unprotected" || o.State != "paused" || o.Policy != "" {
		t.Errorf("overview row of %s: %+v %v", other.Name, o, err)
	}

	if err := chromedp.Do(b.ctx, chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-guest=%q] a`, d.Name))), chromedp.WaitVisible(chromedp.CSS("#snapshot-tree"))); err != nil {
		t.Fatal(err)
	}
	type snap struct {
		Name, Parent string
		Current      bool
	}
	page, err := chromedp.Run(b.ctx, chromedp.Evaluate[[]snap](`[...document.querySelectorAll('#snapshot-tree tr.snap')].map(r =>
		({Name: r.dataset.name, Parent: r.dataset.parent, Current: r.classList.contains('current')}))`))
	if err != nil {
		t.Fatal(err)
	}
	var cli []snap
	for _, w := range want {
		cli = append(cli, snap{w.Name, w.Parent, w.Current})
	}
	if !slices.Equal(page, cli) {
		t.Errorf("dashboard tree\n %+v\nsnapshot list --tree\n %+v", page, cli)
	}
	if cli[0].Name != "s1" || cli[2].Parent != "s2" || cli[3].Parent != "s2" {
		t.Errorf("the test bed's tree is not s1 → s2 → {s3, s4 → daemon}: %+v", cli)
	}

	// A run started through the API (as the page's action does) runs the daemon's
	// job now, is recorded with trigger web, and streams its events.
	evResp, err := http.Get(base + "/api/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer evResp.Body.Close()
	events := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(evResp.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				events <- data
			}
		}
		close(events)
	}()
	resp, err := http.Post(base+"/api/v1/policies/web/run", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	var webRun struct{ Job int64 }
	_ = json.NewDecoder(resp.Body).Decode(&webRun)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || webRun.Job == 0 {
		t.Fatalf("POST run: %d %+v", resp.StatusCode, webRun)
	}
	var seen []string
	for len(seen) < 3 {
		select {
		case e, ok := <-events:
			if !ok {
				t.Fatalf("event stream ended after %v", seen)
			}
			var ev struct {
				Type, Guest, Outcome, Trigger string
				Job                           int64
			}
			_ = json.Unmarshal([]byte(e), &ev)
			if ev.Job == webRun.Job {
				seen = append(seen, ev.Type+" "+ev.Guest+" "+ev.Outcome+" "+ev.Trigger)
			}
		case <-time.After(2 * time.Minute):
			t.Fatalf("events of job %d: %v", webRun.Job, seen)
		}
	}
	if w := []string{"job-start   web", "guest " + d.Name + " ok ", "job-end  ok "}; !slices.Equal(seen, w) {
		t.Errorf("events %q, want %q", seen, w)
	}
	resp, err = http.Get(fmt.Sprintf("%s/api/v1/runs/%d", base, webRun.Job))
	if err != nil {
		t.Fatal(err)
	}
	var job struct {
		Trigger, Outcome string
		Guests           []struct{ Guest, Outcome string }
	}
	_ = json.NewDecoder(resp.Body).Decode(&job)
	resp.Body.Close()
	if job.Trigger != "web" || job.Outcome != "ok" || len(job.Guests) != 1 || job.Guests[0].Guest != d.Name {
		t.Errorf("recorded run %+v", job)
	}
	if n := len(snapshotList(t, d.Name)); n != 6 {
		t.Errorf("%d snapshots after the web run, want 6", n)
	}

	// A plan is recorded as a dry run and changes nothing.
	resp, err = http.Post(base+"/api/v1/policies/web/plan", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	var plan struct {
		Job   int64
		Items []struct{ Guest, Action, Name string }
	}
	_ = json.NewDecoder(resp.Body).Decode(&plan)
	resp.Body.Close()
	if resp.StatusCode != 200 || plan.Job == 0 || len(plan.Items) == 0 || plan.Items[0].Guest != d.Name || plan.Items[0].Action != "snapshot" ||
		!strings.HasPrefix(plan.Items[0].Name, "autoweb") {
		t.Fatalf("plan: %d %+v", resp.StatusCode, plan)
	}
	resp, err = http.Get(fmt.Sprintf("%s/api/v1/runs/%d", base, plan.Job))
	if err != nil {
		t.Fatal(err)
	}
	var dry struct {
		DryRun  bool `json:"dry_run"`
		Trigger string
		Guests  []struct{ Guest, Outcome string }
	}
	_ = json.NewDecoder(resp.Body).Decode(&dry)
	resp.Body.Close()
	if !dry.DryRun || dry.Trigger != "web" || len(dry.Guests) != 1 || dry.Guests[0].Outcome != "skipped" {
		t.Errorf("recorded plan %+v", dry)
	}
	if n := len(snapshotList(t, d.Name)); n != 6 {
		t.Errorf("%d snapshots after the plan, want still 6", n)
	}
}

// testBrowser is headless Chromium whose console errors fail the test.
type testBrowser struct {
	ctx  context.Context
	mu   sync.Mutex
	msgs []string
}

func newTestBrowser(t *testing.T) *testBrowser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath("/usr/bin/chromium"),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	b := &testBrowser{ctx: ctx}
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium (scripts/install-deps.sh installs it): %v", err)
	}
	msgs := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.Type == chromedp.ConsoleException {
				b.mu.Lock()
				b.msgs = append(b.msgs, fmt.Sprintf("%s %s (%s)", m.Type, m.Text, m.URL))
				b.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancelTimeout()
		cancelCtx()
		cancelAlloc()
		<-done
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, m := range b.msgs {
			t.Errorf("browser console: %s", m)
		}
	})
	return b
}

// TestMountDashboard: off loopback the daemon serves the dashboard only with the
// policy file's TLS certificate and a token (then over TLS, login required), else it
// logs why and serves /metrics alone; an unreadable certificate is an error.
func TestMountDashboard(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "d.crt"), filepath.Join(dir, "d.key")
	writeSelfSigned(t, certFile, keyFile)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("tok-123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const pol = "policies:\n  - name: web\n    host: qemu:///system\n    vmid: nothing-here\n    snapshot:\n      schedule: \"@every 1h\"\n      keep_last: 1\n"
	const down = "  - name: gone\n    host: qemu+tcp://127.0.0.1:1/system\n    vmid: \"@all\"\n    snapshot:\n      schedule: \"@every 1h\"\n      keep_last: 1\n"
	mount := func(extra string) (*daemon.Daemon, *tls.Config, string, error) {
		cfg, err := policy.Parse([]byte(pol+extra), "p.yaml")
		if err != nil {
			t.Fatal(err)
		}
		h := &daemon.MemoryHistory{}
		d, err := daemon.New(cfg, daemon.Options{Recorder: h, Reader: h})
		if err != nil {
			t.Fatal(err)
		}
		var logs lockedBuffer
		log, _ := daemon.NewLogger(&logs, "text", slog.LevelInfo, false)
		tc, err := mountDashboard(d, h, cfg, "0.0.0.0:8460", log)
		return d, tc, logs.String(), err
	}
	get := func(d *daemon.Daemon, path, auth string) int {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		rec := httptest.NewRecorder()
		d.Handler().ServeHTTP(rec, req)
		return rec.Code
	}

	d, tc, logs, err := mount("")
	if err != nil || tc != nil || !strings.Contains(logs, "dashboard is not served") || !strings.Contains(logs, "TLS") {
		t.Errorf("no dashboard section: %v %v\n%s", err, tc, logs)
	}
	if c := get(d, "/metrics", ""); c != 200 {
		t.Errorf("/metrics: %d", c)
	}
	if c := get(d, "/api/v1/guests", ""); c != 404 {
		t.Errorf("insecure dashboard mounted: /api/v1/guests %d", c)
	}

	d, tc, logs, err = mount(fmt.Sprintf("dashboard:\n  tls_cert: %s\n  tls_key: %s\n  token: file:%s\n", certFile, keyFile, tokenFile))
	if err != nil || tc == nil || len(tc.Certificates) != 1 {
		t.Fatalf("TLS and token: %v %v\n%s", err, tc, logs)
	}
	if c := get(d, "/runs", ""); c != http.StatusSeeOther {
		t.Errorf("anonymous page: %d, want the login redirect", c)
	}
	if c := get(d, "/api/v1/runs", "wrong"); c != http.StatusUnauthorized {
		t.Errorf("wrong token: %d", c)
	}
	if c := get(d, "/api/v1/runs", "tok-123"); c != 200 {
		t.Errorf("token from the file: %d", c)
	}
	if c := get(d, "/metrics", ""); c != 200 {
		t.Errorf("/metrics: %d", c)
	}

	// A host that cannot be reached is reported, not silently left out.
	d, _, logs, err = mount(down + fmt.Sprintf("dashboard:\n  tls_cert: %s\n  tls_key: %s\n  token: file:%s\n", certFile, keyFile, tokenFile))
	if err != nil {
		t.Fatalf("%v\n%s", err, logs)
	}
	req := httptest.NewRequest(http.MethodGet, "/api/v1/problems", nil)
	req.Header.Set("Authorization", "Bearer tok-123")
	rec := httptest.NewRecorder()
	d.Handler().ServeHTTP(rec, req)
	var problems []string
	if err := json.Unmarshal(rec.Body.Bytes(), &problems); err != nil || len(problems) != 1 ||
		!strings.Contains(problems[0], "policy gone") || !strings.Contains(problems[0], "127.0.0.1:1") {
		t.Errorf("problems: %d %v %s", rec.Code, err, rec.Body.String())
	}

	if _, _, _, err := mount("dashboard:\n  tls_cert: /nonexistent.crt\n  tls_key: /nonexistent.key\n"); err == nil || !strings.Contains(err.Error(), "/nonexistent.crt") {
		t.Errorf("missing certificate: %v", err)
	}
}

func writeSelfSigned(t *testing.T, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "autosnap test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startDashboardDaemon runs `autosnap daemon --listen 127.0.0.1:0` on the policy
// file and returns the base URL; the daemon is stopped (exit 0) at cleanup.
func startDashboardDaemon(t *testing.T, path string) (string, *lockedBuffer) {
	t.Helper()
	started := make(chan net.Addr, 1)
	adjustDaemon = func(o *DaemonOptions) { o.started = func(_ *daemon.Daemon, a net.Addr) { started <- a } }
	t.Cleanup(func() { adjustDaemon = nil })
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr lockedBuffer
	code := make(chan int, 1)
	go func() {
		code <- execute(ctx, []string{"--timeout", "60", "daemon", "--config", path, "--grace", "0s", "--listen", "127.0.0.1:0"}, &stdout, &stderr, nil)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case c := <-code:
			if c != 0 {
				t.Errorf("daemon exited %d:\n%s", c, stderr.String())
			}
		case <-time.After(time.Minute):
			t.Error("the daemon did not stop")
		}
	})
	select {
	case a := <-started:
		return "http://" + a.String(), &stderr
	case c := <-code:
		t.Fatalf("daemon exited %d before starting:\n%s", c, stderr.String())
	case <-time.After(time.Minute):
		t.Fatal("the daemon did not start")
	}
	return "", nil
}

// waitRun polls /api/v1/runs/{id} until the job ended and returns it.
func waitRun(t *testing.T, base string, id int64, logs *lockedBuffer) webJob {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var j webJob
		resp, err := http.Get(fmt.Sprintf("%s/api/v1/runs/%d", base, id))
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&j)
			resp.Body.Close()
		}
		if err == nil && j.Outcome != "running" && j.Outcome != "" {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %d did not end (%v %+v):\n%s", id, err, j, logs.String())
		}
		time.Sleep(300 * time.Millisecond)
	}
}

type webJob struct {
	ID             int64
	Kind, Trigger  string
	Outcome, Error string
	Guests         []struct{ Guest, Outcome, Error string }
}

// TestDashboardRealBackupVerify: the daemon backs a real guest up; the guest's page
// data lists the repository's points (as `backup list -o json` does) with sizes, and
// "verify" from the dashboard is recorded as a web verify job that passes, then fails
// naming the damaged file once a point's image is changed.
func TestDashboardRealBackupVerify(t *testing.T) {
	bed := testbed.Libvirt(t)
	g := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
	g.WriteDisk(t, "vda", 0, 0xAB, 256<<10)
	target := t.TempDir()
	path := writePolicy(t, fmt.Sprintf(`timezone: UTC
state_dir: %s
policies:
  - name: bk
    host: qemu:///system
    vmid: %q
    backup:
      schedule: "@every 1h"
      target: %s
      quiesce: "off"
`, t.TempDir(), g.Name, target))
	base, logs := startDashboardDaemon(t, path)
	waitRun(t, base, 1, logs)

	var gs []struct{ ID, Name string }
	resp, err := http.Get(base + "/api/v1/guests?policy=bk")
	if err == nil {
		err = json.NewDecoder(resp.Body).Decode(&gs)
		resp.Body.Close()
	}
	if err != nil || len(gs) != 1 || gs[0].Name != g.Name {
		t.Fatalf("guests of bk: %v %+v", err, gs)
	}
	id := url.PathEscape(gs[0].ID)
	var detail struct {
		Guest struct {
			BackupStatus string `json:"backup_status"`
			BackupPoints int    `json:"backup_points"`
		} `json:"guest"`
		Backups []struct {
			ID, Level, Chain string
			Size             uint64
		} `json:"backups"`
	}
	resp, err = http.Get(base + "/api/v1/guests/" + id)
	if err == nil {
		err = json.NewDecoder(resp.Body).Decode(&detail)
		resp.Body.Close()
	}
	if err != nil || len(detail.Backups) != 1 || detail.Backups[0].Level != "full" || detail.Backups[0].Size == 0 ||
		detail.Guest.BackupStatus != "ok" || detail.Guest.BackupPoints != 1 {
		t.Fatalf("guest detail: %v %+v", err, detail)
	}
	var listed []struct {
		ID string `json:"id"`
	}
	out := mustRun(t, "--vmid", g.Name, "-o", "json", "backup", "list", "--target", target)
	if err := json.Unmarshal([]byte(out.stdout), &listed); err != nil || len(listed) != 1 || listed[0].ID != detail.Backups[0].ID {
		t.Errorf("backup list %v %s, dashboard %+v", err, out.stdout, detail.Backups)
	}

	verify := func() webJob {
		resp, err := http.Post(base+"/api/v1/guests/"+id+"/verify", "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		var r struct{ Job int64 }
		_ = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("verify: %d", resp.StatusCode)
		}
		return waitRun(t, base, r.Job, logs)
	}
	if j := verify(); j.Kind != "verify" || j.Trigger != "web" || j.Outcome != "ok" || len(j.Guests) != 1 || j.Guests[0].Outcome != "ok" {
		t.Errorf("verify of a sound repository: %+v", j)
	}
	imgs, _ := filepath.Glob(filepath.Join(target, "*", "*", "*.qcow2"))
	if len(imgs) == 0 {
		t.Fatalf("no images under %s", target)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x55 0 64k", imgs[0]).CombinedOutput(); err != nil {
		t.Fatalf("damaging %s: %v %s", imgs[0], err, out)
	}
	if j := verify(); j.Outcome != "failed" || len(j.Guests) != 1 || !strings.Contains(j.Guests[0].Error, filepath.Base(imgs[0])) {
		t.Errorf("verify of a damaged point: %+v", j)
	}
}
