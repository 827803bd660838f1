package pveemu

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// apiError is an error response. code is the HTTP status; msg becomes the reason phrase
// (first line) and, on versions ≥ 8.3, the "message" field (§1.3).
type apiError struct {
	code      int
	msg       string
	errors    map[string]string
	emptyBody bool // auth-layer 401s have an empty body (§1.4)
}

func errf(code int, format string, args ...any) *apiError {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

// paramErr is a 400 "Parameter verification failed." with per-parameter errors.
func paramErr(errs map[string]string) *apiError {
	return &apiError{code: 400, msg: "Parameter verification failed.", errors: errs}
}

func notImplemented(method, path string) *apiError {
	return errf(501, "Method '%s %s' not implemented", method, path)
}

type pval struct {
	s        string
	jsonBool bool // came as JSON true/false
	jsonNum  bool
}

// reqCtx is one request in flight.
type reqCtx struct {
	c        *Cluster
	entry    string
	w        http.ResponseWriter
	r        *http.Request
	path     string // relative to /api2/json
	segs     []string
	raw      map[string]pval
	p        map[string]string // validated parameters
	authKind string            // ticket|token|none
	authid   string            // user@realm or user@realm!tokenid
	user     string            // user@realm
	tokenid  string
	csrfOK   bool
	rec      Request
}

func (c *Cluster) serve(entry string, w http.ResponseWriter, r *http.Request) {
	rc := &reqCtx{c: c, entry: entry, w: w, r: r, authKind: "none"}
	rc.rec = Request{Time: time.Now(), Node: entry, Method: r.Method, Path: r.URL.Path}
	res, total, aerr := rc.handle()
	rc.rec.Auth, rc.rec.AuthID, rc.rec.CSRF = rc.authKind, rc.authid, rc.csrfOK
	if rc.rec.Params == nil {
		rc.rec.Params = redact(rc.raw)
	}
	if aerr != nil {
		rc.rec.Status = aerr.code
	} else {
		rc.rec.Status = 200
	}
	c.mu.Lock()
	c.requests = append(c.requests, rc.rec)
	c.mu.Unlock()
	c.logf("%s %s %s %s -> %d", entry, rc.authid, r.Method, rc.rec.Path, rc.rec.Status)
	if aerr != nil {
		c.writeError(w, aerr)
		return
	}
	env := map[string]any{"data": res}
	if total != nil {
		env["total"] = *total
	}
	body, _ := json.Marshal(env)
	h := w.Header()
	h.Set("Content-Type", "application/json;charset=UTF-8")
	h.Set("Server", "pve-api-daemon/3.0")
	h.Set("Cache-Control", "max-age=0")
	h.Set("Pragma", "no-cache")
	h.Set("Expires", time.Now().UTC().Format(http.TimeFormat))
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(200)
	_, _ = w.Write(body)
}

func redact(raw map[string]pval) map[string]string {
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		switch k {
		case "password", "otp", "tfa-challenge", "secret", "new_password":
			out[k] = "<redacted>"
		default:
			out[k] = v.s
		}
	}
	return out
}

// writeError writes an error response with PVE's reason phrase, which net/http cannot
// set, so the connection is hijacked when possible. Every error closes the connection
// (§1.3) and every 401 is delayed (§1.3).
func (c *Cluster) writeError(w http.ResponseWriter, e *apiError) {
	if e.code == 401 && c.opts.AuthFailureDelay > 0 {
		time.Sleep(c.opts.AuthFailureDelay)
	}
	reason := e.msg
	if i := strings.IndexByte(reason, '\n'); i >= 0 {
		reason = reason[:i]
	}
	reason = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, reason)
	var body []byte
	if !e.emptyBody {
		env := map[string]any{"data": nil}
		if c.atLeast(8, 3, 0) {
			msg := e.msg
			if !strings.HasSuffix(msg, "\n") {
				msg += "\n"
			}
			env["message"] = msg
		}
		if e.errors != nil {
			env["errors"] = e.errors
		}
		body, _ = json.Marshal(env)
	}
	hdr := http.Header{}
	hdr.Set("Content-Type", "application/json;charset=UTF-8")
	hdr.Set("Server", "pve-api-daemon/3.0")
	hdr.Set("Connection", "close")
	hdr.Set("Cache-Control", "max-age=0")
	hdr.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	if hj, ok := w.(http.Hijacker); ok {
		conn, bufrw, err := hj.Hijack()
		if err == nil {
			defer conn.Close()
			fmt.Fprintf(bufrw, "HTTP/1.1 %03d %s\r\n", e.code, reason)
			_ = hdr.Write(bufrw)
			_, _ = bufrw.WriteString("\r\n")
			_, _ = bufrw.Write(body)
			_ = bufrw.Flush()
			return
		}
	}
	for k, v := range hdr {
		w.Header()[k] = v
	}
	w.WriteHeader(e.code)
	_, _ = w.Write(body)
}

