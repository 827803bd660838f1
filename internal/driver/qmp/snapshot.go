package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
	qc "github.com/autosnap/autosnap/internal/qmp"
)

// view is one guest opened for work: its QMP session when QEMU runs, its sidecar, its
// snapshot-able disks and each disk's snapshots.
type view struct {
	d      *Driver
	e      entry
	s      *session // nil: QEMU is not running
	m      *meta
	disks  []disk
	snaps  [][]snapInfo
	unlock func()
}

func (v *view) close() {
	if v.s != nil {
		v.s.close()
		v.s = nil
	}
	if v.unlock != nil {
		v.unlock()
		v.unlock = nil
	}
}

func (v *view) state() driver.State {
	if v.s == nil {
		return driver.StateShutoff
	}
	return v.s.state
}

// open locks g in this process, connects to its QEMU if it runs and reads its disks
// and snapshots (from QEMU, else from the images with qemu-img).
func (d *Driver) open(ctx context.Context, g driver.Guest) (*view, error) {
	e, err := d.find(g)
	if err != nil {
		return nil, err
	}
	unlock, err := d.lock(ctx, e)
	if err != nil {
		return nil, err
	}
	v := &view{d: d, e: e, unlock: unlock}
	if err := v.load(ctx); err != nil {
		v.close()
		return nil, err
	}
	return v, nil
}

func (v *view) load(ctx context.Context) error {
	s, err := v.d.connect(ctx, v.e, v.d.timeout)
	if err != nil {
		return err
	}
	v.s = s
	if s != nil {
		if err := repairBackup(ctx, s); err != nil {
			return err
		}
		if v.m, err = v.d.record(ctx, s); err != nil {
			return err
		}
		all, snaps, err := queryDisks(ctx, s)
		if err != nil {
			return err
		}
		v.disks, v.snaps = nil, nil
		for i, x := range all {
			if !x.ReadOnly {
				v.disks = append(v.disks, x)
				v.snaps = append(v.snaps, snaps[i])
			}
		}
		// A guest with a raw disk is still listed; need() refuses changes.
		return nil
	}
	if v.m, err = readMeta(v.e.meta); err != nil {
		return fmt.Errorf("guest %s: %w", v.e.name, err)
	}
	if err := v.listOffline(ctx); err != nil {
		return err
	}
	if v.m.Reverting != "" {
		if err := v.finishRevert(ctx); err != nil {
			return err
		}
	}
	return nil
}

// listOffline reads the disks' snapshots from the images of a stopped guest.
func (v *view) listOffline(ctx context.Context) error {
	var err error
	v.snaps = nil
	v.disks = nil
	for _, x := range v.m.Disks {
		if x.ReadOnly {
			continue
		}
		v.disks = append(v.disks, x)
		var sn []snapInfo
		if x.Format == "qcow2" {
			if sn, err = imageSnapshots(ctx, x.File); err != nil {
				return fmt.Errorf("guest %s (QEMU not running): disk %s: %w", v.e.name, x.Name, err)
			}
		}
		v.snaps = append(v.snaps, sn)
	}
	return nil
}

// need returns the disks a change works on, or why the guest cannot have internal
// snapshots.
func (v *view) need() ([]disk, error) {
	if v.s == nil && len(v.m.Disks) == 0 {
		return nil, fmt.Errorf("guest %s: QEMU is not running and autosnap has never seen it running, so its images are unknown: start it once with autosnap able to reach %s: %w",
			v.e.name, v.e.qmp, driver.ErrUnsupported)
	}
	if v.s != nil && v.m.Reverting != "" {
		return nil, fmt.Errorf("guest %s: a revert to %s was interrupted and QEMU was started again before it was finished, so its disks may hold different states: stop the guest (quit QEMU) and run autosnap again to finish the revert", v.e.name, v.m.Reverting)
	}
	return snapDisks(v.e.name, v.m.Disks)
}

