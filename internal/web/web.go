// Package web serves autosnap's dashboard and its JSON API (/api/v1/...): an overview
// of every guest's protection against its policy's cadence, a page per guest (snapshot
// tree, backup points per chain, run history), the runs with live progress over
// server-sent events, charts rendered server-side as SVG, and confirmed actions (run a
// policy, plan it, verify a backup).
//
// The package knows the daemon only through Backend, so it is tested against a fake.
// Assets are embedded; pages need no internet and no inline script or style, so the
// Content-Security-Policy forbids both.
//
// Security: New refuses to build a handler that listens off loopback without TLS and
// authentication (a bearer token or bcrypt-hashed users). Every POST carries a CSRF
// token bound to the session cookie, unless the request authenticates with the bearer
// token (which a browser never sends on its own).
package web

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/history"
)

//go:embed templates/*.html static/*
var assets embed.FS

// ErrNotFound is what Backend methods return (wrapped) for an unknown guest, policy or job.
var ErrNotFound = errors.New("not found")

// Backend is what the dashboard shows and acts on. Implementations must be safe for
// concurrent use. Actions (RunPolicy, PlanPolicy, VerifyBackup) are recorded by the
// backend in the run history with trigger "web".
type Backend interface {
	// Guests lists every guest the policies select (and guests with backups but no
	// policy), with their newest snapshot and backup and their last run.
	Guests(ctx context.Context) ([]Guest, error)
	// Guest returns one guest by Guest.ID with its snapshots and backup points.
	Guest(ctx context.Context, id string) (GuestDetail, error)
	// Policies lists the loaded policies.
	Policies(ctx context.Context) ([]Policy, error)
	// Jobs and Job read the run history.
	history.Reader
	// Subscribe delivers live job events until cancel is called. A slow subscriber
	// may miss events; it must not block the jobs.
	Subscribe() (events <-chan Event, cancel func())
	// RunPolicy starts the policy's job of that kind now (a dry run changes nothing)
	// and returns its history job ID without waiting for it to end. Kind "" is the
	// policy's snapshot job, or its backup job when it takes no snapshots.
	RunPolicy(ctx context.Context, policy string, kind history.Kind, dryRun bool) (jobID int64, err error)
	// PlanPolicy says what running the policy now would take and keep, with reasons,
	// and records it as a dry-run job.
	PlanPolicy(ctx context.Context, policy string) (Plan, error)
	// VerifyBackup starts a verification of the guest's backup points and returns its
	// history job ID.
	VerifyBackup(ctx context.Context, guestID string) (jobID int64, err error)
}

// ProblemReporter is an optional Backend capability: the checks that could not be
// made (an unreachable host, an unreadable repository), each saying which and why.
// The overview shows them above the guests, so that guests that cannot be seen are
// not mistaken for guests that do not exist.
type ProblemReporter interface {
	Problems(ctx context.Context) []string
}

// Guest is one guest's protection status.
type Guest struct {
	// ID identifies the guest in URLs and Backend.Guest; unique across hosts.
	ID     string       `json:"id"`
	Name   string       `json:"name"`
	Host   string       `json:"host"`
	Node   string       `json:"node,omitempty"`
	Policy string       `json:"policy,omitempty"`
	Tags   []string     `json:"tags"`
	State  driver.State `json:"state"`
	// SnapshotCadence and BackupCadence are the policy's intervals (0: no such rule).
	SnapshotCadence time.Duration `json:"-"`
	BackupCadence   time.Duration `json:"-"`
	NewestSnapshot  time.Time     `json:"newest_snapshot,omitzero"`
	NewestBackup    time.Time     `json:"newest_backup,omitzero"`
	Snapshots       int           `json:"snapshots"`
	BackupPoints    int           `json:"backup_points"`
	// ChainDepth is the longest backing chain of the guest's disks (1: no overlays).
	ChainDepth int `json:"chain_depth"`
	// LastRun is the guest's newest finished run (nil: never run).
	LastRun *LastRun `json:"last_run,omitempty"`
}

// LastRun is a guest's newest finished run.
type LastRun struct {
	JobID   int64           `json:"job"`
	Kind    history.Kind    `json:"kind"`
	Ended   time.Time       `json:"ended"`
	Outcome history.Outcome `json:"outcome"`
	Error   string          `json:"error,omitempty"`
}

