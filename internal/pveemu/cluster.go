// Package pveemu is an in-process emulator of the Proxmox VE REST API (/api2/json), made
// for tests, the driver conformance suite and `make demo-pve`.
//
// It reproduces what a snapshot and retention tool observes from a real PVE cluster: the
// {"data":…} envelope, error reason phrases and status codes (400/401/403/500/501/595/596),
// ticket and API-token authentication with the CSRF check, asynchronous tasks with UPIDs
// and their status/log endpoints, guest locks while a task runs, the snapshot tree with
// its "current" pseudo-entry, /cluster/resources, pools (nested ids allowed), storages and
// the guest agent ping. Every guest disk is a byte array, so tests can prove that
// snapshot, rollback and delete keep or restore data.
//
// A Cluster holds the shared state. Each node can get its own HTTPS endpoint
// (ListenNode); any endpoint serves /nodes/{other}/… as real pveproxy does by proxying,
// including the 595/596 errors when the other node is offline or its API is down.
//
// The behaviour follows /work/shared/reference/proxmox-api.md; section numbers in comments
// ("§4.2") refer to that document.
package pveemu

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options configures a Cluster. The zero value is usable: one node "pve1", user root@pam
// with password "root", version 8.2.4, 200ms tasks.
type Options struct {
	// Nodes are the cluster's node names, e.g. pve1, pve2, pve3. A single node is a
	// standalone host (no cluster entry in /cluster/status, no clustername on login).
	Nodes []string
	// TaskDuration is how long snapshot, rollback and delete tasks stay "running"
	// (default 200ms). Tasks that fail their early checks end at once, as on PVE.
	TaskDuration time.Duration
	// Users maps "user@realm" to a password for ticket authentication
	// (POST /access/ticket).
	Users map[string]string
	// Tokens maps a token id "user@realm!tokenid" to its secret (a UUID), for
	// "Authorization: PVEAPIToken=user@realm!tokenid=secret".
	Tokens map[string]string
	// Version is the pve-manager version reported by /version, e.g. "8.2.4". It selects
	// version-dependent behaviour: the "message" field in error bodies (≥ 8.3, §1.3),
	// "Authentication failed!" as the reason of every ticket/token failure (≥ 9.1.5,
	// §2.2/§2.3), the 16-hex repoid (≥ 8.0) and the freeze log lines (≥ 9.1.5, §6.3).
	Version string
	// AuthFailureDelay is how long every 401 is delayed. Real pveproxy waits about 3s;
	// the default here is 20ms so tests stay fast. A negative value means no delay.
	AuthFailureDelay time.Duration
	// TicketLifetime is how long tickets and CSRF tokens stay valid (default 2h, as PVE).
	TicketLifetime time.Duration
	// ClusterName is reported on login and in /cluster/status when there is more than
	// one node (default "pve-cluster").
	ClusterName string
	// Logf, when set, receives one line per request (for the demo binary).
	Logf func(format string, args ...any)
	// ClusterCA makes every node serve a certificate of its own signed by one cluster
	// CA, as Proxmox VE's pve-ssl.pem is signed by /etc/pve/pve-root-ca.pem (see
	// CACertPEM, NodeFingerprint). Without it every node serves one shared
	// self-signed certificate (Fingerprint).
	ClusterCA bool
}

// Guest describes a guest to add with AddGuest.
type Guest struct {
	Node string
	VMID int
	Name string
	// Kind is "qemu" or "lxc".
	Kind string
	// Status is "running", "stopped" or "paused" (QEMU only; PVE reports it as status
	// running with qmpstatus paused).
	Status   string
	Template bool
	// Tags are stored as PVE does by default: lower-cased, sorted, ';'-separated.
	Tags []string
	// Pool is the pool the guest belongs to; it is created if missing.
	Pool string
	// Agent is the raw QEMU "agent" option, e.g. "1", "enabled=1,fstrim_cloned_disks=1",
	// "0", "1,freeze-fs=0". Empty means the key is absent (never configured).
	Agent string
	// AgentRunning says whether the guest agent answers (guest-ping succeeds).
	AgentRunning bool
	// Disks are config keys with their raw values, e.g. "scsi0":
	// "local-lvm:vm-100-disk-0,size=8G", "rootfs": "local-lvm:subvol-101-disk-0,size=8G",
	// "mp0": "/mnt/host,mp=/data" (bind mount), "ide2": "none,media=cdrom". When empty, a
	// single 8G disk on local-lvm is created. Storages that were not added with
	// AddStorage are created on the guest's node with a type guessed from their name
	// (local-lvm → lvmthin, local-zfs → zfspool, local → dir, ceph/rbd → rbd).
	Disks map[string]string
	// Cores and MemoryMB size the guest (defaults 2 and 2048 for QEMU, 1 and 512 for LXC).
	Cores    int
	MemoryMB int
	// Config holds further raw config keys (e.g. "ostype", "net0", "description").
	Config map[string]string
}

