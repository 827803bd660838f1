package libvirt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/retry"
)

// RevertSnapshot implements driver.Driver; it is RevertSnapshotNotes without notes.
func (d *Driver) RevertSnapshot(ctx context.Context, g driver.Guest, name string, opts driver.RevertOptions) error {
	return d.RevertSnapshotNotes(ctx, g, name, opts, nil)
}

// RevertSnapshotNotes makes the guest's state the snapshot's, calling note (when not
// nil) with one line for each thing the user should know: a guest stopped hard, an
// image created or deleted, a filesystem thawed.
//
// An internal snapshot is reverted by libvirt (virDomainRevertToSnapshot with the
// Running, Paused and Force flags of opts).
//
// libvirt 9.0 cannot revert an external snapshot; autosnap does it the way libvirt 9.9
// does, with new overlays, on the guest's host (qemu:///system there):
//
//   - Only a shut-off guest has its disks replaced. A running or paused guest is
//     stopped hard first (virDomainDestroy, like virsh destroy): for a disk-only
//     snapshot only with opts.Force, since the guest then boots from the snapshot's
//     disks; for a snapshot with memory always, since its RAM is replaced anyway.
//   - For each disk the snapshot covers, the snapshot's state is the image named as
//     that disk's source in the snapshot's recorded <domain> (merges keep it up to
//     date). A fresh qcow2 overlay "<dom>-<disk>.<snap>.revert<N>.qcow2" (N = 1, 2, …:
//     the first free name), mode 0600, is created on it beside the disk's current
//     image, and the persistent definition's disk is pointed at it. The state image is
//     never written, so the snapshot can be reverted to again.
//   - The snapshot becomes current (its metadata is redefined with the Current flag).
//   - Only then is each disk's image that held the discarded current state deleted:
//     when no snapshot's state depends on it, it holds no internal snapshot, and a
//     snapshot or an earlier revert created it (it is named in a snapshot's <disks>
//     or is a revert overlay of this disk); otherwise it is kept and a note says so.
//   - A snapshot with memory is then restored from its memory file
//     (virDomainRestoreFlags with the save image's domain XML, disks pointed at the
//     new overlays): running, or paused with opts.Paused (without either option, the
//     state recorded at snapshot time). The restore has its own bound, not what is
//     left of ctx: one minute plus one second per 50 MiB of the memory file (see
//     memoryRestoreBound); cancelling ctx still cancels it. Filesystems frozen in the
//     saved RAM (snap --state with quiesce freezes them around the memory snapshot)
//     are thawed through the agent once it answers. A disk-only snapshot leaves the
//     guest shut off unless opts.Running or opts.Paused.
//
// Nothing is deleted before the reverted state is in place and recorded. Before the
// guest is touched, the revert's plan (new overlays, images to delete, the snapshot's
// new <disks>) is written to the journal; it is removed once the discarded images
// are gone. A run cut off in between is finished by the next one that changes the
// guest if the definition names the new overlays, and undone otherwise (see
// settleRevert). When the call that points the definition at the new overlays gives
// no answer (a timeout, a broken connection), the definition is read back: if it does
// not name them yet, nothing is deleted, since the call may still be applied, and the
// next run decides.
//
// Before anything is changed it refuses, with an error naming the guest, the snapshot
// and what to do, when the snapshot's data is not whole (a merge that removes it was
// interrupted: incompleteReasons), when a covered disk is gone from the guest's
// definition, when a state image, its backing chain or the memory file is missing,
// when a disk's current image is the state image itself (the snapshot no longer holds
// its point), or when the domain is transient (stopping it would drop it with its
// snapshot metadata).
//
// The image tree after a revert, which merges must respect. Before reverting to S:
//
//	P ← O_S ← … ← A     P: S's state image (recorded <domain> source)
//	                     O_S: the overlay S's <disks> names; A: the active image
//
// After:
//
//	P ← O_S ← …          kept only as far as later snapshots' states need them
//	P ← R                R = <dom>-<disk>.<S>.revert<N>.qcow2, the new active image
//
// so P may have several overlays (O_S and one R per revert to S that later snapshots
// still use); every image a kept snapshot needs keeps its backing file. R sits in
// the directory of the disk's previous active image, like snapshot overlays. A
// snapshot taken afterwards gets R as its state and S as its parent. When no image other than
// R is left on P (O_S was the discarded active image, or had been deleted before), S's
// <disks> are rewritten to name R: R now plays O_S's part, so deleting S later merges
// R into P as it would have merged O_S. Otherwise S's <disks> keep naming O_S, which
// is no longer in the current chain: a delete must then neither commit into P nor
// remove an image that has an overlay, since that would corrupt the other branch.
// Once that branch is gone and no snapshot needs P any more, R (or O_S) is merged into
// P as a snapshot's overlay would be, even when S's metadata went first: buildGraphs
// knows autosnap's overlays by their names, so the chain shrinks back to P.
func (d *Driver) RevertSnapshotNotes(ctx context.Context, g driver.Guest, name string, opts driver.RevertOptions, note func(string)) error {
	if note == nil {
		note = func(string) {}
	}
	if opts.Running && opts.Paused {
		return fmt.Errorf("guest %s: reverting to %s: choose running or paused, not both", g.Name, name)
	}
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	unlock := d.domLock(g.Key())
	defer unlock()
	if err := d.settle(ctx, g, dom); err != nil {
		return err
	}
	incomplete, err := d.incompleteReasons(ctx, g, dom)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	if why := incomplete[name]; why != "" {
		return fmt.Errorf("guest %s: refusing to revert to snapshot %s: its data is not whole: %s (revert to another snapshot, or delete this one)", g.Name, name, why)
	}

	snap := golibvirt.DomainSnapshot{Name: name, Dom: dom}
	raw, err := call(ctx, func() (string, error) {
		return d.l.DomainSnapshotGetXMLDesc(snap, uint32(golibvirt.DomainSnapshotXMLSecure))
	})
	if err != nil {
		if errCode(err) == golibvirt.ErrNoDomainSnapshot {
			return fmt.Errorf("guest %s has no snapshot %q: %w", g.Name, name, driver.ErrNotFound)
		}
		return fmt.Errorf("guest %s: reading snapshot %s: %w", g.Name, name, d.notFound(g.Name, err))
	}
	var sx libvirtxml.DomainSnapshot
	if err := sx.Unmarshal(raw); err != nil {
		return fmt.Errorf("guest %s: snapshot %s: unreadable XML: %w", g.Name, name, err)
	}
	switch fromXML(&sx).Location {
	case driver.LocationInternal:
		return d.revertInternal(ctx, g, snap, opts)
	case driver.LocationMixed:
		return fmt.Errorf("guest %s: snapshot %s mixes internal and external disks; autosnap cannot revert it: %w", g.Name, name, driver.ErrUnsupported)
	}
	return d.revertExternal(ctx, g, dom, &sx, opts, note)
}

