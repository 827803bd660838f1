package proxmox

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/retry"
	pxapi "github.com/luthermonson/go-proxmox"
)

// endpoint is one --host entry.
type endpoint struct {
	hostport string // host:port as shown to users
	base     string // https://host:port/api2/json
}

// client makes autosnap's API calls through go-proxmox's raw request methods (one
// *proxmox.Client per endpoint, all sharing one *http.Client with autosnap's TLS
// settings and timeout) and adds what go-proxmox has no notion of: failover across
// endpoints, knowing whether a failed write was sent, a ticket shared by all
// endpoints and renewed once when refused, and API errors that keep their status
// code. It never puts a password, ticket or token secret into an error.
type client struct {
	eps  []endpoint
	http *http.Client
	// API token authentication: tokenID is USER@REALM!TOKENID, secret its UUID.
	tokenID, secret string
	user            string // user@realm for ticket authentication
	pass            string

	failMu  sync.Mutex // serialises failovers
	loginMu sync.Mutex // serialises ticket renewals

	mu       sync.Mutex
	cur      int // index into eps of the endpoint in use; -1 before the first connect
	pcs      []pveClient
	ticket   string
	csrf     string
	loginGen int // bumped on every successful login, so concurrent 401s log in once
}

// pveClient is the go-proxmox client of one endpoint and the login generation whose
// ticket it carries.
type pveClient struct {
	pc  *pxapi.Client
	gen int
}

// api returns the go-proxmox client for endpoint i, carrying the API token or the
// current ticket. Ticket clients are built with WithSession rather than kept from
// the login: go-proxmox renews a session on a 401 by itself once its local expiry
// has passed, writing the session while other goroutines read it; here renewal is
// autosnap's (renew), and a renewed ticket gets fresh clients.
func (c *client) api(i int) *pxapi.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pcs == nil {
		c.pcs = make([]pveClient, len(c.eps))
	}
	p := c.pcs[i]
	if p.pc != nil && p.gen == c.loginGen {
		return p.pc
	}
	opts := []pxapi.Option{pxapi.WithHTTPClient(c.http)}
	if c.tokenID != "" {
		opts = append(opts, pxapi.WithAPIToken(c.tokenID, c.secret))
	} else {
		opts = append(opts, pxapi.WithSession(c.ticket, c.csrf))
	}
	p = pveClient{pc: pxapi.NewClient(c.eps[i].base, opts...), gen: c.loginGen}
	c.pcs[i] = p
	return p.pc
}

// apiError is an HTTP error answer of the API.
type apiError struct {
	Method, Path string
	Status       int
	Msg          string            // reason phrase or message, first line, no trailing newline
	Params       map[string]string // per-parameter errors of a 400
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("%s %s: HTTP %d %s", e.Method, e.Path, e.Status, e.Msg)
	if len(e.Params) > 0 {
		var ps []string
		for k, v := range e.Params {
			ps = append(ps, k+": "+strings.TrimSpace(v))
		}
		s += " (" + strings.Join(ps, "; ") + ")"
	}
	return s
}

// transient reports statuses pveproxy uses for a failed hop to another node or to
// pvedaemon; they say nothing about the request itself.
func (e *apiError) transient() bool {
	switch e.Status {
	case 502, 503, 504, 595, 596, 597, 599:
		return true
	}
	return false
}

// hostError is a transport failure talking to one endpoint: refused, reset, TLS,
// timeout. sent is false when the request certainly never reached the server.
type hostError struct {
	host string
	sent bool
	err  error
}

func (e *hostError) Error() string { return e.host + ": " + e.err.Error() }
func (e *hostError) Unwrap() error { return e.err }

// authError is a rejected login, token or ticket; its text says which and what to
// check.
type authError struct{ msg string }

func (e *authError) Error() string { return e.msg }

// newHTTPClient builds the transport with the TLS settings of tlsConfig.
func newHTTPClient(fingerprint, caFile string, insecure bool, timeout time.Duration) (*http.Client, error) {
	tc, err := tlsConfig(fingerprint, caFile, insecure)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: timeout,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
	}
	return &http.Client{Transport: &recorder{base: tr}, Timeout: timeout}, nil
}

// exchangeKey is the context key of the *exchange a request's answer is recorded in.
type exchangeKey struct{}

// exchange is what the server answered to one request.
type exchange struct {
	status int    // 0 when no answer arrived
	line   string // status line without the protocol: "595 Connection refused"
	raw    []byte // the body
}