// Snapshot is one snapshot of a guest, as returned by Cluster.Snapshots.
type Snapshot struct {
	Name        string
	Description string
	SnapTime    time.Time
	// VMState reports whether the snapshot includes RAM (QEMU only).
	VMState bool
	Parent  string
	// Snapstate is "prepare" or "delete" while a task works on the snapshot.
	Snapstate string
}

// Request is one API call as the emulator saw it, for asserting what clients sent.
type Request struct {
	Time time.Time
	// Node is the node whose endpoint received the request.
	Node   string
	Method string
	// Path is relative to /api2/json, e.g. "/nodes/pve1/qemu/100/snapshot".
	Path string
	// Params are the merged query and body parameters. Passwords and secrets are
	// replaced by "<redacted>".
	Params map[string]string
	// BodyFormat is "json", "form" or "" (no body).
	BodyFormat string
	// Auth is "ticket", "token" or "none"; AuthID is "user@realm" or
	// "user@realm!tokenid".
	Auth   string
	AuthID string
	// CSRF reports whether a valid CSRFPreventionToken header came with the request.
	CSRF   bool
	Status int
}

// Cluster is the emulated PVE cluster. All methods are safe for concurrent use.
type Cluster struct {
	mu       sync.Mutex
	opts     Options
	version  [3]int
	nodes    map[string]*node
	order    []string
	guests   map[int]*guest
	storages map[string]map[string]*storage // node → id
	pools    map[string]*pool
	tasks    map[string]*task
	taskList []*task
	failNext map[int]string
	privs    map[string]map[string]bool // authid → privileges; absent = everything
	requests []Request
	pid      uint32
	secret   []byte
	closed   bool

	cert        tls.Certificate
	certPool    *x509.CertPool
	fingerprint string
	// With Options.ClusterCA: the CA and each node's certificate (ca.go).
	caPEM     []byte
	nodeCerts map[string]tls.Certificate
}

type node struct {
	name     string
	online   bool
	pstart   uint32
	boot     time.Time
	srv      *http.Server
	addr     string // last address listened on
	up       bool   // endpoint serving
	killed   bool   // endpoint stopped by CloseNode (other nodes get 595 when proxying)
	conns    map[net.Conn]struct{}
	proxyErr *apiError // forced error when proxying to this node
}

type guest struct {
	kind         string
	vmid         int
	node         string
	status       string // running|stopped|paused
	agentRunning bool
	config       map[string]string
	lock         string
	parent       string
	snaps        map[string]*snapshot
	seq          int
	disks        map[string][]byte
	boot         time.Time
}

type snapshot struct {
	name        string
	description string
	snaptime    int64
	parent      string
	vmstate     string // volid of the state volume, "" without RAM
	snapstate   string
	config      map[string]string
	disks       map[string][]byte
	seq         int
}

type storage struct {
	id        string
	node      string
	plugin    string
	total     uint64
	used      uint64
	snapshots bool
	content   string
	shared    bool
	active    bool
	enabled   bool
}

type pool struct {
	id       string
	comment  string
	vms      map[int]bool
	storages map[string]bool
}

