package proxmox

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/autosnap/autosnap/internal/driver"
)

// resource is one entry of GET /cluster/resources.
type resource struct {
	Type     string `json:"type"`
	VMID     pveInt `json:"vmid"`
	Name     string `json:"name"`
	Node     string `json:"node"`
	Status   string `json:"status"`
	Template pveInt `json:"template"`
	Tags     string `json:"tags"`
	Pool     string `json:"pool"`
	Lock     string `json:"lock"`
	Storage  string `json:"storage"`
	Disk     pveInt `json:"disk"`
	MaxDisk  pveInt `json:"maxdisk"`
}

// Guests implements driver.Driver: every QEMU VM and LXC container of the cluster from
// /cluster/resources. A guest on an offline node has State unknown (and, as PVE
// reports it, often no name). Running VMs that QEMU reports paused are StatePaused.
func (d *Driver) Guests(ctx context.Context) ([]driver.Guest, error) {
	var rs []resource
	if err := d.c.get(ctx, "/cluster/resources", url.Values{"type": {"vm"}}, &rs); err != nil {
		return nil, fmt.Errorf("listing guests: %w", err)
	}
	var gs []driver.Guest
	for _, r := range rs {
		kind := driver.Kind(r.Type)
		if kind != driver.KindQEMU && kind != driver.KindLXC {
			continue
		}
		g := driver.Guest{
			Node: r.Node, ID: int(r.VMID), Name: r.Name, Kind: kind,
			Template: r.Template != 0, Tags: splitTags(r.Tags), State: mapStatus(r.Status),
		}
		if r.Pool != "" {
			g.Pools = []string{r.Pool}
		}
		gs = append(gs, g)
	}
	if err := d.refinePaused(ctx, gs); err != nil {
		return nil, err
	}
	sort.SliceStable(gs, func(i, j int) bool {
		if gs[i].Node != gs[j].Node {
			return gs[i].Node < gs[j].Node
		}
		return gs[i].ID < gs[j].ID
	})
	return gs, nil
}

func mapStatus(s string) driver.State {
	switch s {
	case "running":
		return driver.StateRunning
	case "stopped":
		return driver.StateShutoff
	case "paused":
		return driver.StatePaused
	case "suspended", "prelaunch":
		return driver.StatePaused
	}
	return driver.StateUnknown
}

// qmpState maps QEMU's run state (qmpstatus) of a VM PVE calls running.
func qmpState(s string) driver.State {
	switch s {
	case "", "running":
		return driver.StateRunning
	case "paused", "suspended", "prelaunch", "inmigrate", "postmigrate", "finish-migrate", "restore-vm", "save-vm", "debug", "watchdog", "io-error":
		return driver.StatePaused
	case "shutdown":
		return driver.StateShutdown
	case "internal-error", "guest-panicked":
		return driver.StateCrashed
	}
	return driver.StateRunning
}

func splitTags(s string) []string {
	tags := []string{}
	for _, t := range strings.FieldsFunc(s, func(r rune) bool { return r == ';' || r == ',' || r == ' ' }) {
		tags = append(tags, t)
	}
	return tags
}

