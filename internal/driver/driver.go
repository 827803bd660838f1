// Package driver defines the small interface every hypervisor backend implements, the
// optional capabilities a backend may add, and the registry that maps a --host value to a
// backend.
//
// The engine only ever sees these types. It discovers optional capabilities by type
// assertion (see Features), in the style of rclone's fs.Features.
package driver

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// Kind is the kind of guest: a full virtual machine or a container.
type Kind string

// Guest kinds.
const (
	KindQEMU Kind = "qemu"
	KindLXC  Kind = "lxc"
)

// State is a guest's run state, normalised across hypervisors.
type State string

// Guest states.
const (
	StateRunning   State = "running"
	StatePaused    State = "paused"
	StateShutoff   State = "shutoff"
	StateShutdown  State = "shutdown" // shutting down
	StateCrashed   State = "crashed"
	StateSuspended State = "pmsuspended"
	StateBlocked   State = "blocked"
	StateUnknown   State = "unknown" // e.g. its node is offline
)

// Active reports whether the guest has a live QEMU process (running, paused, blocked…).
func (s State) Active() bool {
	switch s {
	case StateRunning, StatePaused, StateBlocked, StateShutdown, StateSuspended:
		return true
	}
	return false
}

// Guest is one VM or container as a driver sees it. Guests are plain values; a driver
// finds its own object again from Node and UUID (or ID where UUIDs do not exist).
type Guest struct {
	// Node is the host the guest lives on: the libvirt host name or the PVE node.
	Node string `json:"node"`
	// ID is the numeric id: the PVE vmid, or the libvirt domain ID of a running
	// domain. 0 means the guest has none (a libvirt domain that is not running).
	ID int `json:"id,omitempty"`
	// Name is the guest's name. Not unique on Proxmox VE.
	Name string `json:"name"`
	// UUID is the stable identity where the hypervisor has one (libvirt, PVE smbios).
	UUID     string   `json:"uuid,omitempty"`
	State    State    `json:"state"`
	Kind     Kind     `json:"kind"`
	Template bool     `json:"template"`
	Tags     []string `json:"tags"`
	Pools    []string `json:"pools,omitempty"`
}

// Key is a stable identity for the guest across runs: node plus UUID, else node plus
// the numeric id (PVE names are not unique), else node plus name.
func (g Guest) Key() string {
	switch {
	case g.UUID != "":
		return g.Node + "/" + g.UUID
	case g.ID > 0:
		return g.Node + "/" + strconv.Itoa(g.ID)
	}
	return g.Node + "/" + g.Name
}

// Location says where a snapshot's data lives.
type Location string

// Snapshot locations.
const (
	LocationInternal Location = "internal" // inside the disk images (qcow2 internal / PVE storage)
	LocationExternal Location = "external" // overlay files on top of the disks
	LocationMixed    Location = "mixed"
)

// Consistency records how a snapshot's disks were captured.
type Consistency string

// Consistency levels.
const (
	ConsistencyQuiesced Consistency = "quiesced" // filesystems frozen through the guest agent
	ConsistencyCrash    Consistency = "crash"    // as after a power loss
	ConsistencyOffline  Consistency = "offline"  // guest was not running: trivially consistent
	// ConsistencyMemory: the snapshot holds the guest's RAM with its disks; reverting
	// resumes the guest as it was, so the disks need no quiescing.
	ConsistencyMemory  Consistency = "memory"
	ConsistencyUnknown Consistency = ""
)

// Describe says in words how the snapshot's disks were captured, for messages.
func (c Consistency) Describe() string {
	switch c {
	case ConsistencyQuiesced:
		return "quiesced through the guest agent"
	case ConsistencyOffline:
		return "guest shut off"
	case ConsistencyMemory:
		return "RAM saved with the disks"
	case ConsistencyCrash:
		return "crash-consistent only"
	}
	return "consistency unknown"
}