// New creates a cluster with the given options. No endpoint listens until ListenNode;
// Handler serves the API in-process.
func New(opts Options) *Cluster {
	if len(opts.Nodes) == 0 {
		opts.Nodes = []string{"pve1"}
	}
	if opts.TaskDuration == 0 {
		opts.TaskDuration = 200 * time.Millisecond
	}
	if opts.Users == nil && opts.Tokens == nil {
		opts.Users = map[string]string{"root@pam": "root"}
	}
	if opts.Version == "" {
		opts.Version = "8.2.4"
	}
	if opts.AuthFailureDelay == 0 {
		opts.AuthFailureDelay = 20 * time.Millisecond
	}
	if opts.TicketLifetime == 0 {
		opts.TicketLifetime = 2 * time.Hour
	}
	if opts.ClusterName == "" {
		opts.ClusterName = "pve-cluster"
	}
	opts.Users = maps.Clone(opts.Users)
	opts.Tokens = maps.Clone(opts.Tokens)
	c := &Cluster{
		opts:     opts,
		version:  parseVersion(opts.Version),
		nodes:    map[string]*node{},
		guests:   map[int]*guest{},
		storages: map[string]map[string]*storage{},
		pools:    map[string]*pool{},
		tasks:    map[string]*task{},
		failNext: map[int]string{},
		privs:    map[string]map[string]bool{},
		pid:      0x000F4A2C,
		secret:   make([]byte, 32),
	}
	if _, err := io.ReadFull(rand.Reader, c.secret); err != nil {
		panic(err)
	}
	now := time.Now()
	for i, n := range opts.Nodes {
		c.nodes[n] = &node{
			name:   n,
			online: true,
			pstart: 0x01C3B7E5 + uint32(i)*0x1000,
			boot:   now.Add(-time.Duration(10+i) * 24 * time.Hour),
			conns:  map[net.Conn]struct{}{},
		}
		c.order = append(c.order, n)
		c.storages[n] = map[string]*storage{}
	}
	c.makeCert()
	if opts.ClusterCA {
		c.makeClusterCA()
	}
	return c
}

func parseVersion(s string) [3]int {
	var v [3]int
	for i, p := range strings.SplitN(s, ".", 3) {
		n, _ := strconv.Atoi(strings.TrimFunc(p, func(r rune) bool { return r < '0' || r > '9' }))
		v[i] = n
	}
	return v
}