func (d *Driver) revertInternal(ctx context.Context, g driver.Guest, snap golibvirt.DomainSnapshot, opts driver.RevertOptions) error {
	var flags uint32
	if opts.Running {
		flags |= uint32(golibvirt.DomainSnapshotRevertRunning)
	}
	if opts.Paused {
		flags |= uint32(golibvirt.DomainSnapshotRevertPaused)
	}
	if opts.Force {
		flags |= uint32(golibvirt.DomainSnapshotRevertForce)
	}
	err := d.revertToSnapshot(ctx, snap, flags)
	if err != nil {
		hint := ""
		if errCode(err) == golibvirt.ErrSnapshotRevertRisky {
			hint = " (libvirt asks for --force: the guest's current state would be discarded in a way it cannot check)"
		}
		return fmt.Errorf("guest %s: reverting to %s failed: %w%s", g.Name, snap.Name, err, hint)
	}
	return nil
}

// revertDisk is one disk of an external revert.
type revertDisk struct {
	target  string
	state   string // image holding the snapshot's state of the disk
	format  string // format of state
	current string // the disk's active image before the revert
	overlay string // the new overlay created on state
	made    bool   // overlay was created by this revert
	snapOv  string // the overlay the snapshot's <disks> names
}

// imageSet is what the domain's snapshot metadata says about image files.
type imageSet struct {
	// needed holds every image some snapshot's state depends on: state images and
	// their backing chains.
	needed map[string]bool
	// backing maps each image of those chains to its backing image.
	backing map[string]string
	// created holds the overlays named in snapshots' <disks> and the memory files.
	created map[string]bool
}

