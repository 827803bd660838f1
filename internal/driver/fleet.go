package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// RevertNoter is a driver whose revert reports, line by line, what it did (a guest
// stopped hard, an image created or kept) through note; see the libvirt driver's
// RevertSnapshotNotes.
type RevertNoter interface {
	RevertSnapshotNotes(ctx context.Context, g Guest, name string, opts RevertOptions, note func(string)) error
}

// Fleet joins several independent hosts of one driver kind (a comma-separated list of
// libvirt URIs) into one Driver. Guests carry their host as Node; every per-guest call
// goes to the driver of that host.
//
// A Fleet implements every optional capability of this package and forwards each call
// to the guest's host, so the engine's and the CLI's capability checks behave as they
// would with that host alone; callers need not reach for the member. When the host's
// driver lacks a capability, the call fails with an error wrapping ErrUnsupported that
// names the guest and the host. Capabilities whose absence has a defined meaning
// answer as that host would instead: CheckSnapshot returns nil (every guest can be
// snapshotted), LoadTags leaves the tags Guests listed, StallBounded is true only when
// every host is, and RevertSnapshotNotes is a plain RevertSnapshot without notes.
//
// A guest's host is found by the Node its host's Guests reported, or before any
// listing by the host name a member reports through a Node() string method (as the
// libvirt driver does). A guest of a host the Fleet is not connected to fails with an
// error wrapping ErrNotFound.
type Fleet struct {
	members []Driver
	mu      sync.RWMutex
	byNode  map[string]Driver
}

// NewFleet builds a Fleet. Members must report distinct Node names; Guests fails when
// two do.
func NewFleet(members []Driver) *Fleet {
	return &Fleet{members: members, byNode: map[string]Driver{}}
}

// Name implements Driver.
func (f *Fleet) Name() string {
	if len(f.members) == 0 {
		return "fleet"
	}
	return f.members[0].Name()
}

// Guests implements Driver: the union of every member's guests, listed from all hosts
// at once, in member order. A member that fails fails the listing, because a silently
// missing host would look like vanished guests.
func (f *Fleet) Guests(ctx context.Context) ([]Guest, error) {
	lists := make([][]Guest, len(f.members))
	errs := make([]error, len(f.members))
	var wg sync.WaitGroup
	for i, m := range f.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lists[i], errs[i] = m.Guests(ctx)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var all []Guest
	for i, m := range f.members {
		for _, g := range lists[i] {
			if other, ok := f.byNode[g.Node]; ok && other != m {
				return nil, fmt.Errorf("two --host entries report the same host name %q: give each host once", g.Node)
			}
			f.byNode[g.Node] = m
		}
		all = append(all, lists[i]...)
	}
	return all, nil
}

// noder is a member that knows its host name without listing guests.
type noder interface{ Node() string }

func (f *Fleet) member(g Guest) (Driver, error) {
	f.mu.RLock()
	d, ok := f.byNode[g.Node]
	f.mu.RUnlock()
	if ok {
		return d, nil
	}
	var found Driver
	for _, m := range f.members {
		if n, ok := m.(noder); ok && n.Node() == g.Node {
			if found != nil {
				return nil, fmt.Errorf("guest %s: two --host entries report the same host name %q: give each host once", g.Name, g.Node)
			}
			found = m
		}
	}
	if found != nil {
		return found, nil
	}
	return nil, fmt.Errorf("guest %s: host %q is not one of the connected hosts (check --host): %w", g.Name, g.Node, ErrNotFound)
}

// Member returns the driver of g's host.
//
// Deprecated: the Fleet forwards every capability itself; use it directly.
func (f *Fleet) Member(g Guest) (Driver, error) { return f.member(g) }

// capability returns g's host driver as T, or an error wrapping ErrUnsupported that
// names the guest, the host and what could not be done.
func capability[T any](f *Fleet, g Guest, what string) (T, error) {
	var zero T
	d, err := f.member(g)
	if err != nil {
		return zero, err
	}
	c, ok := d.(T)
	if !ok {
		return zero, fmt.Errorf("guest %s: the %s driver of host %s cannot %s: %w", g.Name, d.Name(), g.Node, what, ErrUnsupported)
	}
	return c, nil
}

// Snapshots implements Driver.
func (f *Fleet) Snapshots(ctx context.Context, g Guest) ([]Snapshot, error) {
	d, err := f.member(g)
	if err != nil {
		return nil, err
	}
	return d.Snapshots(ctx, g)
}

// CreateSnapshot implements Driver.
func (f *Fleet) CreateSnapshot(ctx context.Context, g Guest, o CreateOptions) (Snapshot, error) {
	d, err := f.member(g)
	if err != nil {
		return Snapshot{}, err
	}
	return d.CreateSnapshot(ctx, g, o)
}

// DeleteSnapshot implements Driver.
func (f *Fleet) DeleteSnapshot(ctx context.Context, g Guest, name string) error {
	d, err := f.member(g)
	if err != nil {
		return err
	}
	return d.DeleteSnapshot(ctx, g, name)
}