// atLeast reports whether the emulated version is ≥ maj.min.patch.
func (c *Cluster) atLeast(maj, min, patch int) bool {
	v := c.version
	if v[0] != maj {
		return v[0] > maj
	}
	if v[1] != min {
		return v[1] > min
	}
	return v[2] >= patch
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

// AddGuest adds (or replaces) a guest. It panics on an unknown node or kind, which is a
// test-setup error.
func (c *Cluster) AddGuest(g Guest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.nodes[g.Node]; !ok {
		panic(fmt.Sprintf("pveemu: AddGuest %d: unknown node %q", g.VMID, g.Node))
	}
	if g.Kind == "" {
		g.Kind = "qemu"
	}
	if g.Kind != "qemu" && g.Kind != "lxc" {
		panic(fmt.Sprintf("pveemu: AddGuest %d: kind must be qemu or lxc, not %q", g.VMID, g.Kind))
	}
	if g.Status == "" {
		g.Status = "stopped"
	}
	if old := c.guests[g.VMID]; old != nil {
		c.removeFromPools(g.VMID)
	}
	gs := &guest{
		kind:         g.Kind,
		vmid:         g.VMID,
		node:         g.Node,
		status:       g.Status,
		agentRunning: g.AgentRunning,
		config:       map[string]string{},
		snaps:        map[string]*snapshot{},
		disks:        map[string][]byte{},
		boot:         time.Now().Add(-time.Duration(g.VMID%97+1) * time.Hour),
	}
	cores, mem := g.Cores, g.MemoryMB
	if g.Kind == "qemu" {
		if cores == 0 {
			cores = 2
		}
		if mem == 0 {
			mem = 2048
		}
		name := g.Name
		if name == "" {
			name = fmt.Sprintf("VM%d", g.VMID)
		}
		gs.config["name"] = name
		gs.config["ostype"] = "l26"
		gs.config["scsihw"] = "virtio-scsi-single"
		gs.config["boot"] = "order=scsi0;net0"
		gs.config["net0"] = fmt.Sprintf("virtio=BC:24:11:%02X:%02X:%02X,bridge=vmbr0", g.VMID>>16&0xff, g.VMID>>8&0xff, g.VMID&0xff)
		gs.config["smbios1"] = fmt.Sprintf("uuid=%s", fakeUUID(c.secret, g.VMID, "smbios"))
		gs.config["vmgenid"] = fakeUUID(c.secret, g.VMID, "vmgenid")
		gs.config["sockets"] = "1"
		if g.Agent != "" {
			gs.config["agent"] = g.Agent
		}
	} else {
		if cores == 0 {
			cores = 1
		}
		if mem == 0 {
			mem = 512
		}
		name := g.Name
		if name == "" {
			name = fmt.Sprintf("CT%d", g.VMID)
		}
		gs.config["hostname"] = name
		gs.config["arch"] = "amd64"
		gs.config["ostype"] = "debian"
		gs.config["swap"] = "512"
		gs.config["unprivileged"] = "1"
		gs.config["net0"] = fmt.Sprintf("name=eth0,bridge=vmbr0,hwaddr=BC:24:11:%02X:%02X:%02X,ip=dhcp,type=veth", g.VMID>>16&0xff, g.VMID>>8&0xff, g.VMID&0xff)
	}
	gs.config["cores"] = strconv.Itoa(cores)
	gs.config["memory"] = strconv.Itoa(mem)
	if g.Template {
		gs.config["template"] = "1"
	}
	if t := normTags(g.Tags); t != "" {
		gs.config["tags"] = t
	}
	disks := g.Disks
	if len(disks) == 0 {
		if g.Kind == "qemu" {
			disks = map[string]string{"scsi0": fmt.Sprintf("local-lvm:vm-%d-disk-0,iothread=1,size=8G", g.VMID)}
		} else {
			disks = map[string]string{"rootfs": fmt.Sprintf("local-lvm:subvol-%d-disk-0,size=8G", g.VMID)}
		}
	}
	for k, v := range disks {
		gs.config[k] = v
		if isDiskKey(g.Kind, k) {
			if sid, _, ok := volumeOf(v); ok {
				c.ensureStorage(g.Node, sid)
			}
			if !isCDROM(v) {
				gs.disks[k] = nil
			}
		}
	}
	for k, v := range g.Config {
		gs.config[k] = v
	}
	c.guests[g.VMID] = gs
	if g.Pool != "" {
		p := c.ensurePool(g.Pool)
		p.vms[g.VMID] = true
	}
}

func fakeUUID(secret []byte, vmid int, salt string) string {
	h := hmacHex(secret, fmt.Sprintf("%s/%d", salt, vmid))
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-a" + h[17:20] + "-" + h[20:32]
}

// normTags lower-cases, de-duplicates and sorts tags and joins them with ';' (§3.1).
func normTags(tags []string) string {
	set := map[string]bool{}
	for _, t := range tags {
		for _, p := range strings.FieldsFunc(t, func(r rune) bool { return r == ';' || r == ',' || r == ' ' }) {
			set[strings.ToLower(p)] = true
		}
	}
	out := slices.Sorted(maps.Keys(set))
	return strings.Join(out, ";")
}

// RemoveGuest deletes a guest (e.g. destroyed by someone else during a run).
func (c *Cluster) RemoveGuest(vmid int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.guests, vmid)
	c.removeFromPools(vmid)
}

func (c *Cluster) removeFromPools(vmid int) {
	for _, p := range c.pools {
		delete(p.vms, vmid)
	}
}

// MoveGuest migrates a guest to another node (instantly), e.g. to test that clients
// re-resolve the node from /cluster/resources.
func (c *Cluster) MoveGuest(vmid int, toNode string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.guests[vmid]
	if g == nil {
		panic(fmt.Sprintf("pveemu: MoveGuest: no guest %d", vmid))
	}
	if _, ok := c.nodes[toNode]; !ok {
		panic(fmt.Sprintf("pveemu: MoveGuest: unknown node %q", toNode))
	}
	g.node = toNode
	for _, k := range slices.Sorted(maps.Keys(g.config)) {
		if isDiskKey(g.kind, k) {
			if sid, _, ok := volumeOf(g.config[k]); ok {
				c.ensureStorage(toNode, sid)
			}
		}
	}
}

// SetGuestStatus changes a guest's run state ("running", "stopped", "paused").
func (c *Cluster) SetGuestStatus(vmid int, status string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g := c.guests[vmid]; g != nil {
		g.status = status
		if status != "stopped" {
			g.boot = time.Now()
		}
	}
}

// SetAgentRunning says whether a guest's agent answers pings.
func (c *Cluster) SetAgentRunning(vmid int, running bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g := c.guests[vmid]; g != nil {
		g.agentRunning = running
	}
}

