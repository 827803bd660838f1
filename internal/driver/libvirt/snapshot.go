package libvirt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
)

func errCode(err error) golibvirt.ErrorNumber {
	var e golibvirt.Error
	if errors.As(err, &e) {
		return golibvirt.ErrorNumber(e.Code)
	}
	return -1
}

// snapDisk is one disk a snapshot covers.
type snapDisk struct {
	target string
	active string // current active image (file or block device path)
}

// snapshotDisks lists the disks of a domain definition that a snapshot covers: real
// disks (not cdrom/floppy, not read-only or shared, not in skip) backed by a local file
// or block device. Any other disk makes the snapshot fail with a clear error rather
// than silently leaving a disk out.
func snapshotDisks(g driver.Guest, x *libvirtxml.Domain, skip map[string]bool) ([]snapDisk, error) {
	var out []snapDisk
	if x.Devices == nil {
		return nil, nil
	}
	for _, dk := range x.Devices.Disks {
		if dk.Device == "cdrom" || dk.Device == "floppy" || dk.ReadOnly != nil || dk.Shareable != nil {
			continue
		}
		if dk.Target == nil || skip[dk.Target.Dev] {
			continue
		}
		var path string
		if dk.Source != nil {
			switch {
			case dk.Source.File != nil:
				path = dk.Source.File.File
			case dk.Source.Block != nil:
				path = dk.Source.Block.Dev
			}
		}
		if path == "" {
			return nil, fmt.Errorf("guest %s: disk %s is not a local file or block device; autosnap cannot take an external snapshot of it", g.Name, dk.Target.Dev)
		}
		out = append(out, snapDisk{target: dk.Target.Dev, active: path})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("guest %s has no disk autosnap can snapshot", g.Name)
	}
	return out, nil
}

// overlayPath names the overlay file an external snapshot creates for one disk: next
// to the disk's current image, named after the guest, the disk and the snapshot so
// `ls` shows what each file is.
func overlayPath(domName, target, active, snap string) string {
	return filepath.Join(filepath.Dir(active), fmt.Sprintf("%s-%s.%s.qcow2", domName, target, snap))
}

func memoryPath(domName, active, snap string) string {
	return filepath.Join(filepath.Dir(active), fmt.Sprintf("%s.%s.mem", domName, snap))
}

