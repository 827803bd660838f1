package libvirt

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
	"unsafe"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
)

// Snapshots implements driver.Driver, oldest first.
func (d *Driver) Snapshots(ctx context.Context, g driver.Guest) ([]driver.Snapshot, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return nil, err
	}
	return d.snapshots(ctx, g, dom)
}

// listInFlight is how many snapshot reads of one guest a listing keeps in flight.
const listInFlight = 4

// snapshots lists dom's snapshots: one call for the list, one for the current
// snapshot and one per snapshot for its XML (libvirt has no bulk read).
func (d *Driver) snapshots(ctx context.Context, g driver.Guest, dom golibvirt.Domain) ([]driver.Snapshot, error) {
	var l listing
	var err error
	if d.tap != nil {
		l, err = d.tapListing(ctx, g, dom)
	} else {
		l, err = d.listing(ctx, g, dom)
	}
	if err != nil {
		return nil, err
	}
	out := l.snaps
	if out == nil {
		return []driver.Snapshot{}, nil
	}
	incomplete, ierr := d.incompleteReasons(ctx, g, dom)
	if ierr != nil {
		return nil, fmt.Errorf("guest %s: %w", g.Name, ierr)
	}
	for i := range out {
		s := &out[i]
		s.Current = l.hasCur && l.cur == s.Name
		s.Incomplete = incomplete[s.Name]
	}
	// libvirt records whole seconds: within one, a parent still comes before its children.
	depth := depths(out)
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		if di, dj := depth[out[i].Name], depth[out[j].Name]; di != dj {
			return di < dj
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// listing reads dom's snapshots through go-libvirt. The calls run inside one bounded
// call rather than one each: a goroutine hand-off per call would cost autosnap more
// CPU than decoding the answer.
func (d *Driver) listing(ctx context.Context, g driver.Guest, dom golibvirt.Domain) (listing, error) {
	return call(ctx, func() (listing, error) {
		var l listing
		snaps, _, err := d.l.DomainListAllSnapshots(dom, 1, 0)
		if err != nil {
			return l, fmt.Errorf("guest %s: listing snapshots: %w", g.Name, d.notFound(g.Name, err))
		}
		if len(snaps) == 0 {
			return l, nil
		}
		cur, err := d.l.DomainSnapshotCurrent(dom, 0)
		if err != nil && errCode(err) != golibvirt.ErrNoDomainSnapshot {
			return l, fmt.Errorf("guest %s: reading current snapshot: %w", g.Name, err)
		}
		l.cur, l.hasCur = cur.Name, err == nil
		// A few calls in flight: libvirtd answers them together and the reader
		// goroutine finds answers waiting instead of sleeping between them.
		got := make([]driver.Snapshot, len(snaps))
		ok := make([]bool, len(snaps))
		errs := make([]error, len(snaps))
		next := make(chan int, len(snaps))
		for i := range snaps {
			next <- i
		}
		close(next)
		var wg sync.WaitGroup
		for range min(listInFlight, len(snaps)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					if ctx.Err() != nil {
						errs[i] = ctx.Err() // abandoned: issue no more calls
						continue
					}
					sn := snaps[i]
					raw, err := d.l.DomainSnapshotGetXMLDesc(sn, 0)
					if err != nil {
						if errCode(err) != golibvirt.ErrNoDomainSnapshot { // else deleted meanwhile
							errs[i] = fmt.Errorf("guest %s: reading snapshot %s: %w", g.Name, sn.Name, err)
						}
						continue
					}
					if got[i], err = decodeSnapshot(raw); err != nil {
						errs[i] = fmt.Errorf("guest %s: snapshot %s: unreadable XML: %w", g.Name, sn.Name, err)
						continue
					}
					ok[i] = true
				}
			}()
		}
		wg.Wait()
		if ctx.Err() != nil {
			return l, ctx.Err()
		}
		return l.collect(got, ok, errs)
	})
}

