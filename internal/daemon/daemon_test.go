package daemon_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/autosnap/autosnap/internal/daemon"
	"github.com/autosnap/autosnap/internal/driver"
	_ "github.com/autosnap/autosnap/internal/driver/libvirt"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/journal"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/retention"
	"github.com/autosnap/autosnap/internal/testbed"
)

// fakeClock is a Clock the test moves by hand.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	seq     int // timers made so far
}

type waiter struct {
	at  time.Time
	c   chan time.Time
	seq int
}

func newClock(t time.Time) *fakeClock { return &fakeClock{now: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.seq++
	c.waiters = append(c.waiters, waiter{c.now.Add(d), ch, c.seq})
	return ch
}

// Advance moves the clock and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			kept = append(kept, w)
			continue
		}
		w.c <- c.now
	}
	c.waiters = kept
}

// waitSleeping waits until the daemon sleeps until at (a timer for at exists).
func (c *fakeClock) waitSleeping(t *testing.T, at time.Time) {
	t.Helper()
	c.waitSleepingSince(t, at, 0)
}

// timers returns how many timers were made so far, for waitSleepingSince.
func (c *fakeClock) timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seq
}

// waitSleepingSince waits for a timer for at made after the first since timers: after
// a Reload, the daemon's sleep from before it must not count, or the clock could be
// moved on while the daemon is still planning its new sleep (which would then start
// from the moved clock and never end).
func (c *fakeClock) waitSleepingSince(t *testing.T, at time.Time, since int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		found := slices.ContainsFunc(c.waiters, func(w waiter) bool { return w.at.Equal(at) && w.seq > since })
		c.mu.Unlock()
		if found {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the daemon never went to sleep until %s", at)
}

// waitJobs waits until n jobs have ended and returns them, oldest first.
func waitJobs(t *testing.T, h *daemon.MemoryHistory, n int) []history.Job {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		jobs, _ := h.Jobs(context.Background(), history.Query{})
		ended := 0
		for _, j := range jobs {
			if j.Outcome != history.Running {
				ended++
			}
		}
		if ended >= n {
			slices.Reverse(jobs)
			return jobs
		}
		time.Sleep(50 * time.Millisecond)
	}
	jobs, _ := h.Jobs(context.Background(), history.Query{})
	t.Fatalf("%d jobs ended, want %d: %+v", len(jobs), n, jobs)
	return nil
}

var t0 = time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)

func snapshotConfig(t *testing.T, name, vmid, spec string, keep int) *policy.Config {
	return &policy.Config{
		Location: time.UTC, StateDir: t.TempDir(),
		Policies: []policy.Policy{{
			Name: name, Line: 2, Host: testbed.URI, VMID: vmid, MaxParallel: 2,
			Snapshot: &policy.SnapshotRule{Schedule: policy.Schedule{Spec: spec}, Keep: retention.GFS{Last: keep},
				Quiesce: "off"},
		}},
	}
}

// snapNames lists a domain's snapshot names, sorted.
func snapNames(t *testing.T, bed *testbed.Bed, d *testbed.Domain) []string {
	t.Helper()
	snaps, _, err := bed.Conn.DomainListAllSnapshots(d.Dom, 1, 0)
	if err != nil {
		t.Fatalf("listing the snapshots of %s: %v", d.Name, err)
	}
	var out []string
	for _, s := range snaps {
		out = append(out, s.Name)
	}
	slices.Sort(out)
	return out
}

