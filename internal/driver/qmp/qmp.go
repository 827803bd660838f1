// Package qmp is autosnap's driver for standalone QEMU (no libvirt): it talks to each
// guest's QMP socket and guest-agent socket directly.
//
// --host qmp:///DIR names a directory in which every NAME.qmp socket is a guest NAME
// whose agent, when present, listens on NAME.qga. qmp:///path/one.sock names a single
// guest (NAME is the file name without its extension; its agent is the sibling
// NAME.qga, or ?agent=PATH). Comma-separated entries form a fleet; each entry is one
// host whose Node is its path.
//
// Snapshots are internal qcow2 snapshots: all disks in one QMP transaction of
// blockdev-snapshot-internal-sync, RAM with the snapshot-save job. They live inside the
// images, so QEMU started again with the same command line still has them. What qcow2
// cannot record (description, parent, current snapshot, consistency) and what a stopped
// guest needs (its images and QEMU command line) is kept in a sidecar file
// NAME.autosnap.json next to the socket; see docs/qmp.md.
//
// A QMP socket serves one client at a time. The driver connects only while it works on
// a guest and reports a socket another program holds as busy (ErrLocked) with the
// socket's path, after the connection timeout.
package qmp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	qc "github.com/autosnap/autosnap/internal/qmp"
)

func init() {
	driver.Register("qmp", Match, func(ctx context.Context, cfg driver.Config) (driver.Driver, error) {
		return Open(ctx, cfg)
	})
}

// Match reports whether host is a qmp:// entry.
func Match(host string) bool { return driver.SchemeOf(host) == "qmp" }

// probeWait bounds how long Guests waits for a socket's greeting: QEMU greets at once
// when no other client holds the socket.
const probeWait = 1500 * time.Millisecond

// Driver is one qmp:// host: a directory of sockets or a single socket.
type Driver struct {
	node    string
	dir     string // directory form
	single  string // single-socket form: the QMP socket
	agent   string // single-socket form: the agent socket
	timeout time.Duration

	mu    sync.Mutex
	locks map[string]*guestLock
}

type guestLock struct{ ch chan struct{} }

// Open parses one qmp:// entry. The directory (or socket) must exist.
func Open(ctx context.Context, cfg driver.Config) (*Driver, error) {
	if strings.Contains(cfg.Host, ",") {
		return nil, fmt.Errorf("--host %q: give one qmp:// entry per driver (driver.Open makes a fleet of several)", cfg.Host)
	}
	u, err := url.Parse(cfg.Host)
	if err != nil || u.Scheme != "qmp" {
		return nil, fmt.Errorf("--host %q is not a qmp:///DIR or qmp:///PATH/TO/SOCKET URI", cfg.Host)
	}
	if u.Host != "" {
		return nil, fmt.Errorf("--host %q: QMP sockets are local; use qmp:///DIR (three slashes), not a host name: %w", cfg.Host, driver.ErrConnect)
	}
	p := filepath.Clean(u.Path)
	if !filepath.IsAbs(p) {
		return nil, fmt.Errorf("--host %q: the path must be absolute (qmp:///var/run/qemu)", cfg.Host)
	}
	d := &Driver{node: p, timeout: cfg.Timeout, locks: map[string]*guestLock{}}
	if d.timeout <= 0 {
		d.timeout = 30 * time.Second
	}
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("--host %s: %w: %w", cfg.Host, err, driver.ErrConnect)
	}
	if fi.IsDir() {
		if u.Query().Get("agent") != "" || cfg.AgentSocket != "" {
			return nil, fmt.Errorf("--host %q: ?agent= and --agent-socket are for a single socket; in a directory the agent of NAME.qmp is NAME.qga", cfg.Host)
		}
		d.dir = p
	} else {
		d.single = p
		d.agent = u.Query().Get("agent")
		if d.agent == "" {
			d.agent = cfg.AgentSocket
		}
		if d.agent == "" {
			d.agent = strings.TrimSuffix(p, filepath.Ext(p)) + ".qga"
		}
	}
	return d, nil
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return "qmp" }

// Node is the host name guests of this entry carry: the directory or socket path.
func (d *Driver) Node() string { return d.node }

// Close implements driver.Driver; the driver holds no connection between calls.
func (d *Driver) Close() error { return nil }

// entry is one guest's files.
type entry struct {
	name  string
	qmp   string
	agent string
	meta  string
}

