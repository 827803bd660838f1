package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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

// TestDaemonStopWhileFrozen stops `autosnap daemon` (SIGTERM cancels the command's
// context) while it holds a real guest's filesystems frozen through the agent
// (quiesce on): the daemon exits 0, the guest is thawed, no snapshot or overlay is
// left half made, the journal holds nothing to repair, the history says the job was
// aborted, and the next `clean` has nothing to repair. /metrics was served meanwhile.
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
      schedule: "@every 1h"
      keep_last: 2
      quiesce: "on"
`, stateDir, dom.Name))

	started := make(chan net.Addr, 1)
	adjustDaemon = func(o *DaemonOptions) {
		o.holdFrozen = 3 * time.Minute
		o.started = func(_ *daemon.Daemon, a net.Addr) { started <- a }
	}
	t.Cleanup(func() { adjustDaemon = nil })
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
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	resp.Body.Close()
	if err != nil || fams["go_goroutines"] == nil {
		t.Fatalf("/metrics while running: %v (%d families)", err, len(fams))
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
	if snaps := domainSnapshots(t, bed, dom); len(snaps) != 0 {
		t.Errorf("snapshots %v after a stop during the freeze, want none", snaps)
	}
	if chain := dom.Chain(t, "vda"); len(chain) != 1 {
		t.Errorf("chain of vda %v, want the base image alone", chain)
	}
	keys, err := journal.Open(filepath.Join(stateDir, "journal")).Keys("")
	if err != nil || len(keys) > 0 {
		t.Errorf("journal after the stop: %v %v, want empty", keys, err)
	}
	hs, err := history.Open(history.PathIn(stateDir), history.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	jobs, err := hs.Jobs(context.Background(), history.Query{})
	hs.Close()
	if err != nil || len(jobs) != 1 {
		t.Fatalf("history: %v %+v, want one job", err, jobs)
	}
	if j := jobs[0]; j.Outcome != history.Aborted || j.Policy != "frz" || len(j.Guests) != 1 || j.Guests[0].Outcome != history.Aborted {
		t.Errorf("history job %+v, want aborted with the guest aborted", j)
	}

	r := run(t, "--vmid", dom.Name, "clean", "--label", "frz", "--keep", "2")
	if r.code != 0 || strings.Contains(strings.ToLower(r.stdout+r.stderr), "repair") {
		t.Errorf("clean after the stop: exit %d, output mentions a repair or failed:\n%s%s", r.code, r.stdout, r.stderr)
	}
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
	var created []string
	for i := 0; i < 5; i++ {
		once()
		once() // at once again: nothing is due
		js := jobs()
		if len(js) != i+1 {
			t.Fatalf("after run %d: %d jobs in the history, want %d", i, len(js), i+1)
		}
		j := js[0]
		if j.Outcome != history.OK || len(j.Guests) != 1 || j.Guests[0].Guest != web.Name || len(j.Guests[0].Created) != 1 {
			t.Fatalf("job %+v", j)
		}
		created = append(created, j.Guests[0].Created[0])
		want := slices.Clone(created[max(0, len(created)-3):])
		slices.Sort(want)
		if got := domainSnapshots(t, bed, web); !slices.Equal(got, want) {
			t.Fatalf("after run %d: snapshots %v, want %v", i, got, want)
		}
		time.Sleep(2100 * time.Millisecond)
	}
	if got := domainSnapshots(t, bed, test); len(got) != 0 {
		t.Errorf("the excluded guest has snapshots %v", got)
	}
}
