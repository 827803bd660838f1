package libvirt

import (
	"context"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
)

// SetPointHook makes every crash point of a merge on the guest with uuid call f with
// the point's name, until the test ends. f may panic to stop the merge there as a
// SIGKILL would: nothing after the point runs but deferred calls.
func SetPointHook(t testing.TB, uuid string, f func(point string)) {
	pointHooks.Store(uuid, f)
	t.Cleanup(func() { pointHooks.Delete(uuid) })
}

// Settle runs settle under the domain lock, as an entry point that changes g would.
func (d *Driver) Settle(ctx context.Context, g driver.Guest) error {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	unlock := d.domLock(g.Key())
	defer unlock()
	return d.settle(ctx, g, dom)
}
