package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
)

// checkpointSuspendRecord is the journal record of autosnap's checkpoints whose libvirt
// metadata was removed while a shut-off guest's snapshot was being made. Its presence
// means the metadata must be defined again (resumeCheckpoints).
type checkpointSuspendRecord struct {
	// XMLs are the checkpoints' full definitions, oldest first.
	XMLs []string `json:"xmls"`
}

func suspendKey(node string, dom golibvirt.Domain) string {
	return "checkpoints/" + node + "/" + formatUUID(dom.UUID)
}

// snapshotCreateXML is DomainSnapshotCreateXML for every snapshot the driver creates
// or redefines. libvirt 9.0 refuses both for a shut-off domain that has checkpoints
// ("cannot perform block operations while checkpoint exists": it asks the capabilities
// of a QEMU that is not running), although the bitmaps in the images survive them.
// Refused so, the call is made again with autosnap's checkpoints set aside
// (withCheckpointsSuspended); any other outcome is libvirt's own.
func (d *Driver) snapshotCreateXML(dom golibvirt.Domain, xml string, flags uint32) (golibvirt.DomainSnapshot, error) {
	s, err := d.l.DomainSnapshotCreateXML(dom, xml, flags)
	if err == nil || errCode(err) != golibvirt.ErrOperationUnsupported || !strings.Contains(libvirtMessage(err), "checkpoint exists") {
		return s, err
	}
	err = d.withCheckpointsSuspended(dom, false, func() error {
		var e error
		s, e = d.l.DomainSnapshotCreateXML(dom, xml, flags)
		return e
	})
	return s, err
}

