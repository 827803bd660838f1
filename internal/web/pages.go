package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/history"
)

// pages are the templates rendered inside layout.html.
var pages = []string{"overview", "guest", "runs", "run", "policies", "confirm", "plan", "charts", "login"}

func parseTemplates() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"age": humanAge,
		"ago": func(now, t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return humanAge(now.Sub(t))
		},
		"bytes": func(n any) string {
			switch v := n.(type) {
			case uint64:
				return humanBytes(v)
			case int64:
				if v < 0 {
					return "?"
				}
				return humanBytes(uint64(v))
			}
			return fmt.Sprint(n)
		},
		"ts": func(t time.Time) string {
			if t.IsZero() {
				return "—"
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"iso":    func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"join":   joinComma,
		"indent": func(d int) []struct{} { return make([]struct{}, d) },
		"dur": func(a, b time.Time, now time.Time) string {
			if b.IsZero() {
				b = now
			}
			return b.Sub(a).Round(time.Second / 10).String()
		},
		"path": url.PathEscape,
		"dict2": func(runs []jobView, now time.Time) map[string]any {
			return map[string]any{"Runs": runs, "Now": now}
		},
		"secs":  func(d time.Duration) string { return d.Round(time.Millisecond).String() },
		"nsdur": func(ns int64) time.Duration { return time.Duration(ns) },
		"until": func(now, t time.Time) string {
			if !t.After(now) {
				return "now"
			}
			return "in " + humanAge(t.Sub(now))
		},
	}
	out := map[string]*template.Template{}
	layout, err := fs.ReadFile(assets, "templates/layout.html")
	if err != nil {
		return nil, err
	}
	for _, p := range pages {
		body, err := fs.ReadFile(assets, "templates/"+p+".html")
		if err != nil {
			return nil, err
		}
		t, err := template.New("layout").Funcs(funcs).Parse(string(layout))
		if err == nil {
			_, err = t.New(p).Parse(string(body))
		}
		if err != nil {
			return nil, fmt.Errorf("web: template %s: %w", p, err)
		}
		out[p] = t
	}
	return out, nil
}

// page is what every template receives.
type page struct {
	Title string
	Nav   string
	User  string
	Auth  bool
	CSRF  string
	Now   time.Time
	Live  bool // the page subscribes to /events
	Data  any
}

func (s *server) render(w http.ResponseWriter, r *http.Request, name string, data any) {
	a := authOf(r.Context())
	p := page{Title: name, Nav: name, User: a.user, Auth: s.auth, Now: s.o.Now(), Data: data}
	if a.sess != nil {
		p.CSRF = s.sess.csrf(a.sess.id)
	}
	if m, ok := data.(map[string]any); ok {
		if t, ok := m["Title"].(string); ok {
			p.Title = t
		}
		if l, ok := m["Live"].(bool); ok {
			p.Live = l
		}
	}
	var buf bytes.Buffer
	if err := s.tmpl[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		http.Error(w, "template: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = buf.WriteTo(w)
}

// httpError answers API paths with JSON and pages with text.
func httpError(w http.ResponseWriter, r *http.Request, code int, msg string) {
	if strings.HasPrefix(r.URL.Path, "/api/") {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
		return
	}
	http.Error(w, msg, code)
}

func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	if errors.Is(err, ErrNotFound) {
		code = http.StatusNotFound
	}
	httpError(w, r, code, err.Error())
}

// overview is the overview's data, also used by the benchmark.
type overview struct {
	Guests []guestView
	Total  int
	Counts map[string]int
	Filter guestFilter
	Facets facets
	Title  string
	// Problems are the backend's checks that could not be made.
	Problems []string
}

func (s *server) overviewData(r *http.Request) (overview, error) {
	gs, err := s.b.Guests(r.Context())
	if err != nil {
		return overview{}, err
	}
	f := parseFilter(r.URL.Query())
	o := overview{Total: len(gs), Counts: map[string]int{}, Filter: f, Facets: facetsOf(gs), Title: "Overview"}
	if pr, ok := s.b.(ProblemReporter); ok {
		o.Problems = pr.Problems(r.Context())
	}
	for _, g := range gs {
		v := s.view(g)
		o.Counts[v.Status]++
		if f.match(v) {
			o.Guests = append(o.Guests, v)
		}
	}
	rank := func(v guestView) int {
		if v.Failed {
			return 4
		}
		return severity(v.Status)
	}
	sort.SliceStable(o.Guests, func(i, j int) bool {
		a, b := o.Guests[i], o.Guests[j]
		if rank(a) != rank(b) {
			return rank(a) > rank(b)
		}
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		return a.Name < b.Name
	})
	return o, nil
}

func (s *server) overviewPage(w http.ResponseWriter, r *http.Request) {
	o, err := s.overviewData(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, "overview", o)
}

// guestWithRuns reads the guest the request names and its 50 newest runs; it answers
// the request itself on error.
func (s *server) guestWithRuns(w http.ResponseWriter, r *http.Request) (GuestDetail, []jobView, bool) {
	d, err := s.b.Guest(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return d, nil, false
	}
	jobs, err := s.b.Jobs(r.Context(), history.Query{Guest: d.Name, Limit: 50})
	if err != nil {
		s.fail(w, r, err)
		return d, nil, false
	}
	runs := []jobView{}
	for _, j := range jobs {
		runs = append(runs, s.jobView(j))
	}
	return d, runs, true
}

func (s *server) guestPage(w http.ResponseWriter, r *http.Request) {
	d, runs, ok := s.guestWithRuns(w, r)
	if !ok {
		return
	}
	s.render(w, r, "guest", map[string]any{
		"Title": d.Name, "G": s.view(d.Guest), "Tree": snapshotTree(d.Snapshots),
		"Chains": backupChains(d.Backups), "Runs": runs, "Live": true,
	})
}

func runsQuery(q url.Values) history.Query {
	hq := history.Query{Policy: q.Get("policy"), Guest: q.Get("guest"), Kind: history.Kind(q.Get("kind")),
		Outcome: history.Outcome(q.Get("outcome")), Limit: 100}
	if n, err := strconv.Atoi(q.Get("limit")); err == nil && n > 0 {
		hq.Limit = n
	}
	if t, err := time.Parse(time.RFC3339, q.Get("since")); err == nil {
		hq.Since = t
	}
	return hq
}

func (s *server) runsPage(w http.ResponseWriter, r *http.Request) {
	jobs, err := s.b.Jobs(r.Context(), runsQuery(r.URL.Query()))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var runs []jobView
	for _, j := range jobs {
		runs = append(runs, s.jobView(j))
	}
	s.render(w, r, "runs", map[string]any{"Title": "Runs", "Runs": runs, "Live": true})
}

func (s *server) runPage(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		httpError(w, r, http.StatusNotFound, "no such run")
		return
	}
	j, err := s.b.Job(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, "run", map[string]any{"Title": fmt.Sprintf("Run %d", id), "J": s.jobView(j), "Live": true})
}