// CreateSnapshot implements driver.Driver. By default every snapshot is external: an
// atomic, disk-only snapshot of all disks for a running or paused guest (with RAM in a
// file beside the disks when opts.Memory or opts.MemoryFile), an offline external
// snapshot for a shut-off guest. opts.Disks can exclude disks (snapshot "no") or name
// the overlay files.
//
// An internal snapshot (every disk "internal") is only taken of a shut-off guest whose
// disks are single qcow2 images without overlays: an internal snapshot inside an
// overlay would be lost when that overlay is merged away, and one of a running guest
// would pause it while its RAM is written into the image.
func (d *Driver) CreateSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.Snapshot, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return driver.Snapshot{}, err
	}
	unlock := d.domLock(g.Key())
	defer unlock()

	x, active, err := d.currentXML(ctx, dom)
	if err != nil {
		return driver.Snapshot{}, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	specs := map[string]driver.DiskSpec{}
	skip := map[string]bool{}
	internal := false
	for _, s := range opts.Disks {
		if !hasDisk(x, s.Name) {
			return driver.Snapshot{}, fmt.Errorf("guest %s has no disk %q (see: autosnap snapshot chain): %w", g.Name, s.Name, driver.ErrNotFound)
		}
		switch s.Snapshot {
		case "no":
			skip[s.Name] = true
		case "internal":
			internal = true
		case "external", "":
		default:
			return driver.Snapshot{}, fmt.Errorf("guest %s: disk %s: snapshot=%q: use internal, external or no", g.Name, s.Name, s.Snapshot)
		}
		specs[s.Name] = s
	}
	disks, err := snapshotDisks(g, x, skip)
	if err != nil {
		return driver.Snapshot{}, err
	}
	if internal {
		return d.createInternal(ctx, g, dom, x, active, specs, opts)
	}

	sx := &libvirtxml.DomainSnapshot{Name: opts.Name, Description: opts.Description, Disks: &libvirtxml.DomainSnapshotDisks{}}
	var files []string
	for _, dk := range disks {
		f := specs[dk.target].File
		if f == "" {
			f = overlayPath(dom.Name, dk.target, dk.active, opts.Name)
		}
		files = append(files, f)
		sx.Disks.Disks = append(sx.Disks.Disks, libvirtxml.DomainSnapshotDisk{
			Name: dk.target, Snapshot: "external",
			Driver: &libvirtxml.DomainDiskDriver{Type: "qcow2"},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: f}},
		})
	}
	for n := range skip {
		sx.Disks.Disks = append(sx.Disks.Disks, libvirtxml.DomainSnapshotDisk{Name: n, Snapshot: "no"})
	}
	var flags golibvirt.DomainSnapshotCreateFlags
	if opts.MemoryFile != "" && !active {
		return driver.Snapshot{}, fmt.Errorf("guest %s is not running: there is no RAM to save", g.Name)
	}
	memory := (opts.Memory || opts.MemoryFile != "") && active
	if memory {
		f := opts.MemoryFile
		if f == "" {
			f = memoryPath(dom.Name, disks[0].active, opts.Name)
		}
		files = append(files, f)
		sx.Memory = &libvirtxml.DomainSnapshotMemory{Snapshot: "external", File: f}
		flags |= golibvirt.DomainSnapshotCreateAtomic
	} else {
		sx.Memory = &libvirtxml.DomainSnapshotMemory{Snapshot: "no"}
		flags |= golibvirt.DomainSnapshotCreateDiskOnly | golibvirt.DomainSnapshotCreateAtomic
	}
	if opts.Quiesce {
		state, err := d.domState(ctx, dom)
		if err != nil {
			return driver.Snapshot{}, fmt.Errorf("guest %s: %w", g.Name, err)
		}
		if state != driver.StateRunning {
			return driver.Snapshot{}, fmt.Errorf("guest %s is %s: only a running guest can be quiesced (use --quiesce auto or off): %w", g.Name, state, driver.ErrAgent)
		}
		flags |= golibvirt.DomainSnapshotCreateQuiesce
	}
	raw, err := sx.Marshal()
	if err != nil {
		return driver.Snapshot{}, err
	}
	_, err = call(ctx, func() (golibvirt.DomainSnapshot, error) {
		return d.l.DomainSnapshotCreateXML(dom, raw, uint32(flags))
	})
	if err != nil {
		// An abandoned call may still complete: make sure no snapshot is left behind
		// under our name when we report failure.
		if ctx.Err() != nil {
			d.cleanupAbandonedCreate(dom, opts.Name)
		}
		hint := ""
		switch errCode(err) {
		case golibvirt.ErrAgentUnresponsive:
			hint = " (the guest agent did not answer: check qemu-guest-agent in the guest, or use --quiesce auto/off)"
			err = fmt.Errorf("%w: %w", err, driver.ErrAgent)
		case golibvirt.ErrOperationInvalid:
			if opts.Quiesce {
				err = fmt.Errorf("%w: %w", err, driver.ErrAgent)
			}
		}
		return driver.Snapshot{}, fmt.Errorf("guest %s: creating snapshot %s failed: %w%s", g.Name, opts.Name, err, hint)
	}
	// libvirt creates offline overlays world-readable; guest data is not.
	if d.local {
		for _, f := range files {
			_ = os.Chmod(f, 0o600)
		}
	}
	// Built from what was asked rather than read back: saves three RPCs per guest
	// on a busy daemon. The creation time is libvirt's second-resolution clock.
	s := fromXML(sx)
	s.Created = time.Now().Truncate(time.Second)
	s.Current = true
	if active && !memory {
		s.GuestState = "disk-snapshot"
		s.DiskOnly = true
	}
	return s, nil
}

