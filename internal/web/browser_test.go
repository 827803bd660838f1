package web

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	"github.com/autosnap/autosnap/internal/history"
)

// browser is one headless Chromium (Debian's chromium package) whose console
// errors, warnings and uncaught exceptions, and the browser log (failed loads, CSP
// violations), are collected; the test fails on any the test did not expect.
type browser struct {
	ctx     context.Context
	mu      sync.Mutex
	msgs    []string
	allowed []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath("/usr/bin/chromium"),
		chromedp.NoSandbox, // tests run as root
		chromedp.DisableGPU,
		chromedp.Flag("ignore-certificate-errors", true), // httptest's self-signed certificate
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	b := &browser{ctx: ctx}
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium (apt-get install chromium; scripts/install-deps.sh does): %v", err)
	}
	msgs := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			switch m.Type {
			case chromedp.ConsoleError, chromedp.ConsoleWarning, chromedp.ConsoleException:
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
			if !slices.ContainsFunc(b.allowed, func(a string) bool { return strings.Contains(m, a) }) {
				t.Errorf("browser console: %s", m)
			}
		}
	})
	return b
}

// allow accepts console messages containing s (e.g. the 403 a test provokes).
func (b *browser) allow(s string) {
	b.mu.Lock()
	b.allowed = append(b.allowed, s)
	b.mu.Unlock()
}

func (b *browser) run(t *testing.T, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		t.Fatal(err)
	}
}

// evalJS evaluates js (awaiting a promise) and decodes its value.
func evalJS[T any](t *testing.T, b *browser, js string) T {
	t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	return v
}

// eval evaluates js (awaiting a promise) and decodes its JSON value into out.
func (b *browser) eval(t *testing.T, js string, out any) {
	t.Helper()
	raw := evalJS[[]byte](t, b, js)
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatalf("%s: %v (%s)", js, err, raw)
	}
}