func (rc *reqCtx) handle() (any, *int, *apiError) {
	c, r := rc.c, rc.r
	rest, ok := strings.CutPrefix(r.URL.Path, "/api2/json")
	if !ok || (rest != "" && rest[0] != '/') {
		return nil, nil, notImplemented(r.Method, r.URL.Path)
	}
	for _, s := range strings.Split(rest, "/") {
		if s != "" {
			rc.segs = append(rc.segs, s)
		}
	}
	rc.path = "/" + strings.Join(rc.segs, "/")
	rc.rec.Path = rc.path

	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		return nil, nil, errf(400, "unable to read request body")
	}
	switch r.Method {
	case "GET", "POST", "PUT", "DELETE":
	default:
		return nil, nil, notImplemented(r.Method, rc.path)
	}
	if (r.Method == "GET" || r.Method == "DELETE") && len(body) > 0 {
		return nil, nil, errf(501, "Unexpected content for method '%s'", r.Method)
	}
	if aerr := rc.parseParams(body); aerr != nil {
		return nil, nil, aerr
	}

	rt, pathParams := c.findRoute(r.Method, rc.segs)

	// 1. authentication, 2. CSRF (§1.2)
	if rt == nil || !rt.noAuth {
		if aerr := rc.authenticate(); aerr != nil {
			return nil, nil, aerr
		}
		if r.Method != "GET" && rc.authKind == "ticket" && !rc.csrfOK {
			return nil, nil, &apiError{code: 401, msg: "Permission denied - invalid csrf token", emptyBody: true}
		}
	} else if rt.noToken && tokenHeader(r) != "" && ticketValue(r) == "" {
		// tokens may not create tickets (allowtoken => 0)
		if aerr := rc.authenticate(); aerr != nil {
			return nil, nil, aerr
		}
	}
	// 3. handler lookup
	if rt == nil {
		return nil, nil, notImplemented(r.Method, rc.path)
	}
	// 4. token allowed?
	if rt.noToken && rc.authKind == "token" {
		return nil, nil, errf(403, "Permission check failed (URI '%s' not available with API token, need proper ticket.)", rc.path)
	}
	// 5. permissions, before parameter validation
	if rt.perm != nil {
		if aerr := rt.perm(rc, pathParams); aerr != nil {
			return nil, nil, aerr
		}
	}
	// 6. proxy to the node
	if nodeName, ok := pathParams["node"]; ok {
		if aerr := rc.proxyCheck(nodeName); aerr != nil {
			return nil, nil, aerr
		}
	}
	// 8. parameter validation
	rc.rec.Params = redact(rc.raw) // what the client sent, before the path parameters merge
	dup := map[string]string{}
	for k, v := range pathParams {
		if old, ok := rc.raw[k]; ok && old.s != v {
			dup[k] = "duplicate parameter (already defined in URI) with conflicting values!"
		}
		rc.raw[k] = pval{s: v}
	}
	if len(dup) > 0 {
		return nil, nil, paramErr(dup)
	}
	p, aerr := validate(rt.params, rc.raw)
	if aerr != nil {
		return nil, nil, aerr
	}
	rc.p = p
	return rt.h(rc)
}

func (rc *reqCtx) parseParams(body []byte) *apiError {
	rc.raw = map[string]pval{}
	if len(body) > 0 {
		ct := rc.r.Header.Get("Content-Type")
		if strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct)), "application/json") {
			rc.rec.BodyFormat = "json"
			var m map[string]json.RawMessage
			if err := json.Unmarshal(body, &m); err != nil {
				return errf(400, "JSON body must be an object: %v", err)
			}
			for k, v := range m {
				pv, ok := jsonParam(v)
				if !ok {
					continue
				}
				rc.raw[k] = pv
			}
		} else {
			rc.rec.BodyFormat = "form"
			vals, err := url.ParseQuery(string(body))
			if err != nil {
				return errf(400, "unable to parse form body: %v", err)
			}
			for k, v := range vals {
				rc.raw[k] = pval{s: strings.Join(v, "\x00")}
			}
		}
	}
	for k, v := range rc.r.URL.Query() {
		rc.raw[k] = pval{s: strings.Join(v, "\x00")} // the query string wins (§1.1)
	}
	delete(rc.raw, "_dc")
	return nil
}

