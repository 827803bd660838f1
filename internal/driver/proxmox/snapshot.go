package proxmox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

// snapEntry is one entry of GET …/snapshot.
type snapEntry struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	SnapTime    pveInt `json:"snaptime"`
	Parent      string `json:"parent"`
	VMState     pveInt `json:"vmstate"`
	SnapState   string `json:"snapstate"`
}

func (d *Driver) listRaw(ctx context.Context, g driver.Guest) ([]snapEntry, error) {
	var es []snapEntry
	if err := d.c.get(ctx, guestPath(g)+"/snapshot", nil, &es); err != nil {
		return nil, fmt.Errorf("listing snapshots: %w", notFound(err))
	}
	return es, nil
}

// Snapshots implements driver.Driver. The "current" pseudo-entry is dropped; the
// snapshot it points at is Current. PVE lists snapshots in no order and with
// one-second times, so they are sorted by time and, within a second, parents first.
func (d *Driver) Snapshots(ctx context.Context, g driver.Guest) ([]driver.Snapshot, error) {
	es, err := d.listRaw(ctx, g)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", guestName(g), err)
	}
	return toSnapshots(es), nil
}

func toSnapshots(es []snapEntry) []driver.Snapshot {
	current := ""
	parent := map[string]string{}
	for _, e := range es {
		if e.Name == "current" {
			current = e.Parent
			continue
		}
		parent[e.Name] = e.Parent
	}
	depth := func(name string) int {
		n := 0
		for p := parent[name]; p != "" && n <= len(parent); p = parent[p] {
			n++
		}
		return n
	}
	var out []driver.Snapshot
	for _, e := range es {
		if e.Name == "current" {
			continue
		}
		out = append(out, driver.Snapshot{
			Name:        e.Name,
			Description: strings.TrimRight(e.Description, "\n"),
			Created:     time.Unix(int64(e.SnapTime), 0),
			Parent:      e.Parent,
			Current:     e.Name == current,
			Memory:      e.VMState != 0,
			Location:    driver.LocationInternal,
			Protected:   naming.IsProtected(e.Description),
		})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		if di, dj := depth(out[i].Name), depth(out[j].Name); di != dj {
			return di < dj
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// description is what is sent to PVE for a requested description: one of ours (see
// naming.IsOurs) whose header is naming.Marker ("autosnap") is sent with
// naming.LegacyMarker ("cv4pve-autosnap") alone as its header, because
// cv4pve-autosnap only recognises snapshots whose whole description is that string:
// recorded fields are dropped, except the protected flag, which keeps its line (so
// cv4pve-autosnap leaves a protected snapshot alone too). Any other description — an
// admin's, even one starting with "autosnap" — is sent unchanged.
func (d *Driver) description(desc string) string {
	first, _, _ := strings.Cut(strings.TrimSpace(desc), "\n")
	if strings.TrimSpace(first) != naming.Marker || !naming.IsOurs(desc) {
		return desc
	}
	if naming.IsProtected(desc) {
		out, _ := naming.WithProtected(naming.LegacyMarker, true)
		return out
	}
	return naming.LegacyMarker
}

// CreateSnapshot implements driver.Driver.
//
// It refuses, with an error wrapping driver.ErrUnsupported and before creating
// anything, templates and guests with a disk PVE cannot snapshot (passthrough
// devices, container bind and device mounts). With opts.Quiesce it fails with
// driver.ErrAgent unless the VM's agent is enabled: PVE itself freezes a running VM's
// filesystems through its agent for every snapshot without RAM. opts.Memory sends
// vmstate for running and paused VMs (containers have no RAM snapshots). A locked
// guest is retried until ctx ends.
//
// The result's Consistency is quiesced for a running VM whose agent is enabled and
// answers, when no RAM is saved; crash for other running guests; offline for guests
// that are not running.
//
// One exception to "on error no snapshot is left behind": a task still running when
// ctx ends is left to PVE (stopping it would leave a half-made snapshot and a locked
// guest), so the snapshot may appear later; the error says so.
func (d *Driver) CreateSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.Snapshot, error) {
	var cons driver.Consistency
	lost := false
	err := d.retryLocked(ctx, g, func() error {
		cfg, err := d.config(ctx, g)
		if err != nil {
			return err
		}
		if err := d.checkSnapshottable(g, cfg, opts); err != nil {
			return err
		}
		if cfg.Lock != "" {
			return &lockedError{cfg.Lock}
		}
		vmstate := g.Kind == driver.KindQEMU && opts.Memory && g.State.Active()
		cons = d.consistency(ctx, g, cfg, opts, vmstate)
		params := url.Values{"snapname": {opts.Name}}
		if desc := d.description(opts.Description); desc != "" {
			params.Set("description", desc)
		}
		if vmstate {
			params.Set("vmstate", "1")
		}
		typ := map[driver.Kind]string{driver.KindQEMU: "qmsnapshot", driver.KindLXC: "vzsnapshot"}[g.Kind]
		landed := func(ctx context.Context) (bool, error) {
			e, ok, err := d.find(ctx, g, opts.Name)
			return ok && e.SnapState == "", err
		}
		l, err := d.write(ctx, g, http.MethodPost, guestPath(g)+"/snapshot", params, typ, landed)
		lost = lost || l
		if err != nil && lost && alreadyUsed(err) {
			// A retry after a lost answer ran into the snapshot the first request made.
			if ok, ferr := landed(ctx); ferr == nil && ok {
				return nil
			}
		}
		return err
	})
	if err != nil {
		var te *taskError
		switch {
		case errors.As(err, &te) && strings.Contains(te.exit, "snapshot feature is not available"):
			err = fmt.Errorf("%w: a disk's storage cannot take snapshots (LVM thick, raw images on directory/NFS/CIFS storage, iSCSI): move the disks to LVM-thin, ZFS, Ceph RBD or qcow2, or exclude the guest: %w", err, driver.ErrUnsupported)
		case errors.As(err, &te) && alreadyUsed(err):
			err = fmt.Errorf("%w: a snapshot named %s already exists", err, opts.Name)
		}
		return driver.Snapshot{}, fmt.Errorf("%s: snapshot %s: %w", guestName(g), opts.Name, err)
	}
	e, ok, err := d.find(ctx, g, opts.Name)
	if err != nil || !ok {
		if err == nil {
			err = errors.New("PVE reported success but does not list it")
		}
		return driver.Snapshot{}, fmt.Errorf("%s: snapshot %s: reading it back: %w", guestName(g), opts.Name, err)
	}
	s := toSnapshots([]snapEntry{e})[0]
	s.Consistency = cons
	s.Current = true
	return s, nil
}

func alreadyUsed(err error) bool {
	var te *taskError
	return errors.As(err, &te) && strings.Contains(te.exit, "already used")
}

// CheckSnapshot reports, without changing anything, whether PVE can snapshot the
// guest at all: an error wrapping driver.ErrUnsupported names the reason (a template,
// a passthrough device, a container bind or device mount), so that a caller can skip
// the guest before running hooks, as cv4pve-autosnap does.
func (d *Driver) CheckSnapshot(ctx context.Context, g driver.Guest) error {
	cfg, err := d.config(ctx, g)
	if err == nil {
		err = d.checkSnapshottable(g, cfg, driver.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("%s: %w", guestName(g), err)
	}
	return nil
}

// checkSnapshottable applies the checks PVE would only report as a failed task, and
// the quiesce promise.
func (d *Driver) checkSnapshottable(g driver.Guest, cfg *guestConfig, opts driver.CreateOptions) error {
	if cfg.Template {
		return fmt.Errorf("it is a template: Proxmox VE does not snapshot templates: %w", driver.ErrUnsupported)
	}
	var whys []string
	for _, disk := range cfg.Disks {
		if why := disk.unsupported(); why != "" {
			whys = append(whys, why)
		}
	}
	if len(whys) > 0 {
		return fmt.Errorf("cannot snapshot: %s; Proxmox VE snapshots only storage volumes: exclude the guest (--vmid …,-%d) or move the data to a volume: %w", strings.Join(whys, ", "), g.ID, driver.ErrUnsupported)
	}
	if !opts.Quiesce {
		return nil
	}
	switch {
	case g.Kind == driver.KindLXC:
		return fmt.Errorf("cannot quiesce: containers have no guest agent (Proxmox VE freezes a running container's processes itself): %w", driver.ErrAgent)
	case !cfg.Agent.Enabled:
		return fmt.Errorf("cannot quiesce: %s: %w", agentDisabledAdvice(g, cfg.Agent), driver.ErrAgent)
	case cfg.Agent.NoFreeze:
		return fmt.Errorf("cannot quiesce: its agent option %q disables the filesystem freeze: %w", cfg.Agent.Raw, driver.ErrAgent)
	}
	return nil
}

// agentDisabledAdvice is cv4pve-autosnap's warning about VMs without the agent.
func agentDisabledAdvice(g driver.Guest, a agentConfig) string {
	opt := "not set"
	if a.Raw != "" {
		opt = fmt.Sprintf("%q", a.Raw)
	}
	return fmt.Sprintf("the QEMU guest agent is not enabled in its options (agent %s), so Proxmox VE cannot freeze its filesystems: consider enabling it (qm set %d --agent 1, and install qemu-guest-agent in the guest), see https://pve.proxmox.com/wiki/Qemu-guest-agent", opt, g.ID)
}

// consistency predicts how PVE will capture the disks: it freezes a running VM's
// filesystems for a snapshot without RAM when the agent is enabled, does not forbid
// freezing, and answers.
func (d *Driver) consistency(ctx context.Context, g driver.Guest, cfg *guestConfig, opts driver.CreateOptions, vmstate bool) driver.Consistency {
	switch {
	case !g.State.Active():
		return driver.ConsistencyOffline
	case g.Kind != driver.KindQEMU || vmstate || !cfg.Agent.Enabled || cfg.Agent.NoFreeze || g.State != driver.StateRunning:
		return driver.ConsistencyCrash
	case opts.Quiesce:
		// The caller pinged the agent just before.
		return driver.ConsistencyQuiesced
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if d.ping(pctx, g) != nil {
		return driver.ConsistencyCrash
	}
	return driver.ConsistencyQuiesced
}

// find returns the snapshot entry called name.
func (d *Driver) find(ctx context.Context, g driver.Guest, name string) (snapEntry, bool, error) {
	es, err := d.listRaw(ctx, g)
	if err != nil {
		return snapEntry{}, false, err
	}
	for _, e := range es {
		if e.Name == name && name != "current" {
			return e, true, nil
		}
	}
	return snapEntry{}, false, nil
}

// write sends a request that starts a task of typ and waits for the task. When the
// answer was lost to a dying host, it looks on the next host for the task the request
// may have started, then asks landed whether the change is already visible, and only
// then sends the request again. lost reports whether that happened.
func (d *Driver) write(ctx context.Context, g driver.Guest, method, path string, params url.Values, typ string, landed func(context.Context) (bool, error)) (lost bool, err error) {
	for {
		t0 := time.Now()
		var raw string
		res, err := d.c.do(ctx, method, path, params, &raw)
		if res.lost {
			lost = true
			if u, ok, ferr := d.findTask(ctx, g, typ, t0); ferr == nil && ok {
				return lost, d.wait(ctx, u)
			}
			if landed == nil {
				// No way to tell whether it happened (a rollback): repeating a
				// destructive write is worse than reporting the lost answer.
				return lost, fmt.Errorf("%s %s: the answer was lost when the host failed and no task for it was found; check the guest before retrying: %w", method, path, err)
			}
			if ok, lerr := landed(ctx); lerr == nil && ok {
				return lost, nil
			}
			if ctx.Err() != nil {
				return lost, err
			}
			continue
		}
		if err != nil {
			return lost, err
		}
		u, err := parseUPID(raw)
		if err != nil {
			return lost, fmt.Errorf("%s %s: %w", method, path, err)
		}
		return lost, d.wait(ctx, u)
	}
}

// DeleteSnapshot implements driver.Driver. A missing snapshot gives an error wrapping
// driver.ErrNotFound; a locked guest is retried until ctx ends.
//
// It does not pass force=1 (cv4pve-autosnap does): force drops the snapshot from
// the config even when removing the disk snapshots fails, leaving storage snapshots
// nobody tracks, and bypasses the replication check, breaking replication jobs that
// still need the snapshot. Without force a failure is reported and nothing is lost.
func (d *Driver) DeleteSnapshot(ctx context.Context, g driver.Guest, name string) error {
	lost := false
	typ := map[driver.Kind]string{driver.KindQEMU: "qmdelsnapshot", driver.KindLXC: "vzdelsnapshot"}[g.Kind]
	err := d.retryLocked(ctx, g, func() error {
		cfg, err := d.config(ctx, g)
		if err != nil {
			return err
		}
		if cfg.Lock != "" {
			return &lockedError{cfg.Lock}
		}
		landed := func(ctx context.Context) (bool, error) {
			_, ok, err := d.find(ctx, g, name)
			return !ok, err
		}
		l, err := d.write(ctx, g, http.MethodDelete, guestPath(g)+"/snapshot/"+url.PathEscape(name), nil, typ, landed)
		lost = lost || l
		return err
	})
	var te *taskError
	if errors.As(err, &te) && strings.Contains(te.exit, "does not exist") {
		if lost {
			// The request whose answer was lost removed it.
			return nil
		}
		err = fmt.Errorf("%w: %w", err, driver.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("%s: removing snapshot %s: %w", guestName(g), name, notFound(err))
	}
	return nil
}

// RevertSnapshot implements driver.Driver. PVE stops a running guest hard before a
// rollback, so a running guest needs opts.Force. opts.Running starts the guest
// afterwards (PVE always starts a VM reverted to a snapshot with RAM); PVE cannot
// leave a guest paused, so opts.Paused is unsupported.
func (d *Driver) RevertSnapshot(ctx context.Context, g driver.Guest, name string, opts driver.RevertOptions) error {
	if opts.Paused {
		return fmt.Errorf("%s: Proxmox VE cannot revert to a paused guest: %w", guestName(g), driver.ErrUnsupported)
	}
	if g.State.Active() && !opts.Force {
		return fmt.Errorf("%s is %s: reverting stops it hard first; stop it or force the revert", guestName(g), g.State)
	}
	typ := map[driver.Kind]string{driver.KindQEMU: "qmrollback", driver.KindLXC: "vzrollback"}[g.Kind]
	err := d.retryLocked(ctx, g, func() error {
		cfg, err := d.config(ctx, g)
		if err != nil {
			return err
		}
		if cfg.Lock != "" {
			return &lockedError{cfg.Lock}
		}
		params := url.Values{}
		if opts.Running {
			params.Set("start", "1")
		}
		_, err = d.write(ctx, g, http.MethodPost, guestPath(g)+"/snapshot/"+url.PathEscape(name)+"/rollback", params, typ, nil)
		return err
	})
	var te *taskError
	if errors.As(err, &te) && strings.Contains(te.exit, "does not exist") {
		err = fmt.Errorf("%w: %w", err, driver.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("%s: reverting to snapshot %s: %w", guestName(g), name, err)
	}
	return nil
}
