// Package proxmox is autosnap's Proxmox VE driver: it manages snapshots of QEMU VMs and
// LXC containers through the PVE REST API (/api2/json), as cv4pve-autosnap does, so
// either tool recognises the other's snapshots.
//
// Hosts. --host takes pve://HOST[:PORT] or plain HOST[:PORT] (IPv6 in brackets),
// comma-separated; the port defaults to 8006. The first host that answers and
// authenticates is used. When it stops answering mid-run the driver continues on the
// next one; a write whose answer was lost is not repeated blindly: the driver first
// looks at the guest's snapshots and tasks to see whether PVE already acted on it.
//
// Credentials. --api-token USER@REALM!TOKENID=SECRET, or --username (realm defaults to
// pam) with --password. TLS is verified against the system roots by default;
// --ca-file adds a CA (the cluster's /etc/pve/pve-root-ca.pem, which signs every
// node's certificate); --fingerprint pins node certificates' SHA-256 fingerprints
// (for self-signed certificates); --insecure turns verification off. A certificate
// that is not trusted fails the connection with its fingerprint and the exact
// --fingerprint flag that would accept it.
//
// Long operations. Snapshot creation, removal and rollback run as PVE tasks; the
// driver polls them until ctx ends and treats "OK" and "WARNINGS: N" as success. A
// guest that is locked (a backup, another snapshot) is retried with backoff until ctx
// ends instead of failing at once.
//
// HTTP. Requests go through github.com/luthermonson/go-proxmox (v0.8.2): one
// *proxmox.Client per --host endpoint, all sharing one *http.Client that carries the
// TLS settings above and a per-request timeout (go-proxmox has none by default).
// Authentication is go-proxmox's: WithAPIToken, or WithCredentials with CreateSession
// called at connect time (its lazy login on the first 401 races when requests run
// concurrently). go-proxmox builds the URLs, adds the auth headers and CSRF token,
// encodes the parameters and unwraps the {"data":…} envelope. Every call uses its raw
// methods (Get/GetWithParams, Post, Put, DeleteWithParams) rather than the typed ones,
// which cannot send vmstate or description on create, start on a VM rollback, or
// force on delete, and whose Task.Wait reports a failed task as success and ignores
// ctx.
//
// What autosnap still does itself, because go-proxmox has no equivalent: failover
// across several endpoints, including whether a write whose answer was lost may be
// repeated; task polling that honours ctx and treats "WARNINGS: N" as success;
// retrying a locked guest; renewing a refused ticket once, shared by all endpoints;
// and keeping each error's HTTP status and PVE message. For the last, a small
// RoundTripper records every answer, since go-proxmox returns errors only for 400,
// 401/403 and 500/501 (as bare strings) and reports 404 and pveproxy's 59x answers
// as success with no data.
package proxmox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
)

func init() {
	driver.Register("proxmox", Match, func(ctx context.Context, cfg driver.Config) (driver.Driver, error) {
		return Open(ctx, cfg)
	})
}

// DefaultPort is pveproxy's port.
const DefaultPort = 8006

// requestTimeout bounds one API request. It is well above PVE's 3 s delay on failed
// logins and below the default --timeout, so that a host that stopped answering is
// abandoned for the next --host entry while the operation still has time left.
const requestTimeout = 20 * time.Second

// Match reports whether a --host entry names a Proxmox VE host: pve://HOST[:PORT] or a
// plain HOST[:PORT] without a scheme.
func Match(host string) bool {
	switch driver.SchemeOf(host) {
	case "pve", "":
		_, err := parseEndpoint(host)
		return err == nil
	}
	return false
}