func jsonParam(v json.RawMessage) (pval, bool) {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || string(v) == "null" {
		return pval{}, false
	}
	switch v[0] {
	case '"':
		var s string
		_ = json.Unmarshal(v, &s)
		return pval{s: s}, true
	case 't':
		return pval{s: "1", jsonBool: true}, true
	case 'f':
		return pval{s: "0", jsonBool: true}, true
	case '[', '{':
		return pval{s: string(v)}, true
	}
	return pval{s: string(v), jsonNum: true}, true
}

// proxyCheck emulates pveproxy forwarding /nodes/{node}/… to another node (§1.2 step 6).
func (rc *reqCtx) proxyCheck(nodeName string) *apiError {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[nodeName]
	if n == nil {
		return errf(500, "hostname lookup '%s' failed - failed to get address info for: %s: Name or service not known", nodeName, nodeName)
	}
	if nodeName == rc.entry {
		return nil
	}
	if n.proxyErr != nil {
		e := *n.proxyErr
		e.emptyBody = false
		return &e
	}
	if !n.online {
		return errf(595, "No route to host")
	}
	if n.killed {
		return errf(595, "Connection refused")
	}
	return nil
}

// ---- parameter schema and validation (§1.1) ----

type pspec struct {
	typ    string // string, integer, boolean, number
	opt    bool
	format string // pve-node, pve-vmid, pve-configid, pve-poolid, pve-storage-id, pve-realm
	maxLen int
	min    *int
	max    *int
	enum   []string
}

func intp(i int) *int { return &i }

var (
	specNode     = pspec{typ: "string", format: "pve-node"}
	specVMID     = pspec{typ: "integer", format: "pve-vmid", min: intp(100), max: intp(999999999)}
	specSnapname = pspec{typ: "string", format: "pve-configid", maxLen: 40}
	specBoolOpt  = pspec{typ: "boolean", opt: true}
	specStrOpt   = pspec{typ: "string", opt: true}
)

var (
	nodeRe     = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$`)
	vmidRe     = regexp.MustCompile(`^[1-9][0-9]{2,8}$`)
	configIDRe = regexp.MustCompile(`(?i)^[a-z][a-z0-9_\-]+$`)
	poolIDRe   = regexp.MustCompile(`^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+){0,2}$`)
	storageRe  = regexp.MustCompile(`(?i)^[a-z][a-z0-9\-_.]*[a-z0-9]$`)
	realmRe    = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9.\-_]+$`)
	intRe      = regexp.MustCompile(`^[+-]?\d+$`)
	numRe      = regexp.MustCompile(`^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$`)
)

func checkFormat(format, v string) string {
	switch format {
	case "pve-node":
		if !nodeRe.MatchString(v) {
			return "invalid format - value does not look like a valid node name\n"
		}
	case "pve-vmid":
		if !vmidRe.MatchString(v) {
			return "invalid format - value does not look like a valid VM ID\n"
		}
	case "pve-configid":
		if !configIDRe.MatchString(v) {
			return fmt.Sprintf("invalid format - invalid configuration ID '%s'\n", v)
		}
	case "pve-poolid":
		if !poolIDRe.MatchString(v) {
			return fmt.Sprintf("invalid format - pool name '%s' contains illegal characters\n", v)
		}
	case "pve-storage-id":
		if !storageRe.MatchString(v) {
			return fmt.Sprintf("invalid format - storage ID '%s' contains illegal characters\n", v)
		}
	case "pve-realm":
		if !realmRe.MatchString(v) {
			return fmt.Sprintf("invalid format - realm name '%s' contains illegal characters\n", v)
		}
	}
	return ""
}

