package libvirt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
)

// PrepareSnapshot implements driver.SnapshotPreparer. It holds the guest (the driver's
// per-guest lock) from now until Close, finishes what an interrupted earlier run left
// half done on it (settle), reads its definition, runs every check
// CreateSnapshot makes (names and files that exist, disks, quiesce, internal
// snapshot rules), and records in the journal which snapshot and files the create
// will make, so that a run cut off during Create is reconciled by the next one.
//
// The returned snapshot's Create sends only the create call to libvirt, checks its
// result, removes the journal record when the outcome is known (a fraction of a
// millisecond) and releases the guest. Close does the same when Create is not
// called; deferring it right after PrepareSnapshot is always correct.
func (d *Driver) PrepareSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.PreparedSnapshot, error) {
	p, err := d.prepareSnapshot(ctx, g, opts)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// prepState is where a prepared snapshot stands.
type prepState int

const (
	prepReady   prepState = iota // Create not called yet
	prepDone                     // created, or certainly not: the journal record can go
	prepUnknown                  // outcome unknown: the record stays for the next run
	prepClosed
)

// preparedSnapshot is one snapshot ready to be taken; see PrepareSnapshot.
type preparedSnapshot struct {
	d        *Driver
	g        driver.Guest
	dom      golibvirt.Domain
	name     string
	sx       *libvirtxml.DomainSnapshot
	raw      string
	flags    uint32
	internal bool
	active   bool // the guest had a QEMU process when prepared
	memory   bool
	quiesce  bool
	disks    []snapDisk // disks that get an overlay
	overlays []string   // the overlay of each of disks
	memFile  string
	notes    []string
	dryRun   bool   // prepared for a dry run: Create refuses
	key      string // journal key of the create record; "" when none was written
	unlock   func()
	// precreated are the overlays made before the create (frozen.go); made is set
	// once libvirt has taken the snapshot.
	precreated []string
	made       bool

	mu    sync.Mutex
	state prepState
}

func (d *Driver) prepareSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (*preparedSnapshot, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return nil, err
	}
	unlock := d.domLock(g.Key())
	held := false
	defer func() {
		if !held {
			unlock()
		}
	}()
	var notes []string
	if opts.DryRun {
		// A dry run repairs nothing; say what the real run would do first.
		if rec, _, err := d.loadMerge(dom); err != nil {
			return nil, fmt.Errorf("guest %s: %w", g.Name, err)
		} else if rec != nil {
			notes = append(notes, fmt.Sprintf("an interrupted run left work half done (%s, %s); the real run finishes it first", rec.what(), rec.left()))
		}
	} else if err := d.settle(ctx, g, dom); err != nil {
		return nil, err
	}

	x, active, err := d.currentXML(ctx, dom)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	specs := map[string]driver.DiskSpec{}
	// skip maps each disk the caller named to whether it is left out.
	skip := map[string]bool{}
	internal := false
	for _, s := range opts.Disks {
		if !hasDisk(x, s.Name) {
			return nil, fmt.Errorf("guest %s has no disk %q (see: autosnap snapshot chain): %w", g.Name, s.Name, driver.ErrNotFound)
		}
		switch s.Snapshot {
		case "no":
			skip[s.Name] = true
		case "internal":
			internal = true
		case "external", "":
			skip[s.Name] = false
		default:
			return nil, fmt.Errorf("guest %s: disk %s: snapshot=%q: use internal, external or no", g.Name, s.Name, s.Snapshot)
		}
		specs[s.Name] = s
	}
	p := &preparedSnapshot{d: d, g: g, dom: dom, name: opts.Name, active: active, quiesce: opts.Quiesce, unlock: unlock,
		notes: notes, dryRun: opts.DryRun}
	if internal {
		sx, err := d.internalSnapshotXML(ctx, g, x, active, specs, opts)
		if err != nil {
			return nil, err
		}
		p.sx, p.internal, p.flags = sx, true, uint32(golibvirt.DomainSnapshotCreateAtomic)
	} else if err := p.external(ctx, x, specs, skip, opts); err != nil {
		return nil, err
	}
	if err := p.checkFree(ctx); err != nil {
		return nil, err
	}
	if active {
		persistent, err := call(ctx, func() (int32, error) { return d.l.DomainIsPersistent(dom) })
		if err != nil {
			return nil, fmt.Errorf("guest %s: %w", g.Name, d.notFound(g.Name, err))
		}
		if persistent != 1 && !internal {
			var imgs []string
			for _, dk := range p.disks {
				imgs = append(imgs, bottomImage(dk))
			}
			p.notes = append(p.notes, fmt.Sprintf("guest %s is transient: the XML it was started from (wherever that is) still names %s, not the overlays; starting it again from that XML loses this snapshot's chain and everything written since (make it persistent: virsh dumpxml %s > %s.xml; virsh define %s.xml)",
				g.Name, strings.Join(imgs, ", "), g.Name, g.Name, g.Name))
		}
	}
	raw, err := p.sx.Marshal()
	if err != nil {
		return nil, err
	}
	p.raw = raw
	if !internal && !opts.DryRun {
		p.key = createKey(d.node, dom)
		if err := d.createStore().Put(p.key, p.record()); err != nil {
			return nil, fmt.Errorf("guest %s: snapshot %s not taken: %w", g.Name, opts.Name, err)
		}
	}
	held = true
	return p, nil
}

