package pveemu

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func confPath(nodeName, kind string, vmid int) string {
	if kind == "lxc" {
		return fmt.Sprintf("nodes/%s/lxc/%d.conf", nodeName, vmid)
	}
	return fmt.Sprintf("nodes/%s/qemu-server/%d.conf", nodeName, vmid)
}

func confMissing(nodeName, kind string, vmid int) string {
	return fmt.Sprintf("Configuration file '%s' does not exist", confPath(nodeName, kind, vmid))
}

func lockedMsg(kind, lock string) string {
	if kind == "lxc" {
		return fmt.Sprintf("CT is locked (%s)", lock)
	}
	return fmt.Sprintf("VM is locked (%s)", lock)
}

// guestFor returns the guest {vmid} of this kind on {node} (c.mu held), or nil: the
// config file lives under the node, so a guest on another node "does not exist" (§4.1).
func (rc *reqCtx) guestFor(kind string) (*guest, int) {
	vmid, _ := strconv.Atoi(rc.p["vmid"])
	g := rc.c.guests[vmid]
	if g == nil || g.node != rc.p["node"] || g.kind != kind {
		return nil, vmid
	}
	return g, vmid
}

func (rc *reqCtx) mustGuest(kind string) (*guest, *apiError) {
	g, vmid := rc.guestFor(kind)
	if g == nil {
		return nil, errf(500, "%s", confMissing(rc.p["node"], kind, vmid))
	}
	return g, nil
}

// numericKeys are config keys of type integer, rendered as JSON numbers (§1.3).
var numericKeys = map[string]bool{
	"cores": true, "sockets": true, "template": true, "onboot": true, "balloon": true,
	"cpuunits": true, "numa": true, "vcpus": true, "tablet": true, "kvm": true, "acpi": true,
	"protection": true, "swap": true, "unprivileged": true, "snaptime": true, "shares": true,
}

func (c *Cluster) renderConfig(kind string, cfg map[string]string) map[string]any {
	out := make(map[string]any, len(cfg))
	for k, v := range cfg {
		if numericKeys[k] || (k == "memory" && (kind == "lxc" || !c.atLeast(8, 1, 0))) {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				out[k] = n
				continue
			}
		}
		out[k] = v
	}
	return out
}