// GuestDetail is one guest with its snapshots and backup points.
type GuestDetail struct {
	Guest
	Snapshots []Snapshot    `json:"snapshot_list"`
	Backups   []BackupPoint `json:"backup_list"`
}

// Snapshot is a driver snapshot with the space it takes (0: unknown).
type Snapshot struct {
	driver.Snapshot
	Size uint64 `json:"size"`
}

// BackupPoint is one point in the guest's backup repository.
type BackupPoint struct {
	ID          string    `json:"id"`
	Level       string    `json:"level"`
	Chain       string    `json:"chain"`
	Parent      string    `json:"parent,omitempty"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished"`
	Consistency string    `json:"consistency"`
	Size        uint64    `json:"size"`
	VirtualSize uint64    `json:"virtual_size"`
}

// Policy is a loaded policy as the dashboard shows it.
type Policy struct {
	Name             string   `json:"name"`
	Host             string   `json:"host"`
	VMID             string   `json:"vmid"`
	Tags             []string `json:"tags"`
	SnapshotSchedule string   `json:"snapshot_schedule,omitempty"`
	BackupSchedule   string   `json:"backup_schedule,omitempty"`
	// Guests are the IDs of the guests it selects now.
	Guests []string `json:"guests"`
	// Jobs are its scheduled jobs (snapshot, backup) with their last and next runs.
	Jobs []PolicyJob `json:"jobs"`
}

// PolicyJob is one scheduled job of a policy.
type PolicyJob struct {
	Kind     history.Kind `json:"kind"`
	Schedule string       `json:"schedule"`
	LastRun  time.Time    `json:"last_run,omitzero"` // zero: never
	Next     time.Time    `json:"next"`
	Running  bool         `json:"running"`
}

// Plan is what a policy run would do now.
type Plan struct {
	Policy string     `json:"policy"`
	At     time.Time  `json:"at"`
	Items  []PlanItem `json:"items"`
	// JobID is the dry-run job the backend recorded the plan as (0: not recorded).
	JobID int64 `json:"job,omitempty"`
}

