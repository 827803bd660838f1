package libvirt

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

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
	// prev is the disk's definition before the snapshot, to point it back at its
	// image when a snapshot has to be undone.
	prev *libvirtxml.DomainDisk
}

// snapshotDisks lists the disks of a domain definition that a snapshot covers: real
// disks (not cdrom/floppy, not read-only or shared) backed by a local file or block
// device, except those skip maps to true and those the definition marks
// snapshot='no' (unless skip maps them to false: the caller asked for them). Any
// other disk makes the snapshot fail with a clear error rather than silently leaving
// a disk out.
func snapshotDisks(g driver.Guest, x *libvirtxml.Domain, skip map[string]bool) ([]snapDisk, error) {
	var out []snapDisk
	if x.Devices == nil {
		return nil, nil
	}
	for i := range x.Devices.Disks {
		dk := &x.Devices.Disks[i]
		if dk.Device == "cdrom" || dk.Device == "floppy" || dk.ReadOnly != nil || dk.Shareable != nil || dk.Target == nil {
			continue
		}
		if s, asked := skip[dk.Target.Dev]; s || (!asked && dk.Snapshot == "no") {
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
			return nil, fmt.Errorf("guest %s: disk %s is not a local file or block device; autosnap cannot take an external snapshot of it (mark it snapshot='no' in the domain to leave it out)", g.Name, dk.Target.Dev)
		}
		out = append(out, snapDisk{target: dk.Target.Dev, active: path, prev: dk})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("guest %s has no disk autosnap can snapshot", g.Name)
	}
	return out, nil
}

// safeFileName replaces every character of s that libvirt or QEMU may rewrite in a
// file name (libvirt doubles commas when it creates offline overlays, QEMU parses
// commas and colons as option syntax) with '_': letters, digits, '.', '_', '-' and
// '+' are kept.
func safeFileName(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-', c == '+':
		default:
			b[i] = '_'
		}
	}
	return string(b)
}

// overlayPath names the overlay file an external snapshot creates for one disk: next
// to the disk's current image, "<guest>-<disk>.<snapshot>.qcow2", so `ls` shows what
// each file is. Guest and snapshot names go through safeFileName.
func overlayPath(domName, target, active, snap string) string {
	return filepath.Join(filepath.Dir(active), fmt.Sprintf("%s-%s.%s.qcow2", safeFileName(domName), safeFileName(target), safeFileName(snap)))
}

// memoryPath names the file the RAM of a snapshot with memory is saved to:
// "<guest>.<snapshot>.mem" beside the first disk's current image.
func memoryPath(domName, active, snap string) string {
	return filepath.Join(filepath.Dir(active), fmt.Sprintf("%s.%s.mem", safeFileName(domName), safeFileName(snap)))
}

// CreateSnapshot implements driver.Driver: PrepareSnapshot, then Create, then Close.
//
// By default every snapshot is external: an atomic, disk-only snapshot of all disks
// for a running or paused guest (with RAM in a file beside the disks when opts.Memory
// or opts.MemoryFile), an offline external snapshot for a shut-off guest. A disk the
// domain marks snapshot='no' is left out (recorded as "no"); opts.Disks can exclude
// disks too, include such a disk, or name the overlay files.
//
// An internal snapshot (every disk "internal") is only taken of a shut-off guest whose
// disks are single qcow2 images without overlays: an internal snapshot inside an
// overlay would be lost when that overlay is merged away, and one of a running guest
// would pause it while its RAM is written into the image.
//
// A name that exists, or an overlay or memory file that exists, fails with an error
// wrapping driver.ErrExists before anything changes. After an external create every
// overlay the snapshot records must exist (and, for a shut-off guest, be what the
// definition names); otherwise the snapshot is undone and the error says which file
// libvirt did not create. A transient guest's snapshot carries a note (Snapshot.Notes)
// that the XML it was started from still names the old images.
func (d *Driver) CreateSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.Snapshot, error) {
	p, err := d.prepareSnapshot(ctx, g, opts)
	if err != nil {
		return driver.Snapshot{}, err
	}
	defer p.Close()
	return p.Create(ctx)
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

// internalSnapshotXML checks that an internal snapshot of a shut-off guest can be taken
// (see CreateSnapshot) and returns what to ask libvirt for.
func (d *Driver) internalSnapshotXML(ctx context.Context, g driver.Guest, x *libvirtxml.Domain, active bool, specs map[string]driver.DiskSpec, opts driver.CreateOptions) (*libvirtxml.DomainSnapshot, error) {
	refuse := func(why string) (*libvirtxml.DomainSnapshot, error) {
		return nil, fmt.Errorf("guest %s: no internal snapshot: %s; take an external one (the default): %w", g.Name, why, driver.ErrUnsupported)
	}
	if active {
		return refuse("the guest is running, and an internal snapshot would pause it while its RAM is saved into the disk images (shut it down first)")
	}
	if opts.Memory || opts.MemoryFile != "" || opts.Quiesce {
		return refuse("a shut-off guest has no RAM to save and nothing to quiesce")
	}
	chains, err := d.chainsOf(ctx, x, false)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	sx := &libvirtxml.DomainSnapshot{Name: opts.Name, Description: opts.Description, Disks: &libvirtxml.DomainSnapshotDisks{},
		Memory: &libvirtxml.DomainSnapshotMemory{Snapshot: "no"}}
	for _, dk := range x.Devices.Disks {
		if dk.Target == nil || dk.Device == "cdrom" || dk.Device == "floppy" || dk.ReadOnly != nil || dk.Shareable != nil {
			continue
		}
		s, asked := specs[dk.Target.Dev]
		if (asked && s.Snapshot == "no") || (!asked && dk.Snapshot == "no") {
			sx.Disks.Disks = append(sx.Disks.Disks, libvirtxml.DomainSnapshotDisk{Name: dk.Target.Dev, Snapshot: "no"})
			continue
		}
		if s.Snapshot != "internal" {
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
	return sx, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