// recorder is the RoundTripper under go-proxmox. It records each answer's status and
// body in the request's *exchange, because go-proxmox turns only 400, 401/403 and
// 500/501 into errors (and drops the body's message and the code) and hands every
// other status, 404 and pveproxy's 59x included, to the JSON decoder as if it had
// succeeded. It reads the whole body here so that a connection lost mid-answer is a
// transport error, which the failover logic needs to tell apart.
type recorder struct{ base http.RoundTripper }

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	resp.Body.Close()
	if err != nil {
		return nil, &bodyError{err}
	}
	resp.Body = io.NopCloser(bytes.NewReader(raw))
	if ex, ok := req.Context().Value(exchangeKey{}).(*exchange); ok {
		ex.status, ex.line, ex.raw = resp.StatusCode, resp.Status, raw
	}
	return resp, nil
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the transport.
func (r *recorder) CloseIdleConnections() {
	if t, ok := r.base.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

// bodyError is a connection lost while reading an answer: the request was sent.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "reading the answer: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// parseFingerprints accepts comma-separated SHA-256 fingerprints (one per node), each
// as AA:BB:… or plain hex, in any case.
func parseFingerprints(s string) ([][32]byte, error) {
	var out [][32]byte
	for _, f := range strings.Split(s, ",") {
		h := strings.NewReplacer(":", "", " ", "", "-", "").Replace(strings.TrimSpace(f))
		h = strings.TrimPrefix(strings.ToLower(h), "sha256")
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("--fingerprint %q is not a SHA-256 fingerprint: give 64 hex digits, optionally separated by ':', one per node separated by ',' (Proxmox VE shows it under Node → System → Certificates)", f)
		}
		out = append(out, [32]byte(b))
	}
	return out, nil
}

func formatFingerprint(b []byte) string {
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = fmt.Sprintf("%02X", c)
	}
	return strings.Join(parts, ":")
}

// connect makes the first endpoint in --host order that answers and authenticates
// the current one. The endpoint avoid (the one that just failed, or -1) is tried
// last: it may only have dropped one connection. The error wraps driver.ErrConnect
// and lists why every endpoint failed.
func (c *client) connect(ctx context.Context, avoid int) error {
	order := make([]int, 0, len(c.eps))
	for i := range c.eps {
		if i != avoid {
			order = append(order, i)
		}
	}
	if avoid >= 0 {
		order = append(order, avoid)
	}
	var why []string
	var errs []error
	for _, i := range order {
		ep := c.eps[i]
		err := c.authenticate(ctx, i)
		errs = append(errs, err)
		if err == nil {
			c.mu.Lock()
			c.cur = i
			c.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			why = append(why, fmt.Sprintf("%s: %v", ep.hostport, ctx.Err()))
			break
		}
		why = append(why, describeConnErr(ep, err))
	}
	if advice := fingerprintAdvice(errs); advice != "" {
		why = append(why, advice)
	}
	return fmt.Errorf("cannot connect to Proxmox VE: %s: %w", strings.Join(why, "; "), driver.ErrConnect)
}

func describeConnErr(ep endpoint, err error) string {
	var he *hostError
	var ae *authError
	switch {
	case errors.As(err, &ae):
		return err.Error()
	case errors.As(err, &he):
		hint := "is the host up and pveproxy listening on this port?"
		if h := certHint(err); h != "" {
			hint = h
		}
		return fmt.Sprintf("%s: %v (%s)", ep.hostport, he.err, hint)
	}
	return fmt.Sprintf("%s: %v", ep.hostport, err)
}

// authenticate checks that endpoint i answers and accepts the credentials: GET
// /version with the token or the current ticket, logging in first when there is no
// ticket or the ticket is refused.
func (c *client) authenticate(ctx context.Context, i int) error {
	ep := c.eps[i]
	if c.tokenID == "" {
		c.mu.Lock()
		have := c.ticket != ""
		c.mu.Unlock()
		if !have {
			if err := c.login(ctx, i); err != nil {
				return err
			}
		}
	}
	err := c.send(ctx, i, http.MethodGet, "/version", nil, nil)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status == http.StatusUnauthorized && c.tokenID == "" {
		if err = c.login(ctx, i); err != nil {
			return err
		}
		err = c.send(ctx, i, http.MethodGet, "/version", nil, nil)
	}
	if errors.As(err, &ae) && ae.Status == http.StatusUnauthorized {
		return &authError{fmt.Sprintf("%s: API token %s rejected (%s): check --api-token, the token's expiry and that the user is enabled", ep.hostport, c.tokenID, ae.Msg)}
	}
	return err
}

