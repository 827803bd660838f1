package pveemu

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var (
	cookieRe   = regexp.MustCompile(`(?:^|\s)PVEAuthCookie(?:=| )([^;]*)`)
	apiTokenRe = regexp.MustCompile(`(?:^|\s)PVEAPIToken(?:=| )([^;]*)`)
	tokenIDRe  = regexp.MustCompile(`^([^\s:/]+@[A-Za-z][A-Za-z0-9.\-_]+)!([A-Za-z][A-Za-z0-9.\-_]+)$`)
	ticketRe   = regexp.MustCompile(`^PVE:([^:]+):([0-9A-F]{8})::([A-Za-z0-9+/=]+)$`)
)

func hmacBytes(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

func hmacHex(key []byte, msg string) string { return hex.EncodeToString(hmacBytes(key, msg)) }

// ticketValue extracts the ticket from the PVEAuthCookie cookie, or from the
// Authorization header as a fallback (§2.2).
func ticketValue(r *http.Request) string {
	for _, h := range r.Header.Values("Cookie") {
		if m := cookieRe.FindStringSubmatch(h); m != nil {
			// uri_unescape: %XX only; '+' stays '+' (base64 signatures contain it)
			v, err := url.PathUnescape(strings.TrimSpace(m[1]))
			if err != nil {
				v = m[1]
			}
			return v
		}
	}
	if m := cookieRe.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		return strings.TrimSpace(m[1])
	}
	return ""
}

func tokenHeader(r *http.Request) string {
	if m := apiTokenRe.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		return strings.TrimSpace(m[1])
	}
	return ""
}

// makeTicket builds "PVE:<userid>:<HEXTIME>::<signature>" (§2.1). The signature is an
// HMAC rather than PVE's RSA signature; clients treat it as opaque.
func (c *Cluster) makeTicket(user string, t time.Time) string {
	plain := fmt.Sprintf("PVE:%s:%08X", strings.ReplaceAll(user, ":", "%3A"), t.Unix())
	sig := hmacBytes(c.secret, "ticket:"+plain)
	sig = append(sig, hmacBytes(c.secret, "ticket2:"+plain)...)
	return plain + "::" + base64.StdEncoding.EncodeToString(sig)
}

// checkTicket returns the ticket's user, or "" if it is invalid or expired.
func (c *Cluster) checkTicket(ticket string) string {
	m := ticketRe.FindStringSubmatch(ticket)
	if m == nil {
		return ""
	}
	plain := fmt.Sprintf("PVE:%s:%s", m[1], m[2])
	sig, err := base64.StdEncoding.DecodeString(m[3])
	if err != nil || len(sig) < 32 || !hmac.Equal(sig[:32], hmacBytes(c.secret, "ticket:"+plain)) {
		return ""
	}
	ts, _ := strconv.ParseInt(m[2], 16, 64)
	age := time.Since(time.Unix(ts, 0))
	if age > c.opts.TicketLifetime || age < -5*time.Minute {
		return ""
	}
	user := strings.ReplaceAll(m[1], "%3A", ":")
	c.mu.Lock()
	_, ok := c.opts.Users[user]
	c.mu.Unlock()
	if !ok {
		return "" // user removed or disabled since
	}
	return user
}

// makeCSRF builds "<HEXTIME>:<43 chars base64 HMAC>" tied to the user (§2.1).
func (c *Cluster) makeCSRF(user string, t time.Time) string {
	ts := fmt.Sprintf("%08X", t.Unix())
	return ts + ":" + base64.RawStdEncoding.EncodeToString(hmacBytes(c.secret, "csrf:"+ts+":"+user))
}

func (c *Cluster) checkCSRF(tok, user string) bool {
	ts, sig, ok := strings.Cut(tok, ":")
	if !ok || len(ts) != 8 {
		return false
	}
	want := base64.RawStdEncoding.EncodeToString(hmacBytes(c.secret, "csrf:"+ts+":"+user))
	if !hmac.Equal([]byte(sig), []byte(want)) {
		return false
	}
	t, err := strconv.ParseInt(ts, 16, 64)
	if err != nil {
		return false
	}
	age := time.Since(time.Unix(t, 0))
	return age <= c.opts.TicketLifetime && age >= -5*time.Minute
}

// authFail is a 401 from the auth layer: empty body; on ≥ 9.1.5 every reason is
// "Authentication failed!" (§2.2, §2.3).
func (c *Cluster) authFail(old string) *apiError {
	if c.atLeast(9, 1, 5) {
		old = "Authentication failed!"
	}
	return &apiError{code: 401, msg: old, emptyBody: true}
}