func (d *Driver) revertExternal(ctx context.Context, g driver.Guest, dom golibvirt.Domain, sx *libvirtxml.DomainSnapshot, opts driver.RevertOptions, note func(string)) error {
	name := sx.Name
	if !d.local {
		return fmt.Errorf("guest %s: reverting the external snapshot %s creates image files, which needs autosnap on the guest's host (connect with qemu:///system there): %w", g.Name, name, driver.ErrUnsupported)
	}
	persistent, err := call(ctx, func() (int32, error) { return d.l.DomainIsPersistent(dom) })
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, d.notFound(g.Name, err))
	}
	if persistent != 1 {
		return fmt.Errorf("guest %s is transient: stopping it for the revert would remove it and its snapshot metadata; define it first (virsh dumpxml %s > x.xml; virsh define x.xml): %w", g.Name, g.Name, driver.ErrUnsupported)
	}
	memFile := ""
	if sx.Memory != nil && sx.Memory.Snapshot == "external" {
		memFile = sx.Memory.File
	}
	cur, active, err := d.currentXML(ctx, dom)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	state, err := d.domState(ctx, dom)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	if active && memFile == "" && !opts.Force {
		return fmt.Errorf("guest %s is %s: reverting to the disk-only snapshot %s discards its current state and boots it from the snapshot's disks; shut it down first, or use --force to stop it hard (like virsh destroy)", g.Name, state, name)
	}
	disks, err := revertDisks(g, sx, cur)
	if err != nil {
		return err
	}
	if active {
		// The persistent definition is the one rewritten below; it must have the disks
		// too, or the guest would be stopped for nothing.
		px, err := d.domainXML(ctx, dom, true)
		if err != nil {
			return fmt.Errorf("guest %s: %w", g.Name, err)
		}
		if _, err := revertDisks(g, sx, px); err != nil {
			return fmt.Errorf("%w (in its persistent definition)", err)
		}
	}
	if memFile != "" {
		if _, err := os.Stat(memFile); err != nil {
			return fmt.Errorf("guest %s: the memory file of snapshot %s is missing (%v); it cannot be restored", g.Name, name, err)
		}
	}
	// The state images must be whole before the current state is thrown away.
	for i := range disks {
		dk := &disks[i]
		if dk.current == dk.state {
			return fmt.Errorf("guest %s: disk %s: its active image %s is the state image of snapshot %s, so the snapshot no longer holds its point in time; refusing to revert", g.Name, dk.target, dk.state, name)
		}
		infos, err := qemuImgInfo(ctx, dk.state)
		if err != nil {
			return fmt.Errorf("guest %s: snapshot %s: the state image of disk %s is missing or unreadable: %w", g.Name, name, dk.target, err)
		}
		if dk.format == "" {
			dk.format = infos[0].Format
		}
	}
	images, err := d.snapshotImages(ctx, g, dom)
	if err != nil {
		return err
	}
	for _, dk := range disks {
		// Where the discarded image sits decides whether the state image keeps other
		// overlays after the revert.
		if infos, err := qemuImgInfo(ctx, dk.current); err == nil && len(infos) > 1 {
			images.backing[dk.current] = infos[1].Filename
		}
	}

	// Decided now, while the images are as the snapshot metadata describes them, and
	// recorded, so that a run cut off later finishes with the same decisions.
	drop, kept := planDiscard(dom.Name, disks, images)
	for i := range disks {
		f, err := freeRevertOverlay(dom.Name, name, &disks[i], disks[:i])
		if err != nil {
			return fmt.Errorf("guest %s: disk %s: %w", g.Name, disks[i].target, err)
		}
		disks[i].overlay = f
	}
	rewrite := rewriteFor(disks, images, setOf(drop))
	applyRewrite(sx, rewrite)
	sxml, err := sx.Marshal()
	if err != nil {
		return fmt.Errorf("guest %s: snapshot %s: %w", g.Name, name, err)
	}
	store, key := d.createStore(), revertKey(d.node, dom)
	rec := newRevertRecord(g, dom, name, disks, drop, memFile)
	rec.Rewrite, rec.SnapshotXML = rewrite, sxml
	if err := store.Put(key, rec); err != nil {
		return fmt.Errorf("guest %s: nothing was reverted: %w", g.Name, err)
	}
	// undo removes the new overlays; only while nothing can point the guest at them.
	undo := func() error {
		for _, dk := range disks {
			if !dk.made {
				continue
			}
			if err := os.Remove(dk.overlay); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		return store.Delete(key)
	}

	if active {
		err := call0(ctx, func() error { return d.l.DomainDestroyFlags(dom, 0) })
		if err != nil && !isShutOff(d.domState(ctx, dom)) {
			_ = undo()
			return fmt.Errorf("guest %s: stopping it for the revert failed: %w", g.Name, err)
		}
		note(fmt.Sprintf("stopped %s hard (like virsh destroy); its current state is discarded", g.Name))
	}
	for i := range disks {
		dk := &disks[i]
		if err := createRevertOverlay(ctx, dk); err != nil {
			_ = undo()
			return fmt.Errorf("guest %s: disk %s: creating the overlay on %s: %w", g.Name, dk.target, dk.state, err)
		}
	}
	crash.Point(crash.RevertOverlays)
	if err := d.pointDisks(ctx, dom, disks, key); err != nil {
		var unsure *unsureError
		if !errors.As(err, &unsure) {
			_ = undo()
			return fmt.Errorf("guest %s: %w (the guest still uses its previous images)", g.Name, err)
		}
		// The call may still be applied: verify before deciding anything.
		vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.timeout)
		n, verr := d.pointedAt(vctx, dom, rec.Disks)
		cancel()
		if verr != nil || n != len(disks) {
			return fmt.Errorf("guest %s: reverting to %s: %w; the definition may still be changed to use the new overlays, so nothing was deleted: the next run that changes the guest finishes or undoes the revert", g.Name, name, err)
		}
	}
	rec.Phase = revertPointed
	if err := store.Put(key, rec); err != nil {
		return fmt.Errorf("guest %s: disks reverted to %s, but %w; the discarded images were kept", g.Name, name, err)
	}
	for _, dk := range disks {
		note(fmt.Sprintf("%s: new overlay %s on %s", dk.target, dk.overlay, dk.state))
	}
	crash.Point(crash.RevertPointed)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("guest %s: disks reverted to %s, but the time is up (%w); the next run that changes the guest marks it current and deletes the discarded images", g.Name, name, err)
	}

	crash.Point(crash.RevertBeforeCurrent)
	if err := d.redefineCurrent(ctx, dom, sx); err != nil {
		return fmt.Errorf("guest %s: disks reverted to %s, but marking it current failed: %w; nothing was deleted: the next run that changes the guest finishes the revert", g.Name, name, err)
	}
	for _, n := range kept {
		note(n)
	}
	d.dropDiscarded(ctx, g, dom, drop, note)
	if err := store.Delete(key); err != nil {
		note(fmt.Sprintf("the revert is complete, but removing its journal record failed: %v", err))
	}

	crash.Point(crash.RevertBeforeMemory)
	if memFile != "" {
		paused := opts.Paused || (!opts.Running && sx.State == "paused")
		if err := d.restoreMemory(ctx, g, dom, memFile, disks, paused); err != nil {
			return fmt.Errorf("guest %s: disks reverted to %s, but restoring its memory failed: %w (the guest is shut off; revert again, or start it to boot from the snapshot's disks)", g.Name, name, err)
		}
		quiesced := naming.DescriptionFields(sx.Description)["consistency"] == string(driver.ConsistencyQuiesced)
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		switch {
		case !paused:
			d.thawRestored(tctx, g, dom, quiesced, note)
		case quiesced:
			note(fmt.Sprintf("the snapshot was quiesced: once resumed, %s has its filesystems frozen until they are thawed (virsh domfsthaw %s)", g.Name, g.Name))
		}
		return nil
	}
	if opts.Running || opts.Paused {
		var flags uint32
		if opts.Paused {
			flags = uint32(golibvirt.DomainStartPaused)
		}
		if _, err := call(ctx, func() (golibvirt.Domain, error) { return d.l.DomainCreateWithFlags(dom, flags) }); err != nil {
			return fmt.Errorf("guest %s: reverted to %s, but starting it failed: %w", g.Name, name, err)
		}
	}
	return nil
}