// GuestConfig returns a copy of a guest's current config as the config endpoint shows it
// (without digest), or nil if there is no such guest.
func (c *Cluster) GuestConfig(vmid int) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.guests[vmid]
	if g == nil {
		return nil
	}
	m := maps.Clone(g.config)
	if g.lock != "" {
		m["lock"] = g.lock
	}
	if g.parent != "" {
		m["parent"] = g.parent
	}
	return m
}

// guessPlugin guesses a storage type from its id, for storages referenced by disks but
// never added.
func guessPlugin(id string) string {
	switch {
	case id == "local-lvm":
		return "lvmthin"
	case strings.Contains(id, "zfs"):
		return "zfspool"
	case strings.Contains(id, "ceph") || strings.Contains(id, "rbd"):
		return "rbd"
	case strings.Contains(id, "nfs"):
		return "nfs"
	case strings.Contains(id, "btrfs"):
		return "btrfs"
	case strings.Contains(id, "lvm"):
		return "lvmthin"
	case id == "local":
		return "dir"
	}
	return "lvmthin"
}

// pluginSnapshots is the per-type snapshot capability (§7.2). File storages support
// snapshots only for qcow2 volumes; that is checked per volume.
func pluginSnapshots(plugin string) bool {
	switch plugin {
	case "zfspool", "zfs", "rbd", "lvmthin", "btrfs", "dir", "nfs", "cifs", "glusterfs":
		return true
	}
	return false
}

func pluginShared(plugin string) bool {
	switch plugin {
	case "rbd", "nfs", "cifs", "cephfs", "pbs", "glusterfs", "iscsi", "iscsidirect", "zfs":
		return true
	}
	return false
}

func (c *Cluster) ensureStorage(nodeName, id string) {
	if c.storages[nodeName][id] != nil {
		return
	}
	plugin := guessPlugin(id)
	content := "images,rootdir"
	if plugin == "dir" {
		content = "iso,vztmpl,backup,images,rootdir"
	}
	c.storages[nodeName][id] = &storage{
		id: id, node: nodeName, plugin: plugin,
		total: 500 << 30, used: 120 << 30,
		snapshots: pluginSnapshots(plugin), content: content,
		shared: pluginShared(plugin), active: true, enabled: true,
	}
}

// AddStorage adds (or replaces) a storage on a node. plugintype is the PVE storage type
// (lvmthin, zfspool, rbd, dir, nfs, lvm, iscsi, btrfs…); snapshots says whether it can
// snapshot volumes (for file storages such as dir/nfs/cifs only qcow2 volumes can, as on
// PVE, §7.2); content is the comma list, e.g. "images,rootdir". For a shared storage, add
// it on every node.
func (c *Cluster) AddStorage(nodeName, id, plugintype string, total, used uint64, snapshots bool, content string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.nodes[nodeName]; !ok {
		panic(fmt.Sprintf("pveemu: AddStorage %s: unknown node %q", id, nodeName))
	}
	c.storages[nodeName][id] = &storage{
		id: id, node: nodeName, plugin: plugintype, total: total, used: used,
		snapshots: snapshots, content: content, shared: pluginShared(plugintype),
		active: true, enabled: true,
	}
}

// SetStorageActive marks a storage active or inactive (an inactive storage reports
// active 0 and zero sizes, §7.1; in /cluster/resources its status is "unknown").
func (c *Cluster) SetStorageActive(nodeName, id string, active bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.storages[nodeName][id]; s != nil {
		s.active = active
	}
}

func (c *Cluster) ensurePool(id string) *pool {
	// Nested pools need their parents (PVE refuses "a/b" without "a").
	if i := strings.LastIndexByte(id, '/'); i > 0 {
		c.ensurePool(id[:i])
	}
	p := c.pools[id]
	if p == nil {
		p = &pool{id: id, vms: map[int]bool{}, storages: map[string]bool{}}
		c.pools[id] = p
	}
	return p
}

// AddPool creates a pool (nested ids such as "prod/web" are allowed; parents are
// created too) and moves the given guests into it. A guest belongs to at most one pool.
func (c *Cluster) AddPool(id string, vmids ...int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.ensurePool(id)
	for _, v := range vmids {
		c.removeFromPools(v)
		p.vms[v] = true
	}
}