// tapListing reads dom's snapshots through the tap: the list and the current
// snapshot in one write, then every snapshot's XML in another, each answer decoded
// where it was read.
func (d *Driver) tapListing(ctx context.Context, g driver.Guest, dom golibvirt.Domain) (listing, error) {
	var l listing
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
	}
	snaps, cur, hasCur, err := d.tap.listSnapshots(ctx, dom)
	if err != nil {
		return l, fmt.Errorf("guest %s: listing snapshots: %w", g.Name, d.notFound(g.Name, err))
	}
	if len(snaps) == 0 {
		return l, nil
	}
	l.cur, l.hasCur = cur, hasCur
	got := make([]driver.Snapshot, len(snaps))
	ok := make([]bool, len(snaps))
	errs := make([]error, len(snaps))
	err = d.tap.snapshotXMLs(ctx, snaps, func(i int, raw []byte, err error) {
		sn := snaps[i]
		if err != nil {
			if errCode(err) != golibvirt.ErrNoDomainSnapshot { // else deleted meanwhile
				errs[i] = fmt.Errorf("guest %s: reading snapshot %s: %w", g.Name, sn.Name, err)
			}
			return
		}
		// decodeSnapshot keeps no part of raw, which the tap reuses.
		if got[i], err = decodeSnapshot(unsafe.String(unsafe.SliceData(raw), len(raw))); err != nil {
			errs[i] = fmt.Errorf("guest %s: snapshot %s: unreadable XML: %w", g.Name, sn.Name, err)
			return
		}
		ok[i] = true
	})
	if err != nil {
		return l, fmt.Errorf("guest %s: reading snapshots: %w", g.Name, err)
	}
	return l.collect(got, ok, errs)
}

// listing is what one guest's listing read.
type listing struct {
	snaps  []driver.Snapshot
	cur    string
	hasCur bool
}

// collect keeps the snapshots read (ok), or returns the first error.
func (l listing) collect(got []driver.Snapshot, ok []bool, errs []error) (listing, error) {
	for _, err := range errs {
		if err != nil {
			return l, err
		}
	}
	// In place: got is ours, and a second slice of every snapshot was a tenth of a
	// fleet listing's allocations.
	n := 0
	for i := range got {
		if ok[i] {
			got[n] = got[i]
			n++
		}
	}
	clear(got[n:])
	l.snaps = got[:n:n]
	return l, nil
}

// depths returns each snapshot's number of ancestors.
func depths(snaps []driver.Snapshot) map[string]int {
	parent := make(map[string]string, len(snaps))
	for _, s := range snaps {
		parent[s.Name] = s.Parent
	}
	out := make(map[string]int, len(snaps))
	for _, s := range snaps {
		n := 0
		for p := s.Parent; p != "" && n < len(snaps); p = parent[p] {
			n++
		}
		out[s.Name] = n
	}
	return out
}

func (d *Driver) snapshotXMLs(ctx context.Context, g driver.Guest, dom golibvirt.Domain) ([]*libvirtxml.DomainSnapshot, error) {
	snaps, err := call(ctx, func() ([]golibvirt.DomainSnapshot, error) {
		s, _, err := d.l.DomainListAllSnapshots(dom, 1, 0)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("guest %s: listing snapshots: %w", g.Name, d.notFound(g.Name, err))
	}
	out := make([]*libvirtxml.DomainSnapshot, 0, len(snaps))
	for _, s := range snaps {
		x, err := d.snapshotXML(ctx, s)
		if err != nil {
			if errCode(err) == golibvirt.ErrNoDomainSnapshot {
				continue // deleted meanwhile
			}
			return nil, fmt.Errorf("guest %s: %w", g.Name, err)
		}
		out = append(out, x)
	}
	return out, nil
}

func (d *Driver) snapshotXML(ctx context.Context, s golibvirt.DomainSnapshot) (*libvirtxml.DomainSnapshot, error) {
	raw, err := call(ctx, func() (string, error) { return d.l.DomainSnapshotGetXMLDesc(s, 0) })
	if err != nil {
		return nil, err
	}
	var x libvirtxml.DomainSnapshot
	if err := x.Unmarshal(raw); err != nil {
		return nil, fmt.Errorf("snapshot %s: unreadable XML: %w", s.Name, err)
	}
	return &x, nil
}

// fromXML is the driver's view of a decoded snapshot document.
func fromXML(x *libvirtxml.DomainSnapshot) driver.Snapshot {
	f := fieldsOf(x)
	return f.snapshot()
}
