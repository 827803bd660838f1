package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/daemon"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/web"
)

// memDriver is a read-only in-memory hypervisor: enough for the dashboard's reads.
type memDriver struct {
	guests []driver.Guest
	snaps  map[string][]driver.Snapshot
}

var errReadOnly = errors.New("memDriver is read-only")

func (m *memDriver) Name() string { return "mem" }
func (m *memDriver) Guests(context.Context) ([]driver.Guest, error) {
	return append([]driver.Guest(nil), m.guests...), nil
}
func (m *memDriver) Snapshots(_ context.Context, g driver.Guest) ([]driver.Snapshot, error) {
	return m.snaps[g.Name], nil
}
func (m *memDriver) CreateSnapshot(context.Context, driver.Guest, driver.CreateOptions) (driver.Snapshot, error) {
	return driver.Snapshot{}, errReadOnly
}
func (m *memDriver) DeleteSnapshot(context.Context, driver.Guest, string) error { return errReadOnly }
func (m *memDriver) RevertSnapshot(context.Context, driver.Guest, string, driver.RevertOptions) error {
	return errReadOnly
}
func (m *memDriver) Close() error { return nil }

// TestWebBackendOverview500 measures the real dashboard backend (not the web
// package's fake) at the size: 500 guests × 20 snapshots on one host, and
// 2000 jobs of 50 guests each in a real history database. The overview, with every
// guest's snapshots and last run looked up again (no cache), must render in under a
// second.
func TestWebBackendOverview500(t *testing.T) {
	now := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	f, err := naming.ParseFormat(naming.DefaultFormat)
	if err != nil {
		t.Fatal(err)
	}
	md := &memDriver{snaps: map[string][]driver.Snapshot{}}
	for i := range 500 {
		g := driver.Guest{Node: "n1", Name: fmt.Sprintf("vm%03d", i), UUID: fmt.Sprintf("00000000-0000-0000-0000-%012d", i), State: driver.StateRunning, Kind: driver.KindQEMU}
		md.guests = append(md.guests, g)
		parent := ""
		for k := range 20 {
			at := now.Add(-time.Duration(20-k) * time.Hour)
			name := naming.Name("web", f, at)
			md.snaps[g.Name] = append(md.snaps[g.Name], driver.Snapshot{Name: name, Parent: parent, Created: at, Description: naming.Marker, Current: k == 19})
			parent = name
		}
	}
	store, err := history.Open(filepath.Join(t.TempDir(), "h.db"), history.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	for i := range 2000 {
		st := now.Add(-time.Duration(2000-i) * time.Minute)
		j := history.Job{Policy: "web", Kind: history.KindSnapshot, Trigger: "schedule", Started: st, Ended: st.Add(30 * time.Second), Outcome: history.OK}
		for g := range 50 {
			gr := history.GuestRun{Host: "mem://", Guest: fmt.Sprintf("vm%03d", (i*50+g)%500), Started: st, Ended: st.Add(time.Second), Outcome: history.OK, Created: []string{"x"}}
			if (i*50+g)%500 == 7 {
				gr.Outcome, gr.Error = history.Failed, "disk full"
			}
			j.Guests = append(j.Guests, gr)
		}
		if _, err := store.Begin(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := policy.Parse([]byte("timezone: UTC\npolicies:\n  - name: web\n    host: mem://\n    vmid: \"@all\"\n    snapshot:\n      schedule: \"@every 1h\"\n      keep_last: 20\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	d, err := daemon.New(cfg, daemon.Options{Recorder: store, Reader: store, Format: f,
		Connect: func(context.Context, driver.Config) (driver.Driver, error) { return md, nil }})
	if err != nil {
		t.Fatal(err)
	}
	wb := daemon.NewWebBackend(d, store)
	st := time.Now()
	if _, err := wb.Guests(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("collecting 500 guests: %v", time.Since(st))
	wb.CacheTTL = 0 // every render below collects again
	h, err := web.New(wb, web.Options{Addr: "127.0.0.1:8460", Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	render := func() (time.Duration, string) {
		rec := httptest.NewRecorder()
		start := time.Now()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		took := time.Since(start)
		b, _ := io.ReadAll(rec.Body)
		if rec.Code != http.StatusOK {
			t.Fatalf("overview: %d %s", rec.Code, b)
		}
		return took, string(b)
	}
	cold, page := render()
	warm, _ := render()
	t.Logf("overview of 500 guests × 20 snapshots, 2000 jobs × 50 guests in history, collected per render: first %v, second %v, %d bytes", cold, warm, len(page))
	if limit := raceSlowdown * time.Second; cold > limit || warm > limit {
		t.Errorf("overview took %v, then %v; want < %v", cold, warm, limit)
	}
	if n := strings.Count(page, `<tr class="guest `); n != 500 {
		t.Errorf("overview lists %d guests, want 500", n)
	}
	// Every guest's newest snapshot is 1h old against a 1h cadence; vm007's last run failed.
	if n := strings.Count(page, `data-fresh="ok"`); n != 500 {
		t.Errorf("%d snapshot ages ok, want 500", n)
	}
	if !strings.Contains(page, `data-guest="vm007" data-status="failed"`) || strings.Count(page, `data-status="failed"`) != 1 {
		t.Errorf("vm007 is not the one failed guest")
	}
}
