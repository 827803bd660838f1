package libvirt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

func errCode(err error) golibvirt.ErrorNumber {
	var e golibvirt.Error
	if errors.As(err, &e) {
		return golibvirt.ErrorNumber(e.Code)
	}
	return -1
}

// Snapshots implements driver.Driver, oldest first.
func (d *Driver) Snapshots(ctx context.Context, g driver.Guest) ([]driver.Snapshot, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return nil, err
	}
	return d.snapshots(ctx, g, dom)
}

func (d *Driver) snapshots(ctx context.Context, g driver.Guest, dom golibvirt.Domain) ([]driver.Snapshot, error) {
	xs, err := d.snapshotXMLs(ctx, g, dom)
	if err != nil {
		return nil, err
	}
	var cur golibvirt.DomainSnapshot
	if len(xs) > 0 {
		cur, err = call(ctx, func() (golibvirt.DomainSnapshot, error) { return d.l.DomainSnapshotCurrent(dom, 0) })
	}
	if err != nil && errCode(err) != golibvirt.ErrNoDomainSnapshot {
		return nil, fmt.Errorf("guest %s: reading current snapshot: %w", g.Name, err)
	}
	out := make([]driver.Snapshot, 0, len(xs))
	for _, x := range xs {
		s := fromXML(x)
		s.Current = err == nil && cur.Name == s.Name
		out = append(out, s)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

func (d *Driver) snapshotXMLs(ctx context.Context, g driver.Guest, dom golibvirt.Domain) ([]*libvirtxml.DomainSnapshot, error) {
	snaps, err := call(ctx, func() ([]golibvirt.DomainSnapshot, error) {
		s, _, err := d.l.DomainListAllSnapshots(dom, 1, 0)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("guest %s: listing snapshots: %w", g.Name, d.notFound(g.Name, err))
	}
	out := make([]*libvirtxml.DomainSnapshot, 0, len(snaps))
	for _, s := range snaps {
		x, err := d.snapshotXML(ctx, s)
		if err != nil {
			if errCode(err) == golibvirt.ErrNoDomainSnapshot {
				continue // deleted meanwhile
			}
			return nil, fmt.Errorf("guest %s: %w", g.Name, err)
		}
		out = append(out, x)
	}
	return out, nil
}

func (d *Driver) snapshotXML(ctx context.Context, s golibvirt.DomainSnapshot) (*libvirtxml.DomainSnapshot, error) {
	raw, err := call(ctx, func() (string, error) { return d.l.DomainSnapshotGetXMLDesc(s, 0) })
	if err != nil {
		return nil, err
	}
	var x libvirtxml.DomainSnapshot
	if err := x.Unmarshal(raw); err != nil {
		return nil, fmt.Errorf("snapshot %s: unreadable XML: %w", s.Name, err)
	}
	return &x, nil
}

func fromXML(x *libvirtxml.DomainSnapshot) driver.Snapshot {
	s := driver.Snapshot{Name: x.Name, Description: x.Description, GuestState: x.State}
	if sec, err := strconv.ParseInt(x.CreationTime, 10, 64); err == nil {
		s.Created = time.Unix(sec, 0)
	}
	if x.Parent != nil {
		s.Parent = x.Parent.Name
	}
	if x.Memory != nil && (x.Memory.Snapshot == "internal" || x.Memory.Snapshot == "external") {
		s.Memory = true
	}
	s.DiskOnly = x.State == "disk-snapshot"
	internal, external := false, false
	if x.Disks != nil {
		for _, dk := range x.Disks.Disks {
			sd := driver.SnapshotDisk{Name: dk.Name, Snapshot: dk.Snapshot}
			if dk.Source != nil && dk.Source.File != nil {
				sd.File = dk.Source.File.File
			}
			switch dk.Snapshot {
			case "external":
				external = true
			case "internal":
				internal = true
			}
			s.Disks = append(s.Disks, sd)
		}
	}
	if x.Memory != nil && x.Memory.Snapshot == "internal" {
		internal = true
	}
	switch {
	case internal && external:
		s.Location = driver.LocationMixed
	case external:
		s.Location = driver.LocationExternal
	default:
		s.Location = driver.LocationInternal
	}
	switch c := naming.DescriptionFields(x.Description)["consistency"]; driver.Consistency(c) {
	case driver.ConsistencyQuiesced, driver.ConsistencyCrash, driver.ConsistencyOffline:
		s.Consistency = driver.Consistency(c)
	}
	return s
}

// snapDisk is one disk a snapshot covers.
type snapDisk struct {
	target string
	active string // current active image (file or block device path)
}

// snapshotDisks lists the disks of a domain definition that a snapshot covers: real
// disks (not cdrom/floppy, not read-only or shared) backed by a local file or block
// device. Any other disk makes the snapshot fail with a clear error rather than
// silently leaving a disk out.
func snapshotDisks(g driver.Guest, x *libvirtxml.Domain) ([]snapDisk, error) {
	var out []snapDisk
	if x.Devices == nil {
		return nil, nil
	}
	for _, dk := range x.Devices.Disks {
		if dk.Device == "cdrom" || dk.Device == "floppy" || dk.ReadOnly != nil || dk.Shareable != nil {
			continue
		}
		if dk.Target == nil {
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

// CreateSnapshot implements driver.Driver. Every snapshot is external: an atomic,
// disk-only snapshot of all disks for a running or paused guest (with RAM in a file
// beside the disks when opts.Memory), an offline external snapshot for a shut-off guest.
// Keeping one kind keeps chains mergeable: an internal snapshot inside an overlay
// would be lost when that overlay is merged away.
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
	disks, err := snapshotDisks(g, x)
	if err != nil {
		return driver.Snapshot{}, err
	}

	sx := &libvirtxml.DomainSnapshot{Name: opts.Name, Description: opts.Description, Disks: &libvirtxml.DomainSnapshotDisks{}}
	var files []string
	for _, dk := range disks {
		f := overlayPath(dom.Name, dk.target, dk.active, opts.Name)
		files = append(files, f)
		sx.Disks.Disks = append(sx.Disks.Disks, libvirtxml.DomainSnapshotDisk{
			Name: dk.target, Snapshot: "external",
			Driver: &libvirtxml.DomainDiskDriver{Type: "qcow2"},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: f}},
		})
	}
	var flags golibvirt.DomainSnapshotCreateFlags
	memory := opts.Memory && active
	if memory {
		f := memoryPath(dom.Name, disks[0].active, opts.Name)
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

// DeleteSnapshot implements driver.Driver. An internal snapshot is deleted by libvirt.
// An external one is merged: each disk's overlay created by the snapshot is block
// committed into the image below it (live for an active guest, with qemu-img for a
// shut-off one), the overlay file and any memory file are removed, the libvirt metadata
// is dropped and the children's metadata is pointed at the merged image. Each disk's
// chain gets one image shorter.
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
	snap := golibvirt.DomainSnapshot{Name: name, Dom: dom}
	x, err := d.snapshotXML(ctx, snap)
	if err != nil {
		if errCode(err) == golibvirt.ErrNoDomainSnapshot {
			return fmt.Errorf("guest %s has no snapshot %q: %w", g.Name, name, driver.ErrNotFound)
		}
		return fmt.Errorf("guest %s: reading snapshot %s: %w", g.Name, name, d.notFound(g.Name, err))
	}
	s := fromXML(x)
	if s.Location == driver.LocationInternal {
		err := call0(ctx, func() error { return d.l.DomainSnapshotDelete(snap, 0) })
		if err != nil {
			return fmt.Errorf("guest %s: deleting snapshot %s failed: %w", g.Name, name, err)
		}
		return nil
	}
	if s.Location == driver.LocationMixed {
		return fmt.Errorf("guest %s: snapshot %s mixes internal and external disks; delete it with virsh: %w", g.Name, name, driver.ErrUnsupported)
	}
	return d.mergeExternal(ctx, g, dom, x)
}

// mergeExternal merges an external snapshot's overlays; see DeleteSnapshot.
func (d *Driver) mergeExternal(ctx context.Context, g driver.Guest, dom golibvirt.Domain, x *libvirtxml.DomainSnapshot) error {
	chains, active, err := d.chains(ctx, dom)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	// replaced maps each merged-away overlay to the image that now holds its data, for
	// rewriting the children's metadata.
	replaced := map[string]string{}
	for _, dk := range x.Disks.Disks {
		if dk.Snapshot != "external" || dk.Source == nil || dk.Source.File == nil {
			continue
		}
		overlay := dk.Source.File.File
		chain, ok := chains[dk.Name]
		if !ok {
			return fmt.Errorf("guest %s: snapshot %s covers disk %s, which the guest no longer has; refusing to merge (remove the snapshot's metadata with virsh snapshot-delete --metadata after checking)", g.Name, x.Name, dk.Name)
		}
		idx := indexOf(chain, overlay)
		if idx < 0 {
			if !containsFile(replaced, overlay) && !d.exists(overlay) {
				// Merged by an earlier, interrupted delete: only metadata is left.
				continue
			}
			return fmt.Errorf("guest %s: disk %s: overlay %s of snapshot %s is not in the disk's backing chain %v; refusing to merge", g.Name, dk.Name, overlay, x.Name, chain)
		}
		if idx+1 >= len(chain) {
			return fmt.Errorf("guest %s: disk %s: overlay %s has no backing image to merge into", g.Name, dk.Name, overlay)
		}
		base := chain[idx+1]
		if active {
			err = d.commitLive(ctx, g, dom, dk.Name, overlay, base, idx == 0)
		} else {
			var above string
			if idx > 0 {
				above = chain[idx-1]
			}
			err = d.commitOffline(ctx, g, dom, dk.Name, overlay, base, above)
		}
		if err != nil {
			return fmt.Errorf("guest %s: merging snapshot %s on disk %s: %w", g.Name, x.Name, dk.Name, err)
		}
		replaced[overlay] = base
	}
	if x.Memory != nil && x.Memory.Snapshot == "external" && x.Memory.File != "" {
		if err := d.removeFile(x.Memory.File); err != nil {
			return fmt.Errorf("guest %s: snapshot %s: removing memory file: %w", g.Name, x.Name, err)
		}
	}
	grandparent := ""
	if x.Parent != nil {
		grandparent = x.Parent.Name
	}
	if err := d.repointChildren(ctx, g, dom, x.Name, grandparent, replaced); err != nil {
		return err
	}
	snap := golibvirt.DomainSnapshot{Name: x.Name, Dom: dom}
	err = call0(ctx, func() error { return d.l.DomainSnapshotDelete(snap, golibvirt.DomainSnapshotDeleteMetadataOnly) })
	if err != nil && errCode(err) != golibvirt.ErrNoDomainSnapshot {
		return fmt.Errorf("guest %s: snapshot %s merged, but removing its metadata failed: %w (run: virsh snapshot-delete %s %s --metadata)", g.Name, x.Name, err, dom.Name, x.Name)
	}
	return nil
}

func containsFile(m map[string]string, f string) bool { _, ok := m[f]; return ok }

func indexOf(xs []string, s string) int {
	for i, x := range xs {
		if x == s {
			return i
		}
	}
	return -1
}

// repointChildren rewrites the recorded domain definition of the merged snapshot's
// direct children: the images they saw as their disks' state were merged into the
// images below, so their metadata must name those (libvirt's --redefine).
func (d *Driver) repointChildren(ctx context.Context, g driver.Guest, dom golibvirt.Domain, parent, grandparent string, replaced map[string]string) error {
	if len(replaced) == 0 {
		return nil
	}
	snap := golibvirt.DomainSnapshot{Name: parent, Dom: dom}
	kids, err := call(ctx, func() ([]golibvirt.DomainSnapshot, error) {
		k, _, err := d.l.DomainSnapshotListAllChildren(snap, 1, 0)
		return k, err
	})
	if err != nil {
		return fmt.Errorf("guest %s: listing children of %s: %w", g.Name, parent, err)
	}
	for _, k := range kids {
		raw, err := call(ctx, func() (string, error) {
			return d.l.DomainSnapshotGetXMLDesc(k, uint32(golibvirt.DomainSnapshotXMLSecure))
		})
		if err != nil {
			return fmt.Errorf("guest %s: reading snapshot %s: %w", g.Name, k.Name, err)
		}
		var kx libvirtxml.DomainSnapshot
		if err := kx.Unmarshal(raw); err != nil {
			return fmt.Errorf("guest %s: snapshot %s: %w", g.Name, k.Name, err)
		}
		changed := false
		for _, dm := range []*libvirtxml.Domain{kx.Domain, inactiveOf(&kx)} {
			if dm == nil || dm.Devices == nil {
				continue
			}
			for i := range dm.Devices.Disks {
				dk := &dm.Devices.Disks[i]
				if dk.Source != nil && dk.Source.File != nil {
					if nb, ok := replaced[dk.Source.File.File]; ok {
						dk.Source.File.File = nb
						dk.BackingStore = nil
						changed = true
					}
				}
			}
		}
		if !changed {
			continue
		}
		if kx.Parent != nil && kx.Parent.Name == parent {
			// The parent's metadata goes next; libvirt would reparent too, but only
			// children it still knows as children.
			kx.Parent = nil
			if grandparent != "" {
				kx.Parent = &libvirtxml.DomainSnapshotParent{Name: grandparent}
			}
		}
		out, err := kx.Marshal()
		if err != nil {
			return err
		}
		flags := uint32(golibvirt.DomainSnapshotCreateRedefine)
		if cur, err := call(ctx, func() (int32, error) { return d.l.DomainSnapshotIsCurrent(k, 0) }); err == nil && cur == 1 {
			flags |= uint32(golibvirt.DomainSnapshotCreateCurrent)
		}
		_, err = call(ctx, func() (golibvirt.DomainSnapshot, error) { return d.l.DomainSnapshotCreateXML(dom, out, flags) })
		if err != nil {
			return fmt.Errorf("guest %s: updating metadata of snapshot %s after merge: %w", g.Name, k.Name, err)
		}
	}
	return nil
}

func inactiveOf(x *libvirtxml.DomainSnapshot) *libvirtxml.Domain {
	if x.InactiveDomain == nil {
		return nil
	}
	return &x.InactiveDomain.Domain
}
