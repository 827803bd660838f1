package pveemu

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// GET /version (§2.4).
func hVersion(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	v := c.opts.Version
	repo := hmacHex([]byte("repoid"), v)
	if c.atLeast(8, 0, 0) {
		repo = repo[:16]
	} else {
		repo = repo[:8]
	}
	release := fmt.Sprintf("%d.%d", c.version[0], c.version[1])
	return map[string]any{"version": v, "release": release, "repoid": repo}, nil, nil
}

func (c *Cluster) nodeEntry(n *node, withStats bool) map[string]any {
	e := map[string]any{"id": "node/" + n.name, "node": n.name, "type": "node", "level": ""}
	if !n.online {
		e["status"] = "offline"
		return e
	}
	e["status"] = "online"
	if withStats {
		up := int64(time.Since(n.boot).Seconds())
		e["uptime"] = up
		e["cpu"] = 0.042
		e["maxcpu"] = 16
		e["mem"] = uint64(23) << 30
		e["maxmem"] = uint64(64) << 30
		e["disk"] = uint64(12) << 30
		e["maxdisk"] = uint64(100) << 30
		e["cgroup-mode"] = 2
	}
	return e
}

func (c *Cluster) storageAvailable(st *storage) bool {
	n := c.nodes[st.node]
	return n != nil && n.online && st.active && st.enabled
}

// GET /cluster/resources (§3.1): entries are filtered silently by privilege.
func hResources(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	typ := rc.p["type"]
	out := []map[string]any{}
	if typ == "" {
		for _, id := range sortedKeys(c.pools) {
			if !c.hasPriv(rc.authid, "Pool.Audit") {
				continue
			}
			out = append(out, map[string]any{"id": "/pool/" + id, "pool": id, "type": "pool"})
		}
	}
	if typ == "" || typ == "vm" {
		for _, vmid := range slices.Sorted(maps.Keys(c.guests)) {
			g := c.guests[vmid]
			if !c.hasPriv(rc.authid, "VM.Audit") {
				continue
			}
			e := c.vmStats(g)
			if g.lock != "" {
				e["lock"] = g.lock
			}
			if t := g.config["tags"]; t != "" {
				e["tags"] = t
			}
			if p := c.poolOf(vmid); p != "" && c.hasPriv(rc.authid, "Pool.Audit") {
				e["pool"] = p
			}
			out = append(out, e)
		}
	}
	if typ == "" || typ == "node" {
		for _, name := range c.order {
			out = append(out, c.nodeEntry(c.nodes[name], c.hasPriv(rc.authid, "Sys.Audit")))
		}
	}
	if typ == "" || typ == "storage" {
		for _, name := range c.order {
			for _, sid := range sortedKeys(c.storages[name]) {
				st := c.storages[name][sid]
				if !c.hasPriv(rc.authid, "Datastore.Audit") {
					continue
				}
				out = append(out, c.storageResource(st))
			}
		}
	}
	if typ == "" || typ == "sdn" {
		for _, name := range c.order {
			if !c.hasPriv(rc.authid, "SDN.Audit") {
				continue
			}
			status := "ok"
			if !c.nodes[name].online {
				status = "unknown"
			}
			out = append(out, map[string]any{
				"id": "sdn/" + name + "/localnetwork", "sdn": "localnetwork", "node": name,
				"type": "sdn", "status": status,
			})
		}
	}
	return out, nil, nil
}

func (c *Cluster) storageResource(st *storage) map[string]any {
	e := map[string]any{
		"id": fmt.Sprintf("storage/%s/%s", st.node, st.id), "storage": st.id, "node": st.node,
		"type": "storage", "plugintype": st.plugin, "shared": b2i(st.shared), "content": st.content,
	}
	if c.storageAvailable(st) {
		e["status"] = "available"
		e["disk"] = st.used
		e["maxdisk"] = st.total
	} else {
		e["status"] = "unknown"
	}
	return e
}