// login gets a ticket from endpoint i with go-proxmox's CreateSession, on a client
// of its own so that no other request sees a half-made session.
func (c *client) login(ctx context.Context, i int) error {
	ep := c.eps[i]
	lc := pxapi.NewClient(ep.base, pxapi.WithHTTPClient(c.http),
		pxapi.WithCredentials(&pxapi.Credentials{Username: c.user, Password: c.pass}))
	ex := &exchange{}
	err := c.check(ctx, ep, http.MethodPost, "/access/ticket", ex, lc.CreateSession(context.WithValue(ctx, exchangeKey{}, ex)))
	var ae *apiError
	if errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden) {
		return &authError{fmt.Sprintf("%s: login as %s refused (%s): check --username (USER@REALM, realm pam by default) and --password", ep.hostport, c.user, ae.Msg)}
	}
	if err != nil {
		return err
	}
	// go-proxmox's Session has no NeedTFA; read it from the answer itself.
	var res struct {
		Data struct {
			NeedTFA pveInt `json:"NeedTFA"`
		} `json:"data"`
	}
	_ = json.Unmarshal(ex.raw, &res)
	if res.Data.NeedTFA != 0 {
		return &authError{fmt.Sprintf("%s: user %s has two-factor authentication, which autosnap cannot answer: use an API token (--api-token)", ep.hostport, c.user)}
	}
	s := lc.Session()
	if s == nil || s.Ticket == "" {
		return &authError{fmt.Sprintf("%s: login as %s returned no ticket", ep.hostport, c.user)}
	}
	c.mu.Lock()
	c.ticket, c.csrf = s.Ticket, s.CSRFPreventionToken
	c.loginGen++
	c.mu.Unlock()
	return nil
}

// renew logs in again after a request made with ticket generation gen was refused,
// unless another goroutine has renewed the ticket since.
func (c *client) renew(ctx context.Context, i int, gen int) error {
	c.loginMu.Lock()
	defer c.loginMu.Unlock()
	c.mu.Lock()
	stale := gen == c.loginGen
	c.mu.Unlock()
	if !stale {
		return nil
	}
	return c.login(ctx, i)
}

// current returns the endpoint in use and its index.
func (c *client) current() (endpoint, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.eps[c.cur], c.cur
}

// failover moves away from endpoint idx after a transport failure. When another
// goroutine already moved, it keeps that choice.
func (c *client) failover(ctx context.Context, idx int) error {
	c.failMu.Lock()
	defer c.failMu.Unlock()
	c.mu.Lock()
	moved := c.cur != idx
	c.mu.Unlock()
	if moved {
		return nil
	}
	return c.connect(ctx, idx)
}

// maxTransientRetries bounds the retries of a read that failed with a 59x status
// (100, 200 and 400 ms apart).
const maxTransientRetries = 3

// result tells how a request ended beyond its error.
type result struct {
	// lost is true when a write was sent to an endpoint that then failed: the
	// server may or may not have acted on it. The request was not repeated.
	lost bool
}

// do sends one request to the endpoint in use. On a transport failure it fails over
// to the next endpoint that answers and authenticates; it then repeats the request
// when that is safe (reads, and writes that certainly never left) and otherwise
// returns with result.lost set, so the caller can look at the cluster's state first.
// A rejected ticket is renewed once. Proxy-hop failures (59x) of reads are retried a
// few times: a node that stays unreachable must not eat the whole operation's time.
func (c *client) do(ctx context.Context, method, path string, params url.Values, out any) (result, error) {
	var res result
	retries, failovers := 0, 0
	renewed := false
	for {
		_, idx := c.current()
		c.mu.Lock()
		gen := c.loginGen
		c.mu.Unlock()
		err := c.send(ctx, idx, method, path, params, out)
		if err == nil {
			return res, nil
		}
		if ctx.Err() != nil {
			return res, err
		}
		var he *hostError
		if errors.As(err, &he) {
			if failovers++; failovers > len(c.eps) {
				return res, fmt.Errorf("%w: %w", err, driver.ErrConnect)
			}
			if ferr := c.failover(ctx, idx); ferr != nil {
				return res, fmt.Errorf("%w (after %v)", ferr, err)
			}
			if method != http.MethodGet && he.sent {
				res.lost = true
				return res, err
			}
			continue
		}
		var ae *apiError
		if !errors.As(err, &ae) {
			return res, err
		}
		switch {
		case ae.Status == http.StatusUnauthorized && c.tokenID == "" && !renewed:
			renewed = true
			if lerr := c.renew(ctx, idx, gen); lerr != nil {
				return res, fmt.Errorf("%s %s: ticket expired and renewing it failed: %v: %w", method, path, lerr, driver.ErrConnect)
			}
			continue
		case ae.Status == http.StatusUnauthorized:
			return res, fmt.Errorf("%w: %w", err, driver.ErrConnect)
		case ae.transient() && method == http.MethodGet && retries < maxTransientRetries:
			if serr := retry.Sleep(ctx, retry.Default.Delay(retries)); serr != nil {
				return res, err
			}
			retries++
			continue
		}
		return res, err
	}
}

