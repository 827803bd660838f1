package libvirt

import (
	"context"
	"fmt"
	"os"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
)

// Phases of a revert, as its journal record says.
const (
	// revertStarted: the new overlays are named and may exist; the definition may
	// or may not name them yet.
	revertStarted = "started"
	// revertPointed: the definition names the new overlays; the snapshot may not be
	// current yet and the discarded images may still exist.
	revertPointed = "pointed"
)

// revertRecord is the journal record of an external revert in progress: written
// before the guest is touched, removed once the reverted state is recorded and the
// discarded images are deleted. A later run finishes or undoes what it describes
// (settleRevert).
type revertRecord struct {
	Op       string             `json:"op"` // "revert"
	Guest    string             `json:"guest"`
	UUID     string             `json:"uuid"`
	Snapshot string             `json:"snapshot"`
	Phase    string             `json:"phase"`
	Disks    []revertDiskRecord `json:"disks"`
	// Drop lists the images that held the discarded state, deleted once the revert
	// is recorded.
	Drop []string `json:"drop,omitempty"`
	// Rewrite maps disks to the new overlay the snapshot's <disks> is to name.
	Rewrite map[string]string `json:"rewrite,omitempty"`
	// SnapshotXML is the snapshot's metadata to redefine as current (secure XML, as
	// libvirt keeps it in its own 0600 files): libvirt drops a snapshot from its list
	// when it cannot save the redefined metadata, and the next run restores it.
	SnapshotXML string    `json:"snapshot_xml,omitempty"`
	Memory      string    `json:"memory,omitempty"`
	PID         int       `json:"pid"`
	Started     time.Time `json:"started"`
}

type revertDiskRecord struct {
	Target  string `json:"target"`
	State   string `json:"state"`   // the snapshot's state image
	Current string `json:"current"` // the image the disk used before the revert
	Overlay string `json:"overlay"` // the new overlay on State
}

func revertKey(node string, dom golibvirt.Domain) string {
	return "revert/" + node + "/" + formatUUID(dom.UUID)
}

func newRevertRecord(g driver.Guest, dom golibvirt.Domain, snap string, disks []revertDisk, drop []string, mem string) *revertRecord {
	r := &revertRecord{Op: "revert", Guest: g.Name, UUID: formatUUID(dom.UUID), Snapshot: snap, Phase: revertStarted,
		Drop: drop, Memory: mem, PID: os.Getpid(), Started: time.Now().UTC()}
	for _, dk := range disks {
		r.Disks = append(r.Disks, revertDiskRecord{Target: dk.target, State: dk.state, Current: dk.current, Overlay: dk.overlay})
	}
	return r
}

// settleOwn reconciles the creates and reverts an earlier run left half done on g
// (settleCreate, settleRevert). Every entry point that changes a guest calls it
// under the domain lock, after settle.
func (d *Driver) settleOwn(ctx context.Context, g driver.Guest, dom golibvirt.Domain) error {
	if err := d.settleRevert(ctx, g, dom); err != nil {
		return err
	}
	return d.settleCreate(ctx, g, dom)
}

// settleRevert finishes or undoes a revert an earlier run did not complete. If the
// persistent definition names every new overlay, the revert is finished: the
// snapshot is redefined as current (its <disks> as recorded) and the discarded images
// the guest does not use are deleted. If it names none, the revert is undone: the new
// overlays the guest does not use are deleted and the guest keeps its previous images
// (a guest the revert stopped stays shut off). Anything else is reported and left
// alone. A definition call this process gave up on is waited for first.
func (d *Driver) settleRevert(ctx context.Context, g driver.Guest, dom golibvirt.Domain) error {
	key := revertKey(d.node, dom)
	store := d.createStore()
	var r revertRecord
	ok, err := store.Get(key, &r)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	if !ok {
		return nil
	}
	if v, ok := pendingDefines.Load(key); ok {
		select {
		case <-v.(chan struct{}):
			pendingDefines.Delete(key)
		case <-ctx.Done():
			return fmt.Errorf("guest %s: the interrupted revert to %s is still waiting for libvirt: %w", g.Name, r.Snapshot, ctx.Err())
		}
	}
	n, err := d.pointedAt(ctx, dom, r.Disks)
	if err != nil {
		return fmt.Errorf("guest %s: finishing the interrupted revert to %s: %w", g.Name, r.Snapshot, err)
	}
	switch {
	case n == len(r.Disks) && n > 0:
		if err := d.finishRevert(ctx, g, dom, &r); err != nil {
			return fmt.Errorf("guest %s: finishing the interrupted revert to %s: %w", g.Name, r.Snapshot, err)
		}
	case n == 0 && r.Phase == revertStarted:
		used, err := d.imagesInUse(ctx, dom)
		if err != nil {
			return fmt.Errorf("guest %s: undoing the interrupted revert to %s: %w", g.Name, r.Snapshot, err)
		}
		for _, dk := range r.Disks {
			if used[dk.Overlay] || !fileExists(dk.Overlay) {
				continue
			}
			if err := d.removeFile(dk.Overlay); err != nil {
				return fmt.Errorf("guest %s: undoing the interrupted revert to %s: %w", g.Name, r.Snapshot, err)
			}
		}
	default:
		return fmt.Errorf("guest %s: a revert to %s was interrupted and the definition names %d of its %d new overlays (%s): changed by hand since? Nothing was changed; point the disks at the images you want, then remove autosnap's record %q from %s",
			g.Name, r.Snapshot, n, len(r.Disks), overlaysOf(r.Disks), key, store.Dir)
	}
	return store.Delete(key)
}

// finishRevert completes a revert whose definition names the new overlays: the
// snapshot becomes current and the discarded images go.
func (d *Driver) finishRevert(ctx context.Context, g driver.Guest, dom golibvirt.Domain, r *revertRecord) error {
	snap := golibvirt.DomainSnapshot{Name: r.Snapshot, Dom: dom}
	raw, err := call(ctx, func() (string, error) {
		return d.l.DomainSnapshotGetXMLDesc(snap, uint32(golibvirt.DomainSnapshotXMLSecure))
	})
	if errCode(err) == golibvirt.ErrNoDomainSnapshot {
		raw, err = r.SnapshotXML, nil
	}
	if err != nil {
		return err
	}
	if raw != "" {
		var sx libvirtxml.DomainSnapshot
		if err := sx.Unmarshal(raw); err != nil {
			return fmt.Errorf("snapshot %s: unreadable XML: %w", r.Snapshot, err)
		}
		applyRewrite(&sx, r.Rewrite)
		if err := d.redefineCurrent(ctx, dom, &sx); err != nil {
			return fmt.Errorf("marking %s current: %w", r.Snapshot, err)
		}
	}
	used, err := d.imagesInUse(ctx, dom)
	if err != nil {
		return err
	}
	for _, f := range r.Drop {
		if used[f] || !fileExists(f) {
			continue
		}
		if err := d.removeFile(f); err != nil {
			return fmt.Errorf("deleting %s, which held the discarded state: %w", f, err)
		}
	}
	return nil
}

func overlaysOf(ds []revertDiskRecord) string {
	s := ""
	for i, dk := range ds {
		if i > 0 {
			s += ", "
		}
		s += dk.Target + ": " + dk.Overlay
	}
	return s
}