func isShutOff(s driver.State, err error) bool { return err == nil && s == driver.StateShutoff }

// revertDisks lists the disks sx covers, with their state images from the recorded
// domain and their current images from cur.
func revertDisks(g driver.Guest, sx *libvirtxml.DomainSnapshot, cur *libvirtxml.Domain) ([]revertDisk, error) {
	var out []revertDisk
	if sx.Disks == nil {
		return nil, fmt.Errorf("guest %s: snapshot %s records no disks; nothing to revert", g.Name, sx.Name)
	}
	for _, sd := range sx.Disks.Disks {
		if sd.Snapshot != "external" {
			continue
		}
		rd := revertDisk{target: sd.Name}
		if sd.Source != nil {
			rd.snapOv = sourcePath(sd.Source)
		}
		rec := findDomainDisk(sx.Domain, sd.Name)
		if rec == nil || rec.Source == nil || sourcePath(rec.Source) == "" {
			return nil, fmt.Errorf("guest %s: snapshot %s covers disk %s but its recorded definition names no image for it; it cannot be reverted", g.Name, sx.Name, sd.Name)
		}
		rd.state = sourcePath(rec.Source)
		if rec.Driver != nil {
			rd.format = rec.Driver.Type
		}
		now := findDomainDisk(cur, sd.Name)
		if now == nil || now.Source == nil || sourcePath(now.Source) == "" {
			return nil, fmt.Errorf("guest %s: snapshot %s covers disk %s, which the guest no longer has; re-add the disk (any image) and revert again", g.Name, sx.Name, sd.Name)
		}
		rd.current = sourcePath(now.Source)
		out = append(out, rd)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("guest %s: snapshot %s covers no disk externally; nothing to revert", g.Name, sx.Name)
	}
	return out, nil
}

