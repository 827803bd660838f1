package monitor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/repo"
	"github.com/autosnap/autosnap/internal/schedule"
)

// History is what Collect reads from the run history (a *history.Store).
type History interface {
	LastGuestRun(ctx context.Context, q history.Query) (history.GuestRun, history.Job, bool, error)
}

// Options of Collect.
type Options struct {
	Config *policy.Config
	// Policy, when not empty, checks only that policy.
	Policy string
	// History, when not nil, supplies the last run of each guest.
	History History
	// Open connects to a --host value; nil uses driver.Open.
	Open func(ctx context.Context, hosts string, cfg driver.Config) (driver.Driver, error)
	// Timeout bounds connecting and each hypervisor or repository call.
	Timeout time.Duration
	// Now is the instant the cadences are measured from.
	Now time.Time
	// Parallel is how many guests are checked at once; default 8.
	Parallel int
}

// ErrNoPolicy is wrapped when Options.Policy names no policy of the file.
var ErrNoPolicy = errors.New("no such policy")

// Collect gathers Evaluate's input (without Now's thresholds, which the caller
// sets): for every policy, its host's guests it selects, each guest's newest
// snapshot of the policy's label (read live through the driver), its chain depth
// when the driver reports chains, the newest point in the policy's backup target,
// and its last finished snapshot and backup runs from the history. What cannot be
// read (a host that is unreachable, a repository that cannot be opened, a guest
// whose snapshots cannot be listed) becomes an Unknown entry saying which and why;
// the other policies are still checked. Collect fails only for an Options.Policy
// the file does not have.
func Collect(ctx context.Context, o Options) (Input, error) {
	cfg := o.Config
	in := Input{Now: o.Now, Thresholds: Thresholds{Warning: cfg.Monitor.Warning, Critical: cfg.Monitor.Critical,
		MaxChainDepth: cfg.Monitor.MaxChainDepth}}
	open := o.Open
	if open == nil {
		open = driver.Open
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Parallel < 1 {
		o.Parallel = 8
	}
	loc := cfg.Location
	if loc == nil {
		loc = time.Local
	}
	if o.Policy != "" && cfg.Policy(o.Policy) == nil {
		var names []string
		for _, p := range cfg.Policies {
			names = append(names, p.Name)
		}
		return Input{}, fmt.Errorf("--policy %q: %w in %s (it has: %s)", o.Policy, ErrNoPolicy, cfg.Path, strings.Join(names, ", "))
	}

	type conn struct {
		d      driver.Driver
		guests []driver.Guest
		err    error
	}
	conns := map[string]*conn{}
	defer func() {
		for _, c := range conns {
			if c.d != nil {
				c.d.Close()
			}
		}
	}()
	repos := map[string][]*repo.Guest{}
	repoErr := map[string]error{}
	f, _ := naming.ParseFormat(naming.DefaultFormat)
	rec := naming.Recognizer{Format: f, Loc: loc}

	for i := range cfg.Policies {
		p := &cfg.Policies[i]
		if o.Policy != "" && p.Name != o.Policy {
			continue
		}
		host, cn := cfg.HostOf(p)
		key := host
		if cn != nil {
			key = "conn:" + cn.Name
		}
		c, ok := conns[key]
		if !ok {
			c = &conn{}
			conns[key] = c
			c.d, c.guests, c.err = connect(ctx, open, host, cn, cfg.StateDir, o.Timeout)
		}
		shown := host
		if cn != nil {
			shown = cn.Name + " (" + host + ")"
		}
		if c.err != nil {
			in.Unknown = append(in.Unknown, fmt.Sprintf("policy %s: host %s: %v", p.Name, shown, c.err))
			continue
		}
		var snapCad, backupCad time.Duration
		label := ""
		if p.Snapshot != nil {
			s, err := parsedSchedule(p.Snapshot.Schedule, loc)
			if err != nil {
				in.Unknown = append(in.Unknown, fmt.Sprintf("policy %s: snapshot schedule: %v", p.Name, err))
			} else {
				snapCad = s.Cadence(o.Now)
			}
			label = p.Snapshot.Label
			if label == "" {
				label = p.Name
			}
		}
		var rguests []*repo.Guest
		if p.Backup != nil {
			s, err := parsedSchedule(p.Backup.Schedule, loc)
			if err != nil {
				in.Unknown = append(in.Unknown, fmt.Sprintf("policy %s: backup schedule: %v", p.Name, err))
			} else {
				backupCad = s.Cadence(o.Now)
			}
			t := p.Backup.Target
			if _, seen := repos[t]; !seen && repoErr[t] == nil {
				r, err := repo.OpenExisting(t)
				if err == nil {
					repos[t], err = r.Guests()
				}
				if err != nil {
					repoErr[t] = err
				}
			}
			if err := repoErr[t]; err != nil {
				in.Unknown = append(in.Unknown, fmt.Sprintf("policy %s: backup repository %s cannot be read: %v", p.Name, t, err))
				backupCad = 0
			}
			rguests = repos[t]
		}
		var sel []driver.Guest
		for _, g := range p.SelectGuests(c.guests) {
			if !g.Template {
				sel = append(sel, g)
			}
		}
		if len(sel) == 0 {
			in.Empty = append(in.Empty, p.Name)
		}
		// Guests are checked in parallel (hypervisor round trips dominate); results
		// keep the selection's order.
		gs := make([]Guest, len(sel))
		unk := make([][]string, len(sel))
		sem := make(chan struct{}, o.Parallel)
		var wg sync.WaitGroup
		for i, g := range sel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				gs[i], unk[i] = checkGuest(ctx, guestCheck{o: &o, p: p, d: c.d, g: g, host: shown, label: label, rec: rec,
					snapCad: snapCad, backupCad: backupCad, rguests: rguests, maxChain: in.Thresholds.MaxChainDepth})
			}()
		}
		wg.Wait()
		in.Guests = append(in.Guests, gs...)
		for _, u := range unk {
			in.Unknown = append(in.Unknown, u...)
		}
	}
	return in, nil
}

