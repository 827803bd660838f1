package driver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
)

// Config is what every driver may need to open a connection. Fields a driver does
// not use are ignored.
type Config struct {
	// Host is one --host entry (a URI or host[:port]).
	Host string
	// Timeout bounds connecting and every later operation that has no deadline of its own.
	Timeout  time.Duration
	Username string
	Password string //nolint:gosec // never logged; see Redacted
	APIToken string
	// Insecure skips TLS verification (Proxmox); Fingerprint pins a certificate;
	// CAFile is a PEM file of CA certificates trusted besides the system's.
	Insecure    bool
	Fingerprint string
	CAFile      string
	// AgentSocket is the guest agent's socket of a single-socket QMP host
	// (qmp:///path/one.sock); "" means the socket's name with .qga.
	AgentSocket string
	// StateDir is autosnap's state directory, like $AUTOSNAP_STATE_DIR: durable records
	// of work in progress (merge journals) live in its journal/ subdirectory. "" means
	// the default (see journal.DefaultDir).
	StateDir string
}

// Opener connects to one host.
type Opener func(ctx context.Context, cfg Config) (Driver, error)

// Matcher reports whether a driver handles a --host entry.
type Matcher func(host string) bool

type registration struct {
	name  string
	match Matcher
	open  Opener
}

var (
	regMu sync.RWMutex
	regs  []registration
)

// Register adds a driver. Drivers register from their package's init; the first
// matching registration wins, so register specific schemes before catch-alls.
func Register(name string, match Matcher, open Opener) {
	regMu.Lock()
	defer regMu.Unlock()
	regs = append(regs, registration{name: name, match: match, open: open})
}

// Registered lists the names of the registered drivers, sorted.
func Registered() []string {
	regMu.RLock()
	defer regMu.RUnlock()
	var names []string
	for _, r := range regs {
		names = append(names, r.name)
	}
	sort.Strings(names)
	return names
}

// DefaultHost is used when --host is empty: the local system libvirt, so that plain
// `autosnap vm list` works on a KVM host.
const DefaultHost = "qemu:///system"

// SchemeOf returns the lower-cased URI scheme of a --host entry, or "" for a plain
// host[:port].
func SchemeOf(host string) string {
	if i := strings.Index(host, "://"); i > 0 {
		return strings.ToLower(host[:i])
	}
	return ""
}

// Open connects to every host in a comma-separated --host value. For libvirt-style
// URIs each entry is a separate host and the result is a Fleet whose guests carry
// their host as Node. A driver that treats the list itself (Proxmox failover) gets the
// whole value in one Config.
func Open(ctx context.Context, hosts string, cfg Config) (Driver, error) {
	if strings.TrimSpace(hosts) == "" {
		hosts = DefaultHost
	}
	entries := splitHosts(hosts)
	reg, err := lookup(entries[0])
	if err != nil {
		return nil, err
	}
	for _, e := range entries[1:] {
		r, err := lookup(e)
		if err != nil {
			return nil, err
		}
		if r.name != reg.name {
			return nil, fmt.Errorf("--host mixes %s and %s hosts (%q): run autosnap once per kind of host", reg.name, r.name, hosts)
		}
	}
	// libvirt URIs and qmp:// directories are independent hosts; Proxmox VE treats
	// its list itself (failover within one cluster).
	if (reg.name != "libvirt" && reg.name != "qmp") || len(entries) == 1 {
		c := cfg
		c.Host = strings.Join(entries, ",")
		return reg.open(ctx, c)
	}
	// Hosts are connected at once: a fleet should not wait for each handshake in turn.
	ds := make([]Driver, len(entries))
	errs := make([]error, len(entries))
	var wg sync.WaitGroup
	for i, e := range entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cfg
			c.Host = e
			ds[i], errs[i] = reg.open(ctx, c)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for i, d := range ds {
			if errs[i] == nil {
				_ = d.Close()
			}
		}
		return nil, err
	}
	return NewFleet(ds), nil
}

func splitHosts(hosts string) []string {
	var out []string
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

func lookup(host string) (registration, error) {
	regMu.RLock()
	defer regMu.RUnlock()
	for _, r := range regs {
		if r.match(host) {
			return r, nil
		}
	}
	switch s := SchemeOf(host); {
	case s == "pve" || s == "":
		return registration{}, fmt.Errorf("--host %q is neither a libvirt URI (qemu:///system, qemu+ssh://user@host/system) nor a Proxmox VE HOST[:PORT]", host)
	case s == "qmp":
		return registration{}, fmt.Errorf("--host %q: standalone QEMU (qmp://) is not supported by this build yet; manage the VM through libvirt", host)
	default:
		return registration{}, fmt.Errorf("--host %q: unknown scheme %q; known drivers: %s", host, s, strings.Join(Registered(), ", "))
	}
}

// IsLibvirtURI reports whether host is a libvirt connection URI (qemu:///system,
// qemu+ssh://…, qemu+tls://…, test:///default…).
func IsLibvirtURI(host string) bool {
	s := SchemeOf(host)
	base, _, _ := strings.Cut(s, "+")
	if base != "qemu" && base != "test" {
		return false
	}
	_, err := url.Parse(host)
	return err == nil
}