type harness struct {
	d      *daemon.Daemon
	h      *daemon.MemoryHistory
	clock  *fakeClock
	cancel context.CancelFunc
	done   chan error
	logs   *syncBuf
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs a daemon for cfg in the background; the test's cleanup stops it.
func start(t *testing.T, cfg *policy.Config, h *daemon.MemoryHistory, clock *fakeClock, o daemon.Options) *harness {
	t.Helper()
	logs := &syncBuf{}
	log, err := daemon.NewLogger(logs, "text", slog.LevelInfo, false)
	if err != nil {
		t.Fatal(err)
	}
	o.Recorder, o.Reader, o.Clock, o.Log = h, h, clock, log
	if o.LockDir == "" {
		o.LockDir = t.TempDir()
	}
	d, err := daemon.New(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	hs := &harness{d: d, h: h, clock: clock, cancel: cancel, done: make(chan error, 1), logs: logs}
	go func() { hs.done <- d.Run(ctx) }()
	t.Cleanup(func() {
		hs.stop(t)
		t.Logf("daemon log:\n%s", logs.String())
	})
	return hs
}

func (hs *harness) stop(t *testing.T) {
	hs.cancel()
	select {
	case err := <-hs.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		hs.done <- nil
	case <-time.After(3 * time.Minute):
		t.Fatal("the daemon did not stop")
	}
}

func name(label string, at time.Time) string {
	f, _ := naming.ParseFormat(naming.DefaultFormat)
	return naming.Name(label, f, at)
}

// TestDaemonKeepsRightSnapshots runs an @every 2s policy with keep_last 3 over two
// real guests for many cycles: after each cycle each guest has exactly the newest three
// snapshots by name, its chain is one image deeper than that, the history records
// the job and both guests with what was created and removed, and data written between
// the snapshots survives every merge.
func TestDaemonKeepsRightSnapshots(t *testing.T) {
	bed := testbed.Libvirt(t)
	g1 := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
	g2 := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
	cfg := snapshotConfig(t, "web", g1.Name+","+g2.Name, "@every 2s", 3)
	h := &daemon.MemoryHistory{}
	clock := newClock(t0)
	const cycles = 7
	const chunk = 64 << 10
	// Data written before snapshot c lands in the image that snapshot c freezes.
	g1.WriteDisk(t, "vda", 0, 0x41, chunk)
	hs := start(t, cfg, h, clock, daemon.Options{})
	srv := httptest.NewServer(hs.d.Handler())
	defer srv.Close()

	var taken []string
	for c := 0; c < cycles; c++ {
		at := t0.Add(time.Duration(2*c) * time.Second)
		if c > 0 {
			hs.clock.waitSleeping(t, at)
			g1.WriteDisk(t, "vda", int64(c)*chunk, byte(0x41+c), chunk)
			hs.clock.Advance(2 * time.Second)
		}
		jobs := waitJobs(t, h, c+1)
		if len(jobs) != c+1 {
			t.Fatalf("cycle %d: %d jobs, want %d", c, len(jobs), c+1)
		}
		j := jobs[c]
		taken = append(taken, name("web", at))
		want := taken[max(0, len(taken)-3):]
		var wantRemoved []string
		if len(taken) > 3 {
			wantRemoved = []string{taken[len(taken)-4]}
		}
		if j.Outcome != history.OK || j.Policy != "web" || j.Kind != history.KindSnapshot || !j.Started.Equal(at) {
			t.Fatalf("cycle %d: job %+v, want ok snapshot job of web started %s", c, j, at)
		}
		if len(j.Guests) != 2 {
			t.Fatalf("cycle %d: %d guests recorded, want 2: %+v", c, len(j.Guests), j.Guests)
		}
		for _, gr := range j.Guests {
			if gr.Outcome != history.OK || !slices.Equal(gr.Created, []string{taken[c]}) || !slices.Equal(gr.Removed, wantRemoved) {
				t.Errorf("cycle %d: guest %s: outcome %s created %v removed %v, want ok %v %v (%s)", c, gr.Guest, gr.Outcome,
					gr.Created, gr.Removed, taken[c], wantRemoved, gr.Error)
			}
		}
		for _, g := range []*testbed.Domain{g1, g2} {
			if got := snapNames(t, bed, g); !slices.Equal(got, want) {
				t.Fatalf("cycle %d: %s has snapshots %v, want %v", c, g.Name, got, want)
			}
			if n := len(g.Chain(t, "vda")); n != len(want)+1 {
				t.Errorf("cycle %d: %s chain is %d images deep, want %d", c, g.Name, n, len(want)+1)
			}
		}
	}
	// Every region written before some snapshot reads back through the merged chain.
	top := g1.Chain(t, "vda")[0]
	for c := 0; c < cycles; c++ {
		got := testbed.ReadImage(t, top, int64(c)*chunk, chunk)
		if !bytes.Equal(got, bytes.Repeat([]byte{byte(0x41 + c)}, chunk)) {
			t.Errorf("region %d of %s lost after the merges", c, g1.Name)
		}
	}

	// The metrics agree.
	fams := scrape(t, srv.URL)
	for _, g := range []*testbed.Domain{g1, g2} {
		if v := value(t, fams, "autosnap_snapshots", map[string]string{"guest": g.Name, "label": "web"}); v != 3 {
			t.Errorf("autosnap_snapshots{guest=%s} = %v, want 3", g.Name, v)
		}
		last := t0.Add(2 * (cycles - 1) * time.Second)
		if v := value(t, fams, "autosnap_last_success_timestamp_seconds",
			map[string]string{"policy": "web", "kind": "snapshot", "guest": g.Name}); v != float64(last.Unix()) {
			t.Errorf("last success of %s = %v, want %d", g.Name, v, last.Unix())
		}
	}
	if n := histCount(t, fams, "autosnap_job_duration_seconds", map[string]string{"policy": "web", "kind": "snapshot"}); n != cycles {
		t.Errorf("autosnap_job_duration_seconds count %d, want %d", n, cycles)
	}
	if _, ok := fams["autosnap_guest_failures_total"]; ok {
		if v := value(t, fams, "autosnap_guest_failures_total", map[string]string{"policy": "web", "guest": g1.Name}); v != 0 {
			t.Errorf("failures of %s = %v, want 0", g1.Name, v)
		}
	}
}

// scrape reads /metrics with the Prometheus text parser.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

func find(t *testing.T, fams map[string]*dto.MetricFamily, fam string, labels map[string]string) *dto.Metric {
	t.Helper()
	f, ok := fams[fam]
	if !ok {
		t.Fatalf("no metric family %s", fam)
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		return m
	}
	t.Fatalf("no %s with labels %v", fam, labels)
	return nil
}

func value(t *testing.T, fams map[string]*dto.MetricFamily, fam string, labels map[string]string) float64 {
	t.Helper()
	m := find(t, fams, fam, labels)
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	}
	t.Fatalf("%s is neither gauge nor counter", fam)
	return 0
}

func histCount(t *testing.T, fams map[string]*dto.MetricFamily, fam string, labels map[string]string) int {
	t.Helper()
	return int(find(t, fams, fam, labels).GetHistogram().GetSampleCount())
}

// TestDaemonCatchesUpOnce: a daemon that was down for an hour over an every-minute
// schedule runs the job once when it starts again (as a catch-up), not once per
// missed slot, and then keeps to the schedule; a clock jump of two hours while it
// runs (a suspend) is caught up once as well.
func TestDaemonCatchesUpOnce(t *testing.T) {
	bed := testbed.Libvirt(t)
	g := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
	cfg := snapshotConfig(t, "minutely", g.Name, "0 * * * * *", 10)
	h := &daemon.MemoryHistory{}

	first := start(t, cfg, h, newClock(t0), daemon.Options{})
	waitJobs(t, h, 1)
	first.clock.waitSleeping(t, t0.Add(30*time.Second)) // MaxWait: the next slot is a minute away
	first.stop(t)

	// An hour and a half minute later the daemon starts again.
	restart := t0.Add(time.Hour + 30*time.Second)
	second := start(t, cfg, h, newClock(restart), daemon.Options{})
	jobs := waitJobs(t, h, 2)
	// It sleeps until the next slot, with nothing more started.
	second.clock.waitSleeping(t, restart.Add(30*time.Second))
	if jobs, _ := h.Jobs(context.Background(), history.Query{}); len(jobs) != 2 {
		t.Fatalf("%d jobs after the restart, want 2 (one catch-up): %+v", len(jobs), jobs)
	}
	if j := jobs[1]; j.Trigger != daemon.TriggerCatchUp || !j.Started.Equal(restart) || j.Outcome != history.OK {
		t.Fatalf("the job after the outage: %+v; want an ok catch-up at %s", j, restart)
	}
	second.clock.Advance(30 * time.Second)
	jobs = waitJobs(t, h, 3)
	if j := jobs[2]; j.Trigger != daemon.TriggerSchedule || !j.Started.Equal(restart.Add(30*time.Second)) {
		t.Fatalf("the next job: %+v; want a scheduled one at the next minute", j)
	}
	// A suspend or clock jump of two hours while running: one catch-up, then the
	// schedule again.
	second.clock.waitSleeping(t, restart.Add(60*time.Second))
	second.clock.Advance(2 * time.Hour)
	woke := restart.Add(30*time.Second + 2*time.Hour)
	jobs = waitJobs(t, h, 4)
	second.clock.waitSleeping(t, woke.Add(30*time.Second))
	if jobs, _ := h.Jobs(context.Background(), history.Query{}); len(jobs) != 4 {
		t.Fatalf("%d jobs after the clock jump, want 4 (one catch-up)", len(jobs))
	}
	if j := jobs[3]; j.Trigger != daemon.TriggerCatchUp || !j.Started.Equal(woke) {
		t.Fatalf("the job after the jump: %+v; want a catch-up at %s", j, woke)
	}
	want := []string{name("minutely", t0), name("minutely", restart), name("minutely", restart.Add(30*time.Second)),
		name("minutely", woke)}
	if got := snapNames(t, bed, g); !slices.Equal(got, want) {
		t.Fatalf("snapshots %v, want %v", got, want)
	}
}

// TestDaemonReloadKeepsOldConfigOnError: reloading a broken policy file is refused
// with the error and the old policies keep running; a valid one takes over.
func TestDaemonReloadKeepsOldConfigOnError(t *testing.T) {
	bed := testbed.Libvirt(t)
	g := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
	cfg := snapshotConfig(t, "old", g.Name, "@every 2s", 5)
	h := &daemon.MemoryHistory{}
	hs := start(t, cfg, h, newClock(t0), daemon.Options{})
	srv := httptest.NewServer(hs.d.Handler())
	defer srv.Close()
	waitJobs(t, h, 1)

	broken := snapshotConfig(t, "new", g.Name, "@every soon", 5)
	if err := hs.d.Reload(broken); err == nil || !strings.Contains(err.Error(), "@every soon") {
		t.Fatalf("Reload(broken) = %v, want the schedule error", err)
	}
	if err := hs.d.ReloadWith(func() (*policy.Config, error) {
		return nil, errString("autosnap.yaml:4: unknown key \"scedule\"")
	}); err == nil {
		t.Fatal("ReloadWith(failing load) = nil")
	}
	if hs.d.Config() != cfg {
		t.Fatal("the daemon switched config after a failed reload")
	}
	hs.clock.waitSleeping(t, t0.Add(2*time.Second))
	hs.clock.Advance(2 * time.Second)
	jobs := waitJobs(t, h, 2)
	if jobs[1].Policy != "old" || jobs[1].Outcome != history.OK {
		t.Fatalf("after the failed reloads: job %+v, want the old policy's", jobs[1])
	}

	good := snapshotConfig(t, "new", g.Name, "@every 2s", 5)
	slept := hs.clock.timers()
	if err := hs.d.Reload(good); err != nil {
		t.Fatal(err)
	}
	jobs = waitJobs(t, h, 3) // a new policy never ran: due at once
	if jobs[2].Policy != "new" {
		t.Fatalf("after the good reload: job %+v, want policy new", jobs[2])
	}
	hs.clock.waitSleepingSince(t, t0.Add(4*time.Second), slept)
	if v := value(t, scrape(t, srv.URL), "autosnap_config_reload_errors_total", nil); v != 2 {
		t.Errorf("autosnap_config_reload_errors_total = %v, want 2", v)
	}
	want := []string{name("new", t0.Add(2*time.Second)), name("old", t0), name("old", t0.Add(2*time.Second))}
	if got := snapNames(t, bed, g); !slices.Equal(got, want) {
		t.Fatalf("snapshots %v, want %v", got, want)
	}
	if !strings.Contains(hs.logs.String(), "reload refused") {
		t.Errorf("the refused reload is not logged")
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// TestDaemonWebhook: a guest's first failure and its recovery are POSTed to the
// webhook as signed JSON (a failure answered 503 is retried), a second failure in a
// row is not, and the failures are counted in the metrics.
func TestDaemonWebhook(t *testing.T) {
	bed := testbed.Libvirt(t)
	g := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused}) // no agent: quiesce on fails
	const secret = "s3cret-for-the-hook"
	t.Setenv("AST_WEBHOOK_SECRET", secret)
	var mu sync.Mutex
	var events []daemon.Event
	var badSig []string
	posts := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		posts++
		if posts == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body)
		if want := "sha256=" + hex.EncodeToString(mac.Sum(nil)); r.Header.Get(daemon.SignatureHeader) != want {
			badSig = append(badSig, r.Header.Get(daemon.SignatureHeader))
		}
		var e daemon.Event
		if err := json.Unmarshal(body, &e); err != nil {
			t.Errorf("webhook body %q: %v", body, err)
		}
		events = append(events, e)
	}))
	defer srv.Close()
	waitEvents := func(n int) []daemon.Event {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			got := slices.Clone(events)
			mu.Unlock()
			if len(got) >= n {
				return got
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%d webhook events, want %d", len(events), n)
		return nil
	}

	cfg := snapshotConfig(t, "hooked", g.Name, "@every 2s", 3)
	cfg.Policies[0].Snapshot.Quiesce = "on"
	cfg.Notify = policy.Notify{Webhook: srv.URL, Secret: "env:AST_WEBHOOK_SECRET"}
	h := &daemon.MemoryHistory{}
	hs := start(t, cfg, h, newClock(t0), daemon.Options{})
	metrics := httptest.NewServer(hs.d.Handler())
	defer metrics.Close()

	jobs := waitJobs(t, h, 1)
	if jobs[0].Outcome != history.Failed || len(jobs[0].Guests) != 1 || !strings.Contains(jobs[0].Guests[0].Error, "quiesce") {
		t.Fatalf("job 1: %+v, want the guest failed for quiesce", jobs[0])
	}
	ev := waitEvents(1)[0]
	if ev.Event != "failure" || ev.Policy != "hooked" || ev.Guest != g.Name || ev.Kind != "snapshot" ||
		ev.Failures != 1 || !strings.Contains(ev.Error, "quiesce") || ev.JobID != jobs[0].ID {
		t.Fatalf("failure event %+v", ev)
	}
	hs.clock.waitSleeping(t, t0.Add(2*time.Second))
	hs.clock.Advance(2 * time.Second)
	waitJobs(t, h, 2)

	fixed := snapshotConfig(t, "hooked", g.Name, "@every 2s", 3)
	fixed.Notify = cfg.Notify
	slept := hs.clock.timers()
	if err := hs.d.Reload(fixed); err != nil {
		t.Fatal(err)
	}
	hs.clock.waitSleepingSince(t, t0.Add(4*time.Second), slept)
	hs.clock.Advance(2 * time.Second)
	jobs = waitJobs(t, h, 3)
	if jobs[2].Outcome != history.OK {
		t.Fatalf("job 3: %+v, want ok", jobs[2])
	}
	got := waitEvents(2)
	if rec := got[1]; rec.Event != "recovery" || rec.Guest != g.Name || rec.Failures != 2 || rec.Error != "" {
		t.Fatalf("recovery event %+v, want recovery after 2 failures", rec)
	}
	time.Sleep(time.Second) // nothing more may arrive
	mu.Lock()
	if len(events) != 2 || posts != 3 || len(badSig) > 0 {
		t.Errorf("%d events in %d posts (want 2 in 3: one retried), bad signatures %q", len(events), posts, badSig)
	}
	mu.Unlock()
	if v := value(t, scrape(t, metrics.URL), "autosnap_guest_failures_total", map[string]string{"policy": "hooked", "guest": g.Name}); v != 2 {
		t.Errorf("autosnap_guest_failures_total = %v, want 2", v)
	}
}

