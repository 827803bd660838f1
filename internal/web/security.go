package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"html/template"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

const (
	cookieName = "autosnap_session"
	csrfField  = "csrf"
	csrfHeader = "X-CSRF-Token"
	// maxSessions bounds the session table; anonymous sessions are dropped first.
	maxSessions = 10000
)

type session struct {
	id      string
	user    string // "" until logged in (or in a dashboard without authentication)
	expires time.Time
}

// sessions is the in-memory session table; a daemon restart logs everyone out.
type sessions struct {
	mu  sync.Mutex
	m   map[string]*session
	ttl time.Duration
	now func() time.Time
	key []byte // HMAC key of the CSRF tokens
}

func newSessions(ttl time.Duration, now func() time.Time) *sessions {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return &sessions{m: map[string]*session{}, ttl: ttl, now: now, key: key}
}

func randomID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (ss *sessions) get(id string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.m[id]
	if s == nil || ss.now().After(s.expires) {
		delete(ss.m, id)
		return nil
	}
	return s
}

func (ss *sessions) create(user string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.m) >= maxSessions {
		now := ss.now()
		for id, s := range ss.m {
			if now.After(s.expires) || s.user == "" {
				delete(ss.m, id)
			}
		}
	}
	s := &session{id: randomID(), user: user, expires: ss.now().Add(ss.ttl)}
	ss.m[s.id] = s
	return s
}

func (ss *sessions) drop(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, id)
}

// csrf is the CSRF token bound to session id.
func (ss *sessions) csrf(id string) string {
	m := hmac.New(sha256.New, ss.key)
	m.Write([]byte("csrf\x00" + id))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

type ctxKey struct{}

// reqAuth is what authenticate learnt about a request.
type reqAuth struct {
	user   string
	bearer bool     // authenticated by the bearer token: no CSRF check
	sess   *session // nil for bearer requests
}

func authOf(ctx context.Context) reqAuth {
	a, _ := ctx.Value(ctxKey{}).(reqAuth)
	return a
}

func (s *server) setCookie(w http.ResponseWriter, sess *session) {
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: sess.id, Path: "/",
		HttpOnly: true, Secure: s.o.TLS, SameSite: http.SameSiteStrictMode,
		Expires: sess.expires,
	})
}

// open paths need no login.
func openPath(p string) bool {
	return strings.HasPrefix(p, "/static/") || p == "/login" || p == "/favicon.ico"
}

// authenticate finds the request's user. It always gives browsers a session (an
// anonymous one before login) so every form can carry a CSRF token. It writes the
// refusal itself and returns false when the request may not proceed.
func (s *server) authenticate(w http.ResponseWriter, r *http.Request) (context.Context, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || s.o.Token == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.o.Token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="autosnap"`)
			httpError(w, r, http.StatusUnauthorized, "invalid bearer token")
			return nil, false
		}
		return context.WithValue(r.Context(), ctxKey{}, reqAuth{user: "token", bearer: true}), true
	}
	var sess *session
	if c, err := r.Cookie(cookieName); err == nil {
		sess = s.sess.get(c.Value)
	}
	page := r.Method == http.MethodGet && !strings.HasPrefix(r.URL.Path, "/static/") && r.URL.Path != "/favicon.ico" &&
		!strings.HasPrefix(r.URL.Path, "/api/") && r.URL.Path != "/events"
	if sess == nil && page {
		if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
			// A SameSite=Strict cookie is withheld on a navigation from another site;
			// a new session here would overwrite (log out) the user's. Reload the page
			// from this origin, which sends the cookie.
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprintf(w, `<!doctype html><meta http-equiv="refresh" content="0;url=%s"><a href="%s">continue</a>`,
				template.HTMLEscapeString(r.URL.RequestURI()), template.HTMLEscapeString(r.URL.RequestURI()))
			return nil, false
		}
		sess = s.sess.create("")
		s.setCookie(w, sess)
	}
	a := reqAuth{sess: sess}
	if sess != nil {
		a.user = sess.user
	}
	ctx := context.WithValue(r.Context(), ctxKey{}, a)
	if !s.auth || a.user != "" || openPath(r.URL.Path) {
		return ctx, true
	}
	if strings.HasPrefix(r.URL.Path, "/api/") || r.URL.Path == "/events" || r.Method != http.MethodGet {
		w.Header().Set("WWW-Authenticate", `Bearer realm="autosnap"`)
		httpError(w, r, http.StatusUnauthorized, "log in or send Authorization: Bearer TOKEN")
		return nil, false
	}
	http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
	return nil, false
}

// checkCSRF accepts a state-changing request when it authenticated by bearer token,
// or carries the session's CSRF token (form field csrf or header X-CSRF-Token). A
// dashboard without authentication also accepts an API request with a JSON body and
// no session cookie: browsers cannot send such a request cross-site without a CORS
// preflight, which this server never grants.
func (s *server) checkCSRF(w http.ResponseWriter, r *http.Request) bool {
	a := authOf(r.Context())
	if a.bearer {
		return true
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			httpError(w, r, http.StatusForbidden, "cross-origin request refused")
			return false
		}
	}
	if !s.auth && strings.HasPrefix(r.URL.Path, "/api/") && a.sess == nil {
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/json" {
			return true
		}
	}
	tok := r.Header.Get(csrfHeader)
	if tok == "" {
		r.Body = http.MaxBytesReader(w, r.Body, 1<<16)
		tok = r.PostFormValue(csrfField)
	}
	if a.sess == nil || tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.sess.csrf(a.sess.id))) != 1 {
		httpError(w, r, http.StatusForbidden, "missing or invalid CSRF token: reload the page and try again")
		return false
	}
	return true
}

func (s *server) loginPage(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, "login", map[string]any{"Next": safeNext(r.URL.Query().Get("next"))})
}

// safeNext keeps a redirect target on this site.
func safeNext(n string) string {
	if !strings.HasPrefix(n, "/") || strings.HasPrefix(n, "//") || strings.HasPrefix(n, "/\\") {
		return "/"
	}
	return n
}

func (s *server) loginPost(w http.ResponseWriter, r *http.Request) {
	client := clientOf(r.RemoteAddr)
	if no, wait := s.logins.blocked(client); no {
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
		httpError(w, r, http.StatusTooManyRequests, fmt.Sprintf("too many failed logins from this address: try again in %d s", int(wait.Seconds())+1))
		return
	}
	user, pass := r.PostFormValue("user"), r.PostFormValue("password")
	ok := false
	switch {
	case user == "" && s.o.Token != "":
		ok = subtle.ConstantTimeCompare([]byte(pass), []byte(s.o.Token)) == 1
		user = "token"
	case user != "":
		h, known := s.o.Users[user]
		if !known {
			// Same cost as a known user, so timing does not reveal user names.
			h = s.dummyHash
		}
		ok = bcrypt.CompareHashAndPassword([]byte(h), []byte(pass)) == nil && known
	}
	if !ok {
		s.logins.failed(client)
		w.WriteHeader(http.StatusUnauthorized)
		s.render(w, r, "login", map[string]any{"Next": safeNext(r.PostFormValue("next")), "Failed": true, "User": r.PostFormValue("user")})
		return
	}
	if a := authOf(r.Context()); a.sess != nil {
		s.sess.drop(a.sess.id)
	}
	s.logins.succeeded(client)
	sess := s.sess.create(user)
	s.setCookie(w, sess)
	http.Redirect(w, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

func (s *server) logout(w http.ResponseWriter, r *http.Request) {
	if a := authOf(r.Context()); a.sess != nil {
		s.sess.drop(a.sess.id)
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: s.o.TLS, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
