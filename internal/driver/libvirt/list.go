package libvirt

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

// Snapshots implements driver.Driver, oldest first.
func (d *Driver) Snapshots(ctx context.Context, g driver.Guest) ([]driver.Snapshot, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return nil, err
	}
	return d.snapshots(ctx, g, dom)
}

func (d *Driver) snapshots(ctx context.Context, g driver.Guest, dom golibvirt.Domain) ([]driver.Snapshot, error) {
	xs, err := d.snapshotXMLs(ctx, g, dom)
	if err != nil {
		return nil, err
	}
	var cur golibvirt.DomainSnapshot
	if len(xs) > 0 {
		cur, err = call(ctx, func() (golibvirt.DomainSnapshot, error) { return d.l.DomainSnapshotCurrent(dom, 0) })
	}
	if err != nil && errCode(err) != golibvirt.ErrNoDomainSnapshot {
		return nil, fmt.Errorf("guest %s: reading current snapshot: %w", g.Name, err)
	}
	incomplete, ierr := d.incompleteReasons(ctx, g, dom)
	if ierr != nil {
		return nil, fmt.Errorf("guest %s: %w", g.Name, ierr)
	}
	out := make([]driver.Snapshot, 0, len(xs))
	for _, x := range xs {
		s := fromXML(x)
		s.Current = err == nil && cur.Name == s.Name
		s.Incomplete = incomplete[s.Name]
		out = append(out, s)
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

func fromXML(x *libvirtxml.DomainSnapshot) driver.Snapshot {
	s := driver.Snapshot{Name: x.Name, Description: x.Description, GuestState: x.State}
	if sec, err := strconv.ParseInt(x.CreationTime, 10, 64); err == nil {
		s.Created = time.Unix(sec, 0)
	}
	if x.Parent != nil {
		s.Parent = x.Parent.Name
	}
	if x.Memory != nil && (x.Memory.Snapshot == "internal" || x.Memory.Snapshot == "external") {
		s.Memory = true
	}
	s.DiskOnly = x.State == "disk-snapshot"
	internal, external := false, false
	if x.Disks != nil {
		for _, dk := range x.Disks.Disks {
			sd := driver.SnapshotDisk{Name: dk.Name, Snapshot: dk.Snapshot}
			if dk.Source != nil && dk.Source.File != nil {
				sd.File = dk.Source.File.File
			}
			switch dk.Snapshot {
			case "external":
				external = true
			case "internal":
				internal = true
			}
			s.Disks = append(s.Disks, sd)
		}
	}
	if x.Memory != nil && x.Memory.Snapshot == "internal" {
		internal = true
	}
	switch {
	case internal && external:
		s.Location = driver.LocationMixed
	case external:
		s.Location = driver.LocationExternal
	default:
		s.Location = driver.LocationInternal
	}
	switch c := naming.DescriptionFields(x.Description)["consistency"]; driver.Consistency(c) {
	case driver.ConsistencyQuiesced, driver.ConsistencyCrash, driver.ConsistencyOffline, driver.ConsistencyMemory:
		s.Consistency = driver.Consistency(c)
	}
	return s
}