// TestDaemonBackupLevelsAndPrune runs a backup policy (read from YAML) over a real
// guest: the first run is a full (no point yet), the level rule makes the run after
// its slot a full and the others inc, prune keeps the last 2 points, history has the
// points and bytes, and autosnap_backup_bytes_total adds them up.
func TestDaemonBackupLevelsAndPrune(t *testing.T) {
	bed := testbed.Libvirt(t)
	g := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
	target := t.TempDir()
	cfg, err := policy.Parse([]byte(`timezone: UTC
state_dir: `+t.TempDir()+`
policies:
  - name: nightly
    host: qemu:///system
    vmid: "`+g.Name+`"
    backup:
      schedule: "@every 10s"
      target: `+target+`
      quiesce: "off"
      levels:
        - level: full
          schedule: "30 0 10 * * *"
      level: inc
      prune:
        keep_last: 2
`), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	h := &daemon.MemoryHistory{}
	g.WriteDisk(t, "vda", 0, 0xEE, 64<<10)
	hs := start(t, cfg, h, newClock(t0), daemon.Options{})
	srv := httptest.NewServer(hs.d.Handler())
	defer srv.Close()

	var total int64
	var points []string
	// Runs at 10:00:00 (first: the full rule has never run), :10, :20 (inc), :30 (the
	// 10:00:30 full slot passed), :40 (inc).
	wantLevel := []string{"full", "inc", "inc", "full", "inc"}
	for c := range wantLevel {
		at := t0.Add(time.Duration(10*c) * time.Second)
		if c > 0 {
			g.WriteDisk(t, "vda", int64(c)<<20, byte(c), 64<<10)
			hs.clock.waitSleeping(t, at)
			hs.clock.Advance(10 * time.Second)
		}
		jobs := waitJobs(t, h, c+1)
		j := jobs[c]
		if j.Outcome != history.OK || len(j.Guests) != 1 || len(j.Guests[0].Created) != 1 {
			t.Fatalf("run %d: %+v", c, j)
		}
		gr := j.Guests[0]
		if gr.Bytes <= 0 {
			t.Errorf("run %d: %d bytes recorded", c, gr.Bytes)
		}
		total += gr.Bytes
		point := gr.Created[0]
		if !strings.Contains(point, wantLevel[c]) {
			t.Errorf("run %d: point %s, want a %s", c, point, wantLevel[c])
		}
		points = append(points, point)
		var wantRemoved []string
		if len(points) > 2 {
			wantRemoved = points[:len(points)-2]
			points = points[len(points)-2:]
		}
		if !slices.Equal(gr.Removed, wantRemoved) {
			t.Errorf("run %d: removed %v, want %v", c, gr.Removed, wantRemoved)
		}
	}
	if v := value(t, scrape(t, srv.URL), "autosnap_backup_bytes_total", map[string]string{"policy": "nightly", "guest": g.Name}); v != float64(total) {
		t.Errorf("autosnap_backup_bytes_total = %v, want %d", v, total)
	}
}

// interval is one guest's snapshot or backup as a hook script saw it.
type interval struct {
	guest, what string
	from, to    float64
}

// hookIntervals reads the hook log: "<unix time> <phase> <guest>" lines.
func hookIntervals(t *testing.T, path string) []interval {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	open := map[string]float64{}
	var out []interval
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var at float64
		var phase, guest string
		if _, err := fmt.Sscan(line, &at, &phase, &guest); err != nil {
			continue // job phases have no guest
		}
		what, edge, _ := strings.Cut(phase, "-create-")
		if what == phase {
			what, edge, _ = strings.Cut(phase, "-")
		}
		switch edge {
		case "pre":
			open[guest+" "+what] = at
		case "post", "abort":
			out = append(out, interval{guest, what, open[guest+" "+what], at})
		}
	}
	return out
}

