package web

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestFreshness(t *testing.T) {
	h := time.Hour
	for _, c := range []struct {
		age     time.Duration
		none    bool
		cadence time.Duration
		want    string
	}{
		{age: 10 * time.Minute, cadence: h, want: FreshOK},
		{age: h, cadence: h, want: FreshOK},
		{age: h + time.Second, cadence: h, want: FreshLate},
		{age: 2 * h, cadence: h, want: FreshLate},
		{age: 2*h + time.Second, cadence: h, want: FreshWarn},
		{age: 3 * h, cadence: h, want: FreshWarn},
		{age: 3*h + time.Second, cadence: h, want: FreshCrit},
		{none: true, cadence: h, want: FreshCrit},
		{age: 100 * h, cadence: 0, want: FreshNone},
		{none: true, cadence: 0, want: FreshNone},
	} {
		newest := testNow.Add(-c.age)
		if c.none {
			newest = time.Time{}
		}
		if got := Freshness(testNow, newest, c.cadence, 2, 3); got != c.want {
			t.Errorf("Freshness(age %v, none %v, cadence %v) = %s, want %s", c.age, c.none, c.cadence, got, c.want)
		}
	}
}

func TestLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8460": true, "localhost:8460": true, "[::1]:8460": true, "127.1.2.3:1": true,
		":8460": false, "0.0.0.0:8460": false, "192.0.2.10:8460": false, "[::]:8460": false, "example.org:443": false,
	} {
		if got := Loopback(addr); got != want {
			t.Errorf("Loopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestNewRefusesInsecureOffLoopback(t *testing.T) {
	b := newFake()
	for _, c := range []struct {
		name    string
		o       Options
		wantErr []string
	}{
		{"plain http, no auth", Options{Addr: "0.0.0.0:8460"}, []string{"TLS", "authentication"}},
		{"all interfaces", Options{Addr: ":8460", Token: "t"}, []string{"TLS"}},
		{"tls without auth", Options{Addr: "192.0.2.10:8460", TLS: true}, []string{"authentication"}},
		{"auth without tls", Options{Addr: "192.0.2.10:8460", Token: "t"}, []string{"TLS"}},
		{"plain password", Options{Addr: "127.0.0.1:8460", Users: map[string]string{"ann": "secret"}}, []string{"bcrypt"}},
		{"tls and token", Options{Addr: "192.0.2.10:8460", TLS: true, Token: "t"}, nil},
		{"loopback open", Options{Addr: "127.0.0.1:8460"}, nil},
	} {
		_, err := New(b, c.o)
		if len(c.wantErr) == 0 {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: New accepted %+v", c.name, c.o)
			continue
		}
		for _, w := range c.wantErr {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", c.name, err, w)
			}
		}
		if c.name != "plain password" && !errors.Is(err, ErrInsecure) {
			t.Errorf("%s: error %v is not ErrInsecure", c.name, err)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error renders the password: %v", c.name, err)
		}
	}
}

func TestSnapshotTreeOrder(t *testing.T) {
	d, _ := smallFleet().Guest(t.Context(), "host-b/db1")
	var got []string
	for _, r := range snapshotTree(d.Snapshots) {
		got = append(got, strings.Repeat(" ", r.Depth)+r.Name)
	}
	want := []string{"base", " a", "  a1", " b"}
	if !slices.Equal(got, want) {
		t.Errorf("tree = %q, want %q", got, want)
	}
}

// serve starts the dashboard over plain HTTP on loopback.
func serve(t *testing.T, b Backend, o Options) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	o.Addr = srv.Listener.Addr().String()
	if o.Now == nil {
		o.Now = func() time.Time { return testNow }
	}
	h, err := New(b, o)
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = h
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// serveTLS starts the dashboard over HTTPS as if it listened on a routable address.
func serveTLS(t *testing.T, b Backend, o Options) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	o.Addr, o.TLS = "192.0.2.10:8460", true
	o.Now = func() time.Time { return testNow }
	h, err := New(b, o)
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = h
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func client(t *testing.T, srv *httptest.Server) *http.Client {
	jar, _ := cookiejar.New(nil)
	cc := *srv.Client()
	c := &cc
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

func get(t *testing.T, c *http.Client, u string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func post(t *testing.T, c *http.Client, u, ctype, body string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in page:\n%s", page)
	}
	return m[1]
}

func TestSecurityHeaders(t *testing.T) {
	srv := serve(t, smallFleet(), Options{})
	for _, p := range []string{"/", "/runs", "/api/v1/guests", "/login"} {
		resp, _ := get(t, client(t, srv), srv.URL+p)
		h := resp.Header
		csp := h.Get("Content-Security-Policy")
		if !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Errorf("%s: CSP %q", p, csp)
		}
		if h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Referrer-Policy") != "no-referrer" || h.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: headers %v", p, h)
		}
	}
}

