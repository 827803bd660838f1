package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/autosnap/autosnap/internal/daemon"
	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/journal"
	"github.com/autosnap/autosnap/internal/testbed"
)

// lockedBuffer is an io.Writer safe for the daemon's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func writePolicy(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "autosnap.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func domainSnapshots(t *testing.T, bed *testbed.Bed, d *testbed.Domain) []string {
	t.Helper()
	snaps, _, err := bed.Conn.DomainListAllSnapshots(d.Dom, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range snaps {
		out = append(out, s.Name)
	}
	slices.Sort(out)
	return out
}

// freezeStatus is the guest agent's guest-fsfreeze-status: "frozen" or "thawed".
func freezeStatus(t *testing.T, d *testbed.Domain) string {
	t.Helper()
	r := d.Agent(t, `{"execute":"guest-fsfreeze-status"}`)
	switch {
	case strings.Contains(r, `"frozen"`):
		return "frozen"
	case strings.Contains(r, `"thawed"`):
		return "thawed"
	}
	t.Fatalf("guest-fsfreeze-status: %s", r)
	return ""
}

// TestDaemonStopWhileFrozen runs `autosnap daemon --once` over a real guest with its
// agent and quiesce on (the freeze is timed in the history and the metrics), then
// stops a long-running daemon (SIGTERM cancels the command's context) while it holds
// the guest's filesystems frozen: the daemon exits 0, the guest is thawed, the
// snapshot being taken is not left half made, the journal holds nothing to repair,
// the history says the job was aborted, and the next `clean` has nothing to repair.
// /metrics was served meanwhile.
func TestDaemonStopWhileFrozen(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{Guest: true, Writer: true})
	stateDir := t.TempDir()
	t.Setenv("AUTOSNAP_STATE_DIR", stateDir) // the later `clean` reads the daemon's journal
	path := writePolicy(t, fmt.Sprintf(`timezone: UTC
state_dir: %s
policies:
  - name: frz
    host: qemu:///system
    vmid: %q
    snapshot:
      schedule: "@every 1s"
      keep_last: 2
      quiesce: "on"
`, stateDir, dom.Name))
	readJobs := func() []history.Job {
		t.Helper()
		hs, err := history.Open(history.PathIn(stateDir), history.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer hs.Close()
		jobs, err := hs.Jobs(context.Background(), history.Query{})
		if err != nil {
			t.Fatal(err)
		}
		return jobs
	}

	// A whole run first: frozen for the snapshot alone, and timed.
	var onceD *daemon.Daemon
	adjustDaemon = func(o *DaemonOptions) { o.started = func(d *daemon.Daemon, _ net.Addr) { onceD = d } }
	t.Cleanup(func() { adjustDaemon = nil })
	mustRun(t, "--timeout", "60", "daemon", "--config", path, "--once")
	jobs := readJobs()
	if len(jobs) != 1 || jobs[0].Outcome != history.OK || len(jobs[0].Guests) != 1 || jobs[0].Guests[0].Freeze <= 0 ||
		len(jobs[0].Guests[0].Created) != 1 {
		t.Fatalf("history after --once: %+v, want one ok job with a timed freeze", jobs)
	}
	first := jobs[0].Guests[0].Created[0]
	msrv := httptest.NewServer(onceD.Handler())
	fams := parseMetrics(t, msrv.URL)
	msrv.Close()
	if h := fams["autosnap_freeze_seconds"]; h == nil || h.GetMetric()[0].GetHistogram().GetSampleCount() != 1 ||
		h.GetMetric()[0].GetHistogram().GetSampleSum() != jobs[0].Guests[0].Freeze.Seconds() {
		t.Errorf("autosnap_freeze_seconds: %v, want one sample of %s", h, jobs[0].Guests[0].Freeze)
	}
	time.Sleep(1100 * time.Millisecond) // the next run is due

	started := make(chan net.Addr, 1)
	adjustDaemon = func(o *DaemonOptions) {
		o.holdFrozen = 3 * time.Minute
		o.started = func(_ *daemon.Daemon, a net.Addr) { started <- a }
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr lockedBuffer
	code := make(chan int, 1)
	go func() {
		code <- execute(ctx, []string{"--timeout", "60", "daemon", "--config", path, "--grace", "0s",
			"--listen", "127.0.0.1:0"}, &stdout, &stderr, nil)
	}()
	var addr net.Addr
	select {
	case addr = <-started:
	case c := <-code:
		t.Fatalf("daemon exited %d before starting:\n%s", c, stderr.String())
	case <-time.After(time.Minute):
		t.Fatal("the daemon did not start")
	}

	deadline := time.Now().Add(2 * time.Minute)
	for freezeStatus(t, dom) != "frozen" {
		if time.Now().After(deadline) {
			t.Fatalf("the guest was never frozen:\n%s", stderr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if fams := parseMetrics(t, "http://"+addr.String()); fams["go_goroutines"] == nil {
		t.Fatalf("/metrics while running: %d families, no go_goroutines", len(fams))
	}

	stopAt := time.Now()
	cancel()
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("daemon exited %d after the stop, want 0:\n%s", c, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("the daemon did not exit within a minute of the stop")
	}
	t.Logf("daemon exited %s after the stop; log:\n%s", time.Since(stopAt).Round(time.Millisecond), stderr.String())
	if s := freezeStatus(t, dom); s != "thawed" {
		t.Fatalf("guest is %s after the daemon stopped", s)
	}
	if snaps := domainSnapshots(t, bed, dom); !slices.Equal(snaps, []string{first}) {
		t.Errorf("snapshots %v after a stop during the freeze, want only %s", snaps, first)
	}
	if chain := dom.Chain(t, "vda"); len(chain) != 2 {
		t.Errorf("chain of vda %v, want the base and one overlay", chain)
	}
	keys, err := journal.Open(filepath.Join(stateDir, "journal")).Keys("")
	if err != nil || len(keys) > 0 {
		t.Errorf("journal after the stop: %v %v, want empty", keys, err)
	}
	jobs = readJobs()
	if len(jobs) != 2 {
		t.Fatalf("history: %+v, want two jobs", jobs)
	}
	if j := jobs[0]; j.Outcome != history.Aborted || j.Policy != "frz" || len(j.Guests) != 1 || j.Guests[0].Outcome != history.Aborted {
		t.Errorf("history job %+v, want aborted with the guest aborted", j)
	}

	r := run(t, "--vmid", dom.Name, "clean", "--label", "frz", "--keep", "2")
	if r.code != 0 || strings.Contains(strings.ToLower(r.stdout+r.stderr), "repair") {
		t.Errorf("clean after the stop: exit %d, output mentions a repair or failed:\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// parseMetrics scrapes base/metrics with the Prometheus text parser.
func parseMetrics(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// TestDaemonOnceMinimalFile runs `autosnap daemon --once` on the minimal
// policy file (with this test's guests as the selection) from a timer's point of
// view: each call runs only what is due, keep_last holds, the excluded guest is
// never touched, and history records every run.
func TestDaemonOnceMinimalFile(t *testing.T) {
	bed := testbed.Libvirt(t)
	web := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
	test := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
	stateDir := t.TempDir()
	path := writePolicy(t, fmt.Sprintf(`state_dir: %s
policies:
  - name: web
    host: qemu:///system
    vmid: "%s,%s,-%s"
    snapshot:
      schedule: "@every 2s"
      keep_last: 3
`, stateDir, web.Name, test.Name, test.Name))

	once := func() {
		t.Helper()
		r := run(t, "daemon", "--config", path, "--once", "--log-format", "json")
		if r.code != 0 {
			t.Fatalf("daemon --once exited %d", r.code)
		}
	}
	jobs := func() []history.Job {
		hs, err := history.Open(history.PathIn(stateDir), history.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer hs.Close()
		js, err := hs.Jobs(context.Background(), history.Query{Policy: "web"})
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	// Each round runs --once twice back to back. The second finds the job not due
	// unless the first took 2 s or more (a loaded machine): then it runs it again,
	// legitimately. Either way no job may ever start less than 2 s after the one
	// before, and at least one round must show the not-due no-op.
	noops := 0
	prev := 0
	for i := 0; i < 5; i++ {
		once()
		once()
		js := jobs() // newest first
		added := len(js) - prev
		if added < 1 || added > 2 {
			t.Fatalf("round %d: %d new jobs in the history, want 1 or 2", i, added)
		}
		if added == 1 {
			noops++
		}
		prev = len(js)
		var created []string
		for k := len(js) - 1; k >= 0; k-- {
			j := js[k]
			if j.Outcome != history.OK || len(j.Guests) != 1 || j.Guests[0].Guest != web.Name || len(j.Guests[0].Created) != 1 {
				t.Fatalf("job %+v", j)
			}
			if k < len(js)-1 {
				if gap := j.Started.Sub(js[k+1].Started); gap < 2*time.Second {
					t.Fatalf("job %d started %v after the one before: the @every 2s job ran before it was due", j.ID, gap)
				}
			}
			created = append(created, j.Guests[0].Created[0])
		}
		want := slices.Clone(created[max(0, len(created)-3):])
		slices.Sort(want)
		if got := domainSnapshots(t, bed, web); !slices.Equal(got, want) {
			t.Fatalf("after round %d: snapshots %v, want the newest 3 of %v", i, got, created)
		}
		time.Sleep(2100 * time.Millisecond)
	}
	if noops == 0 {
		t.Errorf("in none of 5 rounds did the immediate second --once find the job not due (every run took 2 s or more)")
	}
	if got := domainSnapshots(t, bed, test); len(got) != 0 {
		t.Errorf("the excluded guest has snapshots %v", got)
	}
}

// TestDaemonSIGHUP sends the test process a real SIGHUP while `autosnap daemon` runs:
// a broken policy file is refused (logged with its line) and the old policies keep
// taking snapshots; a valid file then takes over.
func TestDaemonSIGHUP(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
	stateDir := t.TempDir()
	file := func(name string) string {
		return fmt.Sprintf("state_dir: %s\npolicies:\n  - name: %s\n    host: qemu:///system\n    vmid: %q\n    snapshot:\n      schedule: \"@every 2s\"\n      keep_last: 20\n      quiesce: \"off\"\n",
			stateDir, name, dom.Name)
	}
	path := writePolicy(t, file("alpha"))
	started := make(chan struct{}, 1)
	adjustDaemon = func(o *DaemonOptions) { o.started = func(*daemon.Daemon, net.Addr) { started <- struct{}{} } }
	t.Cleanup(func() { adjustDaemon = nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr lockedBuffer
	code := make(chan int, 1)
	go func() { code <- execute(ctx, []string{"daemon", "--config", path}, &stdout, &stderr, nil) }()
	select {
	case <-started:
	case c := <-code:
		t.Fatalf("daemon exited %d:\n%s", c, stderr.String())
	}
	// okJobs counts the ok jobs of policy.
	okJobs := func(policy string) int {
		hs, err := history.Open(history.PathIn(stateDir), history.Options{ReadOnly: true})
		if err != nil {
			return 0
		}
		defer hs.Close()
		js, _ := hs.Jobs(context.Background(), history.Query{Policy: policy})
		n := 0
		for _, j := range js {
			if j.Outcome == history.OK {
				n++
			}
		}
		return n
	}
	// waitJob waits until policy has more than n ok jobs.
	waitJob := func(policy string, n int) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for okJobs(policy) <= n {
			if time.Now().After(deadline) {
				t.Fatalf("no new ok job of %s; log:\n%s", policy, stderr.String())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitJob("alpha", 0)

	if err := os.WriteFile(path, []byte(strings.Replace(file("alpha"), "schedule:", "scedule:", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stderr.String(), "reload refused") {
		if time.Now().After(deadline) {
			t.Fatalf("the broken reload is not logged:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(stderr.String(), `unknown key \"scedule\"`) || !strings.Contains(stderr.String(), "autosnap.yaml:") {
		t.Errorf("the refusal does not name the key and line:\n%s", stderr.String())
	}
	waitJob("alpha", okJobs("alpha")) // the old policy runs on

	if err := os.WriteFile(path, []byte(file("beta")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitJob("beta", 0)
	cancel()
	if c := <-code; c != 0 {
		t.Fatalf("daemon exited %d, want 0:\n%s", c, stderr.String())
	}
	var alpha, beta int
	for _, s := range domainSnapshots(t, bed, dom) {
		switch {
		case strings.HasPrefix(s, "autoalpha"):
			alpha++
		case strings.HasPrefix(s, "autobeta"):
			beta++
		}
	}
	if alpha < 2 || beta < 1 {
		t.Errorf("snapshots: %d of alpha (want ≥2), %d of beta (want ≥1)", alpha, beta)
	}
}