func findDomainDisk(x *libvirtxml.Domain, target string) *libvirtxml.DomainDisk {
	if x == nil || x.Devices == nil {
		return nil
	}
	for i := range x.Devices.Disks {
		if dk := &x.Devices.Disks[i]; dk.Target != nil && dk.Target.Dev == target {
			return dk
		}
	}
	return nil
}

// revertOverlayName is the file name of the n-th overlay a revert to snap put on disk.
// Guest and snapshot names go through safeFileName.
func revertOverlayName(dom, disk, snap string, n int) string {
	return fmt.Sprintf("%s-%s.%s.revert%d.qcow2", safeFileName(dom), safeFileName(disk), safeFileName(snap), n)
}

// isRevertOverlay reports whether path is named like an overlay a revert created for
// disk of dom (also as named before guest names were made safe for file names).
func isRevertOverlay(path, dom, disk string) bool {
	base := filepath.Base(path)
	for _, prefix := range []string{safeFileName(dom) + "-" + safeFileName(disk) + ".", dom + "-" + disk + "."} {
		rest, ok := strings.CutPrefix(base, prefix)
		if !ok {
			continue
		}
		rest, ok = strings.CutSuffix(rest, ".qcow2")
		if !ok {
			continue
		}
		i := strings.LastIndex(rest, ".revert")
		if i <= 0 {
			continue
		}
		if n, err := strconv.Atoi(rest[i+len(".revert"):]); err == nil && n > 0 {
			return true
		}
	}
	return false
}

// freeRevertOverlay chooses the first free name for dk's revert overlay beside its
// current image: no such file exists and no disk of earlier has it.
func freeRevertOverlay(dom, snap string, dk *revertDisk, earlier []revertDisk) (string, error) {
	dir := filepath.Dir(dk.current)
next:
	for n := 1; n < 10000; n++ {
		path := filepath.Join(dir, revertOverlayName(dom, dk.target, snap, n))
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		for _, e := range earlier {
			if e.overlay == path {
				continue next
			}
		}
		return path, nil
	}
	return "", fmt.Errorf("no free overlay name in %s", dir)
}