func TestAPIGuests(t *testing.T) {
	srv := serve(t, smallFleet(), Options{})
	c := client(t, srv)
	resp, body := get(t, c, srv.URL+"/api/v1/guests")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var gs []map[string]any
	if err := json.Unmarshal([]byte(body), &gs); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, g := range gs {
		got[g["name"].(string)] = g["status"].(string) + "/" + g["snapshot_status"].(string) + "/" + g["backup_status"].(string)
	}
	want := map[string]string{"web1": "ok/ok/ok", "web2": "failed/warn/crit", "db1": "crit/crit/none", "lab1": "unprotected/none/none"}
	if len(got) != len(want) {
		t.Errorf("guests %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s", k, got[k], v)
		}
	}
	// Filters are the overview's.
	_, body = get(t, c, srv.URL+"/api/v1/guests?host=host-b&state=shutoff&tag=prod")
	if err := json.Unmarshal([]byte(body), &gs); err != nil || len(gs) != 1 || gs[0]["name"] != "db1" {
		t.Errorf("filtered: %v %s", err, body)
	}
	// One guest: tree order, depth, backups, runs. IDs carry a slash, escaped.
	resp, body = get(t, c, srv.URL+"/api/v1/guests/"+url.PathEscape("host-a/web1"))
	var d struct {
		Guest     map[string]any   `json:"guest"`
		Snapshots []map[string]any `json:"snapshots"`
		Backups   []BackupPoint    `json:"backups"`
		Runs      []jobView        `json:"runs"`
	}
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &d) != nil {
		t.Fatalf("guest: %d %s", resp.StatusCode, body)
	}
	if len(d.Snapshots) != 1 || d.Snapshots[0]["name"] != "autoweb1" || len(d.Backups) != 2 || len(d.Runs) != 1 || d.Runs[0].Guests[0].FreezeNS != int64(120*time.Millisecond) {
		t.Errorf("guest detail: %s", body)
	}
	resp, _ = get(t, c, srv.URL+"/api/v1/guests/nope")
	if resp.StatusCode != 404 {
		t.Errorf("unknown guest: %d", resp.StatusCode)
	}
	resp, body = get(t, c, srv.URL+"/api/v1/runs?policy=web")
	var runs []jobView
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &runs) != nil || len(runs) != 1 || runs[0].Outcome != "failed" || runs[0].Guests[1].Error == "" {
		t.Errorf("runs: %d %s", resp.StatusCode, body)
	}
	resp, body = get(t, c, srv.URL+"/api/v1/policies")
	if resp.StatusCode != 200 || !strings.Contains(body, `"snapshot_schedule": "@every 1h"`) || !strings.Contains(body, `"next": "2026-11-30T10:54:00Z"`) {
		t.Errorf("policies: %d %s", resp.StatusCode, body)
	}
	_, page := get(t, c, srv.URL+"/policies")
	if !strings.Contains(page, "snapshot: last 6m ago, next in 54m") || !strings.Contains(page, "backup: last never, next now") {
		t.Errorf("policies page lacks the jobs' last and next runs:\n%s", page)
	}
}

// TestCSRFLoopback: without authentication the dashboard still refuses a POST
// without the session's CSRF token, so another site cannot make a browser run a policy.
func TestCSRFLoopback(t *testing.T) {
	f := smallFleet()
	srv := serve(t, f, Options{})
	c := client(t, srv)
	_, page := get(t, c, srv.URL+"/confirm/run/web")
	tok := csrfOf(t, page)
	resp, body := post(t, c, srv.URL+"/policies/web/run", "application/x-www-form-urlencoded", "confirm=yes")
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST without token: %d %s", resp.StatusCode, body)
	}
	resp, _ = post(t, c, srv.URL+"/policies/web/run", "application/x-www-form-urlencoded", "confirm=yes&csrf=AAAA"+tok[4:])
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST with a wrong token: %d", resp.StatusCode)
	}
	resp, _ = post(t, c, srv.URL+"/policies/web/run", "application/x-www-form-urlencoded", "confirm=yes&csrf="+tok, "Origin", "http://evil.example")
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST from another origin: %d", resp.StatusCode)
	}
	if a := f.actionLog(); len(a) != 0 {
		t.Fatalf("refused requests acted: %v", a)
	}
	// No confirmation: back to the confirmation page, nothing done.
	resp, _ = post(t, c, srv.URL+"/policies/web/run", "application/x-www-form-urlencoded", "csrf="+tok)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/confirm/run/web" || len(f.actionLog()) != 0 {
		t.Errorf("unconfirmed: %d %s %v", resp.StatusCode, resp.Header.Get("Location"), f.actionLog())
	}
	resp, _ = post(t, c, srv.URL+"/policies/web/run", "application/x-www-form-urlencoded", "confirm=yes&csrf="+tok)
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/runs/") {
		t.Errorf("confirmed POST: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	// A script without cookies may POST JSON (a browser cannot, cross-site, without
	// a CORS preflight); a form-encoded cookieless POST is refused.
	plain := srv.Client()
	resp, body = post(t, plain, srv.URL+"/api/v1/policies/web/run", "application/json", `{"dry_run":true}`)
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(body, `"job"`) {
		t.Errorf("JSON API POST: %d %s", resp.StatusCode, body)
	}
	resp, _ = post(t, plain, srv.URL+"/api/v1/policies/web/run", "text/plain", `{"dry_run":true}`)
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("text/plain API POST: %d", resp.StatusCode)
	}
	if a := f.actionLog(); !slices.Equal(a, []string{"run web dry=false", "run web dry=true"}) {
		t.Errorf("actions %v", a)
	}
}

