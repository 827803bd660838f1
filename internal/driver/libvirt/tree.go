package libvirt

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
)

// snapMeta is one snapshot's metadata as the tree operations need it.
type snapMeta struct {
	x        *libvirtxml.DomainSnapshot // with security info, as redefine needs it
	parent   string
	current  bool
	location driver.Location
	// overlays and states map each disk with an external snapshot to the overlay the
	// snapshot created and to its state image (the image below that overlay).
	overlays, states map[string]string
}

// snapTree is every snapshot of one domain.
type snapTree struct {
	byName map[string]*snapMeta
	order  []string // oldest first
}

func (t *snapTree) children(name string) []string {
	var out []string
	for _, n := range t.order {
		if t.byName[n].parent == name {
			out = append(out, n)
		}
	}
	return out
}

func (t *snapTree) descendants(name string) []string {
	var out []string
	for _, c := range t.children(name) {
		out = append(out, c)
		out = append(out, t.descendants(c)...)
	}
	return out
}

// depth is the number of ancestors of name.
func (t *snapTree) depth(name string) int {
	d := 0
	for s := t.byName[name]; s != nil && s.parent != "" && d < len(t.order); s = t.byName[s.parent] {
		d++
	}
	return d
}

// settledTree looks g up, takes its lock, finishes what an interrupted run left half
// done (settle) and loads its snapshot tree: the start of every change to a guest's
// snapshot metadata. When err is nil the caller must call unlock.
func (d *Driver) settledTree(ctx context.Context, g driver.Guest) (dom golibvirt.Domain, t *snapTree, unlock func(), err error) {
	dom, err = d.lookup(ctx, g)
	if err != nil {
		return dom, nil, nil, err
	}
	unlock = d.domLock(g.Key())
	if err = d.settle(ctx, g, dom); err == nil {
		t, err = d.loadTree(ctx, g, dom)
	}
	if err != nil {
		unlock()
		return dom, nil, nil, err
	}
	return dom, t, unlock, nil
}