// withCheckpointsSuspended runs fn, a libvirt call creating or redefining a snapshot.
// For a shut-off guest whose only checkpoints are autosnap's, their
// definitions are journalled, their metadata (only) removed, fn run, and then
// resumeCheckpoints gives every new overlay an empty recording bitmap per checkpoint —
// nothing changed in it yet, so the bitmap chain top-down stays exact — and defines the
// checkpoints again. Incrementals continue across the snapshot. Another tool's
// checkpoint is never touched: with one present libvirt refuses as before. A run cut
// off inside the window leaves the record, which the next backup, checkpoint removal
// or snapshot of the guest finishes.
func (d *Driver) withCheckpointsSuspended(dom golibvirt.Domain, active bool, fn func() error) error {
	if active {
		return fn()
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	if err := d.resumeCheckpoints(ctx, dom, false); err != nil {
		return err
	}
	type res struct{ n int32 }
	all, err := call(ctx, func() (res, error) {
		_, n, err := d.l.DomainListAllCheckpoints(dom, 0, 0)
		return res{n}, err
	})
	if err != nil || all.n == 0 {
		return fn()
	}
	own, err := d.ownCheckpoints(ctx, dom)
	if err != nil {
		return err
	}
	if len(own) == 0 || int(all.n) != len(own) {
		return fn()
	}
	if err := d.suspendCheckpoints(ctx, dom, own); err != nil {
		return err
	}
	ferr := fn()
	// The snapshot's outcome is fn's; a failure to restore the checkpoints now is
	// finished from the journal record by the next backup or snapshot.
	_ = d.resumeCheckpoints(ctx, dom, true)
	return ferr
}

// suspendCheckpoints journals the definitions of checkpoints own, then removes their
// libvirt metadata (their bitmaps stay in the images).
func (d *Driver) suspendCheckpoints(ctx context.Context, dom golibvirt.Domain, own []ownCheckpoint) error {
	var rec checkpointSuspendRecord
	for _, c := range own {
		s, err := call(ctx, func() (string, error) {
			return d.l.DomainCheckpointGetXMLDesc(c.h, uint32(golibvirt.DomainCheckpointXMLSecure))
		})
		if err != nil {
			return fmt.Errorf("guest %s: saving checkpoint %s before the snapshot: %w", dom.Name, c.x.Name, err)
		}
		rec.XMLs = append(rec.XMLs, s)
	}
	if err := d.store().Put(suspendKey(d.node, dom), rec); err != nil {
		return fmt.Errorf("guest %s: journalling its checkpoints before the snapshot: %w", dom.Name, err)
	}
	for i := len(own) - 1; i >= 0; i-- {
		h := own[i].h
		if err := call0(ctx, func() error { return d.l.DomainCheckpointDelete(h, golibvirt.DomainCheckpointDeleteMetadataOnly) }); err != nil {
			if rerr := d.resumeCheckpoints(ctx, dom, true); rerr != nil {
				return fmt.Errorf("guest %s: setting its checkpoints aside for the snapshot failed (%v), and restoring them failed: %w (the next backup retries)", dom.Name, err, rerr)
			}
			return fmt.Errorf("guest %s: setting its checkpoints aside for the snapshot: %w", dom.Name, err)
		}
	}
	return nil
}

// resumeCheckpoints finishes a suspension withCheckpointsSuspended recorded, if any:
// with fill, each disk image above the one holding a checkpoint's bitmap (the
// overlays the snapshot just made) gets an empty recording bitmap of the same name and
// granularity; then every checkpoint libvirt no longer knows is defined again, oldest
// first, and the record is removed. fill is only right straight after the snapshot:
// a record found later (a run cut off inside the window) may predate overlays the
// guest has since written to, so then the checkpoints come back without filling, and
// one whose bitmap the active image lacks is reported unusable (a full, with the
// reason) rather than trusted. The guest must be shut off.
func (d *Driver) resumeCheckpoints(ctx context.Context, dom golibvirt.Domain, fill bool) error {
	var rec checkpointSuspendRecord
	key := suspendKey(d.node, dom)
	ok, err := d.store().Get(key, &rec)
	if err != nil || !ok {
		return err
	}
	dx, active, err := d.currentXML(ctx, dom)
	if err != nil {
		return err
	}
	if active {
		return fmt.Errorf("guest %s runs, but autosnap's checkpoints set aside while it was shut off (journal %s) were never restored: shut it down and run the backup again, or remove the record (the next backup is then a full)", dom.Name, d.store().Path(key))
	}
	chains, err := d.chainsOf(ctx, dx, false)
	if err != nil {
		return err
	}
	for _, s := range rec.XMLs {
		var x checkpointXML
		if err := xml.Unmarshal([]byte(s), &x); err != nil {
			return fmt.Errorf("guest %s: journalled checkpoint unreadable: %w", dom.Name, err)
		}
		if fill {
			for _, disk := range x.tracked() {
				if err := fillBitmapRun(ctx, chains[disk], x.bitmap(disk)); err != nil {
					return fmt.Errorf("guest %s disk %s: %w", dom.Name, disk, err)
				}
			}
		}
		if _, err := call(ctx, func() (golibvirt.DomainCheckpoint, error) { return d.l.DomainCheckpointLookupByName(dom, x.Name, 0) }); err == nil {
			continue
		}
		if _, err := call(ctx, func() (golibvirt.DomainCheckpoint, error) {
			return d.l.DomainCheckpointCreateXML(dom, s, uint32(golibvirt.DomainCheckpointCreateRedefine))
		}); err != nil {
			return fmt.Errorf("guest %s: defining checkpoint %s again: %w", dom.Name, x.Name, err)
		}
	}
	return d.store().Delete(key)
}

// fillBitmapRun adds bitmap name, empty and recording, to every image of chain (top
// first) above the topmost image that has it, so the images carrying it form the
// unbroken run from the top that libvirt and QEMU require. A chain where no image has
// it is left alone (the checkpoint is then reported unusable).
func fillBitmapRun(ctx context.Context, chain []string, name string) error {
	for i, img := range chain {
		bms, err := imageBitmaps(ctx, img)
		if err != nil {
			return err
		}
		for _, b := range bms {
			if b.Name != name {
				continue
			}
			for j := i - 1; j >= 0; j-- {
				args := []string{"bitmap", "--add", "--enable"}
				if b.Granularity > 0 {
					args = append(args, "-g", strconv.FormatUint(b.Granularity, 10))
				}
				if _, err := runCmd(ctx, "qemu-img", append(args, chain[j], name)...); err != nil {
					return err
				}
			}
			return nil
		}
	}
	return nil
}

// carryBitmaps merges autosnap's bitmaps of every image from top down to (not
// including) base into base, adding them there when missing, before qemu-img commit
// merges those images into base while the guest is shut off: qemu-img commit does not
// carry bitmaps, and without this the changes made while an overlay existed would be
// tracked only in an image about to be deleted. libvirt does the same for the commits
// it runs. A merge repeated after a crash only sets bits already set.
func carryBitmaps(ctx context.Context, top, base string) error {
	infos, err := qemuImgInfo(ctx, top)
	if err != nil {
		return err
	}
	baseBms, err := imageBitmaps(ctx, base)
	if err != nil {
		return err
	}
	has := map[string]bool{}
	for _, b := range baseBms {
		has[b.Name] = true
	}
	for _, in := range infos {
		if in.Filename == base {
			return nil
		}
		bms, err := imageBitmaps(ctx, in.Filename)
		if err != nil {
			return err
		}
		for _, b := range bms {
			if !IsOwnCheckpoint(b.Name) || slices.Contains(b.Flags, "in-use") {
				continue
			}
			if !has[b.Name] {
				args := []string{"bitmap", "--add", "--enable"}
				if b.Granularity > 0 {
					args = append(args, "-g", strconv.FormatUint(b.Granularity, 10))
				}
				if _, err := runCmd(ctx, "qemu-img", append(args, base, b.Name)...); err != nil {
					return fmt.Errorf("carrying bitmap %s into %s: %w", b.Name, base, err)
				}
				has[b.Name] = true
			}
			if _, err := runCmd(ctx, "qemu-img", "bitmap", "--merge", b.Name, "-b", in.Filename, "-F", in.Format, base, b.Name); err != nil {
				return fmt.Errorf("carrying bitmap %s into %s: %w", b.Name, base, err)
			}
		}
	}
	return nil
}

// revertToSnapshot is DomainRevertToSnapshot for the driver's internal reverts. QEMU
// refuses to apply an internal snapshot to an image holding dirty bitmaps ("Device has
// active dirty bitmaps"), and rightly: the revert rewrites the disk behind the bitmaps'
// back, so no checkpoint could be trusted after it. Refused so while the guest is shut
// off, autosnap's checkpoints are removed with their bitmaps (the next backup is then a
// full: the engine finds its chain's checkpoint gone) and the revert is made again;
// another tool's bitmaps still make it fail.
func (d *Driver) revertToSnapshot(ctx context.Context, snap golibvirt.DomainSnapshot, flags uint32) error {
	err := call0(ctx, func() error { return d.l.DomainRevertToSnapshot(snap, flags) })
	if err == nil || !strings.Contains(libvirtMessage(err), "dirty bitmaps") {
		return err
	}
	dom := snap.Dom
	if st, serr := d.domState(ctx, dom); serr != nil || st.Active() {
		return err
	}
	own, lerr := d.ownCheckpoints(ctx, dom)
	if lerr != nil || len(own) == 0 {
		return err
	}
	g := driver.Guest{Name: dom.Name, UUID: formatUUID(dom.UUID)}
	for i := len(own) - 1; i >= 0; i-- {
		if derr := d.deleteCheckpoint(ctx, g, dom, own[i].x.Name); derr != nil && !errors.Is(derr, driver.ErrNotFound) {
			return fmt.Errorf("%w (removing autosnap's checkpoint %s, whose bitmap blocks the revert, failed too: %v)", err, own[i].x.Name, derr)
		}
	}
	return call0(ctx, func() error { return d.l.DomainRevertToSnapshot(snap, flags) })
}