// createRevertOverlay creates dk.overlay on dk.state. The file is created exclusively
// with mode 0600 before qemu-img writes it, so it is never readable by others and
// never overwrites an image.
func createRevertOverlay(ctx context.Context, dk *revertDisk) error {
	f, err := os.OpenFile(dk.overlay, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	dk.made = true
	if _, err := runCmd(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", dk.format, "-b", dk.state, dk.overlay); err != nil {
		return err
	}
	return nil
}

// useOverlay makes a disk definition use a new qcow2 overlay file, keeping its
// security labels and startup policy and dropping the recorded chain (libvirt detects
// it again).
func useOverlay(dk *libvirtxml.DomainDisk, overlay string) {
	file := &libvirtxml.DomainDiskSourceFile{File: overlay}
	if dk.Source != nil && dk.Source.File != nil {
		file.SecLabel = dk.Source.File.SecLabel
	}
	src := &libvirtxml.DomainDiskSource{File: file}
	if dk.Source != nil {
		src.StartupPolicy, src.Index = dk.Source.StartupPolicy, dk.Source.Index
	}
	dk.Source = src
	if dk.Driver == nil {
		dk.Driver = &libvirtxml.DomainDiskDriver{Name: "qemu"}
	}
	dk.Driver.Type = "qcow2"
	dk.BackingStore = nil
}

// unsureError is a call whose outcome is not known: libvirt did not answer in time or
// the connection broke, so it may still be applied.
type unsureError struct{ err error }

func (e *unsureError) Error() string { return e.err.Error() }
func (e *unsureError) Unwrap() error { return e.err }

// pendingDefines holds, per revert journal key, a channel closed when a definition
// call this process stopped waiting for has returned.
var pendingDefines sync.Map

// pointDisks points the persistent definition's disks at their new overlays. An error
// of the define call itself other than libvirt's refusal is an *unsureError: the
// definition may still change, and pendingDefines[key] says when the call returned.
func (d *Driver) pointDisks(ctx context.Context, dom golibvirt.Domain, disks []revertDisk, key string) error {
	x, err := d.domainXML(ctx, dom, true)
	if err != nil {
		return err
	}
	for _, rd := range disks {
		dk := findDomainDisk(x, rd.target)
		if dk == nil {
			return fmt.Errorf("disk %s vanished from the definition", rd.target)
		}
		useOverlay(dk, rd.overlay)
	}
	out, err := x.Marshal()
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
	}
	res := make(chan error, 1)
	go func() {
		_, err := d.l.DomainDefineXML(out)
		res <- err
	}()
	select {
	case err := <-res:
		var lerr golibvirt.Error
		if err != nil && !errors.As(err, &lerr) {
			return &unsureError{fmt.Errorf("pointing the definition at the new overlays: %w", err)}
		}
		if err != nil {
			return fmt.Errorf("pointing the definition at the new overlays: %w", err)
		}
		return nil
	case <-ctx.Done():
		done := make(chan struct{})
		pendingDefines.Store(key, done)
		go func() {
			<-res
			close(done)
		}()
		return &unsureError{fmt.Errorf("pointing the definition at the new overlays: libvirt did not answer in time: %w", ctx.Err())}
	}
}

// pointedAt counts the disks of recs whose source in the persistent definition is
// their new overlay.
func (d *Driver) pointedAt(ctx context.Context, dom golibvirt.Domain, recs []revertDiskRecord) (int, error) {
	x, err := d.domainXML(ctx, dom, true)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range recs {
		if dk := findDomainDisk(x, r.Target); dk != nil && dk.Source != nil && sourcePath(dk.Source) == r.Overlay {
			n++
		}
	}
	return n, nil
}

// snapshotImages collects what every snapshot of dom needs and which files the
// snapshots created.
func (d *Driver) snapshotImages(ctx context.Context, g driver.Guest, dom golibvirt.Domain) (*imageSet, error) {
	xs, err := d.snapshotXMLs(ctx, g, dom)
	if err != nil {
		return nil, err
	}
	s := &imageSet{needed: map[string]bool{}, backing: map[string]string{}, created: map[string]bool{}}
	for _, x := range xs {
		if x.Memory != nil && x.Memory.File != "" {
			s.created[x.Memory.File] = true
		}
		if x.Disks == nil {
			continue
		}
		for _, sd := range x.Disks.Disks {
			if sd.Snapshot == "no" || sd.Snapshot == "" {
				continue
			}
			if sd.Snapshot == "external" && sd.Source != nil {
				s.created[sourcePath(sd.Source)] = true
			}
			for _, dm := range []*libvirtxml.Domain{x.Domain, inactiveOf(x)} {
				if rec := findDomainDisk(dm, sd.Name); rec != nil && rec.Source != nil {
					if err := s.addChain(ctx, sourcePath(rec.Source)); err != nil {
						return nil, fmt.Errorf("guest %s: snapshot %s, disk %s: %w", g.Name, x.Name, sd.Name, err)
					}
				}
			}
		}
	}
	return s, nil
}