// bottomImage is the last image of dk's backing chain as the live definition records
// it: the image a transient guest was started with.
func bottomImage(dk snapDisk) string {
	img := dk.active
	for b := dk.prev.BackingStore; b != nil && b.Source != nil; b = b.BackingStore {
		if f := sourcePath(b.Source); f != "" {
			img = f
		}
	}
	return img
}

// external builds the request for an external snapshot; see CreateSnapshot.
func (p *preparedSnapshot) external(ctx context.Context, x *libvirtxml.Domain, specs map[string]driver.DiskSpec, skip map[string]bool, opts driver.CreateOptions) error {
	g, dom := p.g, p.dom
	disks, err := snapshotDisks(g, x, skip)
	if err != nil {
		return err
	}
	sx := &libvirtxml.DomainSnapshot{Name: opts.Name, Description: opts.Description, Disks: &libvirtxml.DomainSnapshotDisks{}}
	covered := map[string]bool{}
	for _, dk := range disks {
		f := specs[dk.target].File
		if f == "" {
			f = overlayPath(dom.Name, dk.target, dk.active, opts.Name)
		}
		covered[dk.target] = true
		p.overlays = append(p.overlays, f)
		sx.Disks.Disks = append(sx.Disks.Disks, libvirtxml.DomainSnapshotDisk{
			Name: dk.target, Snapshot: "external",
			Driver: &libvirtxml.DomainDiskDriver{Type: "qcow2"},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: f}},
		})
	}
	p.disks = disks
	// Every other disk is named with "no", so libvirt applies no default of its own.
	for _, dk := range x.Devices.Disks {
		if dk.Target != nil && !covered[dk.Target.Dev] && dk.Device != "cdrom" && dk.Device != "floppy" {
			sx.Disks.Disks = append(sx.Disks.Disks, libvirtxml.DomainSnapshotDisk{Name: dk.Target.Dev, Snapshot: "no"})
		}
	}
	if opts.MemoryFile != "" && !p.active {
		return fmt.Errorf("guest %s is not running: there is no RAM to save", g.Name)
	}
	p.memory = (opts.Memory || opts.MemoryFile != "") && p.active
	if p.memory {
		f := opts.MemoryFile
		if f == "" {
			f = memoryPath(dom.Name, disks[0].active, opts.Name)
		}
		p.memFile = f
		sx.Memory = &libvirtxml.DomainSnapshotMemory{Snapshot: "external", File: f}
		p.flags |= uint32(golibvirt.DomainSnapshotCreateAtomic)
	} else {
		sx.Memory = &libvirtxml.DomainSnapshotMemory{Snapshot: "no"}
		p.flags |= uint32(golibvirt.DomainSnapshotCreateDiskOnly | golibvirt.DomainSnapshotCreateAtomic)
	}
	if opts.Quiesce {
		state, err := p.d.domState(ctx, dom)
		if err != nil {
			return fmt.Errorf("guest %s: %w", g.Name, err)
		}
		if state != driver.StateRunning {
			return fmt.Errorf("guest %s is %s: only a running guest can be quiesced (use --quiesce auto or off): %w", g.Name, state, driver.ErrAgent)
		}
		p.flags |= uint32(golibvirt.DomainSnapshotCreateQuiesce)
	}
	p.sx = sx
	return nil
}

