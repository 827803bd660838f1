package libvirt

import (
	"context"
	"fmt"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
)

// incompleteReasons returns, for each snapshot of g whose data is no longer whole
// because a merge that removes it was interrupted, why; nil when there is none. It
// reads the merge journal only (no RPC): the snapshots a started step of the recorded
// delete changed are partly merged until that delete is finished.
func (d *Driver) incompleteReasons(ctx context.Context, g driver.Guest, dom golibvirt.Domain) (map[string]string, error) {
	// In a listing scope the journal directory is read once, not opened per guest.
	st := d.store()
	keys, scoped, err := driver.InScope(ctx, mergeKeysScope{st.Dir}, func() (map[string]bool, error) {
		ks, err := st.Keys("merge/")
		m := make(map[string]bool, len(ks))
		for _, k := range ks {
			m[k] = true
		}
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the merge journal of %s: %w", g.Name, err)
	}
	if scoped && !keys[mergeKey(d.node, dom)] {
		return nil, nil
	}
	rec, _, err := d.loadMerge(dom)
	if err != nil {
		return nil, fmt.Errorf("reading the merge journal of %s: %w", g.Name, err)
	}
	if rec == nil {
		return nil, nil
	}
	return rec.incomplete(), nil
}

// mergeKeysScope keys, in a driver.ListingScope, the merge records a journal
// directory holds.
type mergeKeysScope struct{ dir string }

// settle finishes (or undoes) whatever an interrupted earlier run left half done on
// g — a merge, a create — before anything else changes the guest. Every entry point
// that changes a guest calls it first, under the domain lock.
//
// A merge journal record of g is carried out from where it stopped: the remaining
// steps run (live or offline as the guest is now, adopting a block job the earlier run
// left running), the remaining snapshots' metadata is rewritten, the deleted snapshots
// are forgotten and the record is removed; then creates and reverts left half done are
// reconciled (settleOwn). If that cannot be done, settle returns an
// error naming the guest, the snapshots, what is left and what to do, and the caller
// must change nothing else (a new snapshot on top of a half-merged chain would only
// make it longer).
func (d *Driver) settle(ctx context.Context, g driver.Guest, dom golibvirt.Domain) error {
	if _, err := d.settleMerge(ctx, g, dom, nil); err != nil {
		return err
	}
	return d.settleOwn(ctx, g, dom)
}