// list merges the disks' snapshots by name, oldest first.
func (v *view) list() []driver.Snapshot {
	type agg struct {
		first   time.Time
		memory  bool
		on      []string
		inDisks map[int]bool
	}
	by := map[string]*agg{}
	for i, sn := range v.snaps {
		for _, s := range sn {
			a := by[s.Name]
			if a == nil {
				a = &agg{first: s.date(), inDisks: map[int]bool{}}
				by[s.Name] = a
			}
			if s.date().Before(a.first) {
				a.first = s.date()
			}
			a.memory = a.memory || s.VMStateSize > 0
			a.inDisks[i] = true
			a.on = append(a.on, v.disks[i].Name)
		}
	}
	var out []driver.Snapshot
	for name, a := range by {
		if slices.Contains(v.m.Hidden, name) {
			continue
		}
		sm := v.m.Snapshots[name]
		s := driver.Snapshot{Name: name, Created: a.first, Memory: a.memory, Location: driver.LocationInternal}
		if sm != nil {
			s.Description = sm.Description
			s.Protected = naming.IsProtected(sm.Description)
			s.Consistency = driver.Consistency(sm.Consistency)
			s.GuestState = sm.GuestState
			if _, ok := by[sm.Parent]; ok {
				s.Parent = sm.Parent
			}
		}
		s.Current = v.m.Current == name
		s.DiskOnly = !a.memory && s.GuestState != "" && driver.State(s.GuestState).Active()
		for i, x := range v.disks {
			st := "internal"
			if !a.inDisks[i] {
				st = "no"
			}
			s.Disks = append(s.Disks, driver.SnapshotDisk{Name: x.Name, Snapshot: st})
		}
		if len(a.inDisks) < len(v.disks) {
			s.Incomplete = fmt.Sprintf("only disk(s) %s hold it (a create or delete was interrupted); delete it to finish the removal", strings.Join(a.on, ", "))
		}
		out = append(out, s)
	}
	seq := func(n string) int64 {
		if sm := v.m.Snapshots[n]; sm != nil {
			return sm.Seq
		}
		return 0
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if sa, sb := seq(a.Name), seq(b.Name); sa > 0 && sb > 0 && sa != sb {
			return sa < sb
		}
		if !a.Created.Equal(b.Created) {
			return a.Created.Before(b.Created)
		}
		return a.Name < b.Name
	})
	return out
}

func (v *view) find(name string) (driver.Snapshot, bool) {
	for _, s := range v.list() {
		if s.Name == name {
			return s, true
		}
	}
	return driver.Snapshot{}, false
}

// Snapshots implements driver.Driver.
func (d *Driver) Snapshots(ctx context.Context, g driver.Guest) ([]driver.Snapshot, error) {
	v, err := d.open(ctx, g)
	if err != nil {
		return nil, err
	}
	defer v.close()
	return v.list(), nil
}