// checkFree fails with driver.ErrExists when the snapshot's name or one of the files
// it would create exists (libvirt overwrites an existing memory file).
func (p *preparedSnapshot) checkFree(ctx context.Context) error {
	d, g := p.d, p.g
	_, err := call(ctx, func() (golibvirt.DomainSnapshot, error) { return d.l.DomainSnapshotLookupByName(p.dom, p.name, 0) })
	switch {
	case err == nil:
		return fmt.Errorf("guest %s: a snapshot named %q already exists; nothing was changed (choose another name, or delete that snapshot first): %w", g.Name, p.name, driver.ErrExists)
	case errCode(err) != golibvirt.ErrNoDomainSnapshot:
		return fmt.Errorf("guest %s: looking up snapshot %s: %w", g.Name, p.name, d.notFound(g.Name, err))
	}
	if !d.local {
		return nil // libvirt refuses existing overlays itself; files cannot be seen from here
	}
	seen := map[string]bool{}
	check := func(f, what string) error {
		// what reads "the <what> <f> already exists".
		if seen[f] {
			return fmt.Errorf("guest %s: snapshot %s would create %s twice; nothing was changed (name a different file for each disk): %w", g.Name, p.name, f, driver.ErrExists)
		}
		seen[f] = true
		if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("guest %s: snapshot %s: the %s %s already exists; nothing was changed (choose another snapshot name, or remove the file if nothing uses it): %w", g.Name, p.name, what, f, driver.ErrExists)
		}
		return nil
	}
	for i, dk := range p.disks {
		if err := check(p.overlays[i], "overlay file of disk "+dk.target+","); err != nil {
			return err
		}
	}
	if p.memFile != "" {
		return check(p.memFile, "memory file")
	}
	return nil
}

// Create implements driver.PreparedSnapshot: it sends the create call and checks what
// libvirt made of it. See CreateSnapshot.
func (p *preparedSnapshot) Create(ctx context.Context) (driver.Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.g
	if p.state != prepReady {
		return driver.Snapshot{}, fmt.Errorf("guest %s: snapshot %s: Create called twice or after Close", g.Name, p.name)
	}
	if p.dryRun {
		return driver.Snapshot{}, fmt.Errorf("guest %s: snapshot %s was prepared for a dry run and is not taken", g.Name, p.name)
	}
	p.state = prepDone
	defer p.release()
	if err := ctx.Err(); err != nil {
		return driver.Snapshot{}, fmt.Errorf("guest %s: snapshot %s not taken: %w", g.Name, p.name, err)
	}
	if err := p.send(ctx); err != nil {
		return driver.Snapshot{}, err
	}
	p.made = true
	crash.Point(crash.CreateDone)
	// What follows the create must run even when ctx ended during it.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.d.timeout)
	defer cancel()
	if p.internal {
		return p.d.snapshotByName(actx, g, p.dom, p.name)
	}
	if err := p.verify(actx); err != nil {
		return driver.Snapshot{}, err
	}
	// libvirt creates offline overlays world-readable; guest data is not.
	if p.d.local {
		for _, f := range p.files() {
			_ = os.Chmod(f, 0o600)
		}
	}
	// Built from what was asked rather than read back: saves three RPCs per guest
	// on a busy daemon. The creation time is libvirt's second-resolution clock.
	s := fromXML(p.sx)
	s.Created = time.Now().Truncate(time.Second)
	s.Current = true
	if p.active && !p.memory {
		s.GuestState = "disk-snapshot"
		s.DiskOnly = true
	}
	s.Notes = p.notes
	return s, nil
}