// parseEndpoint parses one --host entry.
func parseEndpoint(entry string) (endpoint, error) {
	s := strings.TrimSpace(entry)
	if driver.SchemeOf(s) == "pve" {
		s = s[len("pve://"):]
	}
	s = strings.TrimSuffix(s, "/")
	bad := func(why string) (endpoint, error) {
		return endpoint{}, fmt.Errorf("--host %q is not a Proxmox VE host: %s; use HOST[:PORT] or pve://HOST[:PORT]", entry, why)
	}
	if s == "" {
		return bad("empty")
	}
	if strings.ContainsAny(s, "/@?#\\ \t") {
		return bad("unexpected character")
	}
	host, port := s, strconv.Itoa(DefaultPort)
	switch {
	case strings.HasPrefix(s, "["):
		if strings.HasSuffix(s, "]") {
			host = s[1 : len(s)-1]
		} else {
			h, p, err := net.SplitHostPort(s)
			if err != nil {
				return bad(err.Error())
			}
			host, port = h, p
		}
		if net.ParseIP(host) == nil {
			return bad("not an IPv6 address in brackets")
		}
	case strings.Count(s, ":") == 1:
		h, p, err := net.SplitHostPort(s)
		if err != nil {
			return bad(err.Error())
		}
		host, port = h, p
	case strings.Count(s, ":") > 1:
		return bad("write IPv6 addresses in brackets, e.g. [fd00::1]:8006")
	}
	if host == "" {
		return bad("no host name")
	}
	if !strings.HasPrefix(s, "[") {
		for _, r := range host {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
				return bad(fmt.Sprintf("%q in host name", r))
			}
		}
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return bad("port must be 1-65535")
	}
	hp := net.JoinHostPort(host, port)
	return endpoint{hostport: hp, base: "https://" + hp + "/api2/json"}, nil
}

// Driver talks to one Proxmox VE cluster (or standalone node) through its API.
type Driver struct {
	c *client
	// seen holds the UPIDs already waited on, so a lost answer is never matched to an
	// earlier write's task.
	seenMu sync.Mutex
	seen   map[string]bool
}

// Open connects with cfg: cfg.Host is the whole comma-separated --host value. It
// returns an error wrapping driver.ErrConnect when no host answers and
// authenticates within ctx and cfg.Timeout.
func Open(ctx context.Context, cfg driver.Config) (*Driver, error) {
	var eps []endpoint
	for _, h := range strings.Split(cfg.Host, ",") {
		if strings.TrimSpace(h) == "" {
			continue
		}
		ep, err := parseEndpoint(h)
		if err != nil {
			return nil, err
		}
		eps = append(eps, ep)
	}
	if len(eps) == 0 {
		return nil, errors.New("--host names no Proxmox VE host")
	}
	c := &client{eps: eps, cur: -1}
	switch {
	case cfg.APIToken != "":
		tok, err := parseToken(cfg.APIToken)
		if err != nil {
			return nil, err
		}
		c.tokenID, c.secret, _ = cutLast(tok, "=")
	case cfg.Username != "":
		if cfg.Password == "" {
			return nil, fmt.Errorf("--username %s needs --password (or use --api-token)", cfg.Username)
		}
		c.user = cfg.Username
		if !strings.Contains(c.user, "@") {
			c.user += "@pam"
		}
		c.pass = cfg.Password
	default:
		return nil, errors.New("Proxmox VE needs credentials: --api-token USER@REALM!TOKENID=SECRET, or --username USER[@REALM] with --password")
	}
	hc, err := newHTTPClient(cfg.Fingerprint, cfg.CAFile, cfg.Insecure, requestTimeout)
	if err != nil {
		return nil, err
	}
	c.http = hc
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	if err := c.connect(ctx, -1); err != nil {
		hc.CloseIdleConnections()
		return nil, err
	}
	return &Driver{c: c}, nil
}

// parseToken validates USER@REALM!TOKENID=SECRET. Its errors never repeat the value,
// which holds the secret.
func parseToken(v string) (string, error) {
	v = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), "PVEAPIToken="))
	id, secret, ok := cutLast(v, "=")
	user, tokenName, ok2 := strings.Cut(id, "!")
	if !ok || !ok2 || secret == "" || !strings.Contains(user, "@") || tokenName == "" {
		return "", errors.New("--api-token must look like USER@REALM!TOKENID=SECRET (e.g. root@pam!autosnap=xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
	}
	return v, nil
}

func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return "proxmox" }

// Host is the host:port of the endpoint in use.
func (d *Driver) Host() string {
	ep, _ := d.c.current()
	return ep.hostport
}

// Close implements driver.Driver. Tickets expire on their own; there is nothing to
// log out of.
func (d *Driver) Close() error {
	d.c.http.CloseIdleConnections()
	return nil
}

var (
	_ driver.Driver          = (*Driver)(nil)
	_ driver.AgentPinger     = (*Driver)(nil)
	_ driver.StorageReporter = (*Driver)(nil)
)