// imageSnapshots lists the internal snapshots of a qcow2 image QEMU does not hold.
func imageSnapshots(ctx context.Context, file string) ([]snapInfo, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", "-U", file).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("qemu-img info %s: %s", file, trimmed(ee.Stderr))
		}
		return nil, fmt.Errorf("qemu-img info %s: %w", file, err)
	}
	var info struct {
		Snapshots []snapInfo `json:"snapshots"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %w", file, err)
	}
	return info.Snapshots, nil
}

// qemuImg runs qemu-img snapshot OP NAME FILE on an image QEMU does not hold.
func qemuImg(ctx context.Context, op, name, file string) error {
	out, err := exec.CommandContext(ctx, "qemu-img", "snapshot", op, name, file).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img snapshot %s %s %s: %v: %s", op, name, file, err, trimmed(out))
	}
	return nil
}

// PrepareSnapshot implements driver.SnapshotPreparer: it connects, checks the disks
// and the name, and keeps the connection so that Create only runs the transaction.
func (d *Driver) PrepareSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.PreparedSnapshot, error) {
	v, err := d.open(ctx, g)
	if err != nil {
		return nil, err
	}
	p := &prepared{v: v, opts: opts}
	if p.disks, err = v.need(); err != nil {
		v.close()
		return nil, err
	}
	if opts.Name == "" {
		v.close()
		return nil, fmt.Errorf("guest %s: a snapshot needs a name", v.e.name)
	}
	if _, ok := v.find(opts.Name); ok || v.inImages(opts.Name) {
		v.close()
		return nil, fmt.Errorf("guest %s: snapshot %s: %w", v.e.name, opts.Name, driver.ErrExists)
	}
	if opts.DryRun {
		p.dry = true
	}
	return p, nil
}

type prepared struct {
	v     *view
	opts  driver.CreateOptions
	disks []disk
	dry   bool
	done  bool
}

func (p *prepared) Close() { p.v.close() }

// Create implements driver.PreparedSnapshot. It releases the guest, as Close does.
func (p *prepared) Create(ctx context.Context) (driver.Snapshot, error) {
	v, o := p.v, p.opts
	if p.dry {
		return driver.Snapshot{}, fmt.Errorf("guest %s: a dry-run snapshot cannot be taken", v.e.name)
	}
	if p.done {
		return driver.Snapshot{}, fmt.Errorf("guest %s: snapshot %s was already taken", v.e.name, o.Name)
	}
	p.done = true
	// Taking the snapshot releases the guest; Close is then optional.
	defer v.close()
	st := v.state()
	// A QEMU process (even of a crashed guest) holds the images: work through it.
	live := v.s != nil
	memory := (o.Memory || o.MemoryFile != "") && live
	if o.MemoryFile != "" {
		return driver.Snapshot{}, fmt.Errorf("guest %s: internal snapshots keep RAM inside the first disk; --memspec/memory files are not supported on standalone QEMU: %w", v.e.name, driver.ErrUnsupported)
	}
	for _, ds := range o.Disks {
		if ds.Snapshot != "" && ds.Snapshot != "internal" {
			return driver.Snapshot{}, fmt.Errorf("guest %s: disk %s: only internal snapshots are supported on standalone QEMU (asked for %s): %w", v.e.name, ds.Name, ds.Snapshot, driver.ErrUnsupported)
		}
	}
	cons := driver.ConsistencyCrash
	switch {
	case !live:
		cons = driver.ConsistencyOffline
	case memory:
		cons = driver.ConsistencyMemory
	case o.Quiesce:
		cons = driver.ConsistencyQuiesced
	default:
		// The engine freezes the guest itself and records that in the description.
		if c := driver.Consistency(naming.DescriptionFields(o.Description)["consistency"]); c == driver.ConsistencyQuiesced {
			cons = c
		}
	}
	// Record the description before the snapshot exists, so a crash right after it
	// leaves a snapshot autosnap recognises (and its retention removes).
	parent := ""
	if _, ok := v.find(v.m.Current); ok {
		parent = v.m.Current
	}
	now := time.Now()
	v.m.Seq++
	// A forgotten snapshot of this name no longer exists in the images (checked above).
	v.m.Hidden = slices.DeleteFunc(v.m.Hidden, func(h string) bool { return h == o.Name })
	v.m.Snapshots[o.Name] = &snapMeta{Description: o.Description, Parent: parent, Consistency: string(cons),
		GuestState: string(st), Created: now, Seq: v.m.Seq}
	if err := writeMeta(v.e.meta, v.m); err != nil {
		return driver.Snapshot{}, fmt.Errorf("guest %s: %w", v.e.name, err)
	}
	var err error
	switch {
	case v.s == nil:
		err = v.createOffline(ctx, o.Name, p.disks)
	case o.Quiesce && !memory:
		err = v.createQuiesced(ctx, o.Name, p.disks)
	case memory:
		err = v.saveJob(ctx, o.Name, p.disks)
	default:
		err = v.transaction(ctx, o.Name, p.disks)
	}
	if err != nil {
		delete(v.m.Snapshots, o.Name)
		_ = writeMeta(v.e.meta, v.m)
		return driver.Snapshot{}, err
	}
	v.m.Current = o.Name
	if err := writeMeta(v.e.meta, v.m); err != nil {
		return driver.Snapshot{}, fmt.Errorf("guest %s: snapshot %s taken, but: %w", v.e.name, o.Name, err)
	}
	s := driver.Snapshot{Name: o.Name, Description: o.Description, Created: now, Parent: parent, Current: true,
		Memory: memory, DiskOnly: live && !memory, Location: driver.LocationInternal, Consistency: cons, GuestState: string(st)}
	for _, x := range p.disks {
		s.Disks = append(s.Disks, driver.SnapshotDisk{Name: x.Name, Snapshot: "internal"})
	}
	return s, nil
}

// transaction takes a disk-only internal snapshot of every disk at one instant.
func (v *view) transaction(ctx context.Context, name string, ds []disk) error {
	var actions []map[string]any
	for _, x := range ds {
		actions = append(actions, map[string]any{"type": "blockdev-snapshot-internal-sync",
			"data": map[string]any{"device": x.Node, "name": name}})
	}
	if err := v.s.m.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
		return fmt.Errorf("guest %s: snapshot %s (transaction of blockdev-snapshot-internal-sync on %d disks): %w", v.e.name, name, len(ds), err)
	}
	return nil
}

// createQuiesced freezes through the agent around the transaction (the engine
// freezes itself when it has a watchdog; this serves callers without one).
func (v *view) createQuiesced(ctx context.Context, name string, ds []disk) error {
	a, err := v.d.agentFor(ctx, v.e)
	if err != nil {
		return err
	}
	defer a.Close()
	if _, err := a.Freeze(ctx); err != nil {
		return fmt.Errorf("guest %s: quiescing: %w: %w", v.e.name, err, driver.ErrAgent)
	}
	terr := func() error {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, err := a.Thaw(tctx)
		return err
	}
	err = v.transaction(ctx, name, ds)
	if t := terr(); t != nil {
		return errors.Join(err, fmt.Errorf("guest %s: thawing after the snapshot failed: %w", v.e.name, t))
	}
	return err
}

// saveJob saves RAM and disks with the snapshot-save job; QEMU stops the CPUs while
// it writes RAM and resumes them afterwards.
func (v *view) saveJob(ctx context.Context, name string, ds []disk) error {
	var nodes []string
	for _, x := range ds {
		nodes = append(nodes, x.Node)
	}
	id := "autosnap-save"
	err := v.s.m.RunJob(ctx, "snapshot-save", id, map[string]any{"job-id": id, "tag": name, "vmstate": ds[0].Node, "devices": nodes})
	if err != nil {
		return fmt.Errorf("guest %s: snapshot %s with RAM (snapshot-save job): %w", v.e.name, name, err)
	}
	return nil
}

// createOffline snapshots the images of a stopped guest one by one; on failure the
// ones taken are removed again.
func (v *view) createOffline(ctx context.Context, name string, ds []disk) error {
	for i, x := range ds {
		if err := qemuImg(ctx, "-c", name, x.File); err != nil {
			for _, y := range ds[:i] {
				_ = qemuImg(context.WithoutCancel(ctx), "-d", name, y.File)
			}
			return fmt.Errorf("guest %s (QEMU not running): disk %s: %w", v.e.name, x.Name, err)
		}
	}
	return nil
}

// CreateSnapshot implements driver.Driver.
func (d *Driver) CreateSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.Snapshot, error) {
	opts.DryRun = false
	p, err := d.PrepareSnapshot(ctx, g, opts)
	if err != nil {
		return driver.Snapshot{}, err
	}
	defer p.Close()
	return p.Create(ctx)
}

// DeleteSnapshot implements driver.Driver. QEMU has no transaction action for
// deleting internal snapshots, so disks are done one by one; a run interrupted halfway
// leaves the snapshot on some disks, listed as incomplete, and deleting it again
// finishes the job.
func (d *Driver) DeleteSnapshot(ctx context.Context, g driver.Guest, name string) error {
	v, err := d.open(ctx, g)
	if err != nil {
		return err
	}
	defer v.close()
	if _, ok := v.find(name); !ok {
		return fmt.Errorf("guest %s: snapshot %s: %w", v.e.name, name, driver.ErrNotFound)
	}
	return v.deleteOne(ctx, name, nil)
}

// deleteOne removes a snapshot from every disk that holds it and from the sidecar.
func (v *view) deleteOne(ctx context.Context, name string, progress driver.ProgressFunc) error {
	var err error
	for i, x := range v.disks {
		has := false
		for _, s := range v.snaps[i] {
			has = has || s.Name == name
		}
		if !has {
			continue
		}
		if v.s != nil {
			err = v.s.m.Execute(ctx, "blockdev-snapshot-delete-internal-sync", map[string]any{"device": x.Node, "name": name}, nil)
		} else {
			err = qemuImg(ctx, "-d", name, x.File)
		}
		if err != nil {
			return fmt.Errorf("guest %s: deleting snapshot %s from disk %s: %w", v.e.name, name, x.Name, err)
		}
		if progress != nil {
			progress(x.Name, 1, 1)
		}
	}
	v.forget(name)
	if err := writeMeta(v.e.meta, v.m); err != nil {
		return fmt.Errorf("guest %s: snapshot %s deleted, but: %w", v.e.name, name, err)
	}
	return nil
}

// DeleteSnapshotTree implements driver.TreeDeleter. Descendants go first, newest
// first. MetadataOnly leaves the images untouched: the snapshots stay inside them (as
// qemu-img snapshot -l shows) but autosnap no longer lists them, as libvirt forgets a
// snapshot's metadata.
func (d *Driver) DeleteSnapshotTree(ctx context.Context, g driver.Guest, name string, opts driver.DeleteOptions) error {
	v, err := d.open(ctx, g)
	if err != nil {
		return err
	}
	defer v.close()
	list := v.list()
	if _, ok := v.find(name); !ok {
		return fmt.Errorf("guest %s: snapshot %s: %w", v.e.name, name, driver.ErrNotFound)
	}
	var targets []string
	if opts.Children || opts.ChildrenOnly {
		in := map[string]bool{name: true}
		// list is oldest first and a parent is older than its children.
		for _, s := range list {
			if in[s.Parent] {
				in[s.Name] = true
				targets = append(targets, s.Name)
			}
		}
		slices.Reverse(targets)
	}
	if !opts.ChildrenOnly {
		targets = append(targets, name)
	}
	for _, n := range targets {
		if opts.MetadataOnly {
			v.forget(n)
			v.m.Hidden = append(v.m.Hidden, n)
			if err := writeMeta(v.e.meta, v.m); err != nil {
				return fmt.Errorf("guest %s: forgetting snapshot %s: %w", v.e.name, n, err)
			}
			continue
		}
		if err := v.deleteOne(ctx, n, opts.Progress); err != nil {
			return err
		}
	}
	return nil
}

// forget removes a snapshot from the sidecar: its children take its parent, and when
// it was current its parent becomes current.
func (v *view) forget(name string) {
	parent := ""
	if sm := v.m.Snapshots[name]; sm != nil {
		parent = sm.Parent
	}
	for _, sm := range v.m.Snapshots {
		if sm.Parent == name {
			sm.Parent = parent
		}
	}
	if v.m.Current == name {
		v.m.Current = parent
	}
	delete(v.m.Snapshots, name)
}

// RevertSnapshot implements driver.Driver.
//
// A snapshot with RAM of a running or paused guest is loaded live (snapshot-load job),
// without opts.Force as on libvirt, and the guest runs afterwards unless opts.Paused.
// A disk-only snapshot cannot be
// loaded into a running QEMU (QEMU refuses): with opts.Force the driver quits QEMU,
// reverts the images with qemu-img snapshot -a and, with opts.Running or opts.Paused,
// starts QEMU again with the command line it recorded. A stopped guest's images are
// reverted the same way.
func (d *Driver) RevertSnapshot(ctx context.Context, g driver.Guest, name string, opts driver.RevertOptions) error {
	return d.RevertSnapshotNotes(ctx, g, name, opts, func(string) {})
}

// RevertSnapshotNotes implements driver.RevertNoter.
func (d *Driver) RevertSnapshotNotes(ctx context.Context, g driver.Guest, name string, opts driver.RevertOptions, note func(string)) error {
	v, err := d.open(ctx, g)
	if err != nil {
		return err
	}
	defer v.close()
	sn, ok := v.find(name)
	if !ok {
		return fmt.Errorf("guest %s: snapshot %s: %w", v.e.name, name, driver.ErrNotFound)
	}
	if sn.Incomplete != "" {
		return fmt.Errorf("guest %s: snapshot %s cannot be reverted to: %s", v.e.name, name, sn.Incomplete)
	}
	ds, err := v.need()
	if err != nil {
		return err
	}
	st := v.state()
	live := v.s != nil
	if live && !sn.Memory && !opts.Force {
		return fmt.Errorf("guest %s is %s: QEMU cannot load the disk-only snapshot %s live, so reverting quits QEMU and discards the guest's current state; shut it down first, or add --force",
			v.e.name, st, name)
	}
	if (opts.Running || opts.Paused) && len(v.m.Argv) == 0 && !(live && sn.Memory) {
		return fmt.Errorf("guest %s: autosnap has no record of QEMU's command line, so it could not start the guest after the revert: revert without --running/--paused and start it yourself", v.e.name)
	}
	rb, err := v.planRevertBitmaps(ctx, ds, opts.Force)
	if err != nil {
		return err
	}
	if len(rb.foreign) > 0 {
		note(fmt.Sprintf("Guest %s: removing dirty bitmaps autosnap did not create (--force): %s", v.e.name, strings.Join(rb.foreign, ", ")))
	}
	bk, err := v.journalRevertBitmaps(rb, name, time.Now())
	if err != nil {
		return err
	}
	if live && sn.Memory {
		if err := v.removeRevertBitmaps(ctx, bk); err != nil {
			return err
		}
		if err := v.loadJob(ctx, name, ds, opts); err != nil {
			return err
		}
		note(fmt.Sprintf("Guest %s: RAM and disks loaded from %s", v.e.name, name))
	} else {
		// Journal first: a revert interrupted between disks is finished by the next
		// run that opens the guest while QEMU is stopped (see finishRevert).
		v.m.Reverting = name
		if err := writeMeta(v.e.meta, v.m); err != nil {
			return fmt.Errorf("guest %s: %w", v.e.name, err)
		}
		if live {
			if err := v.stop(ctx); err != nil {
				return err
			}
			crash.Point(crashRevertStopped)
			note(fmt.Sprintf("Guest %s: QEMU stopped (quit) to revert its disks offline", v.e.name))
		}
		// From the images: QEMU stored its persistent bitmaps in them on quit.
		if err := v.removeRevertBitmaps(ctx, bk); err != nil {
			return err
		}
		if err := v.applyRevert(ctx, name, ds); err != nil {
			return err
		}
		if sn.Memory {
			note(fmt.Sprintf("Guest %s: only the disks of %s were reverted; a stopped guest's RAM cannot be restored", v.e.name, name))
		}
	}
	v.m.Current = name
	if err := writeMeta(v.e.meta, v.m); err != nil {
		return fmt.Errorf("guest %s: reverted to %s, but: %w", v.e.name, name, err)
	}
	if v.s == nil && (opts.Running || opts.Paused) {
		if err := v.start(ctx, opts.Paused); err != nil {
			return err
		}
		note(fmt.Sprintf("Guest %s: QEMU started again with its recorded command line", v.e.name))
	}
	return nil
}

// loadJob loads a snapshot with RAM into the running QEMU.
func (v *view) loadJob(ctx context.Context, name string, ds []disk, opts driver.RevertOptions) error {
	var nodes []string
	vmstate := ""
	for i, x := range ds {
		nodes = append(nodes, x.Node)
		for _, s := range v.snaps[i] {
			if s.Name == name && s.VMStateSize > 0 && vmstate == "" {
				vmstate = x.Node
			}
		}
	}
	id := "autosnap-load"
	if err := v.s.m.RunJob(ctx, "snapshot-load", id, map[string]any{"job-id": id, "tag": name, "vmstate": vmstate, "devices": nodes}); err != nil {
		return fmt.Errorf("guest %s: loading snapshot %s (snapshot-load job): %w", v.e.name, name, err)
	}
	cmd := "cont"
	if opts.Paused {
		cmd = "stop"
	}
	if err := v.s.m.Execute(ctx, cmd, nil, nil); err != nil && !isState(err) {
		return fmt.Errorf("guest %s: %s after loading %s: %w", v.e.name, cmd, name, err)
	}
	return nil
}

// isState tells a harmless "already in that state" reply.
func isState(err error) bool {
	var qe *qc.Error
	return errors.As(err, &qe) && strings.Contains(qe.Desc, "already")
}

// Crash points of the offline revert (see package crash).
const (
	crashRevertStopped = "qmp.revert-stopped"        // revert journaled, QEMU quit, no disk reverted
	crashRevertDisk    = "qmp.revert-disk-done"      // one disk reverted, the next not yet
	crashRevertBitmap  = "qmp.revert-bitmap-removed" // one dirty bitmap removed before the revert, the next not yet
)

// applyRevert reverts every disk's image (QEMU not running) and clears the journal.
func (v *view) applyRevert(ctx context.Context, name string, ds []disk) error {
	for _, x := range ds {
		if err := qemuImg(ctx, "-a", name, x.File); err != nil {
			return fmt.Errorf("guest %s: reverting disk %s to %s (the revert is finished by the next run): %w", v.e.name, x.Name, name, err)
		}
		crash.Point(crashRevertDisk)
	}
	v.m.Reverting = ""
	v.m.Current = name
	if err := writeMeta(v.e.meta, v.m); err != nil {
		return fmt.Errorf("guest %s: reverted to %s, but: %w", v.e.name, name, err)
	}
	return nil
}

// finishRevert completes a revert an earlier run journaled but did not finish: every
// disk is reverted again (qemu-img snapshot -a is idempotent), so no disk is left
// with another state than its siblings.
func (v *view) finishRevert(ctx context.Context) error {
	name := v.m.Reverting
	if _, ok := v.find(name); !ok {
		// The snapshot is gone (deleted by hand): nothing can be finished.
		v.m.Reverting = ""
		return writeMeta(v.e.meta, v.m)
	}
	ds, err := v.need()
	if err != nil {
		return err
	}
	if err := v.finishRevertBitmaps(ctx); err != nil {
		return err
	}
	return v.applyRevert(ctx, name, ds)
}

// inImages reports whether any disk holds a snapshot of that name, listed or not.
func (v *view) inImages(name string) bool {
	for _, sn := range v.snaps {
		for _, s := range sn {
			if s.Name == name {
				return true
			}
		}
	}
	return false
}
