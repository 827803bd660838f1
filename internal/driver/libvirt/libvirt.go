// Package libvirt is autosnap's libvirt driver, on the pure-Go go-libvirt RPC client.
//
// go-libvirt has no per-call timeouts (its issue #96): every RPC here goes through call,
// which abandons a call that outlives ctx so a hung libvirtd cannot hang a run.
package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/journal"
)

func init() {
	driver.Register("libvirt", driver.IsLibvirtURI, func(ctx context.Context, cfg driver.Config) (driver.Driver, error) {
		return Open(ctx, cfg)
	})
}

// TagNamespace is the XML namespace of autosnap's element in a domain's <metadata>.
const TagNamespace = "https://autosnap.dev/xmlns/tags/1"

const tagKey = "autosnap"

// Driver talks to one libvirt daemon.
type Driver struct {
	l       *golibvirt.Libvirt
	uri     *url.URL
	node    string
	local   bool // the daemon runs on this machine: image files are reachable directly
	timeout time.Duration
	journal *journal.Store // merge journals (see execute.go)

	// mu serialises chain-changing operations per domain inside this process; libvirt's
	// own per-domain job lock would otherwise reject the second with a confusing error.
	mu     sync.Mutex
	domMus map[string]*sync.Mutex
	// graph holds the image file system and the cached host-wide scan (hostscan.go).
	graph graphState
	// tap issues the listing's snapshot reads itself (rpctap.go); nil: through go-libvirt.
	tap *rpcTap
	// jobEv wakes block-job watchers on libvirt's events (jobevents.go).
	jobEv jobEvents
}

// Open connects to the libvirt daemon named by cfg.Host (a libvirt URI). It gives up
// after cfg.Timeout (or ctx) with an error wrapping driver.ErrConnect.
func Open(ctx context.Context, cfg driver.Config) (*Driver, error) {
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("--host %q is not a valid libvirt URI: %w", cfg.Host, err)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	u = withSessionSocket(u)
	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	type res struct {
		l   *golibvirt.Libvirt
		tap *rpcTap
		err error
	}
	ch := make(chan res, 1)
	go func() {
		l, tap, err := connectTapped(u)
		if l == nil && err == nil {
			l, err = golibvirt.ConnectToURI(u)
		}
		ch <- res{l, tap, err}
	}()
	var l *golibvirt.Libvirt
	var tap *rpcTap
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("cannot connect to libvirt at %s: %v (is libvirtd running and reachable? check the URI and credentials): %w", redactURI(u), r.err, driver.ErrConnect)
		}
		l, tap = r.l, r.tap
	case <-cctx.Done():
		go func() {
			if r := <-ch; r.l != nil {
				_ = r.l.Disconnect()
			}
		}()
		return nil, fmt.Errorf("cannot connect to libvirt at %s: no answer within %s: %w", redactURI(u), cfg.Timeout, driver.ErrConnect)
	}

	d := &Driver{l: l, tap: tap, uri: u, timeout: cfg.Timeout, domMus: map[string]*sync.Mutex{}}
	d.journal = journalStore(cfg.StateDir)
	d.local = isLocal(u)
	d.node = u.Hostname()
	if d.node == "" {
		host, err := call(cctx, func() (string, error) { return l.ConnectGetHostname() })
		if err != nil {
			_ = l.Disconnect()
			return nil, fmt.Errorf("libvirt at %s: cannot read host name: %v: %w", redactURI(u), err, driver.ErrConnect)
		}
		d.node = host
	}
	return d, nil
}

// withSessionSocket points a local qemu:///session URI at the user's session daemon:
// go-libvirt's local dialer would otherwise use the system socket.
func withSessionSocket(u *url.URL) *url.URL {
	if !isLocal(u) || u.Path != "/session" || u.Query().Get("socket") != "" {
		return u
	}
	dir := os.Getenv("XDG_RUNTIME_DIR")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return u
		}
		dir = filepath.Join(home, ".cache")
	}
	c := *u
	q := c.Query()
	q.Set("socket", filepath.Join(dir, "libvirt", "libvirt-sock"))
	c.RawQuery = q.Encode()
	return &c
}