// loadTree reads every snapshot's metadata (secure XML) and the current snapshot.
//
// Each call to libvirt is bounded by the connection timeout.
func (d *Driver) loadTree(ctx context.Context, g driver.Guest, dom golibvirt.Domain) (*snapTree, error) {
	snaps, err := rpc(d, ctx, func() ([]golibvirt.DomainSnapshot, error) {
		s, _, err := d.l.DomainListAllSnapshots(dom, 1, 0)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("guest %s: listing snapshots: %w", g.Name, d.notFound(g.Name, err))
	}
	t := &snapTree{byName: map[string]*snapMeta{}}
	if len(snaps) == 0 {
		return t, nil
	}
	cur, err := rpc(d, ctx, func() (golibvirt.DomainSnapshot, error) { return d.l.DomainSnapshotCurrent(dom, 0) })
	hasCur := err == nil
	if err != nil && errCode(err) != golibvirt.ErrNoDomainSnapshot {
		return nil, fmt.Errorf("guest %s: reading current snapshot: %w", g.Name, err)
	}
	var list []driver.Snapshot
	for _, s := range snaps {
		raw, err := rpc(d, ctx, func() (string, error) {
			return d.l.DomainSnapshotGetXMLDesc(s, uint32(golibvirt.DomainSnapshotXMLSecure))
		})
		if err != nil {
			if errCode(err) == golibvirt.ErrNoDomainSnapshot {
				continue
			}
			return nil, fmt.Errorf("guest %s: reading snapshot %s: %w", g.Name, s.Name, err)
		}
		x := &libvirtxml.DomainSnapshot{}
		if err := x.Unmarshal(raw); err != nil {
			return nil, fmt.Errorf("guest %s: snapshot %s: unreadable XML: %w", g.Name, s.Name, err)
		}
		ds := fromXML(x)
		list = append(list, ds)
		m := &snapMeta{x: x, parent: ds.Parent, current: hasCur && cur.Name == x.Name, location: ds.Location,
			overlays: map[string]string{}, states: map[string]string{}}
		if x.Disks != nil {
			for _, dk := range x.Disks.Disks {
				if dk.Snapshot == "external" && dk.Source != nil && dk.Source.File != nil {
					m.overlays[dk.Name] = dk.Source.File.File
				}
			}
		}
		if x.Domain != nil && x.Domain.Devices != nil {
			for _, dk := range x.Domain.Devices.Disks {
				if dk.Target != nil && dk.Source != nil && m.overlays[dk.Target.Dev] != "" {
					if p := sourcePath(dk.Source); p != "" {
						m.states[dk.Target.Dev] = p
					}
				}
			}
		}
		t.byName[x.Name] = m
	}
	sort.SliceStable(list, func(i, j int) bool {
		if !list[i].Created.Equal(list[j].Created) {
			return list[i].Created.Before(list[j].Created)
		}
		return list[i].Name < list[j].Name
	})
	for _, s := range list {
		t.order = append(t.order, s.Name)
	}
	return t, nil
}

// DeleteSnapshotTree implements driver.TreeDeleter.
//
// Without MetadataOnly every selected snapshot's data is released: the images only
// they pinned are merged (live block commit for images the running guest has open,
// qemu-img for the others and for a shut-off guest) or removed, so the guest's current
// data and every remaining snapshot keep their content. An image another branch still
// builds on is never written. Remaining snapshots' metadata is rewritten to name the
// images that now hold their state and the nearest remaining ancestor as parent.
//
// The plan is written to a journal before anything irreversible and the progress of
// every step after, so a run cut off at any point (SIGKILL, a libvirtd restart, ctx
// ending) is finished by the next operation on the guest (see settle), which every
// delete runs first: deleting a snapshot an interrupted delete was removing succeeds
// once that delete is finished. Until then the snapshots whose data a started step
// changed are reported Incomplete.
//
// The driver is StallBounded: a merge gives up only when it makes no progress for the
// connection timeout, or when ctx ends. Giving up aborts the running merge (its chain
// stays valid), points every snapshot's metadata at the files that exist, forgets
// nothing, and returns an error naming the snapshots that are partly merged.
func (d *Driver) DeleteSnapshotTree(ctx context.Context, g driver.Guest, name string, opts driver.DeleteOptions) error {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	unlock := d.domLock(g.Key())
	defer unlock()
	return d.deleteTree(ctx, g, dom, name, opts)
}

func (d *Driver) deleteTree(ctx context.Context, g driver.Guest, dom golibvirt.Domain, name string, opts driver.DeleteOptions) error {
	if opts.Children && opts.ChildrenOnly {
		return fmt.Errorf("delete: children and children-only exclude each other")
	}
	finished, err := d.settleMerge(ctx, g, dom, opts.Progress)
	if err != nil {
		return err
	}
	if err := d.settleOwn(ctx, g, dom); err != nil {
		return err
	}
	t, err := d.loadTree(ctx, g, dom)
	if err != nil {
		return err
	}
	if _, ok := t.byName[name]; !ok {
		if slices.Contains(finished, name) {
			return nil // an interrupted delete of it was just finished
		}
		return fmt.Errorf("guest %s has no snapshot %q: %w", g.Name, name, driver.ErrNotFound)
	}
	var sel []string
	if !opts.ChildrenOnly {
		sel = append(sel, name)
	}
	if opts.Children || opts.ChildrenOnly {
		sel = append(sel, t.descendants(name)...)
	}
	if len(sel) == 0 {
		return nil
	}
	// Leaves first: libvirt then never has to reparent a child of a deleted snapshot,
	// and "current" moves up to the nearest remaining ancestor.
	sort.SliceStable(sel, func(i, j int) bool { return t.depth(sel[i]) > t.depth(sel[j]) })
	if opts.MetadataOnly {
		for _, n := range sel {
			if err := d.forget(ctx, g, dom, n); err != nil {
				return err
			}
		}
		return nil
	}
	deleted := map[string]bool{}
	for _, n := range sel {
		deleted[n] = true
		if t.byName[n].location == driver.LocationMixed {
			return fmt.Errorf("guest %s: snapshot %s mixes internal and external disks; delete it with virsh: %w", g.Name, n, driver.ErrUnsupported)
		}
	}
	// Internal snapshots live inside the images; libvirt removes them (each delete is
	// atomic). Done first so their images are free to merge, and before anything else
	// changes.
	var external []string
	for _, n := range sel {
		if t.byName[n].location != driver.LocationInternal {
			external = append(external, n)
			continue
		}
		snap := golibvirt.DomainSnapshot{Name: n, Dom: dom}
		if err := rpc0(d, ctx, func() error { return d.l.DomainSnapshotDelete(snap, 0) }); err != nil && errCode(err) != golibvirt.ErrNoDomainSnapshot {
			return fmt.Errorf("guest %s: deleting internal snapshot %s failed: %w", g.Name, n, err)
		}
	}
	if len(external) == 0 {
		return nil
	}
	if len(external) < len(sel) {
		// libvirt reparented the internal snapshots' children.
		if t, err = d.loadTree(ctx, g, dom); err != nil {
			return err
		}
	}
	pctx, cancel := d.rpcCtx(ctx)
	graphs, err := d.buildGraphs(pctx, g, dom, t, deleted)
	cancel()
	if err != nil {
		return err
	}
	inChain := chainSets(graphs)
	var steps []mergeStep
	for _, k := range sortedKeys(graphs) {
		steps = append(steps, graphs[k].plan()...)
	}
	rec := newMergeRecord(time.Now(), g.Name, formatUUID(dom.UUID), t, sel, external, steps, inChain)
	key := mergeKey(d.node, dom)
	if err := d.store().Put(key, rec); err != nil {
		return fmt.Errorf("guest %s: nothing was deleted: the merge plan could not be recorded first: %w (check that %s is writable)", g.Name, err, d.store().Dir)
	}
	point(dom, crash.MergeJournaled)
	if err := d.execute(ctx, g, dom, key, rec, opts.Progress); err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	return nil
}

// forget removes one snapshot's metadata and nothing else.
func (d *Driver) forget(ctx context.Context, g driver.Guest, dom golibvirt.Domain, name string) error {
	snap := golibvirt.DomainSnapshot{Name: name, Dom: dom}
	err := rpc0(d, ctx, func() error { return d.l.DomainSnapshotDelete(snap, golibvirt.DomainSnapshotDeleteMetadataOnly) })
	if err != nil && errCode(err) != golibvirt.ErrNoDomainSnapshot {
		return fmt.Errorf("guest %s: removing the metadata of snapshot %s failed: %w (run: virsh snapshot-delete %s %s --metadata)", g.Name, name, err, dom.Name, name)
	}
	return nil
}

// rewriteRemaining redefines the snapshots that stay: their recorded disks follow
// replaced, and a parent that goes becomes the nearest ancestor that stays.
func (d *Driver) rewriteRemaining(ctx context.Context, g driver.Guest, dom golibvirt.Domain, t *snapTree, gone map[string]bool, replaced map[string]string) error {
	// Parents first: a redefinition names its parent, which must exist.
	names := append([]string{}, t.order...)
	sort.SliceStable(names, func(i, j int) bool { return t.depth(names[i]) < t.depth(names[j]) })
	for _, n := range names {
		m, ok := t.byName[n]
		if !ok || gone[n] {
			continue
		}
		changed := false
		for _, dm := range []*libvirtxml.Domain{m.x.Domain, inactiveOf(m.x)} {
			if dm == nil || dm.Devices == nil {
				continue
			}
			for i := range dm.Devices.Disks {
				dk := &dm.Devices.Disks[i]
				if dk.Source == nil || dk.Source.File == nil {
					continue
				}
				if nb := resolve(replaced, dk.Source.File.File); nb != dk.Source.File.File {
					dk.Source.File.File = nb
					dk.BackingStore = nil
					changed = true
				}
			}
		}
		p := m.parent
		for p != "" && gone[p] {
			if pm := t.byName[p]; pm != nil {
				p = pm.parent
			} else {
				p = ""
			}
		}
		if p != m.parent {
			changed = true
			m.x.Parent = nil
			if p != "" {
				m.x.Parent = &libvirtxml.DomainSnapshotParent{Name: p}
			}
		}
		if !changed {
			continue
		}
		if err := d.redefine(ctx, dom, m.x, m.current); err != nil {
			return fmt.Errorf("guest %s: updating the metadata of snapshot %s: %w", g.Name, n, err)
		}
	}
	return nil
}

// resolve follows f through replaced to the image that holds its content now.
func resolve(replaced map[string]string, f string) string {
	for range len(replaced) + 1 {
		nb, ok := replaced[f]
		if !ok {
			break
		}
		f = nb
	}
	return f
}

func (d *Driver) redefine(ctx context.Context, dom golibvirt.Domain, x *libvirtxml.DomainSnapshot, current bool) error {
	out, err := x.Marshal()
	if err != nil {
		return err
	}
	flags := uint32(golibvirt.DomainSnapshotCreateRedefine)
	if current {
		flags |= uint32(golibvirt.DomainSnapshotCreateCurrent)
	}
	_, err = rpc(d, ctx, func() (golibvirt.DomainSnapshot, error) { return d.snapshotCreateXML(dom, out, flags) })
	return err
}

// rpc runs one call to libvirt bounded by the connection timeout (and ctx).
func rpc[T any](d *Driver, ctx context.Context, f func() (T, error)) (T, error) {
	rctx, cancel := d.rpcCtx(ctx)
	defer cancel()
	return call(rctx, f)
}

func rpc0(d *Driver, ctx context.Context, f func() error) error {
	rctx, cancel := d.rpcCtx(ctx)
	defer cancel()
	return call0(rctx, f)
}

var (
	_ driver.TreeDeleter    = (*Driver)(nil)
	_ driver.SnapshotXMLer  = (*Driver)(nil)
	_ driver.CurrentSetter  = (*Driver)(nil)
	_ driver.SnapshotEditor = (*Driver)(nil)
	_ driver.ChainCollapser = (*Driver)(nil)
	_ driver.ChainInspector = (*Driver)(nil)
)
