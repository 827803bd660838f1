package libvirt

import (
	"context"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
)

// incompleteReasons returns, for each snapshot of g whose data is no longer whole
// because a merge that removes it was interrupted, why; nil when there is none. It
// reads the merge journal only (no RPC).
//
// TODO(merge journal): implemented with the journal; until then nothing is reported.
func (d *Driver) incompleteReasons(ctx context.Context, g driver.Guest, dom golibvirt.Domain) (map[string]string, error) {
	return nil, nil
}

// settle finishes (or undoes) whatever an interrupted earlier run left half done on
// g — a merge, a create — before anything else changes the guest. Every entry point
// that changes a guest calls it first, under the domain lock.
//
// TODO(merge journal): implemented with the journal.
func (d *Driver) settle(ctx context.Context, g driver.Guest, dom golibvirt.Domain) error {
	return nil
}