// RevertSnapshot implements Driver.
func (f *Fleet) RevertSnapshot(ctx context.Context, g Guest, name string, o RevertOptions) error {
	d, err := f.member(g)
	if err != nil {
		return err
	}
	return d.RevertSnapshot(ctx, g, name, o)
}

// RevertSnapshotNotes implements RevertNoter; a host without notes reverts plainly.
func (f *Fleet) RevertSnapshotNotes(ctx context.Context, g Guest, name string, o RevertOptions, note func(string)) error {
	d, err := f.member(g)
	if err != nil {
		return err
	}
	if n, ok := d.(RevertNoter); ok {
		return n.RevertSnapshotNotes(ctx, g, name, o, note)
	}
	return d.RevertSnapshot(ctx, g, name, o)
}

// AgentPing implements AgentPinger.
func (f *Fleet) AgentPing(ctx context.Context, g Guest) error {
	p, err := capability[AgentPinger](f, g, "reach guest agents")
	if err != nil {
		return err
	}
	return p.AgentPing(ctx, g)
}

// Freeze implements Quiescer.
func (f *Fleet) Freeze(ctx context.Context, g Guest) (int, error) {
	q, err := capability[Quiescer](f, g, "freeze filesystems")
	if err != nil {
		return 0, err
	}
	return q.Freeze(ctx, g)
}

// Thaw implements Quiescer.
func (f *Fleet) Thaw(ctx context.Context, g Guest) (int, error) {
	q, err := capability[Quiescer](f, g, "thaw filesystems")
	if err != nil {
		return 0, err
	}
	return q.Thaw(ctx, g)
}

// FrozenState implements Quiescer.
func (f *Fleet) FrozenState(ctx context.Context, g Guest) (bool, error) {
	q, err := capability[Quiescer](f, g, "tell whether filesystems are frozen")
	if err != nil {
		return false, err
	}
	return q.FrozenState(ctx, g)
}

// Storage implements StorageReporter.
func (f *Fleet) Storage(ctx context.Context, g Guest) ([]StorageUsage, error) {
	s, err := capability[StorageReporter](f, g, "report storage use")
	if err != nil {
		return nil, err
	}
	return s.Storage(ctx, g)
}

// CheckSnapshot implements SnapshotChecker; a host without checks can snapshot every
// guest.
func (f *Fleet) CheckSnapshot(ctx context.Context, g Guest) error {
	d, err := f.member(g)
	if err != nil {
		return err
	}
	if c, ok := d.(SnapshotChecker); ok {
		return c.CheckSnapshot(ctx, g)
	}
	return nil
}

// SetTags implements Tagger.
func (f *Fleet) SetTags(ctx context.Context, g Guest, tags []string) error {
	t, err := capability[Tagger](f, g, "set tags")
	if err != nil {
		return err
	}
	return t.SetTags(ctx, g, tags)
}

// LoadTags implements TagLoader: each host loads the tags of its own guests, in one
// call per host. Guests of a host whose Guests lists tags itself are left as they are.
func (f *Fleet) LoadTags(ctx context.Context, guests []Guest) error {
	type batch struct {
		d   Driver
		idx []int
	}
	var order []*batch
	byMember := map[Driver]*batch{}
	for i, g := range guests {
		d, err := f.member(g)
		if err != nil {
			return err
		}
		b := byMember[d]
		if b == nil {
			b = &batch{d: d}
			byMember[d] = b
			order = append(order, b)
		}
		b.idx = append(b.idx, i)
	}
	for _, b := range order {
		tl, ok := b.d.(TagLoader)
		if !ok {
			continue
		}
		sub := make([]Guest, len(b.idx))
		for j, i := range b.idx {
			sub[j] = guests[i]
		}
		if err := tl.LoadTags(ctx, sub); err != nil {
			return err
		}
		for j, i := range b.idx {
			guests[i] = sub[j]
		}
	}
	return nil
}

// Chains implements ChainReporter.
func (f *Fleet) Chains(ctx context.Context, g Guest) ([]ChainInfo, error) {
	c, err := capability[ChainReporter](f, g, "report backing chains")
	if err != nil {
		return nil, err
	}
	return c.Chains(ctx, g)
}

// ChainDetails implements ChainInspector.
func (f *Fleet) ChainDetails(ctx context.Context, g Guest) ([]ChainDetail, error) {
	c, err := capability[ChainInspector](f, g, "show backing chains")
	if err != nil {
		return nil, err
	}
	return c.ChainDetails(ctx, g)
}

// DeleteSnapshotTree implements TreeDeleter.
func (f *Fleet) DeleteSnapshotTree(ctx context.Context, g Guest, name string, o DeleteOptions) error {
	t, err := capability[TreeDeleter](f, g, "delete snapshot trees or metadata only")
	if err != nil {
		return err
	}
	return t.DeleteSnapshotTree(ctx, g, name, o)
}