// addChain marks top and its backing chain needed. A chain already seen from an image
// above is not read again: one qemu-img call per branch and disk.
func (s *imageSet) addChain(ctx context.Context, top string) error {
	if top == "" || s.needed[top] {
		return nil
	}
	if _, err := os.Stat(top); errors.Is(err, os.ErrNotExist) {
		// A snapshot whose image is gone needs nothing; reverting to it is refused.
		return nil
	}
	infos, err := qemuImgInfo(ctx, top)
	if err != nil {
		return err
	}
	for i, in := range infos {
		s.needed[in.Filename] = true
		if i+1 < len(infos) {
			s.backing[in.Filename] = infos[i+1].Filename
		}
	}
	return nil
}

// planDiscard decides, for each disk's pre-revert image, whether the revert deletes
// it: when nothing needs it and a snapshot or revert created it (see
// RevertSnapshotNotes). kept holds a note for each image that stays.
func planDiscard(dom string, disks []revertDisk, images *imageSet) (drop, kept []string) {
	for _, dk := range disks {
		f := dk.current
		switch {
		case images.needed[f]:
			// A later snapshot's state: the abandoned branch keeps it.
		case images.created[f] || isRevertOverlay(f, dom, dk.target):
			if internal, err := hasInternalSnapshots(f); err != nil || internal {
				why := "it holds internal snapshots"
				if err != nil {
					why = fmt.Sprintf("cannot tell whether it holds internal snapshots: %v", err)
				}
				kept = append(kept, fmt.Sprintf("%s: kept %s, which held the discarded current state: %s", dk.target, f, why))
				continue
			}
			drop = append(drop, f)
		default:
			kept = append(kept, fmt.Sprintf("%s: kept %s, which held the discarded current state: no snapshot created it (delete it by hand if nothing else uses it)", dk.target, f))
		}
	}
	return drop, kept
}

// dropDiscarded deletes the images planDiscard chose, once the reverted state is in
// place and recorded.
func (d *Driver) dropDiscarded(ctx context.Context, g driver.Guest, dom golibvirt.Domain, drop []string, note func(string)) {
	for _, f := range drop {
		if err := d.removeFile(f); err != nil {
			note(fmt.Sprintf("could not delete %s, which held the discarded state: %v (delete it by hand)", f, err))
			continue
		}
		note(fmt.Sprintf("deleted %s, which held the discarded current state", f))
	}
}

// rewriteFor chooses, per disk, the new overlay to name in the snapshot's <disks>:
// when it is the only image left on the state image once the images in gone are
// deleted; see RevertSnapshotNotes.
func rewriteFor(disks []revertDisk, images *imageSet, gone map[string]bool) map[string]string {
	there := func(f string) bool {
		if gone[f] {
			return false
		}
		_, err := os.Stat(f)
		return err == nil
	}
	out := map[string]string{}
	for _, rd := range disks {
		if rd.snapOv != "" && there(rd.snapOv) {
			continue
		}
		shared := false
		for img, b := range images.backing {
			if b == rd.state && there(img) {
				shared = true
				break
			}
		}
		if !shared {
			out[rd.target] = rd.overlay
		}
	}
	return out
}

// applyRewrite names each disk's overlay of rewrite in sx's <disks>.
func applyRewrite(sx *libvirtxml.DomainSnapshot, rewrite map[string]string) {
	if sx.Disks == nil {
		return
	}
	for i := range sx.Disks.Disks {
		sd := &sx.Disks.Disks[i]
		if f, ok := rewrite[sd.Name]; ok && sd.Snapshot == "external" {
			sd.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: f}}
			sd.Driver = &libvirtxml.DomainDiskDriver{Type: "qcow2"}
		}
	}
}