// SnapshotDisk is one disk's part of a snapshot.
type SnapshotDisk struct {
	Name     string `json:"name"`           // target (vda) or PVE key (scsi0)
	Snapshot string `json:"snapshot"`       // internal | external | no
	File     string `json:"file,omitempty"` // the overlay created for an external snapshot
}

// Snapshot is a snapshot as listed by a driver.
type Snapshot struct {
	Name        string    `json:"name"`
	Description string    `json:"description"`
	Created     time.Time `json:"time"`
	Parent      string    `json:"parent,omitempty"`
	Current     bool      `json:"current"`
	// Memory is true when the snapshot holds the guest's RAM (restorable running state).
	Memory bool `json:"vmstate"`
	// DiskOnly is true for disk-only snapshots of a running guest.
	DiskOnly    bool           `json:"disk_only"`
	Location    Location       `json:"location"`
	Consistency Consistency    `json:"consistency,omitempty"`
	GuestState  string         `json:"guest_state,omitempty"` // state recorded at snapshot time
	Disks       []SnapshotDisk `json:"disks,omitempty"`
	// Incomplete, when not empty, says why the snapshot's data is no longer whole (a
	// merge that removes it was interrupted and is finished by the next run that
	// changes the guest). Such a snapshot must not be reverted to.
	Incomplete string `json:"incomplete,omitempty"`
	// Protected marks a snapshot retention never removes (see Protector).
	Protected bool `json:"protected"`
	// Notes are things the user should know about a snapshot just created (e.g. a
	// transient domain whose original definition still names the old images). Only
	// CreateSnapshot fills them in.
	Notes []string `json:"-"`
}

// CreateOptions asks for one snapshot of one guest.
type CreateOptions struct {
	Name        string
	Description string
	// DryRun asks PrepareSnapshot to run its checks only: it changes nothing (it does
	// not finish what an earlier run left half done, and records nothing), and the
	// prepared snapshot can only be closed.
	DryRun bool
	// Memory includes the guest's RAM (ignored for guests that are not running).
	Memory bool
	// Quiesce freezes the guest's filesystems through its agent for the snapshot. The
	// driver fails rather than silently taking a crash-consistent snapshot.
	Quiesce bool
	// Disks overrides, per disk, what the snapshot does with it; disks not listed get
	// the driver's default (libvirt: an external overlay beside the image). Empty means
	// every disk gets the default.
	Disks []DiskSpec
	// MemoryFile is where the guest's RAM is saved; it implies Memory. Empty lets the
	// driver choose.
	MemoryFile string
}

// DiskSpec says what a snapshot does with one disk (virsh's --diskspec).
type DiskSpec struct {
	Name     string // target (vda) or PVE key (scsi0)
	Snapshot string // internal | external | no
	File     string // the overlay to create for an external snapshot; empty: driver's choice
}

// Driver is the core every backend implements. Every method honours ctx: it returns
// no later than shortly after ctx is done, even if the hypervisor does not answer.
type Driver interface {
	// Name is the driver's short name ("libvirt", "proxmox", "qmp").
	Name() string
	// Guests lists every guest the connection can see, templates included.
	Guests(ctx context.Context) ([]Guest, error)
	// Snapshots lists a guest's snapshots, oldest first. Pseudo-entries such as PVE's
	// "current" are not included.
	Snapshots(ctx context.Context, g Guest) ([]Snapshot, error)
	// CreateSnapshot takes a snapshot. On error no snapshot of that name is left behind.
	CreateSnapshot(ctx context.Context, g Guest, opts CreateOptions) (Snapshot, error)
	// DeleteSnapshot removes one snapshot and its data, merging external overlays so
	// no guest data is lost. It returns an error wrapping ErrNotFound when there is no
	// such snapshot.
	DeleteSnapshot(ctx context.Context, g Guest, name string) error
	// RevertSnapshot makes the guest's state the snapshot's.
	RevertSnapshot(ctx context.Context, g Guest, name string, opts RevertOptions) error
	// Close releases the connection.
	Close() error
}

