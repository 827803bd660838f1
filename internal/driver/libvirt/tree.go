package libvirt

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

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

// loadTree reads every snapshot's metadata (secure XML) and the current snapshot.
func (d *Driver) loadTree(ctx context.Context, g driver.Guest, dom golibvirt.Domain) (*snapTree, error) {
	snaps, err := call(ctx, func() ([]golibvirt.DomainSnapshot, error) {
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
	cur, err := call(ctx, func() (golibvirt.DomainSnapshot, error) { return d.l.DomainSnapshotCurrent(dom, 0) })
	hasCur := err == nil
	if err != nil && errCode(err) != golibvirt.ErrNoDomainSnapshot {
		return nil, fmt.Errorf("guest %s: reading current snapshot: %w", g.Name, err)
	}
	var list []driver.Snapshot
	for _, s := range snaps {
		raw, err := call(ctx, func() (string, error) {
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
// On an error or when ctx ends, the running merge is aborted (its chain stays valid),
// every snapshot's metadata is pointed at the files that exist, nothing is forgotten,
// and the error names the selected snapshots that are partly merged: running the same
// delete again finishes the job.
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
	t, err := d.loadTree(ctx, g, dom)
	if err != nil {
		return err
	}
	if _, ok := t.byName[name]; !ok {
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
	// Internal snapshots live inside the images; libvirt removes them. Done first so
	// their images are free to merge, and before anything else changes.
	var external []string
	for _, n := range sel {
		if t.byName[n].location != driver.LocationInternal {
			external = append(external, n)
			continue
		}
		snap := golibvirt.DomainSnapshot{Name: n, Dom: dom}
		if err := call0(ctx, func() error { return d.l.DomainSnapshotDelete(snap, 0) }); err != nil && errCode(err) != golibvirt.ErrNoDomainSnapshot {
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
	graphs, err := d.buildGraphs(ctx, g, dom, t, deleted)
	if err != nil {
		return err
	}
	var steps []mergeStep
	disks := make([]string, 0, len(graphs))
	for k := range graphs {
		disks = append(disks, k)
	}
	sort.Strings(disks)
	for _, k := range disks {
		steps = append(steps, graphs[k].plan()...)
	}
	replaced := map[string]string{}
	touched := map[string]bool{} // files whose content changed or that are gone
	var runErr error
	for _, s := range steps {
		for _, f := range s.removed() {
			touched[f] = true
		}
		if s.kind == stepCommit {
			touched[s.base] = true
		}
		if runErr = d.runStep(ctx, g, dom, s, opts.Progress); runErr != nil {
			break
		}
		if s.kind == stepCommit {
			for _, f := range s.removed() {
				replaced[f] = s.base
			}
		}
	}
	if runErr != nil {
		// Every chain is valid, but the selected snapshots whose images a step touched
		// no longer hold their point in time. Their metadata stays, repointed at the
		// files that exist, so that the same delete can run again and finish.
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.timeout)
		defer cancel()
		var partly []string
		for _, n := range external {
			m := t.byName[n]
			for disk, st := range m.states {
				if touched[st] || touched[m.overlays[disk]] {
					partly = append(partly, n)
					break
				}
			}
		}
		if err := d.rewriteRemaining(mctx, g, dom, t, nil, replaced); err != nil {
			runErr = errors.Join(runErr, err)
		}
		msg := "no snapshot was changed"
		if len(partly) > 0 {
			msg = "partly merged, not to be reverted to: " + strings.Join(partly, ", ")
		}
		return fmt.Errorf("guest %s: %w (every disk chain is valid and the guest's data intact; %s; run the delete again to finish)", g.Name, runErr, msg)
	}
	gone := map[string]bool{}
	for _, n := range external {
		gone[n] = true
	}
	if err := d.rewriteRemaining(ctx, g, dom, t, gone, replaced); err != nil {
		return err
	}
	for _, n := range external {
		m := t.byName[n]
		if m.x.Memory != nil && m.x.Memory.Snapshot == "external" && m.x.Memory.File != "" {
			if err := d.removeFile(m.x.Memory.File); err != nil {
				return fmt.Errorf("guest %s: snapshot %s: removing memory file: %w", g.Name, n, err)
			}
		}
		if err := d.forget(ctx, g, dom, n); err != nil {
			return err
		}
	}
	return nil
}

// forget removes one snapshot's metadata and nothing else.
func (d *Driver) forget(ctx context.Context, g driver.Guest, dom golibvirt.Domain, name string) error {
	snap := golibvirt.DomainSnapshot{Name: name, Dom: dom}
	err := call0(ctx, func() error { return d.l.DomainSnapshotDelete(snap, golibvirt.DomainSnapshotDeleteMetadataOnly) })
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
	_, err = call(ctx, func() (golibvirt.DomainSnapshot, error) { return d.l.DomainSnapshotCreateXML(dom, out, flags) })
	return err
}

var (
	_ driver.TreeDeleter    = (*Driver)(nil)
	_ driver.SnapshotXMLer  = (*Driver)(nil)
	_ driver.CurrentSetter  = (*Driver)(nil)
	_ driver.SnapshotEditor = (*Driver)(nil)
	_ driver.ChainCollapser = (*Driver)(nil)
	_ driver.ChainInspector = (*Driver)(nil)
)