// send issues the create call. When ctx ends first it waits up to the connection
// timeout for libvirt's answer: a snapshot made after all is deleted again, so a
// failure leaves no snapshot behind. Without an answer by then the outcome stays
// unknown; the journal record tells the next run to reconcile.
func (p *preparedSnapshot) send(ctx context.Context) error {
	d, g := p.d, p.g
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
	}
	res := make(chan error, 1)
	go func() {
		_, err := d.snapshotCreateXML(p.dom, p.raw, p.flags)
		res <- err
	}()
	select {
	case err := <-res:
		if err != nil {
			return p.failed(err)
		}
		return nil
	case <-ctx.Done():
	}
	timer := time.NewTimer(d.timeout)
	defer timer.Stop()
	select {
	case err := <-res:
		if err != nil {
			return fmt.Errorf("guest %s: creating snapshot %s: libvirt did not answer in time (%w), then failed it: %v; nothing was changed", g.Name, p.name, ctx.Err(), err)
		}
		dctx, cancel := context.WithTimeout(context.Background(), d.timeout)
		defer cancel()
		if derr := d.deleteSnapshot(dctx, g, p.dom, p.name); derr != nil {
			p.state = prepUnknown
			return fmt.Errorf("guest %s: creating snapshot %s: libvirt did not answer in time (%w) but made it after all, and removing it failed: %v (the next run that changes the guest keeps it as an ordinary snapshot)", g.Name, p.name, ctx.Err(), derr)
		}
		return fmt.Errorf("guest %s: creating snapshot %s: libvirt did not answer in time (%w); it made the snapshot after all, which was removed again", g.Name, p.name, ctx.Err())
	case <-timer.C:
		p.state = prepUnknown
		if p.key != "" {
			done := make(chan struct{})
			pendingCreates.Store(p.key, done)
			go func() {
				<-res
				close(done)
			}()
		}
		return fmt.Errorf("guest %s: creating snapshot %s: libvirt did not answer in time: %w; it may still make the snapshot: the next run that changes the guest keeps the snapshot if it exists and removes its files if not", g.Name, p.name, ctx.Err())
	}
}

// failed turns the create call's error into the caller's. An error libvirt reports
// means nothing was made (the create is atomic); a broken connection (libvirtd
// restarted) leaves the outcome unknown.
func (p *preparedSnapshot) failed(err error) error {
	g := p.g
	var lerr golibvirt.Error
	if !errors.As(err, &lerr) {
		p.state = prepUnknown
		return fmt.Errorf("guest %s: creating snapshot %s: the connection to libvirt failed: %w; the snapshot may exist: the next run that changes the guest keeps it if it does and removes its files if not", g.Name, p.name, err)
	}
	hint := ""
	switch errCode(err) {
	case golibvirt.ErrAgentUnresponsive:
		hint = " (the guest agent did not answer: check qemu-guest-agent in the guest, or use --quiesce auto/off)"
		err = fmt.Errorf("%w: %w", err, driver.ErrAgent)
	case golibvirt.ErrOperationInvalid:
		if p.quiesce {
			err = fmt.Errorf("%w: %w", err, driver.ErrAgent)
		}
	}
	if strings.Contains(lerr.Message, "already exists") {
		err = fmt.Errorf("%w: %w", err, driver.ErrExists)
	}
	kind := ""
	if p.internal {
		kind = "internal "
	}
	return fmt.Errorf("guest %s: creating %ssnapshot %s failed: %w%s", g.Name, kind, p.name, err, hint)
}

// files lists the files the snapshot creates.
func (p *preparedSnapshot) files() []string {
	out := append([]string{}, p.overlays...)
	if p.memFile != "" {
		out = append(out, p.memFile)
	}
	return out
}