// cleanupAbandonedCreate waits a bounded time for a create call we stopped waiting for
// and, if it did create the snapshot, merges it away again.
func (d *Driver) cleanupAbandonedCreate(dom golibvirt.Domain, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	for ctx.Err() == nil {
		if _, err := call(ctx, func() (golibvirt.DomainSnapshot, error) { return d.l.DomainSnapshotLookupByName(dom, name, 0) }); err == nil {
			_ = d.deleteSnapshot(ctx, driver.Guest{Name: dom.Name, UUID: formatUUID(dom.UUID)}, dom, name)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (d *Driver) snapshotByName(ctx context.Context, g driver.Guest, dom golibvirt.Domain, name string) (driver.Snapshot, error) {
	snap, err := call(ctx, func() (golibvirt.DomainSnapshot, error) { return d.l.DomainSnapshotLookupByName(dom, name, 0) })
	if err != nil {
		if errCode(err) == golibvirt.ErrNoDomainSnapshot {
			return driver.Snapshot{}, fmt.Errorf("guest %s has no snapshot %q: %w", g.Name, name, driver.ErrNotFound)
		}
		return driver.Snapshot{}, fmt.Errorf("guest %s: snapshot %s: %w", g.Name, name, err)
	}
	x, err := d.snapshotXML(ctx, snap)
	if err != nil {
		return driver.Snapshot{}, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	s := fromXML(x)
	cur, err := call(ctx, func() (int32, error) { return d.l.DomainSnapshotIsCurrent(snap, 0) })
	s.Current = err == nil && cur == 1
	return s, nil
}

// DeleteSnapshot implements driver.Driver: DeleteSnapshotTree without children. An
// internal snapshot is deleted by libvirt. An external one is merged: each disk's
// overlay created by the snapshot is committed into the snapshot's state image (live
// for images the running guest has open, with qemu-img otherwise), the memory file is
// removed, the libvirt metadata is dropped and the children's metadata is pointed at
// the merged image, so each disk's chain gets one image shorter. When that state image
// is also the base of another branch (after a revert) it cannot absorb anything: the
// snapshot's metadata goes and its images stay as the branches' common base.
func (d *Driver) DeleteSnapshot(ctx context.Context, g driver.Guest, name string) error {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	unlock := d.domLock(g.Key())
	defer unlock()
	return d.deleteSnapshot(ctx, g, dom, name)
}

func (d *Driver) deleteSnapshot(ctx context.Context, g driver.Guest, dom golibvirt.Domain, name string) error {
	return d.deleteTree(ctx, g, dom, name, driver.DeleteOptions{})
}

func indexOf(xs []string, s string) int {
	for i, x := range xs {
		if x == s {
			return i
		}
	}
	return -1
}

func inactiveOf(x *libvirtxml.DomainSnapshot) *libvirtxml.Domain {
	if x.InactiveDomain == nil {
		return nil
	}
	return &x.InactiveDomain.Domain
}

func hasDisk(x *libvirtxml.Domain, target string) bool {
	if x.Devices == nil {
		return false
	}
	for _, dk := range x.Devices.Disks {
		if dk.Target != nil && dk.Target.Dev == target {
			return true
		}
	}
	return false
}

// createInternal takes an internal snapshot of a shut-off guest; see CreateSnapshot.
func (d *Driver) createInternal(ctx context.Context, g driver.Guest, dom golibvirt.Domain, x *libvirtxml.Domain, active bool, specs map[string]driver.DiskSpec, opts driver.CreateOptions) (driver.Snapshot, error) {
	refuse := func(why string) (driver.Snapshot, error) {
		return driver.Snapshot{}, fmt.Errorf("guest %s: no internal snapshot: %s; take an external one (the default): %w", g.Name, why, driver.ErrUnsupported)
	}
	if active {
		return refuse("the guest is running, and an internal snapshot would pause it while its RAM is saved into the disk images (shut it down first)")
	}
	if opts.Memory || opts.MemoryFile != "" || opts.Quiesce {
		return refuse("a shut-off guest has no RAM to save and nothing to quiesce")
	}
	chains, err := d.chainsOf(ctx, x, false)
	if err != nil {
		return driver.Snapshot{}, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	sx := &libvirtxml.DomainSnapshot{Name: opts.Name, Description: opts.Description, Disks: &libvirtxml.DomainSnapshotDisks{},
		Memory: &libvirtxml.DomainSnapshotMemory{Snapshot: "no"}}
	for _, dk := range x.Devices.Disks {
		if dk.Target == nil || dk.Device == "cdrom" || dk.Device == "floppy" || dk.ReadOnly != nil || dk.Shareable != nil {
			continue
		}
		if s := specs[dk.Target.Dev]; s.Snapshot != "internal" {
			return refuse(fmt.Sprintf("disk %s would be %q, and libvirt takes internal snapshots of all disks or none", dk.Target.Dev, orDefault(s.Snapshot, "external")))
		}
		if dk.Driver == nil || dk.Driver.Type != "qcow2" {
			return refuse(fmt.Sprintf("disk %s is not a qcow2 image", dk.Target.Dev))
		}
		if c := chains[dk.Target.Dev]; len(c) > 1 {
			return refuse(fmt.Sprintf("disk %s has overlays %v; the snapshot would live in the top overlay and be lost when it is merged (delete the external snapshots or run: autosnap snapshot chain collapse)", dk.Target.Dev, c[:len(c)-1]))
		}
		sx.Disks.Disks = append(sx.Disks.Disks, libvirtxml.DomainSnapshotDisk{Name: dk.Target.Dev, Snapshot: "internal"})
	}
	raw, err := sx.Marshal()
	if err != nil {
		return driver.Snapshot{}, err
	}
	_, err = call(ctx, func() (golibvirt.DomainSnapshot, error) {
		return d.l.DomainSnapshotCreateXML(dom, raw, uint32(golibvirt.DomainSnapshotCreateAtomic))
	})
	if err != nil {
		return driver.Snapshot{}, fmt.Errorf("guest %s: creating internal snapshot %s failed: %w", g.Name, opts.Name, err)
	}
	return d.snapshotByName(ctx, g, dom, opts.Name)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