func (c *client) get(ctx context.Context, path string, params url.Values, out any) error {
	_, err := c.do(ctx, http.MethodGet, path, params, out)
	return err
}

// send performs one request against endpoint i with go-proxmox and decodes the data
// member of the answer into out. params go in the query of GET and DELETE (PVE
// rejects a body there) and in the JSON body of POST and PUT.
func (c *client) send(ctx context.Context, i int, method, path string, params url.Values, out any) error {
	pc := c.api(i)
	ex := &exchange{}
	rctx := context.WithValue(ctx, exchangeKey{}, ex)
	var q any // untyped nil without params: go-proxmox would send a typed nil map as "null"
	if len(params) > 0 {
		m := make(map[string]string, len(params))
		for k := range params {
			m[k] = params.Get(k)
		}
		q = m
	}
	var err error
	switch method {
	case http.MethodGet:
		err = pc.GetWithParams(rctx, path, q, out)
	case http.MethodPost:
		err = pc.Post(rctx, path, q, out)
	case http.MethodPut:
		err = pc.Put(rctx, path, q, out)
	case http.MethodDelete:
		err = pc.DeleteWithParams(rctx, path, q, out)
	default:
		return fmt.Errorf("%s %s: unsupported method", method, path)
	}
	return c.check(ctx, c.eps[i], method, path, ex, err)
}

// check turns what go-proxmox returned for one request, and the answer recorded in
// ex, into autosnap's errors: *hostError for transport failures, *apiError (with the
// status code and PVE's message) for every error status, whatever go-proxmox made of
// it.
func (c *client) check(ctx context.Context, ep endpoint, method, path string, ex *exchange, err error) error {
	if ex.status >= 400 {
		return decodeError(method, path, ex)
	}
	if err == nil {
		return nil
	}
	if ex.status == 0 {
		if ctx.Err() != nil {
			return fmt.Errorf("%s %s on %s: %w", method, path, ep.hostport, ctx.Err())
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			return &hostError{host: ep.hostport, sent: !isDialError(err), err: cleanURLError(err)}
		}
		return fmt.Errorf("%s %s on %s: %v", method, path, ep.hostport, err)
	}
	return fmt.Errorf("%s %s on %s: unexpected answer: %v", method, path, ep.hostport, err)
}

// decodeError reads the message from the reason phrase (all versions) or the
// message member (pve-http-server ≥ 5.2), and a 400's per-parameter errors.
func decodeError(method, path string, ex *exchange) error {
	e := &apiError{Method: method, Path: path, Status: ex.status}
	reason := strings.TrimSpace(strings.TrimPrefix(ex.line, strconv.Itoa(ex.status)))
	var env struct {
		Message string            `json:"message"`
		Errors  map[string]string `json:"errors"`
	}
	_ = json.Unmarshal(ex.raw, &env)
	msg := strings.TrimSpace(env.Message)
	// Go servers cannot set a custom reason phrase; prefer the message then.
	if msg == "" || (reason != "" && reason != http.StatusText(ex.status)) {
		msg = reason
	}
	if first, _, ok := strings.Cut(msg, "\n"); ok {
		msg = first
	}
	e.Msg, e.Params = msg, env.Errors
	return e
}

func isDialError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// cleanURLError drops net/http's "Get \"https://…\":" prefix; the host is named by
// the caller.
func cleanURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// pveInt decodes the API's integers, which arrive as numbers, numeric strings,
// booleans or null depending on the endpoint and version.
type pveInt int64

func (p *pveInt) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	switch s {
	case "null", "":
		*p = 0
		return nil
	case "true":
		*p = 1
		return nil
	case "false":
		*p = 0
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("not a number: %s", b)
	}
	*p = pveInt(f)
	return nil
}

// pveString decodes values that may be strings or numbers (config values).
type pveString string

func (p *pveString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*p = pveString(s)
		return nil
	}
	if string(b) == "null" {
		*p = ""
		return nil
	}
	*p = pveString(b)
	return nil
}