func (d *Driver) entries() ([]entry, error) {
	if d.single != "" {
		base := filepath.Base(d.single)
		name := strings.TrimSuffix(base, filepath.Ext(base))
		return []entry{{name: name, qmp: d.single, agent: d.agent, meta: metaPath(d.single)}}, nil
	}
	des, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("host %s: listing QMP sockets: %w: %w", d.node, err, driver.ErrConnect)
	}
	seen := map[string]bool{}
	var out []entry
	for _, de := range des {
		n := de.Name()
		var name string
		switch {
		case strings.HasSuffix(n, ".qmp"):
			name = strings.TrimSuffix(n, ".qmp")
		case strings.HasSuffix(n, metaSuffix):
			// A stopped guest: QEMU removes its socket when it exits.
			name = strings.TrimSuffix(n, metaSuffix)
		default:
			continue
		}
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		out = append(out, d.entry(name))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

func (d *Driver) entry(name string) entry {
	q := filepath.Join(d.dir, name+".qmp")
	return entry{name: name, qmp: q, agent: filepath.Join(d.dir, name+".qga"), meta: metaPath(q)}
}

// find returns g's files, or an error wrapping ErrNotFound.
func (d *Driver) find(g driver.Guest) (entry, error) {
	if g.Node != "" && g.Node != d.node {
		return entry{}, fmt.Errorf("guest %s: host %s is not %s: %w", g.Name, g.Node, d.node, driver.ErrNotFound)
	}
	es, err := d.entries()
	if err != nil {
		return entry{}, err
	}
	for _, e := range es {
		if e.name == g.Name {
			return e, nil
		}
	}
	return entry{}, fmt.Errorf("guest %s: no QMP socket %s and no autosnap record of it on %s: %w", g.Name, d.entry(g.Name).qmp, d.node, driver.ErrNotFound)
}

// lock serialises work on one guest: within this process (a channel) and across
// autosnap processes (an flock on NAME.autosnap.lock beside the sidecar), so that the
// sidecar's read-modify-write cycles never interleave and one process's connection
// is not mistaken for a foreign client by another.
func (d *Driver) lock(ctx context.Context, e entry) (func(), error) {
	l := d.guestLock(e.name)
	select {
	case l.ch <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("guest %s: waiting for another operation of this run on it: %w", e.name, ctx.Err())
	}
	for {
		f, err := flockFile(e)
		if err == nil {
			return func() { f.Close(); <-l.ch }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			<-l.ch
			return nil, fmt.Errorf("guest %s: locking %s: %w", e.name, e.lockPath(), err)
		}
		select {
		case <-ctx.Done():
			<-l.ch
			return nil, fmt.Errorf("guest %s: another autosnap process is working on it (it holds %s): %w", e.name, e.lockPath(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tryLock is lock without waiting; ok is false when this or another autosnap process
// works on the guest.
func (d *Driver) tryLock(e entry) (func(), bool) {
	l := d.guestLock(e.name)
	select {
	case l.ch <- struct{}{}:
	default:
		return nil, false
	}
	f, err := flockFile(e)
	if err != nil {
		<-l.ch
		return nil, false
	}
	return func() { f.Close(); <-l.ch }, true
}

func (d *Driver) guestLock(name string) *guestLock {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.locks[name]
	if l == nil {
		l = &guestLock{ch: make(chan struct{}, 1)}
		d.locks[name] = l
	}
	return l
}

func (e entry) lockPath() string { return strings.TrimSuffix(e.meta, metaSuffix) + ".autosnap.lock" }

// flockFile opens and exclusively flocks e's lock file without waiting; the lock goes
// with the returned file (and with the process, however it dies).
func flockFile(e entry) (*os.File, error) {
	f, err := os.OpenFile(e.lockPath(), os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// dialResult classifies a connection attempt.
type dialResult int

const (
	dialOK      dialResult = iota
	dialStopped            // no socket or nobody listening: QEMU is not running
	dialBusy               // another client holds the socket
	dialFailed
)

func classify(err error) dialResult {
	switch {
	case err == nil:
		return dialOK
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return dialStopped
	case errors.Is(err, qc.ErrBusy):
		return dialBusy
	}
	return dialFailed
}

// session is a connection to one running guest's QMP socket.
type session struct {
	m     *qc.Monitor
	e     entry
	pid   int
	state driver.State
}

func (s *session) close() {
	if s.m != nil {
		s.m.Close()
	}
}

// connect opens e's QMP socket, waiting for a busy socket at most wait (or until ctx
// ends). It returns a nil session with no error when QEMU is not running.
func (d *Driver) connect(ctx context.Context, e entry, wait time.Duration) (*session, error) {
	dctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	start := time.Now()
	m, err := qc.Dial(dctx, e.qmp)
	switch classify(err) {
	case dialOK:
	case dialStopped:
		return nil, nil
	case dialBusy:
		// The connect succeeded, so QEMU runs; it just serves someone else.
		return nil, fmt.Errorf("guest %s: QMP socket %s is held by another client (QEMU serves one at a time; waited %s for it): close that client (a qmp-shell, socat or monitoring script) or retry later: %w: %w",
			e.name, e.qmp, time.Since(start).Round(100*time.Millisecond), qc.ErrBusy, driver.ErrLocked)
	default:
		return nil, fmt.Errorf("guest %s: connecting to QMP socket %s: %w", e.name, e.qmp, err)
	}
	s := &session{m: m, e: e}
	s.pid = peerPid(m)
	var st struct {
		Status string `json:"status"`
	}
	if err := m.Execute(ctx, "query-status", nil, &st); err != nil {
		m.Close()
		return nil, fmt.Errorf("guest %s: query-status: %w", e.name, err)
	}
	s.state = mapStatus(st.Status)
	return s, nil
}

// mapStatus maps QEMU's RunState to a driver.State. A QEMU process exists in every
// case, so every state is active.
func mapStatus(s string) driver.State {
	switch s {
	case "running":
		return driver.StateRunning
	case "suspended":
		return driver.StateSuspended
	case "guest-panicked", "internal-error", "io-error", "watchdog":
		return driver.StateCrashed
	case "shutdown":
		return driver.StateShutdown
	}
	// paused, prelaunch, inmigrate, postmigrate, finish-migrate, save-vm, restore-vm,
	// debug, colo: the CPUs do not run.
	return driver.StatePaused
}

// Guests implements driver.Driver. Every socket is asked for its state at once; a
// socket held by another client is listed with the state autosnap saw last (its
// QEMU runs: the connect succeeded).
func (d *Driver) Guests(ctx context.Context) ([]driver.Guest, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("host %s: %w", d.node, err)
	}
	es, err := d.entries()
	if err != nil {
		return nil, err
	}
	gs := make([]driver.Guest, len(es))
	errs := make([]error, len(es))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, e := range es {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			gs[i], errs[i] = d.probe(ctx, e)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("host %s: %w", d.node, err)
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return gs, nil
}

func (d *Driver) guest(e entry, st driver.State, m *meta) driver.Guest {
	tags := []string{}
	if m != nil && len(m.Tags) > 0 {
		tags = slices.Clone(m.Tags)
	}
	return driver.Guest{Node: d.node, Name: e.name, State: st, Kind: driver.KindQEMU, Tags: tags}
}

// probe finds e's state and, for a running QEMU, refreshes the sidecar's record of its
// disks and command line.
func (d *Driver) probe(ctx context.Context, e entry) (driver.Guest, error) {
	m, err := readMeta(e.meta)
	if err != nil {
		return driver.Guest{}, fmt.Errorf("guest %s: %w", e.name, err)
	}
	last := driver.StateRunning
	if m.LastState != "" && driver.State(m.LastState).Active() {
		last = driver.State(m.LastState)
	}
	unlock, ok := d.tryLock(e)
	if !ok {
		// An autosnap process is working on it and may hold its socket: whether
		// QEMU runs shows in the connect alone, without waiting for a greeting.
		var nd net.Dialer
		c, err := nd.DialContext(ctx, "unix", e.qmp)
		if classify(err) == dialStopped {
			return d.guest(e, driver.StateShutoff, m), nil
		}
		if c != nil {
			c.Close()
		}
		return d.guest(e, last, m), nil
	}
	defer unlock()
	s, err := d.connect(ctx, e, probeWait)
	switch {
	case errors.Is(err, qc.ErrBusy):
		return d.guest(e, last, m), nil
	case err != nil:
		return driver.Guest{}, err
	case s == nil:
		return d.guest(e, driver.StateShutoff, m), nil
	}
	defer s.close()
	if m, err = d.record(ctx, s); err != nil {
		return driver.Guest{}, err
	}
	return d.guest(e, s.state, m), nil
}