// authenticate implements §2.2/§2.3: the ticket cookie wins over a token header.
func (rc *reqCtx) authenticate() *apiError {
	c := rc.c
	if t := ticketValue(rc.r); t != "" {
		if strings.HasPrefix(t, "PVE:!tfa!") {
			return &apiError{code: 401, msg: "No ticket", emptyBody: true}
		}
		user := c.checkTicket(t)
		if user == "" {
			return c.authFail("permission denied - invalid PVE ticket")
		}
		rc.authKind, rc.authid, rc.user = "ticket", user, user
		if csrf := rc.r.Header.Get("CSRFPreventionToken"); csrf != "" {
			rc.csrfOK = c.checkCSRF(csrf, user)
		}
		return nil
	}
	if v := tokenHeader(rc.r); v != "" {
		i := strings.LastIndexByte(v, '=')
		if i < 0 {
			return c.authFail(fmt.Sprintf("'%s' is not a valid token ID - not able to split into user and token parts", v))
		}
		id, secret := v[:i], v[i+1:]
		m := tokenIDRe.FindStringSubmatch(id)
		if m == nil {
			return c.authFail(fmt.Sprintf("'%s' is not a valid token ID - not able to split into user and token parts", id))
		}
		c.mu.Lock()
		want, ok := c.opts.Tokens[id]
		c.mu.Unlock()
		if !ok {
			return c.authFail(fmt.Sprintf("no such token '%s' for user '%s'", m[2], m[1]))
		}
		if !hmac.Equal([]byte(want), []byte(secret)) {
			return c.authFail("invalid token value!")
		}
		rc.authKind, rc.authid, rc.user, rc.tokenid = "token", id, m[1], m[2]
		return nil
	}
	return &apiError{code: 401, msg: "No ticket", emptyBody: true}
}

var allPrivs = map[string][]string{
	"vms": {"VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU",
		"VM.Config.Cloudinit", "VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory",
		"VM.Config.Network", "VM.Config.Options", "VM.Console", "VM.GuestAgent.Audit",
		"VM.GuestAgent.Unrestricted", "VM.Migrate", "VM.Monitor", "VM.PowerMgmt", "VM.Snapshot",
		"VM.Snapshot.Rollback", "Permissions.Modify"},
	"storage": {"Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate",
		"Datastore.Audit", "Permissions.Modify"},
	"nodes":   {"Sys.Audit", "Sys.Console", "Sys.Modify", "Sys.PowerMgmt", "Sys.Syslog", "Permissions.Modify"},
	"access":  {"Group.Allocate", "Permissions.Modify", "User.Modify"},
	"dc":      {"Sys.Audit", "Sys.Modify", "SDN.Audit", "SDN.Allocate"},
	"sdn":     {"SDN.Allocate", "SDN.Audit", "SDN.Use", "Permissions.Modify"},
	"mapping": {"Mapping.Audit", "Mapping.Modify", "Mapping.Use", "Permissions.Modify"},
}

func (c *Cluster) capFor(authid string) map[string]map[string]int {
	out := map[string]map[string]int{}
	for area, privs := range allPrivs {
		m := map[string]int{}
		for _, p := range privs {
			if c.hasPriv(authid, p) {
				m[p] = 1
			}
		}
		out[area] = m
	}
	return out
}

// POST /access/ticket (§2.1).
func hLogin(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	user := rc.p["username"]
	if realm := rc.p["realm"]; realm != "" && !strings.Contains(user, "@") {
		user += "@" + realm
	}
	pass := rc.p["password"]
	fail := &apiError{code: 401, msg: "authentication failure"}
	c.mu.Lock()
	want, known := c.opts.Users[user]
	c.mu.Unlock()
	if !known {
		return nil, nil, fail
	}
	ok := want == pass
	if !ok && strings.HasPrefix(pass, "PVE:") {
		// ticket renewal: a valid ticket of the same user (or root@pam)
		if tu := c.checkTicket(pass); tu == user || tu == "root@pam" {
			ok = true
		}
	}
	if !ok {
		return nil, nil, fail
	}
	_, hasPath := rc.p["path"]
	_, hasPrivs := rc.p["privs"]
	if hasPath != hasPrivs {
		missing := "privs"
		if hasPrivs {
			missing = "path"
		}
		return nil, nil, paramErr(map[string]string{missing: "property is missing and it is not optional"})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if hasPath {
		for _, p := range strings.Split(rc.p["privs"], ",") {
			if !c.hasPriv(user, strings.TrimSpace(p)) {
				return nil, nil, fail
			}
		}
		return map[string]any{"username": user}, nil, nil
	}
	now := time.Now()
	res := map[string]any{
		"username":            user,
		"ticket":              c.makeTicket(user, now),
		"CSRFPreventionToken": c.makeCSRF(user, now),
		"cap":                 c.capFor(user),
	}
	if len(c.order) > 1 && c.hasPriv(user, "Sys.Audit") {
		res["clustername"] = c.opts.ClusterName
	}
	return res, nil, nil
}