const hookScript = `#!/bin/sh
echo "$(date +%s.%N) $AUTOSNAP_PHASE $AUTOSNAP_VMNAME" >> "$HOOK_LOG"
case "$AUTOSNAP_PHASE" in snap-create-pre|backup-pre) sleep 0.4 ;; esac
`

// TestDaemonBounds runs a policy with a snapshot and a backup job, both due at once,
// over three real guests with max_parallel 3, first with --max-jobs 1 (never two
// guests at once, in all), then with --max-jobs 4 (guests in parallel, but never a
// snapshot and a backup of one guest at once). A hook script logs when each guest's
// work begins and ends.
func TestDaemonBounds(t *testing.T) {
	bed := testbed.Libvirt(t)
	var doms []*testbed.Domain
	var names []string
	for range 3 {
		d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
		d.WriteDisk(t, "vda", 0, 0x5A, 64<<10)
		doms = append(doms, d)
		names = append(names, d.Name)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "hook.sh")
	if err := os.WriteFile(script, []byte(hookScript), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, maxJobs := range []int{1, 4} {
		logPath := filepath.Join(dir, fmt.Sprintf("hook-%d.log", maxJobs))
		t.Setenv("HOOK_LOG", logPath)
		cfg := snapshotConfig(t, fmt.Sprintf("p%d", maxJobs), strings.Join(names, ","), "@every 1h", 3)
		cfg.Policies[0].MaxParallel = 3
		cfg.Policies[0].Script = script
		cfg.Policies[0].Backup = &policy.BackupRule{Schedule: policy.Schedule{Spec: "@every 1h"}, Target: t.TempDir(), Quiesce: "off"}
		h := &daemon.MemoryHistory{}
		hs := start(t, cfg, h, newClock(t0), daemon.Options{MaxJobs: maxJobs})
		jobs := waitJobs(t, h, 2)
		hs.stop(t)
		for _, j := range jobs {
			if j.Outcome != history.OK || len(j.Guests) != 3 {
				t.Fatalf("max-jobs %d: job %+v", maxJobs, j)
			}
		}
		// The job phases run once for the policy's run, not once per guest.
		logged, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, phase := range []string{"snap-job-start", "snap-job-end"} {
			if n := strings.Count(string(logged), " "+phase+" "); n != 1 {
				t.Errorf("max-jobs %d: %s ran %d times for one job of 3 guests, want once:\n%s", maxJobs, phase, n, logged)
			}
		}
		ivs := hookIntervals(t, logPath)
		if len(ivs) != 6 {
			t.Fatalf("max-jobs %d: %d guest intervals in the hook log, want 6: %+v", maxJobs, len(ivs), ivs)
		}
		parallel := 0
		for i, a := range ivs {
			for _, b := range ivs[i+1:] {
				if a.from < b.to && b.from < a.to {
					parallel++
					if maxJobs == 1 || a.guest == b.guest {
						t.Errorf("max-jobs %d: %s of %s and %s of %s overlapped", maxJobs, a.what, a.guest, b.what, b.guest)
					}
				}
			}
		}
		if maxJobs > 1 && parallel == 0 {
			t.Errorf("max-jobs %d: no two guests ever ran at once: %+v", maxJobs, ivs)
		}
	}
}

// TestDaemonTrigger: a job started by hand (the dashboard's "run now") is recorded
// with its trigger and counts as the job's last run; unknown jobs are refused.
func TestDaemonTrigger(t *testing.T) {
	bed := testbed.Libvirt(t)
	g := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused})
	cfg := snapshotConfig(t, "hourly", g.Name, "@every 1h", 5)
	h := &daemon.MemoryHistory{}
	hs := start(t, cfg, h, newClock(t0), daemon.Options{})
	waitJobs(t, h, 1)
	hs.clock.waitSleeping(t, t0.Add(30*time.Second))
	hs.clock.Advance(5 * time.Second)
	if err := hs.d.Trigger("hourly", history.KindBackup, "manual"); err == nil {
		t.Error("Trigger of a job the policy does not have = nil")
	}
	if err := hs.d.Trigger("hourly", history.KindSnapshot, "manual"); err != nil {
		t.Fatal(err)
	}
	jobs := waitJobs(t, h, 2)
	if j := jobs[1]; j.Trigger != "manual" || j.Outcome != history.OK || !j.Started.Equal(t0.Add(5*time.Second)) {
		t.Fatalf("triggered job %+v", j)
	}
	// The next scheduled run counts from the manual one.
	js := hs.d.Jobs()
	for i := 0; i < 100 && len(js) == 1 && js[0].Running; i++ { // the job's end is recorded just before
		time.Sleep(10 * time.Millisecond)
		js = hs.d.Jobs()
	}
	if len(js) != 1 || js[0].Policy != "hourly" || js[0].Running ||
		!js[0].LastRun.Equal(t0.Add(5*time.Second)) || !js[0].Next.Equal(t0.Add(time.Hour+5*time.Second)) {
		t.Errorf("Jobs() = %+v", js)
	}
	hs.clock.Advance(time.Hour - time.Second)
	time.Sleep(500 * time.Millisecond)
	if jobs, _ := h.Jobs(context.Background(), history.Query{}); len(jobs) != 2 {
		t.Fatalf("%d jobs before the hour after the manual run, want 2", len(jobs))
	}
	hs.clock.Advance(time.Second)
	if j := waitJobs(t, h, 3)[2]; j.Trigger != daemon.TriggerSchedule || !j.Started.Equal(t0.Add(time.Hour+5*time.Second)) {
		t.Fatalf("scheduled job after the manual one: %+v", j)
	}
}