func setOf(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

// redefineCurrent rewrites sx's metadata and makes it the current snapshot.
func (d *Driver) redefineCurrent(ctx context.Context, dom golibvirt.Domain, sx *libvirtxml.DomainSnapshot) error {
	out, err := sx.Marshal()
	if err != nil {
		return err
	}
	flags := uint32(golibvirt.DomainSnapshotCreateRedefine | golibvirt.DomainSnapshotCreateCurrent)
	_, err = call(ctx, func() (golibvirt.DomainSnapshot, error) { return d.snapshotCreateXML(dom, out, flags) })
	return err
}

// restoreMemory starts the shut-off domain from the memory file with its disks on the
// new overlays. The domain XML comes from the save image itself, so it is the one the
// saved RAM was taken with.
func (d *Driver) restoreMemory(ctx context.Context, g driver.Guest, dom golibvirt.Domain, file string, disks []revertDisk, paused bool) error {
	var size int64
	if fi, err := os.Stat(file); err == nil {
		size = fi.Size()
	}
	ctx, cancel := restoreContext(ctx, memoryRestoreBound(size))
	defer cancel()
	raw, err := call(ctx, func() (string, error) {
		return d.l.DomainSaveImageGetXMLDesc(file, uint32(golibvirt.DomainSaveImageXMLSecure))
	})
	if err != nil {
		return fmt.Errorf("reading the domain XML in %s: %w", file, err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(raw); err != nil {
		return fmt.Errorf("parsing the domain XML in %s: %w", file, err)
	}
	for _, rd := range disks {
		dk := findDomainDisk(&x, rd.target)
		if dk == nil {
			return fmt.Errorf("the memory file %s has no disk %s", file, rd.target)
		}
		useOverlay(dk, rd.overlay)
	}
	out, err := x.Marshal()
	if err != nil {
		return err
	}
	flags := uint32(golibvirt.DomainSaveRunning)
	if paused {
		flags = uint32(golibvirt.DomainSavePaused)
	}
	return call0(ctx, func() error { return d.l.DomainRestoreFlags(file, golibvirt.OptString{out}, flags) })
}

// memoryRestoreBound is how long restoring a memory file of size bytes may take: one
// minute plus one second per 50 MiB (a slow disk's read rate).
func memoryRestoreBound(size int64) time.Duration {
	return time.Minute + time.Duration(size/(50<<20))*time.Second
}

// restoreContext bounds the RAM restore by its own limit, not by what is left of the
// revert's ctx: the disks are already reverted, and a restore cut short would leave
// the guest off. Cancelling ctx (not its deadline) still cancels the restore.
func restoreContext(ctx context.Context, bound time.Duration) (context.Context, context.CancelFunc) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	stop := context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.Canceled) {
			cancel()
		}
	})
	return rctx, func() {
		stop()
		cancel()
	}
}

// thawRestored thaws filesystems the guest had frozen when its RAM was saved (snap
// --state with quiesce). A quiesced snapshot's guest gets up to 10 s for its agent to
// come back after the restore; for any other guest one answer is enough, so a guest
// without a working agent does not slow the revert down.
func (d *Driver) thawRestored(ctx context.Context, g driver.Guest, dom golibvirt.Domain, quiesced bool, note func(string)) {
	wait := time.Duration(0)
	if quiesced {
		wait = 10 * time.Second
	}
	deadline := time.Now().Add(wait)
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		res, err := call(actx, func() (golibvirt.OptString, error) {
			return d.l.QEMUDomainAgentCommand(dom, `{"execute":"guest-fsfreeze-status"}`, agentTimeout(actx, 3*time.Second), 0)
		})
		cancel()
		if err == nil {
			if len(res) == 0 || !strings.Contains(res[0], `"frozen"`) {
				return
			}
			tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			n, err := call(tctx, func() (int32, error) { return d.l.DomainFsthaw(dom, nil, 0) })
			cancel()
			if err != nil {
				note(fmt.Sprintf("the restored guest's filesystems are frozen, as when the snapshot was taken, and thawing them failed: %v (run: virsh domfsthaw %s)", err, g.Name))
				return
			}
			note(fmt.Sprintf("thawed %d filesystem(s) that were frozen when the snapshot was taken", n))
			return
		}
		// Only an agent that is configured but not connected yet is worth waiting for.
		if errCode(err) != golibvirt.ErrAgentUnresponsive || time.Now().After(deadline) || ctx.Err() != nil {
			if quiesced {
				note(fmt.Sprintf("the snapshot was quiesced, but the restored guest's agent did not answer (%v): if its filesystems are still frozen, run: virsh domfsthaw %s", err, g.Name))
			}
			return
		}
		if retry.Sleep(ctx, retry.Default.Delay(attempt)) != nil {
			return
		}
	}
}