// guestCheck is what checkGuest needs about one guest under one policy.
type guestCheck struct {
	o                  *Options
	p                  *policy.Policy
	d                  driver.Driver
	g                  driver.Guest
	host, label        string
	rec                naming.Recognizer
	snapCad, backupCad time.Duration
	rguests            []*repo.Guest
	maxChain           int
}

// checkGuest gathers one guest's facts, and the checks that could not be made.
func checkGuest(ctx context.Context, c guestCheck) (Guest, []string) {
	p, g, o := c.p, c.g, c.o
	var unknown []string
	mg := Guest{Policy: p.Name, Host: c.host, Name: g.Name, ChainDepth: -1}
	if c.snapCad > 0 && p.Snapshot.OnlyRunning && g.State != driver.StateRunning {
		// The daemon skips it (only_running), so its snapshots age by design.
		mg.Notes = append(mg.Notes, fmt.Sprintf("snapshot not checked: only_running and the guest is %s", g.State))
	} else if c.snapCad > 0 {
		mg.Snapshot.Cadence = c.snapCad
		if err := newestSnapshot(ctx, c.d, g, c.rec, c.label, o.Timeout, &mg.Snapshot); err != nil {
			unknown = append(unknown, fmt.Sprintf("policy %s: guest %s: listing snapshots failed: %v", p.Name, g.Name, err))
			mg.Snapshot.Cadence = 0
		}
	}
	if c.maxChain > 0 {
		if cr, ok := c.d.(driver.ChainReporter); ok {
			cctx, cancel := context.WithTimeout(ctx, o.Timeout)
			chains, err := cr.Chains(cctx, g)
			cancel()
			if err != nil {
				unknown = append(unknown, fmt.Sprintf("policy %s: guest %s: reading backing chains failed: %v", p.Name, g.Name, err))
			}
			for _, ch := range chains {
				mg.ChainDepth = max(mg.ChainDepth, len(ch.Images)-1)
			}
		}
	}
	if c.backupCad > 0 {
		mg.Backup.Cadence = c.backupCad
		if rg := repo.FindGuest(c.rguests, g.UUID, g.ID, g.Node, g.Name); rg != nil {
			ps, err := rg.Points()
			if err != nil {
				unknown = append(unknown, fmt.Sprintf("policy %s: guest %s: reading backup points in %s failed: %v", p.Name, g.Name, p.Backup.Target, err))
				mg.Backup.Cadence = 0
			}
			for _, pt := range ps {
				if pt.Started.After(mg.Backup.Newest) {
					mg.Backup.Newest, mg.Backup.Name = pt.Started, pt.ID
				}
			}
		}
	}
	if o.History != nil {
		if err := lastFailure(ctx, o.History, p, g.Name, &mg); err != nil {
			unknown = append(unknown, fmt.Sprintf("policy %s: guest %s: reading the run history failed: %v", p.Name, g.Name, err))
		}
	}
	return mg, unknown
}