// PlanItem is one planned step or kept item.
type PlanItem struct {
	Guest  string `json:"guest"`
	Action string `json:"action"` // e.g. create, keep, remove, backup-full
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Event is one live job event.
type Event struct {
	// Type is job-start, guest (one guest finished) or job-end.
	Type    string          `json:"type"`
	JobID   int64           `json:"job"`
	Policy  string          `json:"policy,omitempty"`
	Kind    history.Kind    `json:"kind,omitempty"`
	Trigger string          `json:"trigger,omitempty"`
	DryRun  bool            `json:"dry_run,omitempty"`
	Guest   string          `json:"guest,omitempty"`
	Outcome history.Outcome `json:"outcome,omitempty"`
	Error   string          `json:"error,omitempty"`
	// Done and Total count the job's guests.
	Done  int       `json:"done"`
	Total int       `json:"total"`
	Time  time.Time `json:"time"`
}

// Options configure the handler.
type Options struct {
	// Addr is the listen address; it decides whether the dashboard is on loopback.
	Addr string
	// TLS says the server serves HTTPS (cookies are then Secure).
	TLS bool
	// Token, when set, authenticates API clients (Authorization: Bearer) and the
	// login form (empty user). Never rendered or logged.
	Token string
	// Users maps user names to bcrypt hashes for the login form.
	Users map[string]string
	// Warning and Critical are the staleness factors of the policy cadence, as
	// `monitor` uses them (defaults 2 and 3).
	Warning, Critical float64
	// SessionTTL is how long a login lasts (default 12h).
	SessionTTL time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Loopback reports whether addr's host is a loopback address or localhost. An empty
// host (":8460") listens on every interface and is not loopback.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ErrInsecure is returned by New for a non-loopback address without TLS or auth.
var ErrInsecure = errors.New("dashboard refused")

// server is the dashboard's handler state.
type server struct {
	b    Backend
	o    Options
	auth bool // authentication required
	tmpl map[string]*template.Template
	sess *sessions
	// logins throttles failed logins per client address.
	logins *loginThrottle
	mux    *http.ServeMux
	// dummyHash is compared against for unknown users.
	dummyHash string
}

// New returns the dashboard and API handler. Off loopback it refuses to build one
// without TLS and at least one of Token and Users.
func New(b Backend, o Options) (http.Handler, error) {
	if b == nil {
		return nil, errors.New("web: no backend")
	}
	for u, h := range o.Users {
		if !strings.HasPrefix(h, "$2") {
			return nil, fmt.Errorf("dashboard user %q: password is not a bcrypt hash: hash it with `htpasswd -nbB USER PASS` or `mkpasswd -m bcrypt`", u)
		}
	}
	hasAuth := o.Token != "" || len(o.Users) > 0
	if !Loopback(o.Addr) {
		var missing []string
		if !o.TLS {
			missing = append(missing, "TLS (a certificate and key)")
		}
		if !hasAuth {
			missing = append(missing, "authentication (a token or users with bcrypt-hashed passwords)")
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("%w: %s is not a loopback address, so the dashboard needs %s; configure them or listen on 127.0.0.1",
				ErrInsecure, o.Addr, strings.Join(missing, " and "))
		}
	}
	if o.Warning <= 0 {
		o.Warning = 2
	}
	if o.Critical <= 0 {
		o.Critical = 3
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = 12 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	tm, err := parseTemplates()
	if err != nil {
		return nil, err
	}
	s := &server{b: b, o: o, auth: hasAuth, tmpl: tm, sess: newSessions(o.SessionTTL, o.Now), logins: newLoginThrottle(o.Now)}
	if len(o.Users) > 0 {
		h, err := bcrypt.GenerateFromPassword([]byte(randomID()), bcrypt.DefaultCost)
		if err != nil {
			return nil, fmt.Errorf("web: %w", err)
		}
		s.dummyHash = string(h)
	}
	s.routes()
	return s, nil
}

func (s *server) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	m.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, static, "favicon.svg")
	})
	m.HandleFunc("GET /login", s.loginPage)
	m.HandleFunc("POST /login", s.loginPost)
	m.HandleFunc("POST /logout", s.logout)

	m.HandleFunc("GET /{$}", s.overviewPage)
	m.HandleFunc("GET /guests/{id}", s.guestPage)
	m.HandleFunc("GET /runs", s.runsPage)
	m.HandleFunc("GET /runs/{id}", s.runPage)
	m.HandleFunc("GET /policies", s.policiesPage)
	m.HandleFunc("GET /charts", s.chartsPage)
	m.HandleFunc("GET /confirm/{action}/{target}", s.confirmPage)
	m.HandleFunc("POST /policies/{name}/run", s.runPost)
	m.HandleFunc("POST /policies/{name}/plan", s.planPost)
	m.HandleFunc("POST /guests/{id}/verify", s.verifyPost)
	m.HandleFunc("GET /events", s.events)

	m.HandleFunc("GET /api/v1/session", s.apiSession)
	m.HandleFunc("GET /api/v1/guests", s.apiGuests)
	m.HandleFunc("GET /api/v1/guests/{id}", s.apiGuest)
	m.HandleFunc("POST /api/v1/guests/{id}/verify", s.apiVerify)
	m.HandleFunc("GET /api/v1/runs", s.apiRuns)
	m.HandleFunc("GET /api/v1/runs/{id}", s.apiRun)
	m.HandleFunc("GET /api/v1/policies", s.apiPolicies)
	m.HandleFunc("GET /api/v1/problems", s.apiProblems)
	m.HandleFunc("POST /api/v1/policies/{name}/run", s.apiRunPolicy)
	m.HandleFunc("POST /api/v1/policies/{name}/plan", s.apiPlan)
	m.HandleFunc("GET /api/v1/events", s.events)
	s.mux = m
}

// ServeHTTP sets the security headers, authenticates, checks CSRF on POST, then routes.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	if s.o.TLS {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	if !strings.HasPrefix(r.URL.Path, "/static/") {
		h.Set("Cache-Control", "no-store")
	}
	ctx, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	r = r.WithContext(ctx)
	if r.Method != http.MethodGet && r.Method != http.MethodHead && !s.checkCSRF(w, r) {
		return
	}
	s.mux.ServeHTTP(w, r)
}