// TestAuthOffLoopback drives login, bearer tokens, cookie flags and CSRF on a
// dashboard that listens on a routable address over TLS.
func TestAuthOffLoopback(t *testing.T) {
	const token = "s3cr3t-token-value"
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw-ann"), bcrypt.MinCost)
	f := smallFleet()
	srv := serveTLS(t, f, Options{Token: token, Users: map[string]string{"ann": string(hash)}})
	c := client(t, srv)
	resp, _ := get(t, c, srv.URL+"/runs")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login?next=%2Fruns" {
		t.Fatalf("anonymous page: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	for _, p := range []string{"/api/v1/guests", "/api/v1/runs/1", "/events"} {
		if resp, _ := get(t, c, srv.URL+p); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("anonymous %s: %d", p, resp.StatusCode)
		}
	}
	if resp, _ := get(t, c, srv.URL+"/api/v1/guests", "Authorization", "Bearer wrong"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong token: %d", resp.StatusCode)
	}
	if resp, _ := get(t, c, srv.URL+"/api/v1/guests", "Authorization", "Bearer "+token); resp.StatusCode != 200 {
		t.Errorf("bearer: %d", resp.StatusCode)
	}
	// Bearer requests need no CSRF token: browsers never send the header by themselves.
	if resp, body := post(t, srv.Client(), srv.URL+"/api/v1/policies/web/plan", "", "", "Authorization", "Bearer "+token); resp.StatusCode != 200 || !strings.Contains(body, `"items"`) {
		t.Errorf("bearer plan: %d %s", resp.StatusCode, body)
	}

	_, page := get(t, c, srv.URL+"/login?next=/runs")
	tok := csrfOf(t, page)
	if resp, _ := post(t, c, srv.URL+"/login", "application/x-www-form-urlencoded", "user=ann&password=pw-ann"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("login without CSRF token: %d", resp.StatusCode)
	}
	if resp, _ := post(t, c, srv.URL+"/login", "application/x-www-form-urlencoded", "user=ann&password=nope&csrf="+tok); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong password: %d", resp.StatusCode)
	}
	if resp, _ := post(t, c, srv.URL+"/login", "application/x-www-form-urlencoded", "user=bob&password=pw-ann&csrf="+tok); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unknown user: %d", resp.StatusCode)
	}
	resp, _ = post(t, c, srv.URL+"/login", "application/x-www-form-urlencoded", "user=ann&password=pw-ann&next=/runs&csrf="+tok)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/runs" {
		t.Fatalf("login: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	sc := resp.Header.Get("Set-Cookie")
	for _, w := range []string{"HttpOnly", "Secure", "SameSite=Strict"} {
		if !strings.Contains(sc, w) {
			t.Errorf("session cookie %q lacks %s", sc, w)
		}
	}
	resp, page = get(t, c, srv.URL+"/")
	if resp.StatusCode != 200 || !strings.Contains(page, "web2") {
		t.Fatalf("overview after login: %d", resp.StatusCode)
	}
	if resp.Header.Get("Strict-Transport-Security") == "" {
		t.Error("no HSTS over TLS")
	}
	// The session's CSRF token changed with the login.
	if csrfOf(t, page) == tok {
		t.Error("CSRF token survived the login")
	}
	// Cookie-authenticated API POSTs need the token too.
	if resp, _ := post(t, c, srv.URL+"/api/v1/policies/web/run", "application/json", `{}`); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cookie API POST without token: %d", resp.StatusCode)
	}
	_, sess := get(t, c, srv.URL+"/api/v1/session")
	var s struct{ CSRF, User string }
	_ = json.Unmarshal([]byte(sess), &s)
	if s.User != "ann" || s.CSRF == "" {
		t.Fatalf("session: %s", sess)
	}
	if resp, body := post(t, c, srv.URL+"/api/v1/policies/web/run", "application/json", `{}`, csrfHeader, s.CSRF); resp.StatusCode != http.StatusAccepted {
		t.Errorf("cookie API POST with token: %d %s", resp.StatusCode, body)
	}
	// The token logs in too (empty user); it never appears in a page.
	c2 := client(t, srv)
	_, page = get(t, c2, srv.URL+"/login")
	resp, _ = post(t, c2, srv.URL+"/login", "application/x-www-form-urlencoded", "user=&password="+token+"&csrf="+csrfOf(t, page))
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("token login: %d", resp.StatusCode)
	}
	for _, p := range []string{"/", "/runs", "/policies", "/guests/" + url.PathEscape("host-a/web1"), "/charts", "/api/v1/session", "/api/v1/policies"} {
		_, body := get(t, c2, srv.URL+p)
		if strings.Contains(body, token) || strings.Contains(body, string(hash)) {
			t.Errorf("%s renders a secret", p)
		}
	}
	// Logging out ends the session.
	_, page = get(t, c2, srv.URL+"/")
	post(t, c2, srv.URL+"/logout", "application/x-www-form-urlencoded", "csrf="+csrfOf(t, page))
	if resp, _ := get(t, c2, srv.URL+"/"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("after logout: %d", resp.StatusCode)
	}
}