// GET /cluster/status (§3.3).
func hClusterStatus(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []map[string]any{}
	online := 0
	for _, n := range c.nodes {
		if n.online {
			online++
		}
	}
	if len(c.order) > 1 {
		out = append(out, map[string]any{
			"type": "cluster", "id": "cluster", "name": c.opts.ClusterName, "nodes": len(c.order),
			"version": len(c.order) + 2, "quorate": b2i(online*2 > len(c.order)),
		})
	}
	for i, name := range c.order {
		nodeid := i + 1
		if len(c.order) == 1 {
			nodeid = 0
		}
		out = append(out, map[string]any{
			"type": "node", "id": "node/" + name, "name": name, "nodeid": nodeid,
			"local": b2i(name == rc.entry), "online": b2i(c.nodes[name].online),
			"ip": fmt.Sprintf("10.0.0.%d", i+1), "level": "",
		})
	}
	return out, nil, nil
}

// GET /nodes (§3.2).
func hNodes(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []map[string]any{}
	for _, name := range c.order {
		e := c.nodeEntry(c.nodes[name], c.hasPriv(rc.authid, "Sys.Audit"))
		e["ssl_fingerprint"] = c.fingerprint
		delete(e, "cgroup-mode")
		out = append(out, e)
	}
	return out, nil, nil
}

// GET /nodes/{node}: the directory index.
func hNodeIndex(rc *reqCtx) (any, *int, *apiError) {
	out := []map[string]string{}
	for _, s := range []string{"agent", "apt", "capabilities", "ceph", "certificates", "config", "disks",
		"dns", "execute", "firewall", "hardware", "hosts", "journal", "lxc", "migrateall", "netstat",
		"network", "qemu", "query-url-metadata", "replication", "report", "rrd", "rrddata", "scan",
		"sdn", "services", "spiceshell", "startall", "status", "stopall", "storage", "subscription",
		"syslog", "tasks", "termproxy", "time", "version", "vncshell", "vzdump", "wakeonlan"} {
		out = append(out, map[string]string{"name": s})
	}
	return out, nil, nil
}

// GET /nodes/{node}/status (minimal).
func hNodeStatus(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.hasPriv(rc.authid, "Sys.Audit") {
		return nil, nil, errf(403, "Permission check failed (/nodes/%s, Sys.Audit)", rc.p["node"])
	}
	n := c.nodes[rc.p["node"]]
	v, _, _ := hVersion(rc)
	repo := v.(map[string]any)["repoid"]
	return map[string]any{
		"uptime":     int64(time.Since(n.boot).Seconds()),
		"cpu":        0.042,
		"wait":       0.001,
		"loadavg":    []string{"0.42", "0.38", "0.35"},
		"kversion":   "Linux 6.8.12-1-pve #1 SMP PREEMPT_DYNAMIC PMX 6.8.12-1 (2024-08-05T16:17Z) x86_64",
		"pveversion": fmt.Sprintf("pve-manager/%s/%s", c.opts.Version, repo),
		"memory":     map[string]any{"total": uint64(64) << 30, "used": uint64(23) << 30, "free": uint64(41) << 30},
		"swap":       map[string]any{"total": uint64(8) << 30, "used": 0, "free": uint64(8) << 30},
		"rootfs":     map[string]any{"total": uint64(100) << 30, "used": uint64(12) << 30, "free": uint64(88) << 30, "avail": uint64(83) << 30},
		"cpuinfo":    map[string]any{"cpus": 16, "cores": 8, "sockets": 1, "model": "AMD EPYC 7302P 16-Core Processor", "mhz": "3000.000", "hvm": "1"},
	}, nil, nil
}

func (c *Cluster) storageStatus(st *storage, withID bool) map[string]any {
	e := map[string]any{
		"type": st.plugin, "content": st.content, "enabled": b2i(st.enabled),
		"active": b2i(st.active), "shared": b2i(st.shared),
		"total": uint64(0), "used": uint64(0), "avail": uint64(0),
	}
	if st.active && st.enabled {
		e["total"], e["used"], e["avail"] = st.total, st.used, st.total-min(st.used, st.total)
		if withID && st.total > 0 {
			e["used_fraction"] = float64(st.used) / float64(st.total)
		}
	}
	if withID {
		e["storage"] = st.id
	}
	return e
}