// waitJS polls until js evaluates to true.
func (b *browser) waitJS(t *testing.T, what, js string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if ok, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](js)); err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			html, _ := chromedp.Run(b.ctx, chromedp.OuterHTML(chromedp.CSS("main")))
			t.Fatalf("timed out waiting for %s (%s); page:\n%s", what, js, html)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *browser) location(t *testing.T) *url.URL {
	t.Helper()
	loc, err := chromedp.Run(b.ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

type overviewRow struct {
	Name, Status, Snap, Fresh, Backup, BackupFresh, State, Outcome, Background string
}

const overviewRowsJS = `[...document.querySelectorAll('#guests tr.guest')].map(r => ({
	Name: r.dataset.guest, Status: r.dataset.status,
	Snap: r.querySelector('.snap-age').textContent.trim().replace(/\s+/g, ' '), Fresh: r.querySelector('.snap-age').dataset.fresh,
	Backup: r.querySelector('.backup-age').textContent.trim().replace(/\s+/g, ' '), BackupFresh: r.querySelector('.backup-age').dataset.fresh,
	State: r.querySelector('.state').textContent, Outcome: r.querySelector('.outcome').textContent.trim().replace(/\s+/g, ' '),
	Background: getComputedStyle(r).backgroundColor}))`

func TestBrowserOverview(t *testing.T) {
	srv := serve(t, smallFleet(), Options{})
	b := newBrowser(t)
	b.run(t, chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#guests")))
	var rows []overviewRow
	b.eval(t, overviewRowsJS, &rows)
	got := map[string]overviewRow{}
	var order []string
	for _, r := range rows {
		got[r.Name] = r
		order = append(order, r.Name)
	}
	// Problems first: the failing guest, then critical, then the rest by host and name.
	if want := []string{"web2", "db1", "web1", "lab1"}; !slices.Equal(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
	check := func(name, field, got, want string) {
		if got != want {
			t.Errorf("%s %s = %q, want %q", name, field, got, want)
		}
	}
	check("web1", "snapshot", got["web1"].Snap, "10m / 1h (1)")
	check("web1", "fresh", got["web1"].Fresh, "ok")
	check("web1", "backup", got["web1"].Backup, "2h / 24h")
	check("web1", "status", got["web1"].Status, "ok")
	check("web2", "snapshot", got["web2"].Snap, "2h / 1h (1)")
	check("web2", "fresh", got["web2"].Fresh, "warn")
	check("web2", "backup", got["web2"].Backup, "never / 24h")
	check("web2", "backup fresh", got["web2"].BackupFresh, "crit")
	check("web2", "status", got["web2"].Status, "failed")
	check("web2", "outcome", got["web2"].Outcome, "FAILED 5m")
	check("db1", "snapshot", got["db1"].Snap, "4h / 1h (4)")
	check("db1", "fresh", got["db1"].Fresh, "crit")
	check("db1", "state", got["db1"].State, "shutoff")
	check("lab1", "status", got["lab1"].Status, "unprotected")
	check("lab1", "snapshot", got["lab1"].Snap, "never (0)")
	// The stylesheet loaded (CSP allows it) and marks the failing guest.
	check("web2", "background", got["web2"].Background, "rgb(255, 235, 233)")
	check("web1", "background", got["web1"].Background, "rgba(0, 0, 0, 0)")
	var problems []string
	b.eval(t, `[...document.querySelectorAll('#problems li')].map(li => li.textContent)`, &problems)
	if !slices.Equal(problems, []string{"policy lab: host host-c: connecting: connection refused"}) {
		t.Errorf("problems shown: %q", problems)
	}
	var tip string
	b.eval(t, `document.querySelector('tr[data-guest="web2"] .outcome a').title`, &tip)
	check("web2", "error tooltip", tip, "guest agent did not answer")

	// Filters: changing a menu reloads the page with the query.
	pick := func(name, value string) {
		b.run(t, chromedp.WaitVisible(chromedp.CSS(`select[name="`+name+`"]`)),
			chromedp.Evaluate[chromedp.Void](`(s => { s.value = '`+value+`'; s.dispatchEvent(new Event('change')); })(document.querySelector('select[name="`+name+`"]'))`))
	}
	pick(`host`, `host-b`)
	b.waitJS(t, "host filter", `location.search.includes('host=host-b') && document.readyState === 'complete'`)
	names := func() []string {
		var n []string
		b.eval(t, `[...document.querySelectorAll('#guests tr.guest')].map(r => r.dataset.guest)`, &n)
		slices.Sort(n)
		return n
	}
	if n := names(); !slices.Equal(n, []string{"db1", "lab1"}) {
		t.Errorf("host-b: %v", n)
	}
	pick(`tag`, `prod`)
	b.waitJS(t, "tag filter", `location.search.includes('tag=prod') && document.readyState === 'complete'`)
	if n := names(); !slices.Equal(n, []string{"db1"}) {
		t.Errorf("host-b, tag prod: %v", n)
	}
	for q, want := range map[string][]string{
		"/?policy=web":         {"web1", "web2"},
		"/?state=running":      {"web1", "web2"},
		"/?status=failed":      {"web2"},
		"/?status=crit":        {"db1"},
		"/?policy=web&host=x":  nil,
		"/?state=shutoff&tag=": {"db1", "lab1"},
	} {
		b.run(t, chromedp.Navigate(srv.URL+q), chromedp.WaitVisible(chromedp.CSS("#guests")))
		if n := names(); !slices.Equal(n, want) {
			t.Errorf("%s: %v, want %v", q, n, want)
		}
	}
}

// TestBrowserLiveRun starts a policy run from the page (confirmation included) and
// watches it progress over SSE without a reload, then finds it in the runs list;
// a run started elsewhere appears in an open runs list live.
func TestBrowserLiveRun(t *testing.T) {
	f := smallFleet()
	f.failing["host-a/web2"] = true
	f.gate = make(chan struct{})
	srv := serve(t, f, Options{})
	b := newBrowser(t)
	b.run(t, chromedp.Navigate(srv.URL+"/policies"), chromedp.WaitVisible(chromedp.CSS("#policies")))
	b.run(t, chromedp.Click(chromedp.CSS(`tr[data-policy="web"] a.run`)), chromedp.WaitVisible(chromedp.CSS("#confirm-button")))
	if len(f.actionLog()) != 0 {
		t.Fatalf("acted before confirmation: %v", f.actionLog())
	}
	b.run(t, chromedp.Click(chromedp.CSS("#confirm-button")))
	b.waitJS(t, "the run page", `location.pathname.startsWith('/runs/') && !!document.getElementById('run')`)
	id := strings.TrimPrefix(b.location(t).Path, "/runs/")
	var outcome string
	b.eval(t, `document.getElementById('run').dataset.outcome`, &outcome)
	if outcome != "running" {
		t.Fatalf("new run shows %q", outcome)
	}
	b.waitJS(t, "the event stream", `document.body.dataset.sse === 'open'`)
	b.run(t, chromedp.Evaluate[chromedp.Void](`window.__noReload = 42`))
	close(f.gate)
	b.waitJS(t, "the run to end live", `document.getElementById('run').dataset.outcome === 'failed'`)
	var live struct {
		Marker int
		Guests []string
		Errors string
		Done   string
	}
	b.eval(t, `({Marker: window.__noReload, Guests: [...document.querySelectorAll('#run-guests tr.guestrun')].map(r => r.dataset.guest),
		Errors: document.querySelector('#run-guests').textContent, Done: document.getElementById('run-done').textContent})`, &live)
	if live.Marker != 42 {
		t.Error("the run page reloaded instead of updating live")
	}
	if !slices.Equal(live.Guests, []string{"web1", "web2"}) || !strings.Contains(live.Errors, "disk busy") || live.Done != "2/2" {
		t.Errorf("live run page: %+v", live)
	}
	if a := f.actionLog(); !slices.Equal(a, []string{"run web dry=false"}) {
		t.Errorf("actions %v", a)
	}
	j, _ := f.Job(t.Context(), mustAtoi(t, id))
	if j.Trigger != "web" || j.Outcome != history.Failed {
		t.Errorf("recorded job %+v", j)
	}
	// It ended in the runs list.
	b.run(t, chromedp.Navigate(srv.URL+"/runs"), chromedp.WaitVisible(chromedp.CSS("#runs")))
	var o string
	b.eval(t, `document.getElementById('job-`+id+`').dataset.outcome`, &o)
	if o != "failed" {
		t.Errorf("runs list shows job %s as %q", id, o)
	}

	// A run started by someone else appears in the open list and ends there.
	b.waitJS(t, "the event stream", `document.body.dataset.sse === 'open'`)
	b.run(t, chromedp.Evaluate[chromedp.Void](`window.__noReload = 7`))
	f.mu.Lock()
	f.gate = make(chan struct{})
	gate := f.gate
	f.mu.Unlock()
	delete(f.failing, "host-a/web2")
	id2, err := f.RunPolicy(t.Context(), "web", "", false)
	if err != nil {
		t.Fatal(err)
	}
	row := fmt.Sprintf("document.getElementById('job-%d')", id2)
	b.waitJS(t, "the new job's row", row+` && `+row+`.querySelector('.outcome span').textContent === 'running'`)
	close(gate)
	b.waitJS(t, "the new job to end", row+`.dataset.outcome === 'ok'`)
	var marker int
	b.eval(t, `window.__noReload`, &marker)
	if marker != 7 {
		t.Error("the runs list reloaded instead of updating live")
	}
}

func mustAtoi(t *testing.T, s string) int64 {
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

type treeRowJS struct {
	Name, Parent string
	Depth        string
	Current      bool
	Consistency  string
}

const treeJS = `[...document.querySelectorAll('#snapshot-tree tr.snap')].map(r => ({Name: r.dataset.name, Parent: r.dataset.parent,
	Depth: r.dataset.depth, Current: r.classList.contains('current') && !!r.querySelector('.current-mark'),
	Consistency: r.querySelector('.consistency').textContent}))`

func TestBrowserGuestPage(t *testing.T) {
	srv := serve(t, smallFleet(), Options{})
	b := newBrowser(t)
	b.run(t, chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#guests")))
	b.run(t, chromedp.Click(chromedp.CSS(`tr[data-guest="db1"] a`)), chromedp.WaitVisible(chromedp.CSS("#snapshot-tree")))
	var rows []treeRowJS
	b.eval(t, treeJS, &rows)
	want := []treeRowJS{
		{Name: "base", Depth: "0", Consistency: "offline"},
		{Name: "a", Parent: "base", Depth: "1", Consistency: "offline"},
		{Name: "a1", Parent: "a", Depth: "2", Consistency: "offline"},
		{Name: "b", Parent: "base", Depth: "1", Current: true, Consistency: "offline"},
	}
	if !slices.Equal(rows, want) {
		t.Errorf("tree\n got %+v\nwant %+v", rows, want)
	}
	// web1: backup points per chain with sizes, and its runs with the freeze.
	b.run(t, chromedp.Navigate(srv.URL+"/guests/"+url.PathEscape("host-a/web1")), chromedp.WaitVisible(chromedp.CSS("#runs")))
	var page struct {
		Chains []string
		Points []string
		Runs   []string
	}
	b.eval(t, `({Chains: [...document.querySelectorAll('table.backups')].map(t => t.dataset.chain + ' ' + t.previousElementSibling.textContent.replace(/\s+/g, ' ').trim()),
		Points: [...document.querySelectorAll('tr.point')].map(r => [...r.cells].map(c => c.textContent).join('|')),
		Runs: [...document.querySelectorAll('#runs tr.job')].map(r => r.dataset.job + ' ' + r.dataset.outcome)})`, &page)
	if !slices.Equal(page.Chains, []string{"c1 Chain c1 2 points, 3.2 GiB"}) || len(page.Points) != 2 ||
		!strings.HasPrefix(page.Points[0], "p1|full|") || !strings.Contains(page.Points[1], "|200.0 MiB|10.0 GiB") ||
		!slices.Equal(page.Runs, []string{"1 failed"}) {
		t.Errorf("web1 page: %+v", page)
	}
	// Verify: confirmation, then the recorded job.
	b.run(t, chromedp.Click(chromedp.CSS(`a[href^="/confirm/verify/"]`)), chromedp.WaitVisible(chromedp.CSS("#confirm-button")))
	b.run(t, chromedp.Click(chromedp.CSS("#confirm-button")))
	b.waitJS(t, "the verify run", `location.pathname.startsWith('/runs/') && !!document.getElementById('run')`)
	var kind string
	b.eval(t, `document.querySelector('h1 small').textContent`, &kind)
	if !strings.Contains(kind, "verify") || !strings.Contains(kind, "web") {
		t.Errorf("verify run header %q", kind)
	}
}

// TestBrowserEveryPage visits every page, plans a policy through its confirmation and
// draws the charts; the browser must report no console error and no CSP violation.
func TestBrowserEveryPage(t *testing.T) {
	srv := serve(t, smallFleet(), Options{})
	b := newBrowser(t)
	for _, p := range []string{"/", "/runs", "/runs/1", "/policies", "/charts", "/guests/" + url.PathEscape("host-b/db1"), "/confirm/dryrun/web", "/login"} {
		b.run(t, chromedp.Navigate(srv.URL+p), chromedp.WaitReady(chromedp.CSS("main")))
	}
	b.run(t, chromedp.Navigate(srv.URL+"/confirm/plan/web"), chromedp.WaitVisible(chromedp.CSS("#confirm-button")), chromedp.Click(chromedp.CSS("#confirm-button")), chromedp.WaitVisible(chromedp.CSS("#plan")))
	var n int
	b.eval(t, `document.querySelectorAll('#plan tbody tr').length`, &n)
	if n != 2 {
		t.Errorf("plan rows %d, want 2", n)
	}
	var rec string
	b.eval(t, `document.getElementById('plan-recorded').textContent`, &rec)
	if !strings.Contains(rec, "dry run 2") {
		t.Errorf("plan not recorded: %q", rec)
	}
	b.run(t, chromedp.Navigate(srv.URL+"/charts"), chromedp.WaitVisible(chromedp.CSS("#chart-durations")))
	b.eval(t, `document.querySelectorAll('svg.chart rect.bar, svg.chart polyline').length`, &n)
	if n < 2 {
		t.Errorf("charts drew %d marks", n)
	}
}

// TestBrowserLoginAndCSRF: off loopback the browser must log in; a form POST
// without the CSRF token and a cross-site form are refused and change nothing.
func TestBrowserLoginAndCSRF(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw-ann"), bcrypt.MinCost)
	f := smallFleet()
	srv := serveTLS(t, f, Options{Users: map[string]string{"ann": string(hash)}})
	b := newBrowser(t)
	b.allow("status of 401")
	b.allow("status of 403")
	b.run(t, chromedp.Navigate(srv.URL+"/policies"), chromedp.WaitVisible(chromedp.CSS("#login-form")))
	if p := b.location(t); p.Path != "/login" {
		t.Fatalf("not sent to login: %s", p)
	}
	b.run(t, chromedp.SendKeys(chromedp.CSS("#user"), "ann"), chromedp.SendKeys(chromedp.CSS("#password"), "wrong"),
		chromedp.Click(chromedp.CSS("#login-button")), chromedp.WaitVisible(chromedp.CSS("#login-failed")))
	b.run(t, chromedp.SetValue(chromedp.CSS("#password"), "pw-ann"), chromedp.Click(chromedp.CSS("#login-button")))
	b.waitJS(t, "the policies page", `location.pathname === '/policies' && !!document.getElementById('policies')`)

	var status int
	b.eval(t, `fetch('/policies/web/run', {method: 'POST', body: new URLSearchParams('confirm=yes')}).then(r => r.status)`, &status)
	if status != http.StatusForbidden {
		t.Errorf("POST without CSRF token: %d", status)
	}
	// A page on another origin submits a form to the dashboard: the session cookie
	// (SameSite=Strict) is not sent and no token is known, so nothing runs.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><form method="post" action="%s/policies/web/run"><input name="confirm" value="yes"></form><script>document.forms[0].submit()</script>`, srv.URL)
	}))
	defer evil.Close()
	b.run(t, chromedp.Navigate(evil.URL))
	b.waitJS(t, "the forged POST's answer", `location.href.startsWith('`+srv.URL+`')`)
	var body string
	b.eval(t, `document.body.textContent`, &body)
	if !strings.Contains(body, "log in") && !strings.Contains(body, "CSRF") {
		t.Errorf("forged POST answered %q", body)
	}
	if a := f.actionLog(); len(a) != 0 {
		t.Fatalf("refused POSTs acted: %v", a)
	}
	// The page's own form (with its token) works.
	b.run(t, chromedp.Navigate(srv.URL+"/confirm/run/web"), chromedp.WaitVisible(chromedp.CSS("#confirm-button")), chromedp.Click(chromedp.CSS("#confirm-button")))
	b.waitJS(t, "the run page", `location.pathname.startsWith('/runs/') && !!document.getElementById('run')`)
	if a := f.actionLog(); !slices.Equal(a, []string{"run web dry=false"}) {
		t.Errorf("actions %v", a)
	}
}
