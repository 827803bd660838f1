package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Fleet joins several independent hosts of one driver kind into one Driver. Guests
// carry their host as Node; every per-guest call goes to the driver of that node.
// Optional capabilities are forwarded when the member driver has them.
type Fleet struct {
	members []Driver
	mu      sync.RWMutex
	byNode  map[string]Driver
}

// NewFleet builds a Fleet. Members must report distinct Node names.
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

// Guests implements Driver: the union of every member's guests. A member that fails
// fails the listing, because a silently missing host would look like vanished guests.
func (f *Fleet) Guests(ctx context.Context) ([]Guest, error) {
	var all []Guest
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.members {
		gs, err := m.Guests(ctx)
		if err != nil {
			return nil, err
		}
		for _, g := range gs {
			if other, ok := f.byNode[g.Node]; ok && other != m {
				return nil, fmt.Errorf("two --host entries report the same host name %q: give each host once", g.Node)
			}
			f.byNode[g.Node] = m
		}
		all = append(all, gs...)
	}
	return all, nil
}

func (f *Fleet) member(g Guest) (Driver, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if d, ok := f.byNode[g.Node]; ok {
		return d, nil
	}
	return nil, fmt.Errorf("guest %s: host %q is not one of the connected hosts: %w", g.Name, g.Node, ErrNotFound)
}

// Member returns the driver of g's host, for capabilities the Fleet does not forward.
func (f *Fleet) Member(g Guest) (Driver, error) { return f.member(g) }

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

// AgentPing implements AgentPinger when the guest's host driver does.
func (f *Fleet) AgentPing(ctx context.Context, g Guest) error {
	d, err := f.member(g)
	if err != nil {
		return err
	}
	p, ok := d.(AgentPinger)
	if !ok {
		return ErrUnsupported
	}
	return p.AgentPing(ctx, g)
}

// Storage implements StorageReporter when the guest's host driver does.
func (f *Fleet) Storage(ctx context.Context, g Guest) ([]StorageUsage, error) {
	d, err := f.member(g)
	if err != nil {
		return nil, err
	}
	s, ok := d.(StorageReporter)
	if !ok {
		return nil, ErrUnsupported
	}
	return s.Storage(ctx, g)
}

// SetTags implements Tagger when the guest's host driver does.
func (f *Fleet) SetTags(ctx context.Context, g Guest, tags []string) error {
	d, err := f.member(g)
	if err != nil {
		return err
	}
	t, ok := d.(Tagger)
	if !ok {
		return ErrUnsupported
	}
	return t.SetTags(ctx, g, tags)
}

// Chains implements ChainReporter when the guest's host driver does.
func (f *Fleet) Chains(ctx context.Context, g Guest) ([]ChainInfo, error) {
	d, err := f.member(g)
	if err != nil {
		return nil, err
	}
	c, ok := d.(ChainReporter)
	if !ok {
		return nil, ErrUnsupported
	}
	return c.Chains(ctx, g)
}

// CheckSnapshot implements SnapshotChecker when the guest's host driver does.
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

// Close implements Driver, closing every member.
func (f *Fleet) Close() error {
	var errs []error
	for _, m := range f.members {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}

var (
	_ Driver          = (*Fleet)(nil)
	_ AgentPinger     = (*Fleet)(nil)
	_ StorageReporter = (*Fleet)(nil)
	_ Tagger          = (*Fleet)(nil)
	_ ChainReporter   = (*Fleet)(nil)
	_ SnapshotChecker = (*Fleet)(nil)
)