// refinePaused asks each node with running VMs for QEMU's own state, because PVE's
// status is "running" for a paused VM too: one GET …/qemu?full=1 per node, and
// …/status/current for VMs whose qmpstatus that list lacks. A VM whose node does not
// answer keeps PVE's status.
func (d *Driver) refinePaused(ctx context.Context, gs []driver.Guest) error {
	byNode := map[string][]int{}
	for i, g := range gs {
		if g.Kind == driver.KindQEMU && g.State == driver.StateRunning {
			byNode[g.Node] = append(byNode[g.Node], i)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for node, idx := range byNode {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var list []struct {
				VMID      pveInt `json:"vmid"`
				QMPStatus string `json:"qmpstatus"`
			}
			qmp := map[int]string{}
			if err := d.c.get(ctx, "/nodes/"+url.PathEscape(node)+"/qemu", url.Values{"full": {"1"}}, &list); err != nil {
				return // the node does not answer; asking per VM would not either
			}
			for _, e := range list {
				qmp[int(e.VMID)] = e.QMPStatus
			}
			sem := make(chan struct{}, 8)
			var inner sync.WaitGroup
			for _, i := range idx {
				if st := qmp[gs[i].ID]; st != "" {
					mu.Lock()
					gs[i].State = qmpState(st)
					mu.Unlock()
					continue
				}
				inner.Add(1)
				go func() {
					defer inner.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					var cur struct {
						QMPStatus string `json:"qmpstatus"`
					}
					if err := d.c.get(ctx, guestPath(gs[i])+"/status/current", nil, &cur); err != nil {
						return
					}
					mu.Lock()
					gs[i].State = qmpState(cur.QMPStatus)
					mu.Unlock()
				}()
			}
			inner.Wait()
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return fmt.Errorf("listing guests: %w", ctx.Err())
	}
	return nil
}

// guestPath is the API path of a guest: /nodes/NODE/qemu/ID or /nodes/NODE/lxc/ID.
func guestPath(g driver.Guest) string {
	kind := g.Kind
	if kind == "" {
		kind = driver.KindQEMU
	}
	return "/nodes/" + url.PathEscape(g.Node) + "/" + string(kind) + "/" + strconv.Itoa(g.ID)
}

// guestName names a guest in messages: "VM 100 (web1)" or "CT 101 (db)".
func guestName(g driver.Guest) string {
	k := "VM"
	if g.Kind == driver.KindLXC {
		k = "CT"
	}
	if g.Name == "" {
		return fmt.Sprintf("%s %d", k, g.ID)
	}
	return fmt.Sprintf("%s %d (%s)", k, g.ID, g.Name)
}

// guestConfig is the parts of a guest's current config the driver needs.
type guestConfig struct {
	raw      map[string]pveString
	Lock     string
	Template bool
	Agent    agentConfig
	Disks    []diskRef
}

// diskRef is one disk-like config entry.
type diskRef struct {
	Key     string // scsi0, rootfs, mp1 …
	Volume  string // local-lvm:vm-100-disk-0, /dev/sdb, /srv/data
	Storage string // local-lvm; empty for paths
}

// path reports a disk that is a host path rather than a PVE volume: a passthrough
// device or a container bind/device mount. PVE cannot snapshot those.
func (r diskRef) path() bool { return strings.HasPrefix(r.Volume, "/") }

// unsupported describes why PVE cannot snapshot this disk, or "".
func (r diskRef) unsupported() string {
	if !r.path() {
		return ""
	}
	switch {
	case strings.HasPrefix(r.Key, "mp") && strings.HasPrefix(r.Volume, "/dev/"):
		return fmt.Sprintf("%s is a device mount (%s)", r.Key, r.Volume)
	case strings.HasPrefix(r.Key, "mp"):
		return fmt.Sprintf("%s is a bind mount (%s)", r.Key, r.Volume)
	}
	return fmt.Sprintf("%s is a passthrough device (%s)", r.Key, r.Volume)
}

var diskKey = regexp.MustCompile(`^(efidisk|tpmstate|virtio|ide|scsi|sata|mp)\d+$`)

// config reads a guest's current config. A missing guest gives an error wrapping
// driver.ErrNotFound.
func (d *Driver) config(ctx context.Context, g driver.Guest) (*guestConfig, error) {
	var raw map[string]pveString
	if err := d.c.get(ctx, guestPath(g)+"/config", nil, &raw); err != nil {
		return nil, fmt.Errorf("reading its config: %w", notFound(err))
	}
	return parseConfig(raw), nil
}

func parseConfig(raw map[string]pveString) *guestConfig {
	c := &guestConfig{raw: raw, Lock: string(raw["lock"])}
	c.Template = string(raw["template"]) == "1"
	c.Agent = parseAgent(string(raw["agent"]))
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k != "rootfs" && !diskKey.MatchString(k) {
			continue
		}
		if ref, ok := parseDisk(k, string(raw[k])); ok {
			c.Disks = append(c.Disks, ref)
		}
	}
	return c
}

// parseDisk parses a disk property string such as
// "local-lvm:vm-100-disk-0,iothread=1,size=32G" or "/srv/data,mp=/data". CD-ROM
// drives and empty drives are not disks.
func parseDisk(key, v string) (diskRef, bool) {
	var volume string
	cdrom := false
	for i, part := range strings.Split(v, ",") {
		k, val, hasEq := strings.Cut(part, "=")
		switch {
		case i == 0 && !hasEq:
			volume = part
		case k == "file" || k == "volume":
			volume = val
		case k == "media" && val == "cdrom":
			cdrom = true
		}
	}
	if cdrom || volume == "" || volume == "none" || volume == "cdrom" {
		return diskRef{}, false
	}
	ref := diskRef{Key: key, Volume: volume}
	if !ref.path() {
		if st, _, ok := strings.Cut(volume, ":"); ok {
			ref.Storage = st
		}
	}
	return ref, true
}

// agentConfig is a VM's parsed agent option.
type agentConfig struct {
	Enabled bool
	// NoFreeze is set when freeze-fs (or its aliases) is 0: PVE then takes snapshots
	// without freezing even though the agent runs.
	NoFreeze bool
	Raw      string
}

// parseAgent parses the agent property string: "1", "0", "enabled=1,type=virtio",
// "1,freeze-fs=0". A missing option means disabled.
func parseAgent(v string) agentConfig {
	a := agentConfig{Raw: v}
	for i, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		k, val, hasEq := strings.Cut(part, "=")
		if !hasEq {
			if i == 0 {
				a.Enabled = pveBool(part)
			}
			continue
		}
		switch strings.ToLower(k) {
		case "enabled":
			a.Enabled = pveBool(val)
		case "freeze-fs", "freeze-fs-on-backup", "guest-fsfreeze":
			// Older PVE applied freeze-fs-on-backup to backups only; reporting
			// crash consistency when unsure is the safe side.
			if !pveBool(val) {
				a.NoFreeze = true
			}
		}
	}
	return a
}

// pveBool parses a boolean inside a property string.
func pveBool(s string) bool {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "on", "yes", "true":
		return true
	}
	return false
}

// notFound marks API errors that mean the guest or snapshot does not exist.
func notFound(err error) error {
	var ae *apiError
	if errors.As(err, &ae) && isNotFoundMsg(ae.Msg) {
		return fmt.Errorf("%w: %w", err, driver.ErrNotFound)
	}
	return err
}

func isNotFoundMsg(msg string) bool {
	return strings.Contains(msg, "does not exist") || strings.Contains(msg, "no such VM") || strings.Contains(msg, "not found")
}