// SetPoolComment sets a pool's comment.
func (c *Cluster) SetPoolComment(id, comment string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ensurePool(id).comment = comment
}

// AddPoolStorage adds a storage to a pool's members.
func (c *Cluster) AddPoolStorage(id, storageID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ensurePool(id).storages[storageID] = true
}

func (c *Cluster) poolOf(vmid int) string {
	for _, id := range slices.Sorted(maps.Keys(c.pools)) {
		if c.pools[id].vms[vmid] {
			return id
		}
	}
	return ""
}

// SetNodeOnline marks a node online or offline. While offline, /cluster/resources
// reports it "offline", its guests with status "unknown" (and no name, §3.1) and its
// storages "unknown"; any other node answers /nodes/{offline}/… with
// "595 No route to host", as pveproxy does when it cannot connect to the node.
func (c *Cluster) SetNodeOnline(nodeName string, online bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.nodes[nodeName]; n != nil {
		n.online = online
	}
}

// SetNodeProxyError forces the error other nodes return when proxying to this node,
// e.g. SetNodeProxyError("pve2", 596, "Broken pipe") or (596, "Connection timed out").
// A code of 0 removes it.
func (c *Cluster) SetNodeProxyError(nodeName string, code int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.nodes[nodeName]; n != nil {
		if code == 0 {
			n.proxyErr = nil
		} else {
			n.proxyErr = &apiError{code: code, msg: reason, emptyBody: true}
		}
	}
}

// Lock sets a guest's config lock, e.g. "backup" (as vzdump does), "migrate",
// "snapshot-delete". Snapshot tasks then fail with "VM is locked (backup)" (QEMU) or
// "CT is locked (backup)" (LXC), §4.2 step 3.
func (c *Cluster) Lock(vmid int, lock string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g := c.guests[vmid]; g != nil {
		g.lock = lock
	}
}

// Unlock clears a guest's lock (like `qm unlock`).
func (c *Cluster) Unlock(vmid int) {
	c.Lock(vmid, "")
}

// GuestLock returns a guest's current lock ("" if none).
func (c *Cluster) GuestLock(vmid int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g := c.guests[vmid]; g != nil {
		return g.lock
	}
	return ""
}

// FailNextTask makes the next task started on that guest end with exitstatus once its
// duration has elapsed (unless it fails an earlier check by itself). "OK" and
// "WARNINGS: N" succeed; any other text is an error with PVE's side effects: a failed
// create is cleaned up, a failed delete without force leaves lock "snapshot-delete" and
// snapstate "delete" (§4.6 step 9), a failed rollback leaves lock "rollback".
func (c *Cluster) FailNextTask(vmid int, exitstatus string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failNext[vmid] = exitstatus
}

// SetTaskDuration changes how long later tasks run.
func (c *Cluster) SetTaskDuration(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.opts.TaskDuration = d
}

// SetPrivileges restricts what an auth id ("user@realm" or "user@realm!tokenid") may do
// to the given privileges (e.g. "VM.Audit", "VM.Snapshot", "Datastore.Audit",
// "Pool.Audit", "Sys.Audit", "VM.GuestAgent.Audit"). Privileges apply on every path. An
// auth id without an entry has all privileges, like root@pam. A token without its own
// entry gets its user's. Missing privileges give 403 "Permission check failed (/vms/100,
// VM.Snapshot)" or silently filtered lists, as PVE does (§2.3, §2.5).
func (c *Cluster) SetPrivileges(authid string, privs ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]bool{}
	for _, p := range privs {
		m[p] = true
	}
	c.privs[authid] = m
}

// AddUser adds a user (password login) at run time.
func (c *Cluster) AddUser(userid, password string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opts.Users == nil {
		c.opts.Users = map[string]string{}
	}
	c.opts.Users[userid] = password
}

// AddToken adds an API token at run time.
func (c *Cluster) AddToken(tokenid, secret string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opts.Tokens == nil {
		c.opts.Tokens = map[string]string{}
	}
	c.opts.Tokens[tokenid] = secret
}

func (c *Cluster) hasPriv(authid, priv string) bool {
	if m, ok := c.privs[authid]; ok {
		return m[priv]
	}
	if i := strings.IndexByte(authid, '!'); i > 0 {
		if m, ok := c.privs[authid[:i]]; ok {
			return m[priv]
		}
	}
	return true
}