// SnapshotXML implements SnapshotXMLer.
func (f *Fleet) SnapshotXML(ctx context.Context, g Guest, name string) (string, error) {
	x, err := capability[SnapshotXMLer](f, g, "show snapshot XML")
	if err != nil {
		return "", err
	}
	return x.SnapshotXML(ctx, g, name)
}

// RedefineSnapshot implements SnapshotXMLer.
func (f *Fleet) RedefineSnapshot(ctx context.Context, g Guest, xml string, current bool) error {
	x, err := capability[SnapshotXMLer](f, g, "redefine snapshots")
	if err != nil {
		return err
	}
	return x.RedefineSnapshot(ctx, g, xml, current)
}

// SetCurrent implements CurrentSetter.
func (f *Fleet) SetCurrent(ctx context.Context, g Guest, name string) error {
	c, err := capability[CurrentSetter](f, g, "set the current snapshot")
	if err != nil {
		return err
	}
	return c.SetCurrent(ctx, g, name)
}

// EditSnapshot implements SnapshotEditor.
func (f *Fleet) EditSnapshot(ctx context.Context, g Guest, name string, o EditOptions) error {
	e, err := capability[SnapshotEditor](f, g, "edit snapshots")
	if err != nil {
		return err
	}
	return e.EditSnapshot(ctx, g, name, o)
}

// CollapseChain implements ChainCollapser.
func (f *Fleet) CollapseChain(ctx context.Context, g Guest, o CollapseOptions) error {
	c, err := capability[ChainCollapser](f, g, "collapse chains")
	if err != nil {
		return err
	}
	return c.CollapseChain(ctx, g, o)
}

// StallBounded implements StallBounded: true only when every host's deletes are
// bounded by progress, since a caller gives the whole fleet deletes without a deadline.
func (f *Fleet) StallBounded() bool {
	if len(f.members) == 0 {
		return false
	}
	for _, m := range f.members {
		s, ok := m.(StallBounded)
		if !ok || !s.StallBounded() {
			return false
		}
	}
	return true
}

// PrepareSnapshot implements SnapshotPreparer.
func (f *Fleet) PrepareSnapshot(ctx context.Context, g Guest, o CreateOptions) (PreparedSnapshot, error) {
	p, err := capability[SnapshotPreparer](f, g, "prepare snapshots")
	if err != nil {
		return nil, err
	}
	return p.PrepareSnapshot(ctx, g, o)
}

// Close implements Driver, closing every member.
func (f *Fleet) Close() error {
	var errs []error
	for _, m := range f.members {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}

var (
	_ Driver           = (*Fleet)(nil)
	_ RevertNoter      = (*Fleet)(nil)
	_ AgentPinger      = (*Fleet)(nil)
	_ Quiescer         = (*Fleet)(nil)
	_ StorageReporter  = (*Fleet)(nil)
	_ SnapshotChecker  = (*Fleet)(nil)
	_ Tagger           = (*Fleet)(nil)
	_ TagLoader        = (*Fleet)(nil)
	_ ChainReporter    = (*Fleet)(nil)
	_ ChainInspector   = (*Fleet)(nil)
	_ TreeDeleter      = (*Fleet)(nil)
	_ SnapshotXMLer    = (*Fleet)(nil)
	_ CurrentSetter    = (*Fleet)(nil)
	_ SnapshotEditor   = (*Fleet)(nil)
	_ ChainCollapser   = (*Fleet)(nil)
	_ StallBounded     = (*Fleet)(nil)
	_ SnapshotPreparer = (*Fleet)(nil)
)

// BackupSource implements Backupper.
func (f *Fleet) BackupSource(ctx context.Context, g Guest) (BackupSource, error) {
	b, err := capability[Backupper](f, g, "take backups")
	if err != nil {
		return BackupSource{}, err
	}
	return b.BackupSource(ctx, g)
}

// Backup implements Backupper.
func (f *Fleet) Backup(ctx context.Context, g Guest, req BackupRequest) (BackupResult, error) {
	b, err := capability[Backupper](f, g, "take backups")
	if err != nil {
		return BackupResult{}, err
	}
	return b.Backup(ctx, g, req)
}

// DeleteCheckpoint implements Backupper.
func (f *Fleet) DeleteCheckpoint(ctx context.Context, g Guest, name string) error {
	b, err := capability[Backupper](f, g, "remove backup checkpoints")
	if err != nil {
		return err
	}
	return b.DeleteCheckpoint(ctx, g, name)
}

// Bitmaps implements BitmapInspector.
func (f *Fleet) Bitmaps(ctx context.Context, g Guest) ([]Bitmap, error) {
	b, err := capability[BitmapInspector](f, g, "list backup bitmaps")
	if err != nil {
		return nil, err
	}
	return b.Bitmaps(ctx, g)
}

// RemoveOrphanBitmaps implements BitmapInspector.
func (f *Fleet) RemoveOrphanBitmaps(ctx context.Context, g Guest, bms []Bitmap) error {
	b, err := capability[BitmapInspector](f, g, "remove backup bitmaps")
	if err != nil {
		return err
	}
	return b.RemoveOrphanBitmaps(ctx, g, bms)
}