// validate checks parameters in PVE's order (type, format, maxLength, minimum/maximum,
// enum) and normalises booleans to "1"/"0".
func validate(schema map[string]pspec, raw map[string]pval) (map[string]string, *apiError) {
	errs := map[string]string{}
	out := map[string]string{}
	for k, v := range raw {
		spec, ok := schema[k]
		if !ok {
			errs[k] = "property is not defined in schema and the schema does not allow additional properties"
			continue
		}
		if strings.Contains(v.s, "\x00") {
			errs[k] = "type check ('" + spec.typ + "') failed - got ARRAY"
			continue
		}
		s := v.s
		switch spec.typ {
		case "boolean":
			if v.jsonBool || s == "1" || s == "0" {
				break
			}
			errs[k] = fmt.Sprintf("type check ('boolean') failed - got '%s'", s)
			continue
		case "integer":
			if !intRe.MatchString(s) {
				errs[k] = fmt.Sprintf("type check ('integer') failed - got '%s'", s)
				continue
			}
		case "number":
			if !numRe.MatchString(s) {
				errs[k] = fmt.Sprintf("type check ('number') failed - got '%s'", s)
				continue
			}
		}
		if m := checkFormat(spec.format, s); m != "" {
			errs[k] = m
			continue
		}
		if spec.maxLen > 0 && len(s) > spec.maxLen {
			errs[k] = fmt.Sprintf("value may only be %d characters long", spec.maxLen)
			continue
		}
		if spec.typ == "integer" || spec.typ == "number" {
			f, _ := strconv.ParseFloat(s, 64)
			if spec.min != nil && f < float64(*spec.min) {
				errs[k] = fmt.Sprintf("value must have a minimum value of %d", *spec.min)
				continue
			}
			if spec.max != nil && f > float64(*spec.max) {
				errs[k] = fmt.Sprintf("value must have a maximum value of %d", *spec.max)
				continue
			}
		}
		if len(spec.enum) > 0 && !slices.Contains(spec.enum, s) {
			errs[k] = fmt.Sprintf("value '%s' does not have a value in the enumeration '%s'", s, strings.Join(spec.enum, ", "))
			continue
		}
		out[k] = s
	}
	for k, spec := range schema {
		if _, ok := raw[k]; !ok && !spec.opt {
			errs[k] = "property is missing and it is not optional"
		}
	}
	if len(errs) > 0 {
		return nil, paramErr(errs)
	}
	return out, nil
}

// ---- routing ----

type route struct {
	method  string
	pattern []string
	params  map[string]pspec
	perm    func(rc *reqCtx, pp map[string]string) *apiError
	noAuth  bool
	noToken bool
	h       func(rc *reqCtx) (any, *int, *apiError)
}

func (c *Cluster) findRoute(method string, segs []string) (*route, map[string]string) {
	for _, rt := range routes {
		if rt.method != method || len(rt.pattern) != len(segs) {
			continue
		}
		pp := map[string]string{}
		ok := true
		for i, p := range rt.pattern {
			if strings.HasPrefix(p, "{") {
				pp[strings.Trim(p, "{}")] = segs[i]
			} else if p != segs[i] {
				ok = false
				break
			}
		}
		if ok {
			return rt, pp
		}
	}
	return nil, nil
}

// withPath merges the path parameters' specs into a schema.
func withPath(extra map[string]pspec, path ...string) map[string]pspec {
	m := maps.Clone(extra)
	if m == nil {
		m = map[string]pspec{}
	}
	for _, p := range path {
		switch p {
		case "node":
			m[p] = specNode
		case "vmid":
			m[p] = specVMID
		case "snapname":
			m[p] = specSnapname
		case "upid":
			m[p] = pspec{typ: "string"}
		case "poolid":
			m[p] = pspec{typ: "string", format: "pve-poolid"}
		case "storage":
			m[p] = pspec{typ: "string", format: "pve-storage-id"}
		}
	}
	return m
}

// requirePriv builds a permission check for path (with {vmid}/{node} placeholders) where
// any one of privs suffices (§1.4 403 message shape).
func requirePriv(pathTmpl string, privs ...string) func(rc *reqCtx, pp map[string]string) *apiError {
	return func(rc *reqCtx, pp map[string]string) *apiError {
		path := pathTmpl
		for k, v := range pp {
			path = strings.ReplaceAll(path, "{"+k+"}", v)
		}
		rc.c.mu.Lock()
		defer rc.c.mu.Unlock()
		for _, p := range privs {
			if rc.c.hasPriv(rc.authid, p) {
				return nil
			}
		}
		return errf(403, "Permission check failed (%s, %s)", path, strings.Join(privs, "|"))
	}
}