// TestDaemonStopDuringMerge stops the daemon while the removal of an old snapshot
// merges a large overlay into its base. With a grace period the merge finishes and
// the daemon exits with nothing left to repair. Without one the merge is aborted:
// the snapshots and the chain still agree, no block job runs, every written byte
// reads back, and the journal records the partly merged snapshot, which the next
// clean finishes (the engine's designed path), leaving nothing behind.
func TestDaemonStopDuringMerge(t *testing.T) {
	for _, grace := range []time.Duration{3 * time.Minute, 0} {
		t.Run("grace="+grace.String(), func(t *testing.T) { stopDuringMerge(t, grace) })
	}
}

func stopDuringMerge(t *testing.T, grace time.Duration) {
	bed := testbed.Libvirt(t)
	g := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 512})
	cfg := snapshotConfig(t, "mrg", g.Name, "@every 2s", 1)
	const big = 160 << 20
	g.WriteDisk(t, "vda", 0, 0x11, 1<<20)
	h := &daemon.MemoryHistory{}
	hs := start(t, cfg, h, newClock(t0), daemon.Options{Grace: grace})
	waitJobs(t, h, 1)
	g.WriteDisk(t, "vda", 64<<20, 0x77, big) // into the first snapshot's overlay
	hs.clock.waitSleeping(t, t0.Add(2*time.Second))
	hs.clock.Advance(2 * time.Second) // snapshot 2, then snapshot 1 is merged away

	merging := false
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) && !merging {
		found, _, _, cur, end, err := bed.Conn.DomainGetBlockJobInfo(g.Dom, "vda", 0)
		if err == nil && found > 0 {
			t.Logf("stopping the daemon during the merge at %d of %d bytes", cur, end)
			merging = true
		}
		if jobs, _ := h.Jobs(context.Background(), history.Query{}); len(jobs) == 2 && jobs[0].Outcome != history.Running {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !merging {
		t.Fatal("the merge was never seen running: the test did not stop the daemon during it")
	}
	hs.stop(t)
	jobs, _ := h.Jobs(context.Background(), history.Query{})
	j := jobs[0]
	t.Logf("job 2: %+v", j)

	snaps := snapNames(t, bed, g)
	first, second := name("mrg", t0), name("mrg", t0.Add(2*time.Second))
	wantSnaps := []string{second}
	if grace == 0 {
		wantSnaps = []string{first, second}
	}
	if !slices.Equal(snaps, wantSnaps) {
		t.Fatalf("snapshots %v after the stop, want %v", snaps, wantSnaps)
	}
	if chain := g.Chain(t, "vda"); len(chain) != len(snaps)+1 {
		t.Errorf("chain %v for snapshots %v", chain, snaps)
	}
	if found, _, _, _, _, err := bed.Conn.DomainGetBlockJobInfo(g.Dom, "vda", 0); err != nil || found > 0 {
		t.Errorf("a block job still runs on vda after the stop (%v)", err)
	}
	jdir := filepath.Join(cfg.StateDir, "journal")
	keys, err := journal.Open(jdir).Keys("")
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case grace > 0 && (j.Outcome != history.OK || len(keys) > 0):
		t.Errorf("with a grace period: job %s, journal %v; want the merge finished, nothing to repair", j.Outcome, keys)
	case grace == 0 && (j.Outcome != history.Aborted || len(keys) != 1):
		t.Errorf("without a grace period: job %s, journal %v; want aborted with the partly merged snapshot journaled", j.Outcome, keys)
	}
	checkData := func(when string) {
		top := g.Chain(t, "vda")[0]
		if !bytes.Equal(testbed.ReadImage(t, top, 0, 1<<20), bytes.Repeat([]byte{0x11}, 1<<20)) {
			t.Errorf("%s: the first MiB changed", when)
		}
		if !bytes.Equal(testbed.ReadImage(t, top, 64<<20, big), bytes.Repeat([]byte{0x77}, big)) {
			t.Errorf("%s: the data written before snapshot 2 changed", when)
		}
	}
	checkData("after the stop")

	// The next clean of the label.
	drv, err := daemon.OpenDriver(context.Background(), driver.Config{Host: testbed.URI, StateDir: cfg.StateDir, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	all, err := drv.Guests(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	f, _ := naming.ParseFormat(naming.DefaultFormat)
	job := &engine.Job{Driver: drv, Label: "mrg", Keep: 1, Format: f, Location: time.UTC, Timeout: time.Minute,
		LockDir: t.TempDir(), Out: &out}
	var guest []driver.Guest
	for _, x := range all {
		if x.Name == g.Name {
			guest = append(guest, x)
		}
	}
	if _, err := job.Clean(context.Background(), guest); err != nil {
		t.Fatalf("clean after the stop: %v\n%s", err, out.String())
	}
	repaired := strings.Contains(out.String(), "interrupted")
	if repaired != (grace == 0) {
		t.Errorf("clean after the stop (grace %s) finished an interrupted removal: %v, want %v:\n%s", grace, repaired, grace == 0, out.String())
	}
	if got := snapNames(t, bed, g); !slices.Equal(got, []string{second}) {
		t.Errorf("snapshots after clean %v, want [%s]", got, second)
	}
	if chain := g.Chain(t, "vda"); len(chain) != 2 {
		t.Errorf("chain after clean %v, want 2 images", chain)
	}
	if keys, err := journal.Open(jdir).Keys(""); err != nil || len(keys) > 0 {
		t.Errorf("journal after clean: %v %v, want empty", keys, err)
	}
	checkData("after clean")
}
