package libvirt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/journal"
)

// createRecord is the journal record of an external snapshot being created: written
// before the create call, removed once its outcome is known. Found by a later run, it
// means the create's outcome was never seen (the process died, libvirtd restarted,
// or libvirt did not answer in time).
type createRecord struct {
	Op       string            `json:"op"` // "create"
	Guest    string            `json:"guest"`
	UUID     string            `json:"uuid"`
	Snapshot string            `json:"snapshot"`
	Overlays map[string]string `json:"overlays"` // disk → overlay the create makes
	States   map[string]string `json:"states"`   // disk → its image before the create
	Memory   string            `json:"memory,omitempty"`
	PID      int               `json:"pid"`
	Started  time.Time         `json:"started"`
}

// pendingCreates holds, per journal key, a channel closed when a create call this
// process stopped waiting for has returned: until then libvirt may still be making it.
var pendingCreates sync.Map

func createKey(node string, dom golibvirt.Domain) string {
	return "create/" + node + "/" + formatUUID(dom.UUID)
}

// createStore is the journal that creates and reverts record their progress in.
//
// TODO(merge journal): use the directory of the driver's configuration
// (Config.StateDir) once it exists; until then the default (journal.DefaultDir).
func (d *Driver) createStore() *journal.Store {
	return journal.Open("")
}

func (p *preparedSnapshot) record() createRecord {
	r := createRecord{Op: "create", Guest: p.g.Name, UUID: formatUUID(p.dom.UUID), Snapshot: p.name,
		Overlays: map[string]string{}, States: map[string]string{}, Memory: p.memFile,
		PID: os.Getpid(), Started: time.Now().UTC()}
	for i, dk := range p.disks {
		r.Overlays[dk.target] = p.overlays[i]
		r.States[dk.target] = dk.active
	}
	return r
}

// settleCreate reconciles a create an earlier run could not see the end of (its
// journal record is still there). If libvirt has the snapshot, it is an ordinary
// snapshot: it stays (its files get mode 0600) and the record goes. If not, the files
// the create may have made are removed, unless the guest uses one of its overlays
// (libvirt switched the disk but never recorded the snapshot): then nothing is
// deleted and the error says what to do; the record stays until that is resolved.
// A create still running (in this process or in libvirtd) is left alone with an
// error. Called under the domain lock, after settle.
func (d *Driver) settleCreate(ctx context.Context, g driver.Guest, dom golibvirt.Domain) error {
	key := createKey(d.node, dom)
	store := d.createStore()
	var r createRecord
	ok, err := store.Get(key, &r)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	if !ok {
		return nil
	}
	if v, ok := pendingCreates.Load(key); ok {
		select {
		case <-v.(chan struct{}):
			pendingCreates.Delete(key)
		default:
			return fmt.Errorf("guest %s: the create of snapshot %s that autosnap stopped waiting for is still running in libvirt; try again once it has finished", g.Name, r.Snapshot)
		}
	}
	files := make([]string, 0, len(r.Overlays)+1)
	for _, f := range r.Overlays {
		files = append(files, f)
	}
	sort.Strings(files)
	if r.Memory != "" {
		files = append(files, r.Memory)
	}

	_, err = call(ctx, func() (golibvirt.DomainSnapshot, error) { return d.l.DomainSnapshotLookupByName(dom, r.Snapshot, 0) })
	if err == nil {
		if d.local {
			for _, f := range files {
				_ = os.Chmod(f, 0o600)
			}
		}
		return store.Delete(key)
	}
	if errCode(err) != golibvirt.ErrNoDomainSnapshot {
		return fmt.Errorf("guest %s: checking on snapshot %s, whose create was interrupted: %w", g.Name, r.Snapshot, d.notFound(g.Name, err))
	}
	if busy, err := d.domainBusy(ctx, dom); err != nil || busy {
		if err == nil {
			err = errors.New("a job is running on it")
		}
		return fmt.Errorf("guest %s: libvirt may still be creating snapshot %s, whose create was interrupted (%v); try again once the job has ended", g.Name, r.Snapshot, err)
	}
	used, err := d.imagesInUse(ctx, dom)
	if err != nil {
		return fmt.Errorf("guest %s: reconciling the interrupted create of snapshot %s: %w", g.Name, r.Snapshot, err)
	}
	var inUse []string
	for disk, f := range r.Overlays {
		if used[f] {
			inUse = append(inUse, fmt.Sprintf("%s (%s)", f, disk))
		}
	}
	if len(inUse) > 0 {
		sort.Strings(inUse)
		return fmt.Errorf("guest %s uses %s, made by snapshot %s whose create was interrupted, but libvirt has no snapshot %s: the data written since lives there, so nothing was deleted and nothing else is changed on this guest. Merge the overlay back (virsh blockcommit %s <disk> --active --pivot, or qemu-img commit when shut off) or keep it, then remove autosnap's record %q from %s",
			g.Name, strings.Join(inUse, ", "), r.Snapshot, r.Snapshot, g.Name, key, store.Dir)
	}
	var failed []string
	for _, f := range files {
		if d.local && !fileExists(f) {
			continue
		}
		if err := d.removeFile(f); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", f, err))
		}
	}
	if err := store.Delete(key); err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	if len(failed) > 0 {
		return fmt.Errorf("guest %s: snapshot %s, whose create was interrupted, does not exist, and removing what it left failed: %s (delete these by hand)", g.Name, r.Snapshot, strings.Join(failed, "; "))
	}
	return nil
}

// domainBusy reports whether libvirt runs a job on dom (a snapshot being made by a
// client that is gone shows up so).
func (d *Driver) domainBusy(ctx context.Context, dom golibvirt.Domain) (bool, error) {
	typ, err := call(ctx, func() (int32, error) {
		t, _, _, _, _, _, _, _, _, _, _, _, err := d.l.DomainGetJobInfo(dom)
		return t, err
	})
	if err != nil {
		if errCode(err) == golibvirt.ErrOperationInvalid {
			return false, nil // not running: no job
		}
		return false, d.notFound(dom.Name, err)
	}
	return golibvirt.DomainJobType(typ) != golibvirt.DomainJobNone, nil
}

// imagesInUse returns every image in the backing chains of dom's disks, in its live
// definition and (when active) its persistent one. Over a remote connection a
// shut-off guest's chains cannot be read; its disks' top images are used.
func (d *Driver) imagesInUse(ctx context.Context, dom golibvirt.Domain) (map[string]bool, error) {
	x, active, err := d.currentXML(ctx, dom)
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	add := func(x *libvirtxml.Domain, active bool) error {
		if !active && !d.local {
			if x.Devices != nil {
				for _, dk := range x.Devices.Disks {
					if dk.Source != nil {
						used[sourcePath(dk.Source)] = true
					}
				}
			}
			return nil
		}
		chains, err := d.chainsOf(ctx, x, active)
		for _, c := range chains {
			for _, f := range c {
				used[f] = true
			}
		}
		return err
	}
	if err := add(x, active); err != nil {
		return nil, err
	}
	if active {
		px, err := d.domainXML(ctx, dom, true)
		if err != nil {
			return nil, err
		}
		if err := add(px, false); err != nil {
			return nil, err
		}
	}
	return used, nil
}