// RevertOptions controls the guest's state after a revert.
type RevertOptions struct {
	Running bool // start the guest after reverting
	Paused  bool // leave it paused
	Force   bool // allow stopping a running guest / risky reverts
}

// AgentPinger can tell whether a guest's agent answers.
type AgentPinger interface {
	AgentPing(ctx context.Context, g Guest) error
}

// Quiescer can freeze and thaw a guest's filesystems directly.
type Quiescer interface {
	Freeze(ctx context.Context, g Guest) (int, error)
	Thaw(ctx context.Context, g Guest) (int, error)
	FrozenState(ctx context.Context, g Guest) (frozen bool, err error)
}

// StorageUsage is the fill level of one storage a guest's disks sit on.
type StorageUsage struct {
	Name     string  // pool or storage name, or the directory for unpooled files
	Capacity uint64  // bytes; 0 when unknown
	Used     uint64  // bytes
	Percent  float64 // 0-100
}

// StorageReporter reports the storages a guest's disks sit on.
type StorageReporter interface {
	Storage(ctx context.Context, g Guest) ([]StorageUsage, error)
}

// SnapshotChecker tells up front that a guest cannot be snapshotted at all (e.g. a
// Proxmox VE container with a bind mount): an error wrapping ErrUnsupported means skip
// it with that reason, as cv4pve-autosnap does.
type SnapshotChecker interface {
	CheckSnapshot(ctx context.Context, g Guest) error
}

// Tagger sets a guest's tags where the hypervisor has no native tags of its own.
type Tagger interface {
	SetTags(ctx context.Context, g Guest, tags []string) error
}

// ChainInfo is one disk's backing chain, active layer first.
type ChainInfo struct {
	Disk   string   `json:"disk"`
	Images []string `json:"images"`
}

// ChainReporter reports each disk's backing chain.
type ChainReporter interface {
	Chains(ctx context.Context, g Guest) ([]ChainInfo, error)
}

// ChainImage is one image of a backing chain with its sizes.
type ChainImage struct {
	File        string `json:"file"`
	Format      string `json:"format"`
	VirtualSize uint64 `json:"virtual_size"`
	// ActualSize is the space the image takes on its storage; 0 when unknown.
	ActualSize uint64 `json:"actual_size"`
	// Snapshots are the snapshots whose disk state this image holds.
	Snapshots []string `json:"snapshots"`
}

// ChainDetail is one disk's backing chain with sizes, active image first.
type ChainDetail struct {
	Disk   string       `json:"disk"`
	Images []ChainImage `json:"images"`
}

// ChainInspector reports each disk's backing chain with image sizes. It may be slower
// than ChainReporter: it reads every image's header.
type ChainInspector interface {
	ChainDetails(ctx context.Context, g Guest) ([]ChainDetail, error)
}

// ProgressFunc receives progress of a long operation (a merge, a copy) on one disk.
type ProgressFunc func(disk string, done, total uint64)

// DeleteOptions select what DeleteSnapshotTree removes.
type DeleteOptions struct {
	Children     bool // the snapshot and all its descendants
	ChildrenOnly bool // only its descendants
	MetadataOnly bool // forget the snapshot(s) but leave every image file as it is
	Progress     ProgressFunc
}

// TreeDeleter deletes snapshots together with their descendants, or metadata only.
type TreeDeleter interface {
	DeleteSnapshotTree(ctx context.Context, g Guest, name string, opts DeleteOptions) error
}

// SnapshotXMLer exposes the hypervisor's own snapshot description (libvirt's XML) and
// lets a snapshot's metadata be (re)defined from it without touching any disk, as
// `virsh snapshot-create --redefine` does, so a hierarchy can be moved between hosts.
type SnapshotXMLer interface {
	SnapshotXML(ctx context.Context, g Guest, name string) (string, error)
	RedefineSnapshot(ctx context.Context, g Guest, xml string, current bool) error
}