func (s *server) policiesPage(w http.ResponseWriter, r *http.Request) {
	ps, err := s.b.Policies(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, "policies", map[string]any{"Title": "Policies", "Policies": ps})
}

// confirmation describes an action before it is taken.
type confirmation struct {
	Action, Target, What, URL string
	DryRun                    bool
	// Kind is the job a run or dry run starts ("": the policy's first job).
	Kind history.Kind
}

// runKind reads the kind of job a run asks for: "", snapshot or backup.
func runKind(v string) (history.Kind, bool) {
	switch k := history.Kind(v); k {
	case "", history.KindSnapshot, history.KindBackup:
		return k, true
	}
	return "", false
}

func (s *server) confirmPage(w http.ResponseWriter, r *http.Request) {
	t := r.PathValue("target")
	c := confirmation{Action: r.PathValue("action"), Target: t}
	kind, ok := runKind(r.URL.Query().Get("kind"))
	if !ok {
		httpError(w, r, http.StatusBadRequest, "kind: use snapshot or backup")
		return
	}
	job := "its snapshots/backups"
	switch kind {
	case history.KindSnapshot:
		job = "its snapshot job"
	case history.KindBackup:
		job = "its backup job"
	}
	switch c.Action {
	case "run":
		c.What, c.URL, c.Kind = "Run policy "+t+" now: "+job+", with its retention.", "/policies/"+url.PathEscape(t)+"/run", kind
	case "dryrun":
		c.What, c.URL, c.DryRun, c.Kind = "Dry run of policy "+t+" ("+job+"): go through every guest, change nothing.", "/policies/"+url.PathEscape(t)+"/run", true, kind
	case "plan":
		c.What, c.URL = "Plan policy "+t+": show what a run now would take and keep, with reasons.", "/policies/"+url.PathEscape(t)+"/plan"
	case "verify":
		name := t
		if gs, err := s.b.Guests(r.Context()); err == nil {
			for _, g := range gs {
				if g.ID == t {
					name = g.Name + " (" + g.Host + ")"
				}
			}
		}
		c.What, c.URL = "Verify the backups of guest "+name+": check every point's files and checksums.", "/guests/"+url.PathEscape(t)+"/verify"
	default:
		httpError(w, r, http.StatusNotFound, "no such action")
		return
	}
	s.render(w, r, "confirm", map[string]any{"Title": "Confirm", "C": c})
}

// confirmed reports whether the form carries the confirmation; otherwise it sends the
// browser to the confirmation page.
func confirmed(w http.ResponseWriter, r *http.Request, action, target string) bool {
	if r.PostFormValue("confirm") == "yes" {
		return true
	}
	to := "/confirm/" + action + "/" + url.PathEscape(target)
	if k := r.PostFormValue("kind"); k != "" {
		to += "?kind=" + url.QueryEscape(k)
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
	return false
}

func (s *server) runPost(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	dry := r.PostFormValue("dry_run") == "1"
	action := "run"
	if dry {
		action = "dryrun"
	}
	kind, ok := runKind(r.PostFormValue("kind"))
	if !ok {
		httpError(w, r, http.StatusBadRequest, "kind: use snapshot or backup")
		return
	}
	if !confirmed(w, r, action, name) {
		return
	}
	id, err := s.b.RunPolicy(r.Context(), name, kind, dry)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/runs/%d", id), http.StatusSeeOther)
}

func (s *server) planPost(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !confirmed(w, r, "plan", name) {
		return
	}
	p, err := s.b.PlanPolicy(r.Context(), name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, "plan", map[string]any{"Title": "Plan " + name, "P": p})
}

func (s *server) verifyPost(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !confirmed(w, r, "verify", id) {
		return
	}
	job, err := s.b.VerifyBackup(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/runs/%d", job), http.StatusSeeOther)
}