func connect(ctx context.Context, open func(context.Context, string, driver.Config) (driver.Driver, error), host string, cn *policy.Connection, stateDir string, timeout time.Duration) (driver.Driver, []driver.Guest, error) {
	// As the daemon connects: a secret of a user that is a Proxmox VE API token id
	// (USER@REALM!ID) is the token's, any other a password; api_token: wins.
	dc := driver.Config{Host: host, Timeout: timeout, StateDir: stateDir}
	if cn != nil {
		dc.Fingerprint, dc.CAFile, dc.Insecure, dc.Username = cn.Fingerprint, cn.CAFile, cn.Insecure, cn.User
		if cn.Secret != "" {
			secret, err := policy.ResolveSecret(cn.Secret)
			if err != nil {
				return nil, nil, fmt.Errorf("connection %s: reading its secret: %w", cn.Name, err)
			}
			if strings.Contains(cn.User, "!") {
				dc.Username, dc.APIToken = "", cn.User+"="+secret
			} else {
				dc.Password = secret
			}
		}
		if cn.APIToken != "" {
			tok, err := policy.ResolveSecret(cn.APIToken)
			if err != nil {
				return nil, nil, fmt.Errorf("connection %s: reading its API token: %w", cn.Name, err)
			}
			dc.APIToken = tok
		}
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d, err := open(cctx, host, dc)
	if err != nil {
		return nil, nil, err
	}
	gs, err := d.Guests(cctx)
	if err != nil {
		d.Close()
		return nil, nil, fmt.Errorf("listing guests: %w", err)
	}
	return d, gs, nil
}

func parsedSchedule(s policy.Schedule, loc *time.Location) (schedule.Schedule, error) {
	if ps := s.Parsed(); ps.String() != "" {
		return ps, nil
	}
	return schedule.Parse(s.Spec, loc)
}

// newestSnapshot sets it to the guest's newest snapshot of label, by the time in
// its name (the instant it stands for, also for a snapshot renamed or imported).
func newestSnapshot(ctx context.Context, d driver.Driver, g driver.Guest, rec naming.Recognizer, label string, timeout time.Duration, it *Item) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	snaps, err := d.Snapshots(cctx, g)
	if err != nil {
		return err
	}
	for _, s := range snaps {
		r, ok := rec.Recognize(s.Name, s.Description, s.Created, label)
		if !ok || s.Incomplete != "" {
			continue
		}
		if r.Time.After(it.Newest) {
			it.Newest, it.Name = r.Time, s.Name
		}
	}
	return nil
}

// lastFailure sets mg.Failed when the guest's last finished snapshot or backup run
// under policy p failed (the newer of the two decides).
func lastFailure(ctx context.Context, h History, p *policy.Policy, guest string, mg *Guest) error {
	var newest history.GuestRun
	var kind history.Kind
	for _, k := range []history.Kind{history.KindSnapshot, history.KindBackup} {
		if (k == history.KindSnapshot && p.Snapshot == nil) || (k == history.KindBackup && p.Backup == nil) {
			continue
		}
		gr, _, ok, err := h.LastGuestRun(ctx, history.Query{Guest: guest, Policy: p.Name, Kind: k})
		if err != nil {
			return err
		}
		if ok && gr.Outcome == history.Failed && (kind == "" || gr.Ended.After(newest.Ended)) {
			newest, kind = gr, k
		}
	}
	if kind != "" {
		mg.Failed, mg.FailedKind = newest.Error, string(kind)
		if mg.Failed == "" {
			mg.Failed = "(no error recorded)"
		}
	}
	return nil
}