// CurrentSetter marks a snapshot as current without reverting to it.
type CurrentSetter interface {
	SetCurrent(ctx context.Context, g Guest, name string) error
}

// EditOptions change a snapshot's metadata; nil or empty fields stay as they are.
type EditOptions struct {
	Description *string
	Rename      string
}

// SnapshotEditor changes a snapshot's description or name without touching its data.
type SnapshotEditor interface {
	EditSnapshot(ctx context.Context, g Guest, name string, opts EditOptions) error
}

// CollapseOptions control CollapseChain.
type CollapseOptions struct {
	// Disk limits the collapse to one disk; empty means every disk.
	Disk string
	// ForceBase names base images the user allows autosnap to write into although
	// autosnap did not create them (a collapse writes every overlay into the chain's
	// bottom image, which may be a template other guests build on).
	ForceBase []string
	Progress  ProgressFunc
}

// ChainCollapser shortens a disk's backing chain by merging its images (block commit
// or pull), keeping the guest's data.
type ChainCollapser interface {
	CollapseChain(ctx context.Context, g Guest, opts CollapseOptions) error
}

// StallBounded is implemented by drivers whose merges are bounded by progress rather
// than by total time: DeleteSnapshot and DeleteSnapshotTree give up only when a merge
// makes no progress for the connection's timeout (every single call to the hypervisor
// stays bounded by it), so a large merge on a busy guest completes. Callers pass such
// drivers a context without a deadline for deletes.
type StallBounded interface {
	StallBounded() bool
}

// TagLoader is implemented by drivers whose Guests leaves Tags nil because reading them
// costs a call per guest. LoadTags fills in the tags of the given guests.
type TagLoader interface {
	LoadTags(ctx context.Context, guests []Guest) error
}

// LoadTags fills in guests' tags when d reads them lazily (see TagLoader); otherwise
// Guests already did and it does nothing.
func LoadTags(ctx context.Context, d Driver, guests []Guest) error {
	if tl, ok := d.(TagLoader); ok {
		return tl.LoadTags(ctx, guests)
	}
	return nil
}

// SnapshotPreparer splits CreateSnapshot in two so that a guest's filesystems are
// frozen only for the snapshot call itself: PrepareSnapshot does every lookup and
// check, PreparedSnapshot.Create only takes the snapshot. Close releases what a
// prepared snapshot holds when Create is not called.
type SnapshotPreparer interface {
	PrepareSnapshot(ctx context.Context, g Guest, opts CreateOptions) (PreparedSnapshot, error)
}

// PreparedSnapshot is a snapshot ready to be taken; see SnapshotPreparer.
type PreparedSnapshot interface {
	Create(ctx context.Context) (Snapshot, error)
	Close()
}

// Features lists the optional capabilities of a driver.
type Features struct {
	AgentPing bool
	Quiesce   bool
	Storage   bool
	Tags      bool
	Chains    bool
}

// FeaturesOf reports which optional interfaces d implements.
func FeaturesOf(d Driver) Features {
	_, ping := d.(AgentPinger)
	_, q := d.(Quiescer)
	_, st := d.(StorageReporter)
	_, tg := d.(Tagger)
	_, ch := d.(ChainReporter)
	return Features{AgentPing: ping, Quiesce: q, Storage: st, Tags: tg, Chains: ch}
}

// Sentinel errors drivers wrap so callers can branch with errors.Is.
var (
	ErrNotFound    = errors.New("not found")
	ErrUnsupported = errors.New("not supported")
	ErrLocked      = errors.New("locked")
	// ErrExists marks a snapshot (or one of its files) that already exists; nothing
	// was changed.
	ErrExists = errors.New("already exists")
	// ErrConnect marks a failure to reach or authenticate to the hypervisor.
	ErrConnect = errors.New("connection failed")
	// ErrAgent marks a guest agent that did not answer.
	ErrAgent = errors.New("guest agent unavailable")
)