// verify checks that every overlay the snapshot records exists and, for a shut-off
// guest (whose overlays libvirt creates with qemu-img and whose definition it
// rewrites), that the definition names it. A shut-off guest's snapshot that fails
// the check is undone.
func (p *preparedSnapshot) verify(ctx context.Context) error {
	d, g := p.d, p.g
	var problems []string
	if d.local {
		for i, dk := range p.disks {
			if _, err := os.Stat(p.overlays[i]); err != nil {
				problems = append(problems, fmt.Sprintf("disk %s: the overlay %s it records does not exist", dk.target, p.overlays[i]))
			}
		}
	}
	if !p.active {
		if x, err := d.domainXML(ctx, p.dom, false); err == nil {
			for i, dk := range p.disks {
				now := findDomainDisk(x, dk.target)
				if now == nil || now.Source == nil || sourcePath(now.Source) != p.overlays[i] {
					problems = append(problems, fmt.Sprintf("disk %s: the definition does not name its overlay %s", dk.target, p.overlays[i]))
				}
			}
		}
	}
	if len(problems) == 0 {
		return nil
	}
	what := strings.Join(problems, "; ")
	if p.active {
		return fmt.Errorf("guest %s: snapshot %s was made, but %s; inspect it (autosnap snapshot chain %s) before relying on it", g.Name, p.name, what, g.Name)
	}
	if err := p.undoOffline(ctx); err != nil {
		p.state = prepUnknown
		return fmt.Errorf("guest %s: snapshot %s: %s (libvirt rewrites some characters in file names it creates, e.g. it doubles commas), and undoing the snapshot failed: %v (the next run that changes the guest retries)", g.Name, p.name, what, err)
	}
	return fmt.Errorf("guest %s: snapshot %s: %s (libvirt rewrites some characters in file names it creates, e.g. it doubles commas); the snapshot was undone and the guest uses its previous images (name overlay files without commas)", g.Name, p.name, what)
}

// undoOffline takes back an offline external snapshot: its metadata goes, the
// definition names the previous images again, and the files libvirt made (under the
// names asked for or with commas doubled) are removed.
func (p *preparedSnapshot) undoOffline(ctx context.Context) error {
	d, g := p.d, p.g
	if err := d.forget(ctx, g, p.dom, p.name); err != nil {
		return err
	}
	x, err := d.domainXML(ctx, p.dom, true)
	if err != nil {
		return err
	}
	changed := false
	for _, dk := range p.disks {
		now := findDomainDisk(x, dk.target)
		if now == nil || now.Source == nil || sourcePath(now.Source) == dk.active {
			continue
		}
		now.Source, now.BackingStore = dk.prev.Source, dk.prev.BackingStore
		if dk.prev.Driver != nil && now.Driver != nil {
			now.Driver.Type = dk.prev.Driver.Type
		}
		changed = true
	}
	if changed {
		out, err := x.Marshal()
		if err != nil {
			return err
		}
		if _, err := call(ctx, func() (golibvirt.Domain, error) { return d.l.DomainDefineXML(out) }); err != nil {
			return fmt.Errorf("pointing the definition back at the previous images: %w", err)
		}
	}
	if !d.local {
		return nil
	}
	for _, f := range p.overlays {
		for _, v := range []string{f, strings.ReplaceAll(f, ",", ",,")} {
			if err := os.Remove(v); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// Close implements driver.PreparedSnapshot: without Create, it removes the journal
// record and releases the guest; after Create (which does both itself) it does
// nothing. It may be called more than once.
func (p *preparedSnapshot) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.release()
}

// release removes the journal record unless the create's outcome is unknown, and
// releases the guest, once.
func (p *preparedSnapshot) release() {
	if p.state == prepClosed {
		return
	}
	if len(p.precreated) > 0 && !p.made && p.state != prepUnknown {
		p.removePrecreated()
	}
	if p.key != "" && p.state != prepUnknown {
		// A record left behind by a failed removal is reconciled by the next run.
		_ = p.d.createStore().Delete(p.key)
	}
	p.state = prepClosed
	p.unlock()
}

var _ driver.SnapshotPreparer = (*Driver)(nil)