// Snapshots returns a guest's snapshots sorted by creation (oldest first), without the
// "current" pseudo-entry.
func (c *Cluster) Snapshots(vmid int) []Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.guests[vmid]
	if g == nil {
		return nil
	}
	var out []Snapshot
	for _, s := range g.sortedSnaps() {
		out = append(out, Snapshot{
			Name: s.name, Description: s.description, SnapTime: time.Unix(s.snaptime, 0),
			VMState: s.vmstate != "", Parent: s.parent, Snapstate: s.snapstate,
		})
	}
	return out
}

// CurrentParent returns the snapshot the guest's current state derives from.
func (c *Cluster) CurrentParent(vmid int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g := c.guests[vmid]; g != nil {
		return g.parent
	}
	return ""
}

// AddSnapshot inserts a finished snapshot directly (e.g. a manual one or vzdump's), with
// the given time; it becomes the current parent. Disk content is copied as it is now.
func (c *Cluster) AddSnapshot(vmid int, name, description string, t time.Time, vmstate bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.guests[vmid]
	if g == nil {
		panic(fmt.Sprintf("pveemu: AddSnapshot: no guest %d", vmid))
	}
	s := g.newSnapshot(name, description, t.Unix())
	if vmstate && g.kind == "qemu" {
		s.vmstate = g.stateVolume(name)
	}
	s.snapstate = ""
	g.parent = name
}

func (g *guest) sortedSnaps() []*snapshot {
	s := slices.Collect(maps.Values(g.snaps))
	sort.Slice(s, func(i, j int) bool { return s[i].seq < s[j].seq })
	return s
}

// newSnapshot creates the config section with snapstate "prepare" and copies the disks.
func (g *guest) newSnapshot(name, description string, snaptime int64) *snapshot {
	cfg := maps.Clone(g.config)
	delete(cfg, "description")
	for k := range cfg {
		if strings.HasPrefix(k, "unused") {
			delete(cfg, k)
		}
	}
	g.seq++
	s := &snapshot{
		name: name, description: strings.TrimRight(description, " \t\r\n"),
		snaptime: snaptime, parent: g.parent, snapstate: "prepare",
		config: cfg, disks: cloneDisks(g.disks), seq: g.seq,
	}
	g.snaps[name] = s
	return s
}

func cloneDisks(d map[string][]byte) map[string][]byte {
	out := make(map[string][]byte, len(d))
	for k, v := range d {
		out[k] = slices.Clone(v)
	}
	return out
}

// WriteDisk writes data into a guest disk (a config key such as "scsi0" or "rootfs") at
// offset off, growing it as needed.
func (c *Cluster) WriteDisk(vmid int, disk string, off int64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.guests[vmid]
	if g == nil {
		panic(fmt.Sprintf("pveemu: WriteDisk: no guest %d", vmid))
	}
	b := g.disks[disk]
	if end := off + int64(len(data)); end > int64(len(b)) {
		b = append(b, make([]byte, end-int64(len(b)))...)
	}
	copy(b[off:], data)
	g.disks[disk] = b
}

// ReadDisk reads n bytes of a guest disk at offset off; bytes never written read as 0.
func (c *Cluster) ReadDisk(vmid int, disk string, off int64, n int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]byte, n)
	g := c.guests[vmid]
	if g == nil {
		return out
	}
	b := g.disks[disk]
	if off < int64(len(b)) {
		copy(out, b[off:])
	}
	return out
}

// Requests returns every request served so far, oldest first.
func (c *Cluster) Requests() []Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Request, len(c.requests))
	for i, r := range c.requests {
		r.Params = maps.Clone(r.Params)
		out[i] = r
	}
	return out
}

// ResetRequests forgets the recorded requests.
func (c *Cluster) ResetRequests() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requests = nil
}

// Close stops every endpoint and pending task timer.
func (c *Cluster) Close() {
	c.mu.Lock()
	c.closed = true
	var srvs []*node
	for _, n := range c.nodes {
		if n.srv != nil {
			srvs = append(srvs, n)
		}
	}
	for _, t := range c.tasks {
		if t.timer != nil {
			t.timer.Stop()
		}
	}
	c.mu.Unlock()
	for _, n := range srvs {
		c.CloseNode(n.name)
	}
}

var discardLog = log.New(io.Discard, "", 0)
