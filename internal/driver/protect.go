package driver

import "context"

// Protector records on a snapshot, durably and on the hypervisor itself, that retention
// must never remove it (autosnap snapshot protect|unprotect). Snapshots then lists it
// with Protected set. Only autosnap's own snapshots (naming.IsOurs) can be protected:
// retention never touches any other, and SetProtected fails for them. The flag lives in
// the snapshot's description (naming.WithProtected), so it survives restarts and is
// seen by every autosnap that reads the snapshot. SetProtected returns an error
// wrapping ErrNotFound when there is no such snapshot; setting the flag a snapshot
// already has changes nothing and succeeds.
type Protector interface {
	SetProtected(ctx context.Context, g Guest, name string, protected bool) error
}

// SetProtected implements Protector.
func (f *Fleet) SetProtected(ctx context.Context, g Guest, name string, protected bool) error {
	p, err := capability[Protector](f, g, "protect snapshots")
	if err != nil {
		return err
	}
	return p.SetProtected(ctx, g, name, protected)
}

var _ Protector = (*Fleet)(nil)