// digest is the SHA-1 of the config file content (§6.1).
func (g *guest) digest() string {
	h := sha1.New()
	write := func(cfg map[string]string) {
		for _, k := range sortedKeys(cfg) {
			fmt.Fprintf(h, "%s: %s\n", k, cfg[k])
		}
	}
	write(g.config)
	fmt.Fprintf(h, "lock: %s\nparent: %s\n", g.lock, g.parent)
	for _, s := range g.sortedSnaps() {
		fmt.Fprintf(h, "[%s]\nsnaptime: %d\nsnapstate: %s\nparent: %s\n", s.name, s.snaptime, s.snapstate, s.parent)
		write(s.config)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// GET /nodes/{node}/{qemu,lxc}/{vmid}/config (§4.4 alternative, §6.1).
func hConfig(kind string) func(rc *reqCtx) (any, *int, *apiError) {
	return func(rc *reqCtx) (any, *int, *apiError) {
		c := rc.c
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := rc.p["snapshot"]; ok && rc.p["current"] == "1" {
			return nil, nil, paramErr(map[string]string{
				"snapshot": "option conflicts with option 'current'",
				"current":  "option conflicts with option 'snapshot'",
			})
		}
		g, aerr := rc.mustGuest(kind)
		if aerr != nil {
			return nil, nil, aerr
		}
		if sn, ok := rc.p["snapshot"]; ok {
			s := g.snaps[sn]
			if s == nil {
				return nil, nil, errf(500, "snapshot '%s' does not exist", sn)
			}
			out := c.snapSection(g, s)
			out["digest"] = g.digest()
			return out, nil, nil
		}
		out := c.renderConfig(kind, g.config)
		out["digest"] = g.digest()
		if g.lock != "" {
			out["lock"] = g.lock
		}
		if g.parent != "" {
			out["parent"] = g.parent
		}
		return out, nil, nil
	}
}

func (c *Cluster) snapSection(g *guest, s *snapshot) map[string]any {
	out := c.renderConfig(g.kind, s.config)
	out["snaptime"] = s.snaptime
	if s.description != "" {
		out["description"] = s.description
	}
	if s.parent != "" {
		out["parent"] = s.parent
	} else {
		delete(out, "parent")
	}
	if s.vmstate != "" {
		out["vmstate"] = s.vmstate
		out["runningmachine"] = "pc-i440fx-9.0+pve0"
		out["runningcpu"] = "kvm64,enforce,+kvm_pv_eoi,+kvm_pv_unhalt,+lahf_lm,+sep"
	}
	if s.snapstate != "" {
		out["snapstate"] = s.snapstate
	}
	return out
}

// vmStats is API2Tools::extract_vm_stats: the RRD-based fields (§3.1). Without RRD data
// (offline node) only id, vmid, node, type and status "unknown" remain.
func (c *Cluster) vmStats(g *guest) map[string]any {
	e := map[string]any{
		"id": fmt.Sprintf("%s/%d", g.kind, g.vmid), "vmid": g.vmid, "node": g.node, "type": g.kind,
	}
	if n := c.nodes[g.node]; n == nil || !n.online {
		e["status"] = "unknown"
		return e
	}
	running := g.status != "stopped"
	e["name"] = g.name()
	e["status"] = map[bool]string{true: "running", false: "stopped"}[running]
	e["template"] = b2i(g.template())
	e["maxcpu"] = g.cores()
	e["maxmem"] = g.maxmem()
	e["maxdisk"] = g.maxdisk()
	e["disk"] = 0
	e["uptime"], e["cpu"], e["mem"], e["netin"], e["netout"], e["diskread"], e["diskwrite"] = 0, 0, 0, 0, 0, 0, 0
	if running {
		up := int64(time.Since(g.boot).Seconds())
		e["uptime"] = up
		e["cpu"] = 0.01 + float64(g.vmid%13)/1000
		e["mem"] = g.maxmem() / 100 * uint64(30+g.vmid%40)
		e["netin"] = up * 1500
		e["netout"] = up * 400
		e["diskread"] = up * 9000
		e["diskwrite"] = up * 7000
		if g.kind == "lxc" {
			e["disk"] = g.maxdisk() / 100 * uint64(20+g.vmid%30)
		}
	}
	if g.kind == "qemu" && running {
		e["memhost"] = e["mem"]
	}
	return e
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// GET /nodes/{node}/{qemu,lxc} (§3.4).
func hGuestList(kind string) func(rc *reqCtx) (any, *int, *apiError) {
	return func(rc *reqCtx) (any, *int, *apiError) {
		c := rc.c
		c.mu.Lock()
		defer c.mu.Unlock()
		out := []map[string]any{}
		for _, vmid := range slices.Sorted(maps.Keys(c.guests)) {
			g := c.guests[vmid]
			if g.node != rc.p["node"] || g.kind != kind || !c.hasPriv(rc.authid, "VM.Audit") {
				continue
			}
			e := c.vmStats(g)
			delete(e, "id")
			delete(e, "node")
			if !g.template() {
				delete(e, "template")
			}
			e["cpus"] = e["maxcpu"]
			delete(e, "maxcpu")
			if g.lock != "" {
				e["lock"] = g.lock
			}
			if t := g.config["tags"]; t != "" {
				e["tags"] = t
			}
			if g.status != "stopped" {
				e["pid"] = 1000 + g.vmid
			}
			if kind == "lxc" {
				e["type"] = "lxc"
				e["maxswap"] = 512 << 20
			} else {
				delete(e, "type")
			}
			out = append(out, e)
		}
		return out, nil, nil
	}
}

// GET …/{vmid}/status/current (§3.4, §6.1).
func hStatusCurrent(kind string) func(rc *reqCtx) (any, *int, *apiError) {
	return func(rc *reqCtx) (any, *int, *apiError) {
		c := rc.c
		c.mu.Lock()
		defer c.mu.Unlock()
		g, aerr := rc.mustGuest(kind)
		if aerr != nil {
			return nil, nil, aerr
		}
		e := c.vmStats(g)
		delete(e, "id")
		delete(e, "node")
		delete(e, "type")
		e["cpus"] = e["maxcpu"]
		delete(e, "maxcpu")
		if !g.template() {
			delete(e, "template")
		}
		e["ha"] = map[string]any{"managed": 0}
		if g.lock != "" {
			e["lock"] = g.lock
		}
		if t := g.config["tags"]; t != "" {
			e["tags"] = t
		}
		running := g.status != "stopped"
		if running {
			e["pid"] = 1000 + g.vmid
		}
		if kind == "qemu" {
			e["qmpstatus"] = map[string]string{"running": "running", "paused": "paused", "stopped": "stopped"}[g.status]
			if agentEnabled(g.config["agent"]) {
				e["agent"] = 1
			}
			if running {
				e["running-qemu"] = "9.0.2"
				e["running-machine"] = "pc-i440fx-9.0+pve0"
			}
		} else {
			e["type"] = "lxc"
			e["maxswap"] = 512 << 20
			e["swap"] = 0
		}
		return e, nil, nil
	}
}

// GET …/{vmid}/snapshot (§4.1): arbitrary order (Go map order), "current" last.
func hSnapList(kind string) func(rc *reqCtx) (any, *int, *apiError) {
	return func(rc *reqCtx) (any, *int, *apiError) {
		c := rc.c
		c.mu.Lock()
		defer c.mu.Unlock()
		g, aerr := rc.mustGuest(kind)
		if aerr != nil {
			return nil, nil, aerr
		}
		out := []map[string]any{}
		for _, s := range g.snaps { // no defined order, like a Perl hash
			e := map[string]any{"name": s.name, "snaptime": s.snaptime, "description": s.description}
			if s.parent != "" {
				e["parent"] = s.parent
			}
			if s.snapstate != "" {
				e["snapstate"] = s.snapstate
			}
			if kind == "qemu" {
				e["vmstate"] = b2i(s.vmstate != "")
			}
			out = append(out, e)
		}
		cur := map[string]any{
			"name": "current", "description": "You are here!", "digest": g.digest(),
			"running": b2i(g.status != "stopped"),
		}
		if g.parent != "" {
			cur["parent"] = g.parent
		}
		out = append(out, cur)
		return out, nil, nil
	}
}

func (c *Cluster) takeFail(vmid int) string {
	f, ok := c.failNext[vmid]
	if ok {
		delete(c.failNext, vmid)
	}
	return f
}

// POST …/{vmid}/snapshot (§4.2): synchronous checks, then a task.
func hSnapCreate(kind string) func(rc *reqCtx) (any, *int, *apiError) {
	return func(rc *reqCtx) (any, *int, *apiError) {
		c := rc.c
		c.mu.Lock()
		defer c.mu.Unlock()
		name := rc.p["snapname"]
		if name == "current" || (kind == "qemu" && strings.EqualFold(name, "pending")) || (kind == "lxc" && name == "vzdump") {
			return nil, nil, errf(500, "unable to use snapshot name '%s' (reserved name)", name)
		}
		g, vmid := rc.guestFor(kind)
		if g == nil && kind == "qemu" {
			return nil, nil, errf(500, "%s", confMissing(rc.p["node"], kind, vmid))
		}
		typ := "qmsnapshot"
		if kind == "lxc" {
			typ = "vzsnapshot"
		}
		t := c.newTask(rc.p["node"], typ, strconv.Itoa(vmid), rc.authid)
		inject := c.takeFail(vmid)
		if g == nil { // LXC forks first (§4.2)
			t.finish(confMissing(rc.p["node"], kind, vmid))
			return t.upid, nil, nil
		}
		if msg := c.snapshotPrepare(g, t, name, rc.p["description"], rc.p["vmstate"] == "1"); msg != "" {
			t.finish(msg)
			return t.upid, nil, nil
		}
		c.schedule(t, func() string { return c.snapshotCommit(g, t, name, inject) })
		return t.upid, nil, nil
	}
}

// snapshotPrepare is AbstractConfig::__snapshot_prepare plus the per-volume log lines;
// it returns the task error, or "" when the snapshot is in progress (c.mu held).
func (c *Cluster) snapshotPrepare(g *guest, t *task, name, desc string, vmstate bool) string {
	if g.template() {
		return "you can't take a snapshot if it's a template"
	}
	if g.lock != "" {
		return lockedMsg(g.kind, g.lock)
	}
	if g.snaps[name] != nil {
		return fmt.Sprintf("snapshot name '%s' already used", name)
	}
	if !c.snapshotCapable(g) {
		return "snapshot feature is not available"
	}
	for _, s := range g.snaps {
		if s.parent == name { // stale reference (§4.2 step 8)
			t.logf("deleting parent '%s' reference from '%s' to avoid bogus snapshot cycle.", name, s.name)
			s.parent = ""
		}
	}
	running := g.status != "stopped"
	s := g.newSnapshot(name, desc, time.Now().Unix())
	g.lock = "snapshot"
	if g.kind == "qemu" {
		if vmstate && running {
			s.vmstate = g.stateVolume(name)
			sid, _, _ := strings.Cut(s.vmstate, ":")
			if st := c.storages[g.node][sid]; st != nil && st.plugin == "lvmthin" {
				t.logf("  Logical volume \"vm-%d-state-%s\" created.", g.vmid, name)
			}
			t.logf("saving VM state and RAM using storage '%s'", sid)
			t.logf("1.00 MiB in 0s")
			t.logf("completed saving the VM state in 1s, saved %.2f GiB", float64(g.maxmem())/float64(1<<30)*0.4)
		} else if running && agentEnabled(g.config["agent"]) {
			answering := g.agentRunning && g.status == "running"
			if c.atLeast(9, 1, 5) {
				switch {
				case !agentFreezeFS(g.config["agent"]):
					t.logf("skipping guest filesystem freeze - disabled in VM options")
				case !answering:
					t.logf("skipping guest filesystem freeze - agent configured but not running?")
				}
			} else if !answering {
				t.logf("QEMU Guest Agent is not running - VM %d qga command 'guest-ping' failed - got timeout", g.vmid)
			}
		}
	}
	for _, k := range g.volumes() {
		sid, vol, _ := volumeOf(g.config[k])
		if g.kind == "qemu" {
			t.logf("snapshotting 'drive-%s' (%s:%s)", k, sid, vol)
		}
		if st := c.storages[g.node][sid]; st != nil && st.plugin == "lvmthin" {
			t.logf("  Logical volume \"snap_%s_%s\" created.", vol, name)
		}
	}
	return ""
}

// snapshotCommit is __snapshot_commit (§4.2 step 15) or the cleanup of a failed create.
func (c *Cluster) snapshotCommit(g *guest, t *task, name, inject string) string {
	if c.guests[g.vmid] != g {
		return confMissing(g.node, g.kind, g.vmid)
	}
	s := g.snaps[name]
	if inject != "" && isFailure(inject) {
		t.logf("snapshot create failed: starting cleanup")
		delete(g.snaps, name)
		if g.lock == "snapshot" {
			g.lock = ""
		}
		return inject
	}
	if g.lock != "snapshot" {
		return "missing snapshot lock"
	}
	if s == nil || s.snapstate != "prepare" {
		return "wrong snapshot state"
	}
	s.snapstate = ""
	g.lock = ""
	g.parent = name
	if inject != "" {
		return inject
	}
	return t.okExit()
}

// DELETE …/snapshot/{snapname} (§4.6): every check happens in the task.
func hSnapDelete(kind string) func(rc *reqCtx) (any, *int, *apiError) {
	return func(rc *reqCtx) (any, *int, *apiError) {
		c := rc.c
		c.mu.Lock()
		defer c.mu.Unlock()
		name := rc.p["snapname"]
		force := rc.p["force"] == "1"
		g, vmid := rc.guestFor(kind)
		typ := "qmdelsnapshot"
		if kind == "lxc" {
			typ = "vzdelsnapshot"
		}
		t := c.newTask(rc.p["node"], typ, strconv.Itoa(vmid), rc.authid)
		inject := c.takeFail(vmid)
		if g == nil {
			t.finish(confMissing(rc.p["node"], kind, vmid))
			return t.upid, nil, nil
		}
		s := g.snaps[name]
		switch {
		case s == nil:
			t.finish(fmt.Sprintf("snapshot '%s' does not exist", name))
			return t.upid, nil, nil
		case g.lock != "":
			t.finish(lockedMsg(kind, g.lock))
			return t.upid, nil, nil
		case g.template():
			t.finish("you can't delete a snapshot if vm is a template")
			return t.upid, nil, nil
		}
		g.lock = "snapshot-delete"
		s.snapstate = "delete"
		c.schedule(t, func() string {
			if c.guests[g.vmid] != g {
				return confMissing(g.node, g.kind, g.vmid)
			}
			if inject != "" && isFailure(inject) && !force {
				return inject // stays locked "snapshot-delete" (§4.6 step 9)
			}
			if s.vmstate != "" {
				if st := c.storages[g.node][strings.SplitN(s.vmstate, ":", 2)[0]]; st != nil && st.plugin == "lvmthin" {
					t.logf("  Logical volume \"vm-%d-state-%s\" successfully removed.", g.vmid, name)
				}
			}
			for _, k := range g.volumes() {
				sid, vol, _ := volumeOf(g.config[k])
				if st := c.storages[g.node][sid]; st != nil && st.plugin == "lvmthin" {
					t.logf("  Logical volume \"snap_%s_%s\" successfully removed.", vol, name)
				}
			}
			if inject != "" && isFailure(inject) { // force: errors are only logged
				t.logf("%s", inject)
			}
			for _, o := range g.snaps {
				if o.parent == name {
					o.parent = s.parent
				}
			}
			if g.parent == name {
				g.parent = s.parent
			}
			delete(g.snaps, name)
			if g.lock == "snapshot-delete" {
				g.lock = ""
			}
			if inject != "" {
				return inject
			}
			return t.okExit()
		})
		return t.upid, nil, nil
	}
}

// POST …/snapshot/{snapname}/rollback (§4.7).
func hSnapRollback(kind string) func(rc *reqCtx) (any, *int, *apiError) {
	return func(rc *reqCtx) (any, *int, *apiError) {
		c := rc.c
		c.mu.Lock()
		defer c.mu.Unlock()
		name := rc.p["snapname"]
		start := rc.p["start"] == "1"
		// qemu-server ≥ May 2026 (PVE 9.2) checks VM.PowerMgmt up front for start=1 (§2.5)
		if start && kind == "qemu" && c.atLeast(9, 2, 0) && !c.hasPriv(rc.authid, "VM.PowerMgmt") {
			return nil, nil, errf(403, "Permission check failed (/vms/%s, VM.PowerMgmt)", rc.p["vmid"])
		}
		g, vmid := rc.guestFor(kind)
		typ := "qmrollback"
		if kind == "lxc" {
			typ = "vzrollback"
		}
		t := c.newTask(rc.p["node"], typ, strconv.Itoa(vmid), rc.authid)
		inject := c.takeFail(vmid)
		if g == nil {
			t.finish(confMissing(rc.p["node"], kind, vmid))
			return t.upid, nil, nil
		}
		s := g.snaps[name]
		if g.template() {
			t.finish("you can't rollback if vm is a template")
			return t.upid, nil, nil
		}
		if s == nil {
			t.finish(fmt.Sprintf("snapshot '%s' does not exist", name))
			return t.upid, nil, nil
		}
		for _, k := range g.volumes() {
			sid, vol, _ := volumeOf(g.config[k])
			st := c.storages[g.node][sid]
			if st == nil || (st.plugin != "zfspool" && st.plugin != "zfs") {
				continue
			}
			for _, o := range g.snaps {
				if o.seq > s.seq {
					t.finish(fmt.Sprintf("can't rollback, '%s' is not most recent snapshot on '%s:%s'", name, sid, vol))
					return t.upid, nil, nil
				}
			}
		}
		if s.snapstate != "" {
			t.finish(fmt.Sprintf("unable to rollback to incomplete snapshot (snapstate = %s)", s.snapstate))
			return t.upid, nil, nil
		}
		if g.lock != "" {
			t.finish(lockedMsg(kind, g.lock))
			return t.upid, nil, nil
		}
		g.lock = "rollback"
		if g.status != "stopped" { // hard stop (§4.7)
			g.status = "stopped"
		}
		c.schedule(t, func() string {
			if c.guests[g.vmid] != g {
				return confMissing(g.node, g.kind, g.vmid)
			}
			if inject != "" && isFailure(inject) {
				return inject // stays locked "rollback"
			}
			for _, k := range g.volumes() {
				sid, vol, _ := volumeOf(g.config[k])
				if st := c.storages[g.node][sid]; st != nil && st.plugin == "lvmthin" {
					t.logf("  Logical volume \"%s\" successfully removed.", vol)
					t.logf("  Logical volume \"%s\" created.", vol)
				}
			}
			keep := map[string]string{}
			for k, v := range g.config {
				if k == "description" || strings.HasPrefix(k, "unused") {
					keep[k] = v
				}
			}
			g.config = maps.Clone(s.config)
			maps.Copy(g.config, keep)
			if kind == "qemu" {
				g.config["vmgenid"] = fakeUUID(c.secret, g.vmid, fmt.Sprintf("vmgenid-%d", time.Now().UnixNano()))
			}
			g.disks = cloneDisks(s.disks)
			g.parent = name
			g.lock = ""
			if (kind == "qemu" && s.vmstate != "") || start {
				g.status = "running"
				g.boot = time.Now()
				if kind == "qemu" && s.vmstate != "" {
					t.logf("VM %d started with PID %d.", g.vmid, 1000+g.vmid)
				}
			}
			if inject != "" {
				return inject
			}
			return t.okExit()
		})
		return t.upid, nil, nil
	}
}

// GET …/snapshot/{snapname}: the fixed index, even for missing snapshots (§4.3).
func hSnapIndex(rc *reqCtx) (any, *int, *apiError) {
	return []map[string]string{{"cmd": "rollback"}, {"cmd": "config"}}, nil, nil
}

// GET …/snapshot/{snapname}/config (§4.4).
func hSnapConfigGet(kind string) func(rc *reqCtx) (any, *int, *apiError) {
	return func(rc *reqCtx) (any, *int, *apiError) {
		c := rc.c
		c.mu.Lock()
		defer c.mu.Unlock()
		g, aerr := rc.mustGuest(kind)
		if aerr != nil {
			return nil, nil, aerr
		}
		s := g.snaps[rc.p["snapname"]]
		if s == nil {
			return nil, nil, errf(500, "snapshot '%s' does not exist", rc.p["snapname"])
		}
		return c.snapSection(g, s), nil, nil
	}
}

// PUT …/snapshot/{snapname}/config (§4.5): synchronous; no description → null at once.
func hSnapConfigPut(kind string) func(rc *reqCtx) (any, *int, *apiError) {
	return func(rc *reqCtx) (any, *int, *apiError) {
		c := rc.c
		desc, ok := rc.p["description"]
		if !ok {
			return nil, nil, nil
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		g, aerr := rc.mustGuest(kind)
		if aerr != nil {
			return nil, nil, aerr
		}
		if g.lock != "" {
			return nil, nil, errf(500, "%s", lockedMsg(kind, g.lock))
		}
		s := g.snaps[rc.p["snapname"]]
		if s == nil {
			return nil, nil, errf(500, "snapshot '%s' does not exist", rc.p["snapname"])
		}
		s.description = strings.TrimRight(desc, " \t\r\n")
		return nil, nil, nil
	}
}

// GET …/{vmid}/feature?feature=snapshot (QEMU returns nodes too).
func hFeature(kind string) func(rc *reqCtx) (any, *int, *apiError) {
	return func(rc *reqCtx) (any, *int, *apiError) {
		c := rc.c
		c.mu.Lock()
		defer c.mu.Unlock()
		g, aerr := rc.mustGuest(kind)
		if aerr != nil {
			return nil, nil, aerr
		}
		if sn, ok := rc.p["snapname"]; ok && g.snaps[sn] == nil {
			return nil, nil, errf(500, "snapshot '%s' does not exist", sn)
		}
		has := true
		if rc.p["feature"] == "snapshot" {
			has = c.snapshotCapable(g)
		}
		out := map[string]any{"hasFeature": b2i(has)}
		if kind == "qemu" {
			out["nodes"] = []string{g.node}
		}
		return out, nil, nil
	}
}

// POST /nodes/{node}/qemu/{vmid}/agent/ping (§6.2), errors in PVE's order.
func hAgentPing(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	g, aerr := rc.mustGuest("qemu")
	if aerr != nil {
		return nil, nil, aerr
	}
	if _, ok := g.config["agent"]; !ok {
		return nil, nil, errf(500, "No QEMU guest agent configured")
	}
	if g.status == "stopped" {
		return nil, nil, errf(500, "VM %d is not running", g.vmid)
	}
	if !agentEnabled(g.config["agent"]) || !g.agentRunning || g.status != "running" {
		return nil, nil, errf(500, "QEMU guest agent is not running")
	}
	return map[string]any{"result": map[string]any{}}, nil, nil
}

// POST …/{vmid}/status/{start,stop,shutdown,suspend,resume}: power tasks (qmstart…).
func hPower(kind, action string) func(rc *reqCtx) (any, *int, *apiError) {
	return func(rc *reqCtx) (any, *int, *apiError) {
		c := rc.c
		c.mu.Lock()
		defer c.mu.Unlock()
		g, aerr := rc.mustGuest(kind)
		if aerr != nil {
			return nil, nil, aerr
		}
		prefix := "qm"
		if kind == "lxc" {
			prefix = "vz"
		}
		t := c.newTask(rc.p["node"], prefix+action, strconv.Itoa(g.vmid), rc.authid)
		if g.lock != "" && action != "stop" {
			t.finish(lockedMsg(kind, g.lock))
			return t.upid, nil, nil
		}
		switch action {
		case "start":
			if g.status != "stopped" {
				t.finish(fmt.Sprintf("VM %d already running", g.vmid))
				return t.upid, nil, nil
			}
			g.status, g.boot = "running", time.Now()
		case "stop", "shutdown":
			g.status = "stopped"
		case "suspend":
			g.status = "paused"
		case "resume":
			g.status = "running"
		}
		t.finish("OK")
		return t.upid, nil, nil
	}
}