// GET /nodes/{node}/storage (§7.1).
func hStorageList(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	stores := c.storages[rc.p["node"]]
	if sid, ok := rc.p["storage"]; ok && stores[sid] == nil {
		return nil, nil, paramErr(map[string]string{"storage": "No such storage."})
	}
	var want []string
	if ct := rc.p["content"]; ct != "" {
		want = strings.Split(ct, ",")
	}
	out := []map[string]any{}
	for _, st := range stores { // arbitrary order (§1.3)
		if sid, ok := rc.p["storage"]; ok && st.id != sid {
			continue
		}
		if rc.p["enabled"] == "1" && !st.enabled {
			continue
		}
		if want != nil {
			if !st.enabled {
				continue
			}
			has := false
			for _, w := range want {
				if slices.Contains(strings.Split(st.content, ","), w) {
					has = true
				}
			}
			if !has {
				continue
			}
		}
		if !c.hasPriv(rc.authid, "Datastore.Audit") && !c.hasPriv(rc.authid, "Datastore.AllocateSpace") {
			continue
		}
		out = append(out, c.storageStatus(st, true))
	}
	return out, nil, nil
}

// GET /nodes/{node}/storage/{storage}/status (§7.1).
func hStorageStatus(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.storages[rc.p["node"]][rc.p["storage"]]
	if st == nil {
		return nil, nil, paramErr(map[string]string{"storage": "No such storage."})
	}
	return c.storageStatus(st, false), nil, nil
}

func (c *Cluster) poolMembers(p *pool, typ string) []map[string]any {
	members := []map[string]any{}
	for _, vmid := range slices.Sorted(maps.Keys(p.vms)) {
		g := c.guests[vmid]
		if g == nil || (typ != "" && typ != g.kind) {
			continue
		}
		members = append(members, c.vmStats(g))
	}
	if typ == "" || typ == "storage" {
		for _, sid := range sortedKeys(p.storages) {
			for _, name := range c.order { // first node that has it
				if st := c.storages[name][sid]; st != nil {
					members = append(members, c.storageResource(st))
					break
				}
			}
		}
	}
	return members
}

// GET /pools (pve-manager ≥ 8.1: optional poolid and type; nested ids "a/b"). The
// members of a pool are only its own, not those of its sub-pools.
func hPools(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []map[string]any{}
	if id, ok := rc.p["poolid"]; ok {
		p := c.pools[id]
		if p == nil {
			return nil, nil, errf(500, "pool '%s' does not exist", id)
		}
		if !c.hasPriv(rc.authid, "Pool.Audit") {
			return nil, nil, errf(403, "Permission check failed (/pool/%s, Pool.Audit)", id)
		}
		e := map[string]any{"poolid": id, "members": c.poolMembers(p, rc.p["type"])}
		if p.comment != "" {
			e["comment"] = p.comment
		}
		return append(out, e), nil, nil
	}
	for _, id := range sortedKeys(c.pools) {
		if !c.hasPriv(rc.authid, "Pool.Audit") {
			continue
		}
		e := map[string]any{"poolid": id}
		if p := c.pools[id]; p.comment != "" {
			e["comment"] = p.comment
		}
		out = append(out, e)
	}
	return out, nil, nil
}

// GET /pools/{poolid} (deprecated; a nested id needs a '/' in the path, which does not
// match this route, so "GET /pools/a/b" is 501 as on PVE).
func hPool(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	id := rc.p["poolid"]
	p := c.pools[id]
	if p == nil {
		return nil, nil, errf(500, "pool '%s' does not exist", id)
	}
	e := map[string]any{"members": c.poolMembers(p, rc.p["type"])}
	if p.comment != "" {
		e["comment"] = p.comment
	}
	return e, nil, nil
}