func isLocal(u *url.URL) bool {
	transport := "unix"
	if _, t, ok := strings.Cut(u.Scheme, "+"); ok {
		transport = t
	} else if u.Host != "" {
		transport = "tls"
	}
	return transport == "unix"
}

// redactURI drops a password embedded in a URI so it never reaches a message.
func redactURI(u *url.URL) string {
	c := *u
	if c.User != nil {
		c.User = url.User(c.User.Username())
	}
	return c.String()
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return "libvirt" }

// Node is the host name guests of this connection report.
func (d *Driver) Node() string { return d.node }

// Close implements driver.Driver. It gives up after the connection timeout: a hung
// daemon would otherwise block the goodbye RPC forever.
func (d *Driver) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	return call0(ctx, d.l.Disconnect)
}

// call runs one blocking go-libvirt call, abandoning it when ctx ends. An abandoned
// call finishes (or fails) in the background; its result is dropped.
func call[T any](ctx context.Context, f func() (T, error)) (T, error) {
	if _, ok := ctx.Deadline(); !ok {
		// Every operation is bounded, even when a caller forgot a deadline.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
	}
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() {
		v, err := f()
		ch <- res{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("libvirt did not answer in time: %w", ctx.Err())
	}
}

func call0(ctx context.Context, f func() error) error {
	_, err := call(ctx, func() (struct{}, error) { return struct{}{}, f() })
	return err
}

func (d *Driver) domLock(key string) func() {
	d.mu.Lock()
	m, ok := d.domMus[key]
	if !ok {
		m = &sync.Mutex{}
		d.domMus[key] = m
	}
	d.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// lookup returns the handle of g's domain. With a UUID no RPC is needed: the daemon
// identifies domains by UUID, so a vanished domain shows up as ErrNoDomain on the first
// real call (see notFound).
func (d *Driver) lookup(ctx context.Context, g driver.Guest) (golibvirt.Domain, error) {
	if g.UUID != "" {
		u, err := parseUUID(g.UUID)
		if err != nil {
			return golibvirt.Domain{}, fmt.Errorf("guest %s: %w", g.Name, err)
		}
		return golibvirt.Domain{Name: g.Name, UUID: u, ID: int32(g.ID)}, nil
	}
	dom, err := call(ctx, func() (golibvirt.Domain, error) { return d.l.DomainLookupByName(g.Name) })
	if err != nil {
		return dom, d.notFound(g.Name, err)
	}
	return dom, nil
}

// notFound turns libvirt's "no domain" into an error wrapping driver.ErrNotFound.
func (d *Driver) notFound(name string, err error) error {
	if golibvirt.IsNotFound(err) {
		return fmt.Errorf("guest %s on %s no longer exists: %w", name, d.node, driver.ErrNotFound)
	}
	return err
}

func parseUUID(s string) (golibvirt.UUID, error) {
	var u golibvirt.UUID
	h := strings.ReplaceAll(s, "-", "")
	if len(h) != 32 {
		return u, fmt.Errorf("bad UUID %q", s)
	}
	for i := 0; i < 16; i++ {
		var b byte
		for _, c := range h[2*i : 2*i+2] {
			b <<= 4
			switch {
			case c >= '0' && c <= '9':
				b |= byte(c - '0')
			case c >= 'a' && c <= 'f':
				b |= byte(c - 'a' + 10)
			case c >= 'A' && c <= 'F':
				b |= byte(c - 'A' + 10)
			default:
				return u, fmt.Errorf("bad UUID %q", s)
			}
		}
		u[i] = b
	}
	return u, nil
}

func formatUUID(u golibvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func stateOf(s int32) driver.State {
	switch golibvirt.DomainState(s) {
	case golibvirt.DomainRunning:
		return driver.StateRunning
	case golibvirt.DomainBlocked:
		return driver.StateBlocked
	case golibvirt.DomainPaused:
		return driver.StatePaused
	case golibvirt.DomainShutdown:
		return driver.StateShutdown
	case golibvirt.DomainShutoff:
		return driver.StateShutoff
	case golibvirt.DomainCrashed:
		return driver.StateCrashed
	case golibvirt.DomainPmsuspended:
		return driver.StateSuspended
	}
	return driver.StateUnknown
}

// Guests implements driver.Driver with one ConnectGetAllDomainStats call for every
// domain and its state. Tags are left nil: reading them costs a call per domain, so
// they are read only by LoadTags, for the guests that need them.
func (d *Driver) Guests(ctx context.Context) ([]driver.Guest, error) {
	recs, err := call(ctx, func() ([]golibvirt.DomainStatsRecord, error) {
		return d.l.ConnectGetAllDomainStats(nil, uint32(golibvirt.DomainStatsState), 0)
	})
	if err != nil {
		return nil, fmt.Errorf("listing guests on %s: %w", d.node, err)
	}
	guests := make([]driver.Guest, len(recs))
	for i, r := range recs {
		g := driver.Guest{Node: d.node, Name: r.Dom.Name, UUID: formatUUID(r.Dom.UUID), Kind: driver.KindQEMU, State: driver.StateUnknown}
		if r.Dom.ID > 0 {
			g.ID = int(r.Dom.ID)
		}
		for _, p := range r.Params {
			if p.Field == "state.state" {
				if v, ok := p.Value.I.(int32); ok {
					g.State = stateOf(v)
				}
			}
		}
		guests[i] = g
	}
	return guests, nil
}

// GuestsNamed returns the guests named exactly names (libvirt names are
// case-sensitive), in that order, each looked up by name with its state read: two
// RPCs per name, a few names at a time, whatever the number of other domains on the
// host (Guests reads every domain's state, and waits for any domain libvirtd holds
// locked). A name libvirt does not know makes it fail with an error wrapping
// driver.ErrNotFound; callers then fall back to Guests.
func (d *Driver) GuestsNamed(ctx context.Context, names []string) ([]driver.Guest, error) {
	out := make([]driver.Guest, len(names))
	errs := make([]error, len(names))
	sem := make(chan struct{}, 4) // libvirtd serves 5 calls per client at once
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dom, err := call(ctx, func() (golibvirt.Domain, error) { return d.l.DomainLookupByName(name) })
			if err != nil {
				errs[i] = fmt.Errorf("looking up guest %s on %s: %w", name, d.node, d.notFound(name, err))
				return
			}
			type st struct{ s int32 }
			s, err := call(ctx, func() (st, error) {
				s, _, err := d.l.DomainGetState(dom, 0)
				return st{s}, err
			})
			if err != nil {
				errs[i] = fmt.Errorf("reading the state of guest %s on %s: %w", name, d.node, d.notFound(name, err))
				return
			}
			g := driver.Guest{Node: d.node, Name: dom.Name, UUID: formatUUID(dom.UUID), Kind: driver.KindQEMU, State: stateOf(s.s)}
			if dom.ID > 0 {
				g.ID = int(dom.ID)
			}
			out[i] = g
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// LoadTags implements driver.TagLoader: it sets the Tags of every guest (an empty
// slice for a guest without tags, or one undefined since it was listed), one
// metadata read per guest, a few at a time.
func (d *Driver) LoadTags(ctx context.Context, guests []driver.Guest) error {
	// libvirtd serves 5 calls per client at once.
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	errs := make([]error, len(guests))
	for i := range guests {
		dom, err := d.lookup(ctx, guests[i])
		if err != nil {
			if errors.Is(err, driver.ErrNotFound) {
				guests[i].Tags = []string{}
				continue
			}
			errs[i] = err
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			tags, err := d.tags(ctx, dom)
			if err != nil {
				errs[i] = err
				return
			}
			guests[i].Tags = tags
		}(i)
	}
	wg.Wait()
	return errors.Join(errs...)
}

type tagsXML struct {
	XMLName xml.Name `xml:"tags"`
	Tags    []string `xml:"tag"`
}

func (d *Driver) tags(ctx context.Context, dom golibvirt.Domain) ([]string, error) {
	s, err := call(ctx, func() (string, error) {
		return d.l.DomainGetMetadata(dom, int32(golibvirt.DomainMetadataElement), golibvirt.OptString{TagNamespace}, golibvirt.DomainAffectCurrent)
	})
	if err != nil {
		var lerr golibvirt.Error
		if errors.As(err, &lerr) && golibvirt.ErrorNumber(lerr.Code) == golibvirt.ErrNoDomainMetadata {
			return []string{}, nil
		}
		if golibvirt.IsNotFound(err) {
			return []string{}, nil // undefined between listing and now
		}
		return nil, fmt.Errorf("reading tags of %s on %s: %w", dom.Name, d.node, err)
	}
	var t tagsXML
	if err := xml.Unmarshal([]byte(s), &t); err != nil {
		return nil, fmt.Errorf("tags of %s on %s: unreadable autosnap metadata: %w", dom.Name, d.node, err)
	}
	if t.Tags == nil {
		t.Tags = []string{}
	}
	return t.Tags, nil
}

// SetTags implements driver.Tagger: the tags live in the domain's <metadata> in the
// autosnap namespace, in both the live and the persistent definition.
func (d *Driver) SetTags(ctx context.Context, g driver.Guest, tags []string) error {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	var meta golibvirt.OptString
	if len(tags) > 0 {
		b, err := xml.Marshal(tagsXML{Tags: tags})
		if err != nil {
			return err
		}
		meta = golibvirt.OptString{string(b)}
	}
	flags := golibvirt.DomainAffectConfig
	if g.State.Active() {
		flags |= golibvirt.DomainAffectLive
	}
	err = call0(ctx, func() error {
		return d.l.DomainSetMetadata(dom, int32(golibvirt.DomainMetadataElement), meta, golibvirt.OptString{tagKey}, golibvirt.OptString{TagNamespace}, flags)
	})
	if err != nil {
		return fmt.Errorf("setting tags of %s on %s: %w", g.Name, d.node, err)
	}
	return nil
}

// domainXML reads and parses a domain definition; inactive selects the persistent one
// (with secrets, for redefining), otherwise the live one of an active domain.
func (d *Driver) domainXML(ctx context.Context, dom golibvirt.Domain, inactive bool) (*libvirtxml.Domain, error) {
	var flags golibvirt.DomainXMLFlags
	if inactive {
		flags = golibvirt.DomainXMLInactive | golibvirt.DomainXMLSecure
	}
	s, err := call(ctx, func() (string, error) { return d.l.DomainGetXMLDesc(dom, flags) })
	if err != nil {
		return nil, fmt.Errorf("reading definition of %s: %w", dom.Name, d.notFound(dom.Name, err))
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(s); err != nil {
		return nil, fmt.Errorf("parsing definition of %s: %w", dom.Name, err)
	}
	return &x, nil
}

// currentXML reads the definition in force — live for an active domain, persistent
// otherwise — and whether the domain is active, in one RPC.
func (d *Driver) currentXML(ctx context.Context, dom golibvirt.Domain) (*libvirtxml.Domain, bool, error) {
	x, err := d.domainXML(ctx, dom, false)
	if err != nil {
		return nil, false, err
	}
	return x, x.ID != nil && *x.ID > 0, nil
}

func (d *Driver) domState(ctx context.Context, dom golibvirt.Domain) (driver.State, error) {
	type st struct{ s, r int32 }
	v, err := call(ctx, func() (st, error) {
		s, r, err := d.l.DomainGetState(dom, 0)
		return st{s, r}, err
	})
	if err != nil {
		return driver.StateUnknown, fmt.Errorf("reading state of %s: %w", dom.Name, d.notFound(dom.Name, err))
	}
	return stateOf(v.s), nil
}

var (
	_ driver.Driver          = (*Driver)(nil)
	_ driver.Tagger          = (*Driver)(nil)
	_ driver.TagLoader       = (*Driver)(nil)
	_ driver.AgentPinger     = (*Driver)(nil)
	_ driver.Quiescer        = (*Driver)(nil)
	_ driver.StorageReporter = (*Driver)(nil)
	_ driver.ChainReporter   = (*Driver)(nil)
)