func TestChartsFromHistory(t *testing.T) {
	f := smallFleet()
	srv := serve(t, f, Options{})
	_, page := get(t, client(t, srv), srv.URL+"/charts")
	for _, id := range []string{"chart-snapshots", "chart-backup-bytes", "chart-durations", "chart-freezes"} {
		if !strings.Contains(page, `id="`+id+`"`) {
			t.Errorf("no %s", id)
		}
	}
	if !strings.Contains(page, "<title>web2") && !strings.Contains(page, "web1 ") {
		t.Errorf("freeze bar for web1 missing")
	}
	// The snapshot series ends at today's total (1+1+4+0 snapshots).
	cs := buildCharts(mustJobs(t, f), 6, "")
	if !strings.Contains(string(cs.Snapshots), ": 6</title>") {
		t.Errorf("snapshot series does not end at 6: %s", cs.Snapshots)
	}
}

func mustJobs(t *testing.T, b Backend) []historyJob {
	js, err := b.Jobs(t.Context(), historyQuery{})
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestRunEachJobKind: a policy with a snapshot and a backup job offers "run now" for
// each; the chosen kind goes through the confirmation to the backend, and an unknown
// kind is refused.
func TestRunEachJobKind(t *testing.T) {
	f := smallFleet()
	srv := serve(t, f, Options{})
	c := client(t, srv)
	_, page := get(t, c, srv.URL+"/policies")
	for _, want := range []string{`href="/confirm/run/web?kind=snapshot"`, `href="/confirm/run/web?kind=backup"`, `href="/confirm/run/db"`} {
		if !strings.Contains(page, want) {
			t.Errorf("policies page lacks %s", want)
		}
	}
	resp, page := get(t, c, srv.URL+"/confirm/run/web?kind=backup")
	if resp.StatusCode != 200 || !strings.Contains(page, `name="kind" value="backup"`) || !strings.Contains(page, "its backup job") {
		t.Fatalf("confirmation of a backup run: %d\n%s", resp.StatusCode, page)
	}
	tok := csrfOf(t, page)
	// Without the confirmation the kind survives the detour through the confirm page.
	if resp, _ := post(t, c, srv.URL+"/policies/web/run", "application/x-www-form-urlencoded", "kind=backup&csrf="+tok); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/confirm/run/web?kind=backup" {
		t.Errorf("unconfirmed run: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ := post(t, c, srv.URL+"/policies/web/run", "application/x-www-form-urlencoded", "kind=backup&confirm=yes&csrf="+tok); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("confirmed backup run: %d", resp.StatusCode)
	}
	if resp, _ := post(t, c, srv.URL+"/policies/web/run", "application/x-www-form-urlencoded", "kind=reboot&confirm=yes&csrf="+tok); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown kind: %d, want 400", resp.StatusCode)
	}
	if resp, body := post(t, c, srv.URL+"/api/v1/policies/web/run", "application/json", `{"kind":"backup","dry_run":true}`, "X-CSRF-Token", tok); resp.StatusCode != http.StatusAccepted {
		t.Errorf("API backup dry run: %d %s", resp.StatusCode, body)
	}
	f.mu.Lock()
	got := strings.Join(f.actions, "; ")
	f.mu.Unlock()
	if got != "run web backup dry=false; run web backup dry=true" {
		t.Errorf("backend saw %q", got)
	}
}
